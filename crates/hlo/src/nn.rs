//! The convenience layer: broadcasting arithmetic, reductions that keep
//! dimensions, softmax, GELU and masked cross-entropy, all written in terms
//! of the strict ops so that autodiff, emission and the interpreter cover
//! them. Model-specific blocks (Gemma's RMSNorm, RoPE, attention) live in
//! the model's crate.

use crate::error::shape_err;
use crate::op::{BinaryOp, DotDims, ReduceKind};
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
