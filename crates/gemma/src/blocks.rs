//! Gemma's blocks on the builder's generic ops: RMSNorm with `(1 + w)`,
//! rotary position embeddings ("rotate half"), and softmax attention with
//! grouped key/value heads, over the batch's own keys or a KV cache's
//! layout. Each is written in terms of the builder's ops, so autodiff,
//! emission and the interpreter cover them; each computes in f32 (f64 for
//! f64 inputs) and returns its input's dtype.

use hlo::{Builder, DType, DotDims, Result, TensorType, Value};

/// The dtype normalisation and softmax compute in: f32, or f64 for f64 inputs.
fn compute_dtype(dt: DType) -> DType {
    if dt == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

fn shape_err<T>(op: &'static str, operands: &[&TensorType], expected: &str) -> Result<T> {
    Err(hlo::Error::Shape {
        op,
        operands: operands.iter().map(|t| (*t).clone()).collect(),
        expected: expected.to_string(),
    })
}

/// Gemma's RMSNorm over the last axis, computed in f32:
/// `x * rsqrt(mean(x^2) + eps) * (1 + w)`, returned in `x`'s dtype.
pub fn rms_norm(b: &mut Builder, x: Value, w: Value, eps: f64) -> Result<Value> {
    let dt = b.check("rms_norm", x)?.dtype;
    let r = b.rank(x) as i64;
    let cd = compute_dtype(dt);
    let xf = b.convert(x, cd)?;
    let x2 = b.square(xf)?;
    let ms = b.mean(x2, &[r - 1])?;
    let ms = b.add_scalar(ms, eps)?;
    let inv = b.rsqrt(ms)?;
    let inv = b.keep_dims(inv, &[r - 1])?;
    let y = b.mul_bcast(xf, inv)?;
    let wf = b.convert(w, cd)?;
    let w1 = b.add_scalar(wf, 1.0)?;
    let y = b.mul_bcast(y, w1)?;
    b.convert(y, dt)
}

/// Rotary position embedding, "rotate half" layout: `x [B, T, H, D]`,
/// integer `positions [B, T]`; dimension `i` pairs with `i + D/2` and
/// `inv_freq[i] = base^(-2i/D)`. Computed in f32, returned in `x`'s dtype.
pub fn rope(b: &mut Builder, x: Value, positions: Value, base: f64) -> Result<Value> {
    let tx = b.check("rope", x)?.clone();
    let tp = b.check("rope", positions)?.clone();
    if tx.rank() != 4 || tx.dims[3] % 2 != 0 || tp.dims != tx.dims[..2] {
        return shape_err(
            "rope",
            &[&tx, &tp],
            "x [B, T, H, D] with even D and positions [B, T]",
        );
    }
    let (bs, t, d) = (tx.dims[0], tx.dims[1], tx.dims[3]);
    let half = d / 2;
    let cd = compute_dtype(tx.dtype);
    let i = b.iota(TensorType::new(cd, [half]), 0)?;
    let e = b.mul_scalar(i, -2.0 * base.ln() / d as f64)?;
    let inv_freq = b.exp(e)?; // [D/2]
    let pos = b.convert(positions, cd)?;
    let pos = b.broadcast_in_dim(pos, &[bs, t, half], &[0, 1])?;
    let inv = b.broadcast_in_dim(inv_freq, &[bs, t, half], &[2])?;
    let freqs = b.mul(pos, inv)?; // [B, T, D/2]
    let emb = b.concatenate(&[freqs, freqs], 2)?; // [B, T, D]
    let cos = b.cos(emb)?;
    let sin = b.sin(emb)?;
    let cos = b.broadcast_in_dim(cos, &tx.dims, &[0, 1, 3])?;
    let sin = b.broadcast_in_dim(sin, &tx.dims, &[0, 1, 3])?;
    let xf = b.convert(x, cd)?;
    let x1 = b.slice_axis(xf, 3, 0, half)?;
    let x2 = b.slice_axis(xf, 3, half, half)?;
    let nx2 = b.neg(x2)?;
    let rot = b.concatenate(&[nx2, x1], 3)?;
    let a = b.mul(xf, cos)?;
    let c = b.mul(rot, sin)?;
    let y = b.add(a, c)?;
    b.convert(y, tx.dtype)
}

/// Softmax attention with an explicit `Bool` mask `[B, T, S]` (true:
/// query `t` may attend key `s`; e.g. causal and same document).
/// `q [B, T, H, D]`, `k`, `v [B, S, KV, D]` with `H % KV == 0`; query
/// head `j` uses kv head `j / (H / KV)`. Scores are scaled by `D^-0.5`
/// and normalised in f32 (f64 for f64 inputs); fully masked rows give
/// the mean of `v`. Returns `[B, T, H, D]` in `q`'s dtype.
pub fn attention(b: &mut Builder, q: Value, k: Value, v: Value, mask: Value) -> Result<Value> {
    attention_in(b, q, k, v, mask, false)
}

/// [`attention`] over a KV cache's layout: keys transposed,
/// `k [B, KV, D, S]`, and values heads-major, `v [B, KV, S, D]`. Both
/// contractions then read their operand as a plain `[batch, K, N]`
/// matrix in place (no transpose or copy of the cache per call).
pub fn attention_cached(
    b: &mut Builder,
    q: Value,
    k: Value,
    v: Value,
    mask: Value,
) -> Result<Value> {
    attention_in(b, q, k, v, mask, true)
}

fn attention_in(
    b: &mut Builder,
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
        b.check("attention", q)?.clone(),
        b.check("attention", k)?.clone(),
        b.check("attention", v)?.clone(),
    );
    let tm = b.check("attention", mask)?.clone();
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
            &format!("q [B, T, H, D], {kv} with H % KV == 0, a Bool mask [B, T, S]"),
        );
    }
    let [bs, t, h, d] = [tq.dims[0], tq.dims[1], tq.dims[2], tq.dims[3]];
    let (s_len, kv) = (tk.dims[ks], tk.dims[kk]);
    let g = h / kv;
    let q5 = b.reshape(q, &[bs, t, kv, g, d])?; // [B, T, KV, G, D]
    let dims = DotDims {
        lhs_batch: vec![0, 2],
        rhs_batch: vec![0, kk as i64],
        lhs_contract: vec![4],
        rhs_contract: vec![kd as i64],
    };
    let s = b.dot_general(q5, k, dims)?; // [B, KV, T, G, S]
    let cd = compute_dtype(tq.dtype);
    let s = b.convert(s, cd)?;
    let s = b.mul_scalar(s, (d as f64).powf(-0.5))?;
    let shape = [bs, kv, t, g, s_len];
    let mask = b.broadcast_in_dim(mask, &shape, &[0, 2, 4])?;
    let neg = b.constant(-1e30, TensorType::new(cd, shape));
    let s = b.select(mask, s, neg)?;
    let p = b.softmax(s, 4)?;
    let p = b.convert(p, tq.dtype)?;
    let dims = DotDims {
        lhs_batch: vec![0, 1],
        rhs_batch: vec![0, vk as i64],
        lhs_contract: vec![4],
        rhs_contract: vec![vs as i64],
    };
    let o = b.dot_general(p, v, dims)?; // [B, KV, T, G, D]
    let o = b.transpose(o, &[0, 2, 1, 3, 4])?; // [B, T, KV, G, D]
    b.reshape(o, &[bs, t, h, d])
}
