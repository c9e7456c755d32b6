//! The convenience layer: broadcasting arithmetic, reductions that keep
//! dimensions, and the building blocks of a transformer (RMSNorm, RoPE,
//! GELU, causal attention, masked cross-entropy), all written in terms of
//! the strict ops so that autodiff, emission and the interpreter cover them.

use crate::error::shape_err;
use crate::op::{BinaryOp, CmpDir, DotDims, ReduceKind};
use crate::{Builder, DType, Result, TensorType, Value};

/// The dtype normalisation, softmax and losses compute in: f32, or f64 for f64 inputs.
fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

impl Builder {
    /// A constant of `x`'s type with every element `v`.
    pub fn full_like(&mut self, x: Value, v: f64) -> Value {
        let ty = self.ty(x).clone();
        self.constant(v, ty)
    }

    /// Broadcasts `x` to `dims` numpy-style (trailing dimensions aligned,
    /// size-1 dimensions stretched).
    pub fn broadcast_to(&mut self, x: Value, dims: &[i64]) -> Result<Value> {
        let r = self.check("broadcast_to", x)?.rank();
        if r > dims.len() {
            return shape_err(
                "broadcast_to",
                &[self.ty(x)],
                format!("rank <= {}", dims.len()),
            );
        }
        let map: Vec<i64> = (0..r as i64).map(|i| i + (dims.len() - r) as i64).collect();
        self.broadcast_in_dim(x, dims, &map)
    }

    /// Applies a binary op after numpy-style broadcasting of both operands.
    pub fn binary_bcast(&mut self, op: BinaryOp, a: Value, b: Value) -> Result<Value> {
        let (da, db) = (
            self.check(op.name(), a)?.dims.clone(),
            self.check(op.name(), b)?.dims.clone(),
        );
        let r = da.len().max(db.len());
        let mut out = vec![0i64; r];
        for i in 0..r {
            let x = if i + da.len() >= r {
                da[i + da.len() - r]
            } else {
                1
            };
            let y = if i + db.len() >= r {
                db[i + db.len() - r]
            } else {
                1
            };
            if x != y && x != 1 && y != 1 {
                return shape_err(
                    op.name(),
                    &[self.ty(a), self.ty(b)],
                    "shapes that broadcast numpy-style",
                );
            }
            out[i] = x.max(y);
        }
        let a = self.broadcast_to(a, &out)?;
        let b = self.broadcast_to(b, &out)?;
        self.binary(op, a, b)
    }

    /// `a + b` with broadcasting.
    pub fn add_bcast(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary_bcast(BinaryOp::Add, a, b)
    }

    /// `a - b` with broadcasting.
    pub fn sub_bcast(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary_bcast(BinaryOp::Sub, a, b)
    }

    /// `a * b` with broadcasting.
    pub fn mul_bcast(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary_bcast(BinaryOp::Mul, a, b)
    }

    /// `a / b` with broadcasting.
    pub fn div_bcast(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary_bcast(BinaryOp::Div, a, b)
    }

    /// `max(a, b)` with broadcasting.
    pub fn max_bcast(&mut self, a: Value, b: Value) -> Result<Value> {
        self.binary_bcast(BinaryOp::Max, a, b)
    }

    /// `x + c` for a number `c`.
    pub fn add_scalar(&mut self, x: Value, c: f64) -> Result<Value> {
        let k = self.full_like(x, c);
        self.add(x, k)
    }

    /// `x * c` for a number `c`.
    pub fn mul_scalar(&mut self, x: Value, c: f64) -> Result<Value> {
        let k = self.full_like(x, c);
        self.mul(x, k)
    }

    /// `x ^ c` for a number `c`. Small integer powers and square roots
    /// become multiplies, `sqrt` or `rsqrt`: XLA's CPU backend lowers
    /// `power` to `exp(c * log(x))`, many times slower than a multiply.
    pub fn pow_scalar(&mut self, x: Value, c: f64) -> Result<Value> {
        match c {
            1.0 => Ok(x),
            2.0 => self.mul(x, x),
            3.0 => {
                let x2 = self.mul(x, x)?;
                self.mul(x2, x)
            }
            4.0 => {
                let x2 = self.mul(x, x)?;
                self.mul(x2, x2)
            }
            0.5 => self.sqrt(x),
            -0.5 => self.rsqrt(x),
            _ => {
                let k = self.full_like(x, c);
                self.pow(x, k)
            }
        }
    }

    /// `x * x`.
    pub fn square(&mut self, x: Value) -> Result<Value> {
        self.mul(x, x)
    }

    /// Sum over `axes` (removed).
    pub fn sum(&mut self, x: Value, axes: &[i64]) -> Result<Value> {
        self.reduce(x, ReduceKind::Sum, axes)
    }

    /// Maximum over `axes` (removed).
    pub fn max_over(&mut self, x: Value, axes: &[i64]) -> Result<Value> {
        self.reduce(x, ReduceKind::Max, axes)
    }

    /// Mean over `axes` (removed).
    pub fn mean(&mut self, x: Value, axes: &[i64]) -> Result<Value> {
        let n: i64 = axes
            .iter()
            .map(|&a| self.dims(x).get(a as usize).copied().unwrap_or(1))
            .product();
        let s = self.sum(x, axes)?;
        self.mul_scalar(s, 1.0 / n as f64)
    }

    /// Inserts size-1 dimensions at `axes` of the result (undoes a reduction's removal).
    pub fn keep_dims(&mut self, x: Value, axes: &[i64]) -> Result<Value> {
        let mut dims = self.dims(x).to_vec();
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        for a in sorted {
            if a as usize > dims.len() {
                return shape_err(
                    "keep_dims",
                    &[self.ty(x)],
                    format!("axes {axes:?} within the result rank"),
                );
            }
            dims.insert(a as usize, 1);
        }
        self.reshape(x, &dims)
    }

    /// `log(sum(exp(x)))` over `axis` (removed), shifted by the maximum for
    /// stability. The shift carries no gradient (it cancels), which keeps the
    /// backward pass free of max-reduction masks over large logits.
    pub fn logsumexp(&mut self, x: Value, axis: i64) -> Result<Value> {
        let m = self.max_over(x, &[axis])?;
        let m = self.stop_gradient(m)?;
        let m = self.keep_dims(m, &[axis])?;
        let sh = self.sub_bcast(x, m)?;
        let e = self.exp(sh)?;
        let s = self.sum(e, &[axis])?;
        let l = self.log(s)?;
        let m = self.reshape(m, self.dims(l).to_vec().as_slice())?;
        self.add(l, m)
    }

    /// Softmax over `axis`, shifted by the maximum (without gradient) for stability.
    pub fn softmax(&mut self, x: Value, axis: i64) -> Result<Value> {
        let m = self.max_over(x, &[axis])?;
        let m = self.stop_gradient(m)?;
        let m = self.keep_dims(m, &[axis])?;
        let sh = self.sub_bcast(x, m)?;
        let e = self.exp(sh)?;
        let s = self.sum(e, &[axis])?;
        let s = self.keep_dims(s, &[axis])?;
        self.div_bcast(e, s)
    }

    /// Matrix product over the trailing two dimensions: `a [..., m, k]`
    /// times `b [k, n]` (shared weight) or `b [..., k, n]` (same leading
    /// dimensions, batched) gives `[..., m, n]`.
    pub fn matmul(&mut self, a: Value, b: Value) -> Result<Value> {
        let (ta, tb) = (
            self.check("matmul", a)?.clone(),
            self.check("matmul", b)?.clone(),
        );
        let (ra, rb) = (ta.rank(), tb.rank());
        if ra < 2 || !(rb == 2 || (rb == ra && ta.dims[..ra - 2] == tb.dims[..rb - 2])) {
            return shape_err(
                "matmul",
                &[&ta, &tb],
                "a [..., m, k] and b [k, n] or [..., k, n]",
            );
        }
        let batch: Vec<i64> = if rb == 2 {
            vec![]
        } else {
            (0..ra as i64 - 2).collect()
        };
        let dims = DotDims {
            lhs_batch: batch.clone(),
            rhs_batch: batch,
            lhs_contract: vec![ra as i64 - 1],
            rhs_contract: vec![rb as i64 - 2],
        };
        self.dot_general(a, b, dims)
    }

    /// `x W^T` for a weight in `[out, in]` layout (Hugging Face's): `x [..., in]` gives `[..., out]`.
    pub fn linear(&mut self, x: Value, w: Value) -> Result<Value> {
        let r = self.check("linear", x)?.rank() as i64;
        let dims = DotDims {
            lhs_contract: vec![r - 1],
            rhs_contract: vec![1],
            ..DotDims::default()
        };
        self.dot_general(x, w, dims)
    }

    /// Gemma's RMSNorm over the last axis, computed in f32:
    /// `x * rsqrt(mean(x^2) + eps) * (1 + w)`, returned in `x`'s dtype.
    pub fn rms_norm(&mut self, x: Value, w: Value, eps: f64) -> Result<Value> {
        let dt = self.dtype(x);
        let r = self.rank(x) as i64;
        let cd = compute_dtype(dt);
        let xf = self.convert(x, cd)?;
        let x2 = self.square(xf)?;
        let ms = self.mean(x2, &[r - 1])?;
        let ms = self.add_scalar(ms, eps)?;
        let inv = self.rsqrt(ms)?;
        let inv = self.keep_dims(inv, &[r - 1])?;
        let y = self.mul_bcast(xf, inv)?;
        let wf = self.convert(w, cd)?;
        let w1 = self.add_scalar(wf, 1.0)?;
        let y = self.mul_bcast(y, w1)?;
        self.convert(y, dt)
    }

    /// GELU with the tanh approximation:
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    pub fn gelu_tanh(&mut self, x: Value) -> Result<Value> {
        let x3 = self.pow_scalar(x, 3.0)?;
        let t = self.mul_scalar(x3, 0.044715)?;
        let inner = self.add(x, t)?;
        let inner = self.mul_scalar(inner, (2.0 / std::f64::consts::PI).sqrt())?;
        let th = self.tanh(inner)?;
        let one_p = self.add_scalar(th, 1.0)?;
        let hx = self.mul_scalar(x, 0.5)?;
        self.mul(hx, one_p)
    }

    /// Rotary position embedding, "rotate half" layout: `x [B, T, H, D]`,
    /// integer `positions [B, T]`; dimension `i` pairs with `i + D/2` and
    /// `inv_freq[i] = base^(-2i/D)`. Computed in f32, returned in `x`'s dtype.
    pub fn rope(&mut self, x: Value, positions: Value, base: f64) -> Result<Value> {
        let tx = self.check("rope", x)?.clone();
        let tp = self.check("rope", positions)?.clone();
        if tx.rank() != 4 || tx.dims[3] % 2 != 0 || tp.dims != tx.dims[..2] {
            return shape_err(
                "rope",
                &[&tx, &tp],
                "x [B, T, H, D] with even D and positions [B, T]",
            );
        }
        let (b, t, d) = (tx.dims[0], tx.dims[1], tx.dims[3]);
        let half = d / 2;
        let cd = compute_dtype(tx.dtype);
        let i = self.iota(TensorType::new(cd, [half]), 0)?;
        let e = self.mul_scalar(i, -2.0 * base.ln() / d as f64)?;
        let inv_freq = self.exp(e)?; // [D/2]
        let pos = self.convert(positions, cd)?;
        let pos = self.broadcast_in_dim(pos, &[b, t, half], &[0, 1])?;
        let inv = self.broadcast_in_dim(inv_freq, &[b, t, half], &[2])?;
        let freqs = self.mul(pos, inv)?; // [B, T, D/2]
        let emb = self.concatenate(&[freqs, freqs], 2)?; // [B, T, D]
        let cos = self.cos(emb)?;
        let sin = self.sin(emb)?;
        let cos = self.broadcast_in_dim(cos, &tx.dims, &[0, 1, 3])?;
        let sin = self.broadcast_in_dim(sin, &tx.dims, &[0, 1, 3])?;
        let xf = self.convert(x, cd)?;
        let x1 = self.slice_axis(xf, 3, 0, half)?;
        let x2 = self.slice_axis(xf, 3, half, half)?;
        let nx2 = self.neg(x2)?;
        let rot = self.concatenate(&[nx2, x1], 3)?;
        let a = self.mul(xf, cos)?;
        let c = self.mul(rot, sin)?;
        let y = self.add(a, c)?;
        self.convert(y, tx.dtype)
    }

    /// Causal softmax attention: [`Builder::attention`] with the mask
    /// "position `t` sees `s <= t`".
    pub fn causal_attention(&mut self, q: Value, k: Value, v: Value) -> Result<Value> {
        let tq = self.check("attention", q)?.clone();
        if tq.rank() != 4 {
            return shape_err("attention", &[&tq], "q [B, T, H, D]");
        }
        let (b, t) = (tq.dims[0], tq.dims[1]);
        let rows = self.iota(TensorType::i32([b, t, t]), 1)?;
        let cols = self.iota(TensorType::i32([b, t, t]), 2)?;
        let mask = self.compare(CmpDir::Le, cols, rows)?; // [B, T, S]
        self.attention(q, k, v, mask)
    }

    /// Softmax attention with an explicit `Bool` mask `[B, T, S]` (true:
    /// query `t` may attend key `s`; e.g. causal and same document).
    /// `q [B, T, H, D]`, `k`, `v [B, S, KV, D]` with `H % KV == 0`; query
    /// head `j` uses kv head `j / (H / KV)`. Scores are scaled by `D^-0.5`
    /// and normalised in f32 (f64 for f64 inputs); fully masked rows give
    /// the mean of `v`. Returns `[B, T, H, D]` in `q`'s dtype.
    pub fn attention(&mut self, q: Value, k: Value, v: Value, mask: Value) -> Result<Value> {
        self.attention_in(q, k, v, mask, false)
    }

    /// [`Builder::attention`] over a KV cache's layout: keys transposed,
    /// `k [B, KV, D, S]`, and values heads-major, `v [B, KV, S, D]`. Both
    /// contractions then read their operand as a plain `[batch, K, N]`
    /// matrix in place (no transpose or copy of the cache per call).
    pub fn attention_cached(&mut self, q: Value, k: Value, v: Value, mask: Value) -> Result<Value> {
        self.attention_in(q, k, v, mask, true)
    }

    fn attention_in(
        &mut self,
        q: Value,
        k: Value,
        v: Value,
        mask: Value,
        cached: bool,
    ) -> Result<Value> {
        // Axes (KV, S, D) of k and (KV, S) of v.
        let ((kk, ks, kd), (vk, vs)) = if cached {
            ((1, 3, 2), (1, 2))
        } else {
            ((2, 1, 3), (2, 1))
        };
        let (tq, tk, tv) = (
            self.check("attention", q)?.clone(),
            self.check("attention", k)?.clone(),
            self.check("attention", v)?.clone(),
        );
        let tm = self.check("attention", mask)?.clone();
        let ok = tq.rank() == 4
            && tk.rank() == 4
            && tv.rank() == 4
            && tk.dtype == tv.dtype
            && tk.dims[0] == tq.dims[0]
            && tv.dims[0] == tq.dims[0]
            && tk.dims[kd] == tq.dims[3]
            && tv.dims[3] == tq.dims[3]
            && tk.dims[kk] == tv.dims[vk]
            && tk.dims[ks] == tv.dims[vs]
            && tk.dims[kk] > 0
            && tq.dims[2] % tk.dims[kk] == 0
            && tq.dtype == tk.dtype
            && tm.dtype == DType::Bool
            && tm.dims == [tq.dims[0], tq.dims[1], tk.dims[ks]];
        if !ok {
            let kv = if cached {
                "k [B, KV, D, S], v [B, KV, S, D]"
            } else {
                "k = v [B, S, KV, D]"
            };
            return shape_err(
                "attention",
                &[&tq, &tk, &tv, &tm],
                format!("q [B, T, H, D], {kv} with H % KV == 0, a Bool mask [B, T, S]"),
            );
        }
        let [b, t, h, d] = [tq.dims[0], tq.dims[1], tq.dims[2], tq.dims[3]];
        let (s_len, kv) = (tk.dims[ks], tk.dims[kk]);
        let g = h / kv;
        let q5 = self.reshape(q, &[b, t, kv, g, d])?; // [B, T, KV, G, D]
        let dims = DotDims {
            lhs_batch: vec![0, 2],
            rhs_batch: vec![0, kk as i64],
            lhs_contract: vec![4],
            rhs_contract: vec![kd as i64],
        };
        let s = self.dot_general(q5, k, dims)?; // [B, KV, T, G, S]
        let cd = compute_dtype(tq.dtype);
        let s = self.convert(s, cd)?;
        let s = self.mul_scalar(s, (d as f64).powf(-0.5))?;
        let shape = [b, kv, t, g, s_len];
        let mask = self.broadcast_in_dim(mask, &shape, &[0, 2, 4])?;
        let neg = self.constant(-1e30, TensorType::new(cd, shape));
        let s = self.select(mask, s, neg)?;
        let p = self.softmax(s, 4)?;
        let p = self.convert(p, tq.dtype)?;
        let dims = DotDims {
            lhs_batch: vec![0, 1],
            rhs_batch: vec![0, vk as i64],
            lhs_contract: vec![4],
            rhs_contract: vec![vs as i64],
        };
        let o = self.dot_general(p, v, dims)?; // [B, KV, T, G, D]
        let o = self.transpose(o, &[0, 2, 1, 3, 4])?; // [B, T, KV, G, D]
        self.reshape(o, &[b, t, h, d])
    }

    /// `one_hot(ids, n)`: `ids [...]` integer gives `[..., n]` of `dtype`.
    pub fn one_hot(&mut self, ids: Value, n: i64, dtype: DType) -> Result<Value> {
        let ti = self.check("one_hot", ids)?.clone();
        let mut dims = ti.dims.clone();
        dims.push(n);
        let r = ti.rank();
        let iota = self.iota(TensorType::new(ti.dtype, dims.clone()), r)?;
        let idb = self.broadcast_in_dim(ids, &dims, &(0..r as i64).collect::<Vec<_>>())?;
        let hit = self.eq(iota, idb)?;
        let one = self.constant(1.0, TensorType::new(dtype, dims.clone()));
        let zero = self.constant(0.0, TensorType::new(dtype, dims));
        self.select(hit, one, zero)
    }

    /// Mean token cross-entropy over positions where `mask` is nonzero:
    /// `logits [..., V]` (computed in f32), integer `labels [...]`, float
    /// `mask [...]`. Returns an f32 (f64 for f64 logits) scalar `sum(mask * (lse - logit[label])) / max(sum(mask), 1)`.
    pub fn cross_entropy(&mut self, logits: Value, labels: Value, mask: Value) -> Result<Value> {
        let (tl, tb, tm) = (
            self.check("cross_entropy", logits)?.clone(),
            self.check("cross_entropy", labels)?.clone(),
            self.check("cross_entropy", mask)?.clone(),
        );
        let r = tl.rank();
        if r == 0
            || tb.dims != tl.dims[..r - 1]
            || tm.dims != tb.dims
            || !tb.dtype.is_int()
            || !tm.dtype.is_float()
        {
            return shape_err(
                "cross_entropy",
                &[&tl, &tb, &tm],
                "logits [..., V], integer labels [...], float mask [...]",
            );
        }
        let cd = compute_dtype(tl.dtype);
        let lf = self.convert(logits, cd)?;
        let lse = self.logsumexp(lf, r as i64 - 1)?;
        let hot = self.one_hot(labels, tl.dims[r - 1], cd)?;
        let picked = self.mul(lf, hot)?;
        let picked = self.sum(picked, &[r as i64 - 1])?;
        let nll = self.sub(lse, picked)?;
        let m = self.convert(mask, cd)?;
        let all: Vec<i64> = (0..r as i64 - 1).collect();
        let weighted = self.mul(nll, m)?;
        let total = self.sum(weighted, &all)?;
        let count = self.sum(m, &all)?;
        let one = self.scalar(1.0, cd);
        let count = self.max(count, one)?;
        self.div(total, count)
    }
}
