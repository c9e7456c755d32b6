//! Choosing tokens on the device: argmax, counter-based random numbers,
//! top-k and top-p filters, and categorical sampling by the Gumbel-max trick.
//!
//! Everything works on rows (`[B, V]`) and needs no sort: the k-th largest
//! probability and the top-p cut-off are found by bisection on the bit
//! patterns of the (non-negative) probabilities, 31 exact halvings, which
//! stays cheap and exact on every backend. Random numbers are a pure
//! function of a per-row key and the column, so a draw does not depend on
//! the batch it runs in, its padding or the mesh.

use crate::error::shape_err;
use crate::{Builder, DType, Result, TensorType, Value};

/// Odd constants of the `lowbias32` integer hash (Wellons' hash prospector).
const MIX_A: f64 = 0x7feb_352du32 as f64;
const MIX_B: f64 = 0x846c_a68bu32 as f64;
/// `2^32 / phi`, added to counters before hashing.
const GOLDEN: f64 = 0x9e37_79b9u32 as f64;

/// The `lowbias32` hash of a `u32` on the host (the same function as
/// [`Builder::mix32`]), for deriving per-row keys.
pub fn mix32_host(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// [`Builder::hash_combine`] on the host.
pub fn hash_combine_host(key: u32, counter: u32) -> u32 {
    let h = mix32_host(key ^ mix32_host(counter.wrapping_add(0x9e37_79b9)));
    mix32_host(h.wrapping_add(key))
}

impl Builder {
    /// Index of the largest element along the last axis, the first one on
    /// ties: `x [..., V]` gives `[...]` i32 (NaNs are never chosen).
    pub fn argmax_last(&mut self, x: Value) -> Result<Value> {
        let ty = self.check("argmax", x)?.clone();
        if ty.rank() == 0 || !ty.dtype.is_float() {
            return shape_err("argmax", &[&ty], "a float tensor [..., V]");
        }
        let r = ty.rank();
        let v = ty.dims[r - 1];
        let m = self.max_over(x, &[r as i64 - 1])?;
        let m = self.broadcast_in_dim(m, &ty.dims, &(0..r as i64 - 1).collect::<Vec<_>>())?;
        let hit = self.eq(x, m)?;
        let idx = self.iota(TensorType::i32(ty.dims.clone()), r - 1)?;
        let none = self.constant(v as f64, TensorType::i32(ty.dims.clone()));
        let cand = self.select(hit, idx, none)?;
        let first = self.reduce(cand, crate::ReduceKind::Min, &[r as i64 - 1])?;
        // A row of NaNs matches nothing: answer 0 rather than V.
        let last = self.constant((v - 1) as f64, self.ty(first).clone());
        self.min(first, last)
    }

    /// The `lowbias32` integer hash, a bijection on `u32` with full
    /// avalanche: `x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16`.
    pub fn mix32(&mut self, x: Value) -> Result<Value> {
        let ty = self.check("mix32", x)?.clone();
        if ty.dtype != DType::U32 {
            return shape_err("mix32", &[&ty], "a u32 tensor");
        }
        let k = |b: &mut Builder, c: f64| b.constant(c, ty.clone());
        let mut x = x;
        for (shift, mul) in [(16.0, Some(MIX_A)), (15.0, Some(MIX_B)), (16.0, None)] {
            let s = k(self, shift);
            let hi = self.shift_right_logical(x, s)?;
            x = self.xor(x, hi)?;
            if let Some(m) = mul {
                let m = k(self, m);
                x = self.mul(x, m)?;
            }
        }
        Ok(x)
    }

    /// A hash of two `u32` tensors of the same shape (a key and a counter):
    /// `mix32(mix32(key ^ mix32(counter + 0x9e3779b9)) + key)`.
    pub fn hash_combine(&mut self, key: Value, counter: Value) -> Result<Value> {
        let ty = self.check("hash_combine", key)?.clone();
        let g = self.constant(GOLDEN, ty);
        let c = self.add(counter, g)?;
        let c = self.mix32(c)?;
        let h = self.xor(key, c)?;
        let h = self.mix32(h)?;
        let h = self.add(h, key)?;
        self.mix32(h)
    }

    /// Uniform f32 numbers in the open interval (0, 1), `[B, n]`: element
    /// `[b, j]` comes from `hash_combine(key[b], j)` (24 random bits).
    pub fn uniform_rows(&mut self, key: Value, n: i64) -> Result<Value> {
        let ty = self.check("uniform_rows", key)?.clone();
        if ty.rank() != 1 || ty.dtype != DType::U32 {
            return shape_err("uniform_rows", &[&ty], "u32 keys [B]");
        }
        let shape = [ty.dims[0], n];
        let keys = self.broadcast_in_dim(key, &shape, &[0])?;
        let cols = self.iota(TensorType::new(DType::U32, shape), 1)?;
        let bits = self.hash_combine(keys, cols)?;
        let eight = self.constant(8.0, TensorType::new(DType::U32, shape));
        let top = self.shift_right_logical(bits, eight)?; // 24 bits
        let f = self.convert(top, DType::F32)?;
        let f = self.add_scalar(f, 0.5)?;
        self.mul_scalar(f, 1.0 / (1u64 << 24) as f64)
    }

    /// The k-th largest element of each row of a non-negative f32 `x [B, V]`
    /// (`k [B]` i32, clamped into `1..=V`), as a `[B]` threshold: bisection
    /// over bit patterns, exact. Rows keep `x >= threshold` (ties included,
    /// as `transformers`' top-k does).
    pub fn kth_largest(&mut self, x: Value, k: Value) -> Result<Value> {
        let (b_, v) = self.rows_f32("kth_largest", x)?;
        let bits = self.bitcast_convert(x, DType::I32)?;
        let one = self.constant(1.0, TensorType::i32([b_]));
        let vmax = self.constant(v as f64, TensorType::i32([b_]));
        let k = self.max(k, one)?;
        let k = self.min(k, vmax)?;
        // count(bits >= lo) >= k and count(bits >= hi) < k throughout.
        let mut lo = self.constant(0.0, TensorType::i32([b_]));
        let mut hi = self.constant(0x7f80_0001u32 as f64, TensorType::i32([b_]));
        for _ in 0..31 {
            let mid = self.midpoint(lo, hi)?;
            let mb = self.broadcast_in_dim(mid, &[b_, v], &[0])?;
            let ge = self.ge(bits, mb)?;
            let ge = self.convert(ge, DType::I32)?;
            let count = self.sum(ge, &[1])?;
            let ok = self.ge(count, k)?;
            lo = self.select(ok, mid, lo)?;
            hi = self.select(ok, hi, mid)?;
        }
        self.bitcast_convert(lo, DType::F32)
    }

    /// The top-p cut-off of each row of non-negative f32 weights `p [B, V]`
    /// (not necessarily normalised) for `top_p [B]` f32 in (0, 1]: the
    /// smallest threshold `t` such that the mass of the elements above `t`
    /// is below `top_p` times the row's total. Keeping `p >= t` keeps the
    /// smallest set of largest elements whose mass reaches `top_p` (and
    /// always the largest element), as `transformers`' top-p does.
    pub fn top_p_threshold(&mut self, p: Value, top_p: Value) -> Result<Value> {
        let (b_, v) = self.rows_f32("top_p_threshold", p)?;
        let bits = self.bitcast_convert(p, DType::I32)?;
        let total = self.sum(p, &[1])?;
        let target = self.mul(total, top_p)?;
        let zero = self.zeros_like(p);
        // mass(bits > lo) >= target and mass(bits > hi) < target throughout.
        let mut lo = self.constant(-1.0, TensorType::i32([b_]));
        let mut hi = self.constant(0x7f80_0000u32 as f64, TensorType::i32([b_]));
        for _ in 0..31 {
            let mid = self.midpoint(lo, hi)?;
            let mb = self.broadcast_in_dim(mid, &[b_, v], &[0])?;
            let gt = self.gt(bits, mb)?;
            let above = self.select(gt, p, zero)?;
            let mass = self.sum(above, &[1])?;
            let below = self.lt(mass, target)?;
            hi = self.select(below, mid, hi)?;
            lo = self.select(below, lo, mid)?;
        }
        let zero_bits = self.constant(0.0, TensorType::i32([b_]));
        let hi = self.max(hi, zero_bits)?;
        self.bitcast_convert(hi, DType::F32)
    }

    /// Draws one index per row from `softmax(logits / temperature)` after an
    /// optional top-k and then top-p filter (each applied to the
    /// renormalised survivors of the one before), using the Gumbel-max trick
    /// with `uniform [B, V]` numbers in (0, 1). `logits [B, V]` (any float;
    /// computed in f32), `temperature` a positive f32 scalar, `top_k [B]`
    /// i32 (`<= 0`: off), `top_p [B]` f32 (`>= 1`: off). Returns `[B]` i32.
    pub fn sample_categorical(
        &mut self,
        logits: Value,
        temperature: Value,
        top_k: Option<Value>,
        top_p: Option<Value>,
        uniform: Value,
    ) -> Result<Value> {
        let (b_, v) = self.rows("sample_categorical", logits)?;
        let shape = [b_, v];
        let l = self.convert(logits, DType::F32)?;
        let t = self.broadcast_in_dim(temperature, &shape, &[])?;
        let z = self.div(l, t)?;
        let mut keep = self.constant(1.0, TensorType::new(DType::Bool, shape));
        if top_k.is_some() || top_p.is_some() {
            let p = self.softmax(z, 1)?;
            let zero = self.zeros_like(p);
            let mut w = p;
            if let Some(k) = top_k {
                let off = self.constant(0.0, TensorType::i32([b_]));
                let off = self.le(k, off)?;
                let all = self.constant(v as f64, TensorType::i32([b_]));
                let k = self.select(off, all, k)?;
                let th = self.kth_largest(p, k)?;
                let th = self.broadcast_in_dim(th, &shape, &[0])?;
                keep = self.ge(p, th)?;
                w = self.select(keep, p, zero)?;
            }
            if let Some(tp) = top_p {
                let one = self.constant(1.0, TensorType::f32([b_]));
                let tp = self.min(tp, one)?;
                let th = self.top_p_threshold(w, tp)?;
                let th = self.broadcast_in_dim(th, &shape, &[0])?;
                let k2 = self.ge(w, th)?;
                keep = self.and(keep, k2)?;
            }
        }
        // Gumbel-max: argmax(z + g) with g = -log(-log(u)) draws from softmax(z).
        let u = self.convert(uniform, DType::F32)?;
        let lu = self.log(u)?;
        let nlu = self.neg(lu)?;
        let llu = self.log(nlu)?;
        let score = self.sub(z, llu)?;
        let ninf = self.constant(f64::NEG_INFINITY, TensorType::f32(shape));
        let score = self.select(keep, score, ninf)?;
        self.argmax_last(score)
    }

    /// `lo + (hi - lo) / 2` on i32 (no overflow for `lo >= -1`, `hi < 2^31`).
    fn midpoint(&mut self, lo: Value, hi: Value) -> Result<Value> {
        let d = self.sub(hi, lo)?;
        let two = self.constant(2.0, self.ty(d).clone());
        let h = self.div(d, two)?;
        self.add(lo, h)
    }

    fn rows_f32(&self, op: &'static str, x: Value) -> Result<(i64, i64)> {
        let ty = self.check(op, x)?;
        if ty.rank() != 2 || ty.dtype != DType::F32 {
            return shape_err(op, &[ty], "an f32 tensor [B, V]");
        }
        Ok((ty.dims[0], ty.dims[1]))
    }

    fn rows(&self, op: &'static str, x: Value) -> Result<(i64, i64)> {
        let ty = self.check(op, x)?;
        if ty.rank() != 2 || !ty.dtype.is_float() {
            return shape_err(op, &[ty], "a float tensor [B, V]");
        }
        Ok((ty.dims[0], ty.dims[1]))
    }
}
