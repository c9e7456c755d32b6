//! The prefill and decode-step programs of one bucket, sharded by the
//! training plan, with token choice on the device.
//!
//! Prefill inputs: `params[N]`, `ids [B, P]`, `pad [B]`, `keys [B]` u32,
//! `temperature []`, `top_k [B]`, `top_p [B]`; outputs: the first new token
//! `[B]`, then `k[l]`, `v[l]` caches (keys `[B, KV, hd, L]`, values
//! `[B, KV, L, hd]`).
//!
//! Decode inputs: `params[N]`, `token [B]`, `slot []` (where `token` goes),
//! `pad`, `keys`, `temperature`, `top_k`, `top_p`, then the caches
//! (donated); outputs: the next token `[B]`, `slot + 1`, the caches.

use gemma::{ComputeOptions, Gemma, GemmaConfig};
use hlo::{Builder, DType, Sharding, TensorType, Value};

use super::devices::Devices;
use crate::Result;
use crate::step::Slot;

/// How the next token is chosen (compiled in; the numbers are inputs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Choice {
    /// argmax.
    Greedy,
    /// Sampling, with or without the top-k and top-p filters.
    Sample { top_k: bool, top_p: bool },
}

/// The shapes of a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Bucket {
    pub batch: usize,
    pub prompt: usize,
    pub cache: usize,
}

/// Declares the program inputs and builds graphs for one bucket.
struct Inputs<'d> {
    dev: &'d Devices,
}

impl Inputs<'_> {
    fn declare_all(&self, b: &mut Builder, slots: &[Slot]) -> hlo::Result<Vec<Value>> {
        slots.iter().map(|s| self.declare(b, s)).collect()
    }

    fn declare(&self, b: &mut Builder, slot: &Slot) -> hlo::Result<Value> {
        let dims: Vec<i64> = slot.shape.iter().map(|&d| d as i64).collect();
        let ty = TensorType::new(slot.dtype, dims);
        if self.dev.partitions() > 1 {
            b.parameter_sharded(
                &slot.name,
                ty,
                Sharding {
                    dims: slot.axes.clone(),
                },
            )
        } else {
            Ok(b.parameter(&slot.name, ty))
        }
    }
}

/// The slots of the per-row inputs shared by both programs.
pub(crate) fn row_slots(dev: &Devices, batch: usize) -> Vec<Slot> {
    vec![
        dev.slot("pad", DType::I32, &[("batch", batch)]),
        dev.slot("keys", DType::U32, &[("batch", batch)]),
        dev.slot("temperature", DType::F32, &[]),
        dev.slot("top_k", DType::I32, &[("batch", batch)]),
        dev.slot("top_p", DType::F32, &[("batch", batch)]),
    ]
}

/// The slot of layer `layer`'s key cache (`keys`, `[B, KV, hd, L]`) or
/// value cache (`[B, KV, L, hd]`), named `cache_k.{layer}` or `cache_v.{layer}`.
pub(crate) fn cache_slot(
    dev: &Devices,
    cfg: &GemmaConfig,
    keys: bool,
    layer: usize,
    dtype: DType,
    bucket: Bucket,
) -> Slot {
    // Unnamed in the rules, head_dim stays whole; kv_heads splits only where the heads divide.
    let (b, kv) = (("batch", bucket.batch), ("kv_heads", cfg.kv_heads));
    let (seq, hd) = (("seq", bucket.cache), ("head_dim", cfg.head_dim));
    if keys {
        dev.slot(&format!("cache_k.{layer}"), dtype, &[b, kv, hd, seq])
    } else {
        dev.slot(&format!("cache_v.{layer}"), dtype, &[b, kv, seq, hd])
    }
}

/// Everything a program needs to know about the model.
pub(crate) struct ModelSpec<'a> {
    pub cfg: &'a GemmaConfig,
    /// How it computes; `options.dtype` is also the KV cache's.
    pub options: ComputeOptions,
    pub params: &'a [Slot],
}

fn choose(
    b: &mut Builder,
    logits: Value,
    choice: Choice,
    keys: Value,
    positions: Value,
    rows: &[Value],
) -> hlo::Result<Value> {
    match choice {
        Choice::Greedy => {
            let l = b.convert(logits, DType::F32)?;
            b.argmax_last(l)
        }
        Choice::Sample { top_k, top_p } => {
            // Each draw depends only on the row's key and the position of
            // the token drawn, never on the batch, the bucket or the mesh.
            let pos = b.convert(positions, DType::U32)?;
            let key = b.hash_combine(keys, pos)?;
            let v = b.dims(logits)[1];
            let u = b.uniform_rows(key, v)?;
            b.sample_categorical(
                logits,
                rows[2],
                top_k.then_some(rows[3]),
                top_p.then_some(rows[4]),
                u,
            )
        }
    }
}

/// The prefill program of `bucket`.
pub(crate) fn prefill(
    dev: &Devices,
    m: &ModelSpec,
    bucket: Bucket,
    choice: Choice,
) -> Result<hlo::Program> {
    let (mut b, inp, params) = begin(dev, m, "prefill")?;
    let ids_slot = dev.slot(
        "ids",
        DType::I32,
        &[("batch", bucket.batch), ("seq", bucket.prompt)],
    );
    let ids = inp.declare(&mut b, &ids_slot)?;
    let rows = inp.declare_all(&mut b, &row_slots(dev, bucket.batch))?;
    let model = Gemma::new(m.cfg, &params, m.options)?;
    let (logits, cache) =
        gemma::decode::prefill(&mut b, &model, ids, rows[0], bucket.cache as i64, &dev.plan)?;
    // The first new token sits at position prompt_len = P - pad.
    let p = b.constant(bucket.prompt as f64, TensorType::i32([bucket.batch as i64]));
    let pos = b.sub(p, rows[0])?;
    let token = choose(&mut b, logits, choice, rows[1], pos, &rows)?;
    let mut outputs = vec![token];
    outputs.extend(&cache.k);
    outputs.extend(&cache.v);
    let mut program = b.build(&outputs)?;
    if dev.partitions() > 1 {
        let tok = dev.slot("token", DType::I32, &[("batch", bucket.batch)]);
        program.set_output_sharding(0, sharding(&tok))?;
        let n = m.cfg.layers;
        for i in 0..2 * n {
            let cs = cache_slot(dev, m.cfg, i < n, i % n, m.options.dtype, bucket);
            program.set_output_sharding(1 + i, sharding(&cs))?;
        }
    }
    Ok(program)
}

/// The decode-step program of `bucket` (its `prompt` is unused).
pub(crate) fn decode(
    dev: &Devices,
    m: &ModelSpec,
    bucket: Bucket,
    choice: Choice,
) -> Result<hlo::Program> {
    let (mut b, inp, params) = begin(dev, m, "decode_step")?;
    let tok = dev.slot("token", DType::I32, &[("batch", bucket.batch)]);
    let token = inp.declare(&mut b, &tok)?;
    let slot = inp.declare(&mut b, &dev.slot("slot", DType::I32, &[]))?;
    let rows = inp.declare_all(&mut b, &row_slots(dev, bucket.batch))?;
    let n = m.cfg.layers;
    let mut caches = Vec::with_capacity(2 * n);
    for i in 0..2 * n {
        let cs = cache_slot(dev, m.cfg, i < n, i % n, m.options.dtype, bucket);
        caches.push(inp.declare(&mut b, &cs)?);
    }
    // Weights stored in the compute dtype: the plugin's custom-call kernel
    // where it has one (see `kernels`).
    let mut options = m.options;
    let stored = m.params.first().map_or(options.dtype, |s| s.dtype);
    let mut attention = None;
    if stored == options.dtype
        && let Some(target) = dev.decode_kernel(options.dtype)
    {
        options.matmuls = gemma::Matmuls::Kernel(target);
        attention = super::kernels::attention_target(target);
    }
    let model = Gemma::new(m.cfg, &params, options)?;
    let cache = gemma::decode::KvCache {
        k: caches[..n].to_vec(),
        v: caches[n..].to_vec(),
    };
    let (logits, cache) = gemma::decode::decode_step(
        &mut b,
        &model,
        (token, slot, rows[0]),
        cache,
        attention,
        &dev.plan,
    )?;
    // The token drawn goes to slot + 1: its position is slot + 1 - pad.
    let one = b.scalar(1.0, DType::I32);
    let next_slot = b.add(slot, one)?;
    let nb = b.broadcast_in_dim(next_slot, &[bucket.batch as i64], &[])?;
    let pos = b.sub(nb, rows[0])?;
    let next = choose(&mut b, logits, choice, rows[1], pos, &rows)?;
    let mut outputs = vec![next, next_slot];
    outputs.extend(&cache.k);
    outputs.extend(&cache.v);
    let mut program = b.build(&outputs)?;
    if dev.partitions() > 1 {
        program.set_output_sharding(0, sharding(&tok))?;
        for i in 0..2 * n {
            let cs = cache_slot(dev, m.cfg, i < n, i % n, m.options.dtype, bucket);
            program.set_output_sharding(2 + i, sharding(&cs))?;
        }
    }
    for (i, &c) in caches.iter().enumerate() {
        program.donate(c, 2 + i)?;
    }
    program.donate(slot, 1)?;
    Ok(program)
}

/// A builder for program `name` over the devices' mesh, with the model's
/// parameters declared first.
fn begin<'d>(
    dev: &'d Devices,
    m: &ModelSpec,
    name: &str,
) -> Result<(Builder, Inputs<'d>, Vec<Value>)> {
    let mut b = Builder::new(name);
    if dev.partitions() > 1 {
        b.set_mesh(hlo::Mesh::new(dev.plan.mesh.axes())?);
    }
    let inp = Inputs { dev };
    let params = inp.declare_all(&mut b, m.params)?;
    Ok((b, inp, params))
}

fn sharding(slot: &Slot) -> Sharding {
    Sharding {
        dims: slot.axes.clone(),
    }
}
