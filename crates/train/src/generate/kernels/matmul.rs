//! `y [M, N] = x [M, K] w[N, K]^T` for small `M` (decode steps), weights
//! row-major as the model stores them, sums in f32.
//!
//! bf16: products of bf16 values (exact in f32) summed in f32, the result
//! rounded to bf16 once, as XLA computes a bf16 dot on the CPU. f32: f32
//! products and sums. The AVX-512 paths (`avx512bf16` for bf16,
//! `avx512f` for f32) tile 4 weight rows by 4 rows of `x`, 16 accumulators
//! of 16 lanes each; the portable path is plain loops. Rows of `w` are
//! split between the pool's threads ([`super::pool`]).

use pjrt::bf16;

/// Operand element types the kernels take.
pub(crate) trait Elem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    fn from_f32(v: f32) -> Self;
}

impl Elem for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Exact, NaNs included (without `half`'s quieting branch, so that
        // loops over it vectorize).
        f32::from_bits(u32::from(self.to_bits()) << 16)
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

impl Elem for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

/// Whether this CPU has the fast path for `T` (`bf16`: AVX-512 BF16,
/// `f32`: AVX-512F).
pub(crate) fn fast<T: Elem>() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if std::any::TypeId::of::<T>() == std::any::TypeId::of::<bf16>() {
            std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512f")
        } else {
            std::arch::is_x86_feature_detected!("avx512f")
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Output rows `n0..n1` of `y = x w^T` (`y` is the whole `[M, N]`
/// output; only those columns are written).
///
/// # Safety
/// `x` holds `m * k`, `w` `n * k` and `y` `m * n` elements; `n1 <= n`;
/// no other thread writes columns `n0..n1` of `y`.
pub(crate) unsafe fn rows<T: Elem>(
    x: *const T,
    w: *const T,
    y: *mut T,
    (m, k, n): (usize, usize, usize),
    (n0, n1): (usize, usize),
    use_fast: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if use_fast {
        // SAFETY: `fast::<T>()` said the features exist (the caller's
        // `use_fast`); the bounds are the caller's.
        unsafe {
            if std::any::TypeId::of::<T>() == std::any::TypeId::of::<bf16>() {
                avx512::rows_bf16(x.cast(), w.cast(), y.cast(), (m, k, n), (n0, n1));
            } else {
                avx512::rows_f32(x.cast(), w.cast(), y.cast(), (m, k, n), (n0, n1));
            }
        }
        return;
    }
    let _ = use_fast;
    for j in n0..n1 {
        for i in 0..m {
            let mut acc = 0f32;
            for l in 0..k {
                // SAFETY: in bounds as the caller promises.
                unsafe {
                    acc += (*x.add(i * k + l)).to_f32() * (*w.add(j * k + l)).to_f32();
                }
            }
            // SAFETY: as above; column j is this caller's.
            unsafe { *y.add(i * n + j) = T::from_f32(acc) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Elem, bf16};

    /// One tile: weight rows `j..j + R` by `x` rows `i..i + MB`.
    macro_rules! tile_fn {
        ($name:ident, $t:ty, $feat:literal, $step:expr, $load:ident, $fma:ident, $zero:ident) => {
            #[target_feature(enable = $feat)]
            unsafe fn $name<const R: usize, const MB: usize>(
                x: *const $t,
                w: *const $t,
                y: *mut $t,
                (k, n): (usize, usize),
                (i, j): (usize, usize),
            ) {
                let mut acc = [[_mm512_setzero_ps(); MB]; R];
                let body = k - k % $step;
                let mut l = 0;
                while l < body {
                    // SAFETY: rows `j..j+R` of `w` and `i..i+MB` of `x`
                    // hold `k` elements each, `l + step <= k`.
                    unsafe {
                        let mut wr = [$zero(); R];
                        for (r, v) in wr.iter_mut().enumerate() {
                            *v = $load(w.add((j + r) * k + l));
                            // The same line two tiles on: rows of 1-2 KB
                            // defeat the hardware prefetcher (4 KB pages).
                            let ahead = w.wrapping_add((j + r + 2 * R) * k + l);
                            _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
                        }
                        for b in 0..MB {
                            let xv = $load(x.add((i + b) * k + l));
                            for r in 0..R {
                                acc[r][b] = $fma(acc[r][b], wr[r], xv);
                            }
                        }
                    }
                    l += $step;
                }
                // A 4 x 4 tile's sums all at once: a third of the
                // instructions of 16 separate horizontal sums.
                let all = if R * MB == 16 {
                    // SAFETY: the enclosing function enables avx512f.
                    Some(unsafe { sums16(acc.as_flattened()) })
                } else {
                    None
                };
                for r in 0..R {
                    for b in 0..MB {
                        let mut s = match &all {
                            Some(a) => a[r * MB + b],
                            None => _mm512_reduce_add_ps(acc[r][b]),
                        };
                        for t in body..k {
                            // SAFETY: `t < k`, rows as above.
                            unsafe {
                                s += (*x.add((i + b) * k + t)).to_f32()
                                    * (*w.add((j + r) * k + t)).to_f32();
                            }
                        }
                        // SAFETY: `y` is `[M, N]`; this column is ours.
                        unsafe { *y.add((i + b) * n + j + r) = <$t>::from_f32(s) };
                    }
                }
            }
        };
    }

    /// Lane `i` of the result is the sum of the lanes of `v[i]` (`v` holds
    /// 16 vectors): pairs, quadruples, then halves of 128-bit lanes are
    /// added, 45 instructions instead of 16 separate reductions' 128.
    #[target_feature(enable = "avx512f")]
    unsafe fn sums16(v: &[__m512]) -> [f32; 16] {
        let t: [__m512; 8] = std::array::from_fn(|j| pairs(v[2 * j], v[2 * j + 1]));
        let u: [__m512; 4] = std::array::from_fn(|m| quads(t[2 * m], t[2 * m + 1]));
        let w = halves(halves(u[0], u[1]), halves(u[2], u[3]));
        let mut out = [0f32; 16];
        // SAFETY: `out` holds 16 f32.
        unsafe { _mm512_storeu_ps(out.as_mut_ptr(), w) };
        out
    }

    /// In each 128-bit lane: `[a0 + a2, b0 + b2, a1 + a3, b1 + b3]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn pairs(a: __m512, b: __m512) -> __m512 {
        _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b))
    }

    /// Of two [`pairs`] results `(a, b)`, `(c, d)`: in each 128-bit lane
    /// that lane's sums of `a`, `b`, `c`, `d`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn quads(ab: __m512, cd: __m512) -> __m512 {
        let (x, y) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
        let lo = _mm512_castpd_ps(_mm512_unpacklo_pd(x, y));
        let hi = _mm512_castpd_ps(_mm512_unpackhi_pd(x, y));
        _mm512_add_ps(lo, hi)
    }

    /// 128-bit lanes `[a0 + a1, a2 + a3, b0 + b1, b2 + b3]`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn halves(a: __m512, b: __m512) -> __m512 {
        let even = _mm512_shuffle_f32x4::<0x88>(a, b);
        let odd = _mm512_shuffle_f32x4::<0xDD>(a, b);
        _mm512_add_ps(even, odd)
    }

    #[inline(always)]
    unsafe fn load_bh(p: *const bf16) -> __m512bh {
        // SAFETY: 32 bf16 values readable at `p` (the caller's bounds).
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p.cast())) }
    }

    #[inline(always)]
    unsafe fn dp_bh(acc: __m512, a: __m512bh, b: __m512bh) -> __m512 {
        // SAFETY: the enclosing function enables avx512bf16.
        unsafe { _mm512_dpbf16_ps(acc, a, b) }
    }

    #[inline(always)]
    unsafe fn load_ps(p: *const f32) -> __m512 {
        // SAFETY: 16 f32 values readable at `p`.
        unsafe { _mm512_loadu_ps(p) }
    }

    #[inline(always)]
    unsafe fn fma_ps(acc: __m512, a: __m512, b: __m512) -> __m512 {
        // SAFETY: the enclosing function enables avx512f.
        unsafe { _mm512_fmadd_ps(a, b, acc) }
    }

    #[inline(always)]
    unsafe fn zero_bh() -> __m512bh {
        // SAFETY: all-zero bits are bf16 zeros.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_setzero_si512()) }
    }

    #[inline(always)]
    unsafe fn zero_ps() -> __m512 {
        // SAFETY: the enclosing function enables avx512f.
        unsafe { _mm512_setzero_ps() }
    }

    tile_fn!(
        tile_bf16,
        bf16,
        "avx512f,avx512bf16",
        32,
        load_bh,
        dp_bh,
        zero_bh
    );
    tile_fn!(tile_f32, f32, "avx512f", 16, load_ps, fma_ps, zero_ps);

    macro_rules! rows_fn {
        ($name:ident, $t:ty, $feat:literal, $tile:ident) => {
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $name(
                x: *const $t,
                w: *const $t,
                y: *mut $t,
                (m, k, n): (usize, usize, usize),
                (n0, n1): (usize, usize),
            ) {
                let mut j = n0;
                while j < n1 {
                    let r = (n1 - j).min(4);
                    let mut i = 0;
                    while i < m {
                        let mb = (m - i).min(4);
                        let at = (k, n);
                        let ij = (i, j);
                        // SAFETY: `j + r <= n1 <= n`, `i + mb <= m`.
                        unsafe {
                            match (r, mb) {
                                (4, 4) => $tile::<4, 4>(x, w, y, at, ij),
                                (4, 3) => $tile::<4, 3>(x, w, y, at, ij),
                                (4, 2) => $tile::<4, 2>(x, w, y, at, ij),
                                (4, _) => $tile::<4, 1>(x, w, y, at, ij),
                                (3, 4) => $tile::<3, 4>(x, w, y, at, ij),
                                (3, 3) => $tile::<3, 3>(x, w, y, at, ij),
                                (3, 2) => $tile::<3, 2>(x, w, y, at, ij),
                                (3, _) => $tile::<3, 1>(x, w, y, at, ij),
                                (2, 4) => $tile::<2, 4>(x, w, y, at, ij),
                                (2, 3) => $tile::<2, 3>(x, w, y, at, ij),
                                (2, 2) => $tile::<2, 2>(x, w, y, at, ij),
                                (2, _) => $tile::<2, 1>(x, w, y, at, ij),
                                (_, 4) => $tile::<1, 4>(x, w, y, at, ij),
                                (_, 3) => $tile::<1, 3>(x, w, y, at, ij),
                                (_, 2) => $tile::<1, 2>(x, w, y, at, ij),
                                _ => $tile::<1, 1>(x, w, y, at, ij),
                            }
                        }
                        i += mb;
                    }
                    j += r;
                }
            }
        };
    }

    rows_fn!(rows_bf16, bf16, "avx512f,avx512bf16", tile_bf16);
    rows_fn!(rows_f32, f32, "avx512f", tile_f32);
}
