//! All-reduce payloads: element types, little-endian wire encoding in
//! chunks, and the deterministic sum.

use prost::bytes::Bytes;

use crate::proto::DType;

/// Bytes per data chunk on the wire (request and response streams).
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// Largest gRPC message accepted: a chunk plus headroom.
pub(crate) const MAX_MESSAGE_BYTES: usize = 4 * CHUNK_BYTES;

/// A summable element with a fixed little-endian encoding. Implemented
/// only for `f32` and `f64` (plain data: `encode` relies on it).
pub(crate) trait Element:
    Copy + Default + std::ops::AddAssign + Send + Sync + 'static
{
    const DTYPE: DType;
    const SIZE: usize;
    fn read(bytes: &[u8]) -> Self;
    fn write(self, out: &mut Vec<u8>);
    fn wrap(values: Vec<Self>) -> Payload;
}

impl Element for f32 {
    const DTYPE: DType = DType::DtypeF32;
    const SIZE: usize = 4;
    fn read(b: &[u8]) -> Self {
        f32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn wrap(values: Vec<Self>) -> Payload {
        Payload::F32(values)
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::DtypeF64;
    const SIZE: usize = 8;
    fn read(b: &[u8]) -> Self {
        // invariant: `read` is called on `chunks_exact(SIZE)` slices.
        f64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
    }
    fn write(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_le_bytes());
    }
    fn wrap(values: Vec<Self>) -> Payload {
        Payload::F64(values)
    }
}

/// Elements per chunk of type `E`.
pub(crate) fn chunk_elems<E: Element>() -> usize {
    CHUNK_BYTES / E::SIZE
}

/// Encodes `values` little-endian.
pub(crate) fn encode<E: Element>(values: &[E]) -> Bytes {
    if cfg!(target_endian = "little") {
        return Bytes::copy_from_slice(as_bytes(values));
    }
    let mut out = Vec::with_capacity(values.len() * E::SIZE);
    for &v in values {
        v.write(&mut out);
    }
    Bytes::from(out)
}

/// Decodes little-endian `bytes` into `out`; bytes that are not exactly
/// `out.len()` elements (a peer's chunk of the wrong size) are refused with
/// what was expected, and `out` is left alone.
pub(crate) fn decode_into<E: Element>(bytes: &[u8], out: &mut [E]) -> Result<(), String> {
    if bytes.len() != out.len() * E::SIZE {
        return Err(format!(
            "a chunk of {} bytes where {} elements of {} bytes were expected",
            bytes.len(),
            out.len(),
            E::SIZE
        ));
    }
    if cfg!(target_endian = "little") {
        as_bytes_mut(out).copy_from_slice(bytes);
        return Ok(());
    }
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(E::SIZE)) {
        *o = E::read(b);
    }
    Ok(())
}

/// The in-memory bytes of `values` (little-endian on little-endian hosts).
fn as_bytes<E: Element>(values: &[E]) -> &[u8] {
    // SAFETY: `Element` is implemented only for f32 and f64, which have no
    // padding; the slice covers exactly the values' memory, and u8 has
    // alignment 1.
    unsafe {
        std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
    }
}

fn as_bytes_mut<E: Element>(values: &mut [E]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; moreover every bit pattern is a valid f32
    // or f64, so any bytes written through the slice leave valid values.
    unsafe {
        std::slice::from_raw_parts_mut(
            values.as_mut_ptr().cast::<u8>(),
            std::mem::size_of_val(values),
        )
    }
}

/// One worker's decoded contribution.
#[derive(Debug)]
pub(crate) enum Payload {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// Sums contributions element-wise in the order given (process-id order),
/// `((c0 + c1) + c2) + ...`, and returns the encoded sum. The order is
/// fixed, so the result is bit-identical whatever order they arrived in.
pub(crate) fn ordered_sum(contribs: Vec<Payload>) -> Bytes {
    let mut it = contribs.into_iter();
    match it.next() {
        Some(Payload::F32(acc)) => encode(&sum_rest(acc, it, |p| match p {
            Payload::F32(v) => v,
            Payload::F64(_) => unreachable!("dtype is part of the reduction key"),
        })),
        Some(Payload::F64(acc)) => encode(&sum_rest(acc, it, |p| match p {
            Payload::F64(v) => v,
            Payload::F32(_) => unreachable!("dtype is part of the reduction key"),
        })),
        None => Bytes::new(),
    }
}

fn sum_rest<E: Element>(
    mut acc: Vec<E>,
    rest: impl Iterator<Item = Payload>,
    unwrap: impl Fn(Payload) -> Vec<E>,
) -> Vec<E> {
    for p in rest {
        for (a, x) in acc.iter_mut().zip(unwrap(p)) {
            *a += x;
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_ordered_sum() {
        let a = vec![1.0f32, 1e8, -3.5];
        let b = vec![2.0f32, -1e8, 0.25];
        let c = vec![0.5f32, 1.0, 0.25];
        let bytes = encode(&a);
        let mut back = vec![0.0f32; 3];
        decode_into(&bytes, &mut back).unwrap();
        assert_eq!(back, a);

        let sum = ordered_sum(vec![
            Payload::F32(a.clone()),
            Payload::F32(b.clone()),
            Payload::F32(c.clone()),
        ]);
        let mut out = vec![0.0f32; 3];
        decode_into(&sum, &mut out).unwrap();
        let want: Vec<f32> = (0..3).map(|i| (a[i] + b[i]) + c[i]).collect();
        assert_eq!(out, want);
    }

    #[test]
    fn a_chunk_of_the_wrong_size_is_refused_not_a_panic() {
        let mut out = vec![7.0f32; 2];
        for bytes in [&[0u8; 7][..], &[0u8; 9][..], &[][..]] {
            let e = decode_into(bytes, &mut out).unwrap_err();
            assert_eq!(
                e,
                format!(
                    "a chunk of {} bytes where 2 elements of 4 bytes were expected",
                    bytes.len()
                )
            );
            assert_eq!(out, [7.0, 7.0]);
        }
    }
}
