//! Generation with a KV cache: the prefill and decode-step graphs, built
//! from the same blocks as training ([`Gemma::embed`], [`Gemma::layers`],
//! [`Gemma::head`]); only what attention sees differs ([`CacheAttention`]).
//!
//! Rows of different prompt lengths share a batch by left padding: row `b`
//! of a prompt bucket of `P` slots starts at slot `pad[b]`, so every row's
//! last prompt token is at slot `P - 1` and every decode step writes the
//! same slot for all rows. Positions (RoPE) are per row, `slot - pad[b]`,
//! and the mask hides slots before `pad[b]`, so a padded row computes what
//! it would alone. The cache holds keys `[B, KV, hd, L]` (transposed) and
//! values `[B, KV, L, hd]` per layer in the compute dtype, the layouts in
//! which attention's two contractions read them in place
//! ([`crate::blocks::attention_cached`]); a decode step writes one slot and attends to
//! all `L` (masked), so its cost is fixed for a bucket: the weights once,
//! plus attention's term linear in `L`.
//!
//! ```
//! use gemma::decode::{decode_step, prefill};
//! use gemma::{ComputeOptions, Gemma, GemmaConfig, Unconstrained};
//! use hlo::{Builder, DType, TensorType};
//! # fn main() -> gemma::Result<()> {
//! let cfg = GemmaConfig::tiny();
//! let mut b = Builder::new("prefill");
//! let params = gemma::declare_parameters(&mut b, &cfg);
//! let model = Gemma::new(&cfg, &params, ComputeOptions::default())?;
//! let ids = b.parameter("ids", TensorType::i32([2, 8]));
//! let pad = b.parameter("pad", TensorType::i32([2]));
//! let (logits, cache) = prefill(&mut b, &model, ids, pad, 24, &Unconstrained)?;
//! assert_eq!(b.dims(logits), [2, cfg.vocab_size as i64]);
//! assert_eq!(b.dims(cache.k[0]), [2, cfg.kv_heads as i64, cfg.head_dim as i64, 24]);
//! assert_eq!(b.dims(cache.v[0]), [2, cfg.kv_heads as i64, 24, cfg.head_dim as i64]);
//!
//! let token = b.parameter("token", TensorType::i32([2]));
//! let slot = b.parameter("slot", TensorType::i32([]));
//! let (next, cache) = decode_step(&mut b, &model, (token, slot, pad), cache, None, &Unconstrained)?;
//! assert_eq!(b.dims(next), [2, cfg.vocab_size as i64]);
//! assert_eq!(b.dtype(cache.v[1]), DType::F32);
//! # Ok(()) }
//! ```

use hlo::{Builder, DType, TensorType, Value};

use crate::blocks;
use crate::model::Attend;
use crate::{Constrain, Gemma, Result};

/// Per-layer key caches `[B, KV, hd, L]` and value caches `[B, KV, L, hd]`.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// Keys, one per layer, transposed: `[B, KV, hd, L]`.
    pub k: Vec<Value>,
    /// Values, one per layer: `[B, KV, L, hd]`.
    pub v: Vec<Value>,
}

/// Writes each layer's keys and values into the cache at `slot`, then
/// attends to the step's own tokens (`own`, prefill: mask `[B, T, T]`) or
/// to the whole cache (decode: mask `[B, T, L]`).
pub struct CacheAttention<'c> {
    /// The caches, updated in place in the graph.
    pub cache: &'c mut KvCache,
    /// The first slot written (scalar i32).
    pub slot: Value,
    /// Which keys each query sees.
    pub mask: Value,
    /// Attend to the step's own keys rather than the cache.
    pub own: bool,
    /// Each row's first real slot, `[B]` i32 (the mask's lower bound; read
    /// by `kernel`).
    pub pad: Value,
    /// A custom call computing a one-token step's attention over the
    /// caches (see [`decode_step`]); `None`: XLA's operations.
    pub kernel: Option<&'static str>,
}

impl Attend for CacheAttention<'_> {
    fn attend(
        &mut self,
        b: &mut Builder,
        layer: usize,
        q: Value,
        k: Value,
        v: Value,
    ) -> hlo::Result<Value> {
        let zero = b.scalar(0.0, DType::I32);
        // [B, T, KV, hd] -> the key cache's [B, KV, hd, T].
        let ck = b.scope("cache_k", |b| {
            let kt = b.transpose(k, &[0, 2, 3, 1])?;
            b.dynamic_update_slice(self.cache.k[layer], kt, &[zero, zero, zero, self.slot])
        })?;
        // [B, T, KV, hd] -> the value cache's [B, KV, T, hd].
        let cv = b.scope("cache_v", |b| {
            let vt = b.transpose(v, &[0, 2, 1, 3])?;
            b.dynamic_update_slice(self.cache.v[layer], vt, &[zero, zero, self.slot, zero])
        })?;
        // One updated buffer each, read by attention and returned: left to
        // itself XLA fuses the update into both readers, copying the whole
        // cache several times per layer and step.
        let (ck, cv) = if self.own {
            (ck, cv)
        } else {
            let kv = b.optimization_barrier(&[ck, cv])?;
            (kv[0], kv[1])
        };
        self.cache.k[layer] = ck;
        self.cache.v[layer] = cv;
        match (self.own, self.kernel) {
            (true, _) => blocks::attention(b, q, k, v, self.mask),
            (false, Some(target)) => {
                let (dims, dtype) = (b.dims(q).to_vec(), b.dtype(q));
                let q3 = b.reshape(q, &[dims[0], dims[1] * dims[2], dims[3]])?;
                let ty = TensorType::new(dtype, b.dims(q3).to_vec());
                let o = b.custom_call(target, &[q3, ck, cv, self.pad, self.slot], ty)?;
                b.reshape(o, &dims)
            }
            (false, None) => blocks::attention_cached(b, q, ck, cv, self.mask),
        }
    }
}

/// Empty caches for `batch` rows of `len` slots, in the compute dtype.
pub fn empty_cache(b: &mut Builder, model: &Gemma, batch: i64, len: i64) -> KvCache {
    let cfg = model.config();
    let (kv, hd, dt) = (
        cfg.kv_heads as i64,
        cfg.head_dim as i64,
        model.options().dtype,
    );
    let zk = b.constant(0.0, TensorType::new(dt, [batch, kv, hd, len]));
    let zv = b.constant(0.0, TensorType::new(dt, [batch, kv, len, hd]));
    KvCache {
        k: vec![zk; cfg.layers],
        v: vec![zv; cfg.layers],
    }
}

/// The prompt pass: `ids [B, P]` i32, left padded by `pad [B]` i32 slots
/// (their ids are ignored). Returns the logits of the last prompt token
/// `[B, V]` and caches of `cache_len >= P` slots holding the prompt's keys
/// and values in slots `0..P`.
pub fn prefill(
    b: &mut Builder,
    model: &Gemma,
    ids: Value,
    pad: Value,
    cache_len: i64,
    c: &dyn Constrain,
) -> Result<(Value, KvCache)> {
    let [bs, p] = crate::model::token_dims(b, "ids", ids, None)?;
    if cache_len < p {
        return Err(crate::Error::config(
            "cache_len",
            cache_len,
            format!("must hold the {p} prompt slots"),
        ));
    }
    let (positions, mask) = b.scope("prefill_mask", |b| -> hlo::Result<(Value, Value)> {
        let t = b.iota(TensorType::i32([bs, p]), 1)?;
        let padb = b.broadcast_in_dim(pad, &[bs, p], &[0])?;
        let pos = b.sub(t, padb)?;
        let zero = b.constant(0.0, TensorType::i32([bs, p]));
        let pos = b.max(pos, zero)?;
        let rows = b.iota(TensorType::i32([bs, p, p]), 1)?;
        let cols = b.iota(TensorType::i32([bs, p, p]), 2)?;
        let causal = b.le(cols, rows)?;
        let first = b.broadcast_in_dim(pad, &[bs, p, p], &[0])?;
        let real = b.ge(cols, first)?;
        Ok((pos, b.and(causal, real)?))
    })?;
    let mut cache = empty_cache(b, model, bs, cache_len);
    let slot = b.scalar(0.0, DType::I32);
    let x = model.embed(b, ids, c)?;
    let mut attend = CacheAttention {
        cache: &mut cache,
        slot,
        mask,
        own: true,
        pad,
        kernel: None,
    };
    let h = model.layers(b, x, positions, &mut attend, c)?;
    let last = b.slice_axis(h, 1, p - 1, 1)?; // [B, 1, d]
    let logits = model.head(b, last, c)?; // [B, 1, V]
    let v = b.dims(logits)[2];
    Ok((b.reshape(logits, &[bs, v])?, cache))
}

/// One decode step: `token [B]` i32 (each row's newest token) goes into
/// slot `slot` (scalar i32) of every row; rows start at `pad [B]`. Returns
/// the next-token logits `[B, V]` and the updated caches.
///
/// `attention`: the custom-call target that computes each layer's
/// attention instead of XLA's operations. It takes `q [B, H, hd]`, the
/// layer's updated key and value caches, `pad` and `slot`, and returns
/// `[B, H, hd]` in the compute dtype: what [`crate::blocks::attention_cached`]
/// computes with the mask "slots `pad[b]..=slot`".
pub fn decode_step(
    b: &mut Builder,
    model: &Gemma,
    (token, slot, pad): (Value, Value, Value),
    mut cache: KvCache,
    attention: Option<&'static str>,
    c: &dyn Constrain,
) -> Result<(Value, KvCache)> {
    let bs = b.dims(token)[0];
    let len = b.dims(cache.v[0])[2];
    let (ids, positions, mask) =
        b.scope("decode_mask", |b| -> hlo::Result<(Value, Value, Value)> {
            let ids = b.reshape(token, &[bs, 1])?;
            let slot_b = b.broadcast_in_dim(slot, &[bs], &[])?;
            let pos = b.sub(slot_b, pad)?;
            let pos = b.reshape(pos, &[bs, 1])?;
            let cols = b.iota(TensorType::i32([bs, 1, len]), 2)?;
            let first = b.broadcast_in_dim(pad, &[bs, 1, len], &[0])?;
            let upto = b.broadcast_in_dim(slot, &[bs, 1, len], &[])?;
            let real = b.ge(cols, first)?;
            let seen = b.le(cols, upto)?;
            Ok((ids, pos, b.and(real, seen)?))
        })?;
    let x = model.embed(b, ids, c)?;
    let mut attend = CacheAttention {
        cache: &mut cache,
        slot,
        mask,
        own: false,
        pad,
        kernel: attention,
    };
    let h = model.layers(b, x, positions, &mut attend, c)?;
    let logits = model.head(b, h, c)?; // [B, 1, V]
    let v = b.dims(logits)[2];
    Ok((b.reshape(logits, &[bs, v])?, cache))
}
