//! A decode step's attention over its KV cache, one custom call per layer:
//! `q [B, H, D]`, keys `kt [B, KV, D, L]`, values `v [B, KV, L, D]`, the
//! first real slot of each row `pad [B]` and the newest slot `slot []`
//! (both i32) give `o [B, H, D]`. Query head `h` reads kv head
//! `h / (H / KV)`; row `b` attends to slots `pad[b]..=slot`.
//!
//! It computes what XLA computes for [`gemma::blocks::attention_cached`]:
//! scores summed in f32 and rounded to the compute dtype (a dot's result),
//! scaled by `D^-0.5` in f32, a softmax in f32 whose probabilities are
//! rounded to the compute dtype, and their products with the values summed
//! in f32 and rounded once. Only the exponential differs in its last bits
//! (a polynomial here, XLA's own there). Replacing XLA's nine operations
//! per layer (two small batched dots, the mask, four softmax passes,
//! conversions) matters at batch 8 and long caches, where they cost more
//! than the weights' matmuls grow.

use super::matmul::Elem;

/// The shapes of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub len: usize,
}

/// `2^x` for `x <= 0` to a few ulp: the nearest integer in the exponent
/// bits, Taylor's degree-7 polynomial for the fraction in `[-0.5, 0.5]`.
/// Branch-free, so the loops around it vectorize.
#[inline(always)]
fn exp2_neg(x: f32) -> f32 {
    let x = if x > -126.0 { x } else { -126.0 };
    let n = (x + 0.5).floor();
    let f = x - n;
    // `n` as an integer without a saturating cast: 1.5 * 2^23 + n holds it
    // in its low mantissa bits.
    let ni = (n + 12_582_912.0).to_bits() as i32 - 0x4b40_0000;
    let p = 1.525_273_4e-5_f32;
    let p = p.mul_add(f, 1.540_353e-4);
    let p = p.mul_add(f, 1.333_355_8e-3);
    let p = p.mul_add(f, 9.618_129e-3);
    let p = p.mul_add(f, 5.550_411e-2);
    let p = p.mul_add(f, 2.402_265e-1);
    let p = p.mul_add(f, std::f32::consts::LN_2);
    let p = p.mul_add(f, 1.0);
    f32::from_bits(((ni + 127) as u32) << 23) * p
}

/// The element types the kernel takes (on x86-64: with a widening load).
#[cfg(target_arch = "x86_64")]
pub(crate) use avx512::Wide as Kernel;

/// The element types the kernel takes.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) trait Kernel: Elem {}
#[cfg(not(target_arch = "x86_64"))]
impl<T: Elem> Kernel for T {}

/// Runs `$f::<T, HB>` over the group's heads in chunks of 8, 4, 2 and 1
/// (`$j0`: the chunk's first head).
macro_rules! by_heads {
    ($g:expr, |$j0:ident, $hb:ident| $call:expr) => {{
        let mut $j0 = 0;
        while $j0 < $g {
            let $hb = match $g - $j0 {
                r if r >= 8 => 8,
                r if r >= 4 => 4,
                r if r >= 2 => 2,
                _ => 1,
            };
            $call;
            $j0 += $hb;
        }
    }};
}

/// One (row, kv head): its `g` query heads against slots `lo..=hi`.
///
/// # Safety
/// The pointers hold the shapes of `d`, `(b, kv)` is in range, and `fast`
/// only where the CPU has AVX-512F.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn one<T: Kernel>(
    q: *const T,
    kt: *const T,
    v: *const T,
    o: *mut T,
    d: Dims,
    (b, kv): (usize, usize),
    (lo, hi): (usize, usize),
    fast: bool,
) {
    let (hd, len) = (d.head_dim, d.len);
    let g = d.heads / d.kv_heads;
    let n = hi + 1 - lo;
    let scale = (hd as f32).powf(-0.5);
    let mut qf = vec![0f32; g * hd];
    let mut s = vec![0f32; g * n];
    let mut acc = vec![0f32; g * hd];
    // SAFETY: in bounds by the caller's shapes.
    unsafe {
        let qbase = q.add((b * d.heads + kv * g) * hd);
        for (i, x) in qf.iter_mut().enumerate() {
            *x = (*qbase.add(i)).to_f32();
        }
        // Row `t` of the keys, from slot `lo`; row `l` of the values from `lo`.
        let kbase = kt.add((b * d.kv_heads + kv) * hd * len + lo);
        let vbase = v.add(((b * d.kv_heads + kv) * len + lo) * hd);
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if fast {
            by_heads!(g, |j0, hb| {
                let (qs, ss) = (&qf[j0 * hd..], &mut s[j0 * n..]);
                let at = (hd, len, len - lo, n);
                done = match hb {
                    8 => avx512::scores::<T, 8>(qs, kbase, at, ss),
                    4 => avx512::scores::<T, 4>(qs, kbase, at, ss),
                    2 => avx512::scores::<T, 2>(qs, kbase, at, ss),
                    _ => avx512::scores::<T, 1>(qs, kbase, at, ss),
                };
            });
        }
        for j in 0..g {
            for l in done..n {
                let mut a = 0f32;
                for t in 0..hd {
                    a = qf[j * hd + t].mul_add((*kbase.add(t * len + l)).to_f32(), a);
                }
                s[j * n + l] = a;
            }
        }
        let l2 = std::f32::consts::LOG2_E;
        for row in s.chunks_mut(n) {
            let mut max = f32::NEG_INFINITY;
            for x in row.iter_mut() {
                *x = round_to::<T>(*x) * scale;
                max = if *x > max { *x } else { max };
            }
            // 16 running sums, so that the loop vectorizes.
            let mut part = [0f32; 16];
            let mut chunks = row.chunks_exact_mut(16);
            for c in &mut chunks {
                for (x, p) in c.iter_mut().zip(&mut part) {
                    *x = exp2_neg((*x - max) * l2);
                    *p += *x;
                }
            }
            let mut sum = 0f32;
            for x in chunks.into_remainder() {
                *x = exp2_neg((*x - max) * l2);
                sum += *x;
            }
            sum += part.iter().sum::<f32>();
            for x in row.iter_mut() {
                *x = round_to::<T>(*x / sum);
            }
        }
        let mut vec_done = false;
        #[cfg(target_arch = "x86_64")]
        if fast && hd % 32 == 0 {
            by_heads!(g, |j0, hb| {
                let (ps, os) = (&s[j0 * n..], &mut acc[j0 * hd..]);
                match hb {
                    8 => avx512::values::<T, 8>(ps, vbase, (hd, n), os),
                    4 => avx512::values::<T, 4>(ps, vbase, (hd, n), os),
                    2 => avx512::values::<T, 2>(ps, vbase, (hd, n), os),
                    _ => avx512::values::<T, 1>(ps, vbase, (hd, n), os),
                }
            });
            vec_done = true;
        }
        if !vec_done {
            for j in 0..g {
                for l in 0..n {
                    let p = s[j * n + l];
                    for t in 0..hd {
                        let a = &mut acc[j * hd + t];
                        *a = p.mul_add((*vbase.add(l * hd + t)).to_f32(), *a);
                    }
                }
            }
        }
        let obase = o.add((b * d.heads + kv * g) * hd);
        for (i, a) in acc.iter().enumerate() {
            *obase.add(i) = T::from_f32(*a);
        }
    }
}

/// `x` rounded to `T` and back, without NaN handling (scores are finite).
#[inline(always)]
fn round_to<T: Elem>(x: f32) -> f32 {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<pjrt::bf16>() {
        let b = x.to_bits();
        f32::from_bits(b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000)
    } else {
        x
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    //! The two products with the heads of a group in registers: 32 slots
    //! (scores) or 32 head dimensions (values) by up to 8 heads.
    use std::arch::x86_64::*;

    use super::Elem;

    /// 16 elements at `p` widened to f32.
    pub(crate) trait Wide: Elem {
        unsafe fn load16(p: *const Self) -> __m512;
    }

    impl Wide for pjrt::bf16 {
        #[inline(always)]
        unsafe fn load16(p: *const Self) -> __m512 {
            // SAFETY: 16 bf16 readable at `p` (the caller's bounds); the
            // callers enable avx512f.
            unsafe {
                let h = _mm256_loadu_si256(p.cast());
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
        }
    }

    impl Wide for f32 {
        #[inline(always)]
        unsafe fn load16(p: *const Self) -> __m512 {
            // SAFETY: as above.
            unsafe { _mm512_loadu_ps(p) }
        }
    }

    /// `s[h][l] = sum_t q[h][t] k[t][l]` for `HB` heads (`q` rows of `hd`)
    /// and `n` slots of `k` (rows `len` apart, from the first slot);
    /// returns how many slots it did (`n`, or 0 when `n < 32` and the
    /// rows have no room for a block).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scores<T: Wide, const HB: usize>(
        q: &[f32],
        k: *const T,
        (hd, len, room, n): (usize, usize, usize, usize),
        s: &mut [f32],
    ) -> usize {
        // `room`: the slots readable in each row of `k` (at least `n`). A
        // last partial block reads past `n` where the row has room, else
        // ends at `n` (overlapping the block before).
        if n < 32 && room < 32 {
            return 0;
        }
        let mut next = 0;
        while next < n {
            let l = if next + 32 <= room { next } else { n - 32 };
            next += 32;
            let mut acc = [[_mm512_setzero_ps(); 2]; HB];
            for t in 0..hd {
                // SAFETY: `t < hd`, `l + 32 <= n` slots of row `t`.
                let (k0, k1) = unsafe {
                    let kp = k.add(t * len + l);
                    (T::load16(kp), T::load16(kp.add(16)))
                };
                for (h, a) in acc.iter_mut().enumerate() {
                    let qv = _mm512_set1_ps(q[h * hd + t]);
                    a[0] = _mm512_fmadd_ps(qv, k0, a[0]);
                    a[1] = _mm512_fmadd_ps(qv, k1, a[1]);
                }
            }
            for (h, a) in acc.iter().enumerate() {
                let mut out = [0f32; 32];
                // SAFETY: `out` holds 32 f32.
                unsafe {
                    _mm512_storeu_ps(out.as_mut_ptr(), a[0]);
                    _mm512_storeu_ps(out.as_mut_ptr().add(16), a[1]);
                }
                let keep = (n - l).min(32);
                s[h * n + l..h * n + l + keep].copy_from_slice(&out[..keep]);
            }
        }
        n
    }

    /// `o[h][d] = sum_l p[h][l] v[l][d]` for `HB` heads (`p` rows of `n`),
    /// `n` rows of `v` (`hd` each, a multiple of 32).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn values<T: Wide, const HB: usize>(
        p: &[f32],
        v: *const T,
        (hd, n): (usize, usize),
        o: &mut [f32],
    ) {
        for d0 in (0..hd).step_by(32) {
            let mut acc = [[_mm512_setzero_ps(); 2]; HB];
            for l in 0..n {
                // SAFETY: row `l < n` of `v`, columns `d0..d0 + 32 <= hd`.
                let (v0, v1) = unsafe {
                    let vp = v.add(l * hd + d0);
                    (T::load16(vp), T::load16(vp.add(16)))
                };
                for (h, a) in acc.iter_mut().enumerate() {
                    let pv = _mm512_set1_ps(p[h * n + l]);
                    a[0] = _mm512_fmadd_ps(pv, v0, a[0]);
                    a[1] = _mm512_fmadd_ps(pv, v1, a[1]);
                }
            }
            for (h, a) in acc.iter().enumerate() {
                let row = &mut o[h * hd + d0..h * hd + d0 + 32];
                // SAFETY: `row` holds 32 f32.
                unsafe {
                    _mm512_storeu_ps(row.as_mut_ptr(), a[0]);
                    _mm512_storeu_ps(row.as_mut_ptr().add(16), a[1]);
                }
            }
        }
    }
}

/// [`one`] compiled for AVX-512F and FMA (its scalar loops vectorize and
/// `mul_add` is one instruction).
///
/// # Safety
/// As [`one`], on a CPU with AVX-512F and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn one_fast<T: Kernel>(
    (q, kt, v, o): (*const T, *const T, *const T, *mut T),
    d: Dims,
    bk: (usize, usize),
    range: (usize, usize),
) {
    // SAFETY: the caller's.
    unsafe { one::<T>(q, kt, v, o, d, bk, range, true) }
}

/// The whole call, (row, kv head) pairs split between the pool's threads.
///
/// # Safety
/// The pointers hold the shapes of `d`; every `pad[b] <= slot < d.len`.
pub(crate) unsafe fn run<T: Kernel>(
    q: *const T,
    kt: *const T,
    v: *const T,
    o: *mut T,
    d: Dims,
    pad: &[i32],
    slot: usize,
) {
    #[cfg(target_arch = "x86_64")]
    let fast = std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("fma");
    let (qa, ka, va, oa) = (q as usize, kt as usize, v as usize, o as usize);
    let task = |c: usize| {
        let (b, kv) = (c / d.kv_heads, c % d.kv_heads);
        let range = (pad[b] as usize, slot);
        let ptrs = (qa as *const T, ka as *const T, va as *const T, oa as *mut T);
        // SAFETY: the caller's bounds; pairs write disjoint heads of `o`;
        // `one_fast` where the CPU has its features.
        unsafe {
            #[cfg(target_arch = "x86_64")]
            if fast {
                return one_fast::<T>(ptrs, d, (b, kv), range);
            }
            one::<T>(ptrs.0, ptrs.1, ptrs.2, ptrs.3, d, (b, kv), range, false)
        }
    };
    super::pool::run(d.batch * d.kv_heads, &task);
}

#[cfg(test)]
mod tests {
    use super::exp2_neg;

    #[test]
    fn exp2_is_accurate_to_a_few_ulp() {
        let mut x = 0f32;
        while x > -120.0 {
            let want = (x as f64).exp2();
            let got = exp2_neg(x) as f64;
            assert!(((got - want) / want).abs() < 4e-7, "2^{x}: {got} vs {want}");
            x -= 0.013_7;
        }
        assert_eq!(exp2_neg(0.0), 1.0);
        assert!(exp2_neg(-1000.0) < 1e-37);
    }
}
