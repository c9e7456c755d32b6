//! The bytes of a TensorBoard event file: TFRecord framing (length, masked
//! CRC-32C of the length, data, masked CRC-32C of the data) around
//! `tensorflow.Event` protocol buffers, encoded by hand (the few fields
//! below; field numbers from TensorFlow's `event.proto`, `summary.proto`,
//! `tensor.proto` and `tensor_shape.proto`).

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord uses.
pub(crate) fn crc32c(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !bytes.iter().fold(!0u32, |c, &b| {
        table[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC: rotated and offset so that a CRC of data that
/// holds CRCs stays well distributed.
fn masked_crc(bytes: &[u8]) -> u32 {
    let c = crc32c(bytes);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// One TFRecord around `data`.
pub(crate) fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc(data).to_le_bytes());
    out
}

/// The records of an event file with their byte offsets, and where an
/// incomplete last record starts.
pub(crate) type Records<'a> = (Vec<(usize, &'a [u8])>, Option<usize>);

/// The records of an event file, each as `(byte offset, data)`, and the
/// offset where an incomplete last record starts (a write cut short by a
/// crash), if any. A record whose CRC does not match is an error naming
/// its offset.
pub(crate) fn read_records(bytes: &[u8]) -> Result<Records<'_>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 12) else {
            return Ok((out, Some(at)));
        };
        let (len, len_crc) = head.split_at(8);
        // invariant: split_at(8) of a 12-byte head leaves 4.
        if masked_crc(len) != u32::from_le_bytes(len_crc.try_into().expect("4 bytes")) {
            return Err(format!(
                "record at byte {at}: the CRC of its length does not match"
            ));
        }
        // invariant: split_at(8) gives 8.
        let n = u64::from_le_bytes(len.try_into().expect("8 bytes")) as usize;
        let Some(data) = bytes.get(at + 12..at + 12 + n) else {
            return Ok((out, Some(at)));
        };
        let Some(crc) = bytes.get(at + 12 + n..at + 16 + n) else {
            return Ok((out, Some(at)));
        };
        // invariant: get(at + 12 + n..at + 16 + n) is 4 bytes.
        if masked_crc(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            return Err(format!(
                "record at byte {at}: the CRC of its data does not match"
            ));
        }
        out.push((at, data));
        at += 16 + n;
    }
    Ok((out, None))
}

// Protocol buffer wire format: a key is (field << 3) | wire type.
const VARINT: u64 = 0;
const FIXED64: u64 = 1;
const LEN: u64 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u64, wire: u64) {
    varint(out, (field << 3) | wire);
}

pub(crate) fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    key(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

pub(crate) fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    key(out, field, VARINT);
    varint(out, v);
}

// tensorflow.DataType and tensorboard's SummaryMetadata.DataClass values.
const DT_FLOAT: u64 = 1;
const DT_STRING: u64 = 7;
const DATA_CLASS_SCALAR: u64 = 1;
const DATA_CLASS_TENSOR: u64 = 2;

/// What one summary value holds.
pub(crate) enum Value<'a> {
    /// A scalar for the scalars dashboard: a rank-0 float32 tensor, the
    /// one scalar form every TensorBoard reader takes (its data server
    /// keeps scalars as float32).
    Scalar(f32),
    /// Markdown for the text dashboard.
    Text(&'a str),
}

/// `SummaryMetadata { plugin_data { plugin_name }, data_class }`.
fn metadata(plugin: &str, data_class: u64) -> Vec<u8> {
    let mut plugin_data = Vec::new();
    bytes_field(&mut plugin_data, 1, plugin.as_bytes());
    let mut m = Vec::new();
    bytes_field(&mut m, 1, &plugin_data);
    varint_field(&mut m, 4, data_class);
    m
}

/// `Summary.Value { tag = 1, metadata = 9, tensor = 8 }` with a rank-0 tensor.
fn summary_value(tag: &str, value: &Value) -> Vec<u8> {
    let mut tensor = Vec::new();
    let meta = match value {
        Value::Scalar(x) => {
            varint_field(&mut tensor, 1, DT_FLOAT);
            bytes_field(&mut tensor, 2, &[]); // tensor_shape: rank 0
            bytes_field(&mut tensor, 5, &x.to_le_bytes()); // packed float_val
            metadata("scalars", DATA_CLASS_SCALAR)
        }
        Value::Text(s) => {
            varint_field(&mut tensor, 1, DT_STRING);
            bytes_field(&mut tensor, 2, &[]);
            bytes_field(&mut tensor, 8, s.as_bytes()); // string_val
            metadata("text", DATA_CLASS_TENSOR)
        }
    };
    let mut v = Vec::new();
    bytes_field(&mut v, 1, tag.as_bytes());
    bytes_field(&mut v, 8, &tensor);
    bytes_field(&mut v, 9, &meta);
    v
}

/// `Event { wall_time = 1, step = 2, summary = 5 { value = 1 ... } }`.
pub(crate) fn summary_event(wall_time: f64, step: u64, values: &[(String, Value)]) -> Vec<u8> {
    let mut summary = Vec::new();
    for (tag, value) in values {
        bytes_field(&mut summary, 1, &summary_value(tag, value));
    }
    let mut e = Vec::new();
    key(&mut e, 1, FIXED64);
    e.extend_from_slice(&wall_time.to_le_bytes());
    varint_field(&mut e, 2, step);
    bytes_field(&mut e, 5, &summary);
    e
}

/// `Event { wall_time = 1, file_version = 3 }`: every event file's first.
pub(crate) fn version_event(wall_time: f64) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, FIXED64);
    e.extend_from_slice(&wall_time.to_le_bytes());
    bytes_field(&mut e, 3, b"brain.Event:2");
    e
}

/// One field of a protocol buffer message, as the wire format has it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Wire<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Len(&'a [u8]),
    Fixed32([u8; 4]),
}

/// The `(field number, value)` pairs of a message, or `None` if the bytes
/// are not well-formed.
pub(crate) fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, Wire<'_>)>> {
    fn read_varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let k = read_varint(&mut bytes)?;
        if k >> 3 == 0 {
            return None;
        }
        let v = match k & 7 {
            VARINT => Wire::Varint(read_varint(&mut bytes)?),
            FIXED64 => Wire::Fixed64(take(&mut bytes, 8)?.try_into().ok()?),
            LEN => {
                let n = read_varint(&mut bytes)? as usize;
                Wire::Len(take(&mut bytes, n)?)
            }
            5 => Wire::Fixed32(take(&mut bytes, 4)?.try_into().ok()?),
            _ => return None,
        };
        out.push((k >> 3, v));
    }
    Some(out)
}

/// The `step` of an encoded event (0 when absent, as protobuf defaults it)
/// and whether it carries a summary, or `None` if the bytes are not a
/// well-formed message.
pub(crate) fn event_info(bytes: &[u8]) -> Option<(u64, bool)> {
    let f = fields(bytes)?;
    let step = f.iter().find_map(|(n, v)| match (n, v) {
        (2, Wire::Varint(s)) => Some(*s),
        _ => None,
    });
    Some((step.unwrap_or(0), f.iter().any(|(n, _)| *n == 5)))
}

/// A decoded summary value: a number (a `simple_value`, or a rank-0 float
/// or double tensor) or a string tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Decoded {
    /// A scalar.
    Number(f64),
    /// A text summary.
    Text(String),
}

/// The `(step, tag, value)` of every summary value of an encoded event
/// that holds a number or a string (other kinds are skipped).
pub(crate) fn decode_summaries(bytes: &[u8]) -> Option<Vec<(u64, String, Decoded)>> {
    let (step, _) = event_info(bytes)?;
    let mut out = Vec::new();
    for (n, v) in fields(bytes)? {
        let (5, Wire::Len(summary)) = (n, v) else {
            continue;
        };
        for (n, v) in fields(summary)? {
            let (1, Wire::Len(value)) = (n, v) else {
                continue;
            };
            let mut tag = String::new();
            let mut got = None;
            for (n, v) in fields(value)? {
                match (n, v) {
                    (1, Wire::Len(t)) => tag = String::from_utf8_lossy(t).into_owned(),
                    (2, Wire::Fixed32(x)) => {
                        got = Some(Decoded::Number(f32::from_le_bytes(x).into()))
                    }
                    (8, Wire::Len(t)) => got = decode_tensor(t),
                    _ => {}
                }
            }
            if let Some(g) = got {
                out.push((step, tag, g));
            }
        }
    }
    Some(out)
}

/// A rank-0 `TensorProto` of float (field 5), double (6) or string (8).
fn decode_tensor(t: &[u8]) -> Option<Decoded> {
    for (n, v) in fields(t)? {
        match (n, v) {
            (5, Wire::Len(b)) if b.len() == 4 => {
                return Some(Decoded::Number(
                    f32::from_le_bytes(b.try_into().ok()?).into(),
                ));
            }
            (5, Wire::Fixed32(b)) => return Some(Decoded::Number(f32::from_le_bytes(b).into())),
            (6, Wire::Len(b)) if b.len() == 8 => {
                return Some(Decoded::Number(f64::from_le_bytes(b.try_into().ok()?)));
            }
            (6, Wire::Fixed64(b)) => return Some(Decoded::Number(f64::from_le_bytes(b))),
            (8, Wire::Len(b)) => {
                return Some(Decoded::Text(String::from_utf8_lossy(b).into_owned()));
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_of_the_standard_check_string() {
        // The check value of CRC-32C (RFC 3720, appendix B.4).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn records_round_trip_and_a_cut_record_is_reported() {
        let mut file = frame(b"first");
        file.extend(frame(&summary_event(
            1.5,
            300,
            &[("a".into(), Value::Scalar(0.25))],
        )));
        let (records, cut) = read_records(&file).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].1, b"first");
        assert_eq!(cut, None);
        assert_eq!(event_info(records[1].1), Some((300, true)));
        assert_eq!(event_info(&version_event(2.0)), Some((0, false)));
        assert_eq!(event_info(&[0x10]), None);
        let got = decode_summaries(records[1].1).unwrap();
        assert_eq!(got, vec![(300, "a".to_string(), Decoded::Number(0.25))]);
        let short = &file[..file.len() - 3];
        let (records, cut) = read_records(short).unwrap();
        assert_eq!((records.len(), cut), (1, Some(records[0].1.len() + 16)));
        let mut bad = file.clone();
        bad[14] ^= 1;
        assert!(read_records(&bad).unwrap_err().contains("byte 0"));
    }
}
