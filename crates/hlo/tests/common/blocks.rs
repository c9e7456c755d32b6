//! Transformer-shaped compositions of the builder's generic ops for the
//! crate's own tests: an RMSNorm and causal multi-head attention, in the
//! program's dtype. The
//! real Gemma blocks live in the Gemma crate (`gemma::blocks`).

use hlo::{Builder, CmpDir, DotDims, Result, TensorType, Value};

/// `x * rsqrt(mean(x^2) + 1e-6) * (1 + w)` over the last axis (weights
/// near 0 keep the scale).
pub fn norm(b: &mut Builder, x: Value, w: Value) -> Result<Value> {
    let r = b.rank(x) as i64;
    let x2 = b.square(x)?;
    let ms = b.mean(x2, &[r - 1])?;
    let ms = b.add_scalar(ms, 1e-6)?;
    let inv = b.rsqrt(ms)?;
    let inv = b.keep_dims(inv, &[r - 1])?;
    let y = b.mul_bcast(x, inv)?;
    let w1 = b.add_scalar(w, 1.0)?;
    b.mul_bcast(y, w1)
}

/// Causal softmax attention, `q`, `k`, `v` `[B, T, H, D]` (as many key
/// heads as query heads).
pub fn causal_attention(b: &mut Builder, q: Value, k: Value, v: Value) -> Result<Value> {
    let [bs, t, h, d] = [b.dims(q)[0], b.dims(q)[1], b.dims(q)[2], b.dims(q)[3]];
    let dims = DotDims {
        lhs_batch: vec![0, 2],
        rhs_batch: vec![0, 2],
        lhs_contract: vec![3],
        rhs_contract: vec![3],
    };
    let s = b.dot_general(q, k, dims)?; // [B, H, T, S]
    let s = b.mul_scalar(s, (d as f64).powf(-0.5))?;
    let rows = b.iota(TensorType::i32([bs, h, t, t]), 2)?;
    let cols = b.iota(TensorType::i32([bs, h, t, t]), 3)?;
    let mask = b.compare(CmpDir::Le, cols, rows)?;
    let neg = b.full_like(s, -1e30);
    let s = b.select(mask, s, neg)?;
    let p = b.softmax(s, 3)?;
    let dims = DotDims {
        lhs_batch: vec![0, 1],
        rhs_batch: vec![0, 2],
        lhs_contract: vec![3],
        rhs_contract: vec![1],
    };
    let o = b.dot_general(p, v, dims)?; // [B, H, T, D]
    b.transpose(o, &[0, 2, 1, 3])
}
