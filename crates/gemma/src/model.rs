//! The Gemma v1 forward pass and loss on the tensor-program builder, exactly
//! as DESIGN.md states the math. The model names logical axes for its
//! activations; the caller's [`Constrain`] decides their shardings.

use std::cell::OnceCell;

use hlo::{Builder, DType, RematPolicy, TensorType, Value};

use crate::blocks;
use crate::weights::{Layer, Layers, Weights};
use crate::{Error, GemmaConfig, Layout, ParamSpec, Result};

/// Decides how an activation is sharded, from the logical axes the model
/// names (`batch`, `seq`, `act_embed`). The model never sees the mesh.
pub trait Constrain {
    /// Returns `x` with a sharding constraint for `axes` (or `x` unchanged).
    fn constrain(&self, b: &mut Builder, x: Value, axes: &[&str]) -> hlo::Result<Value>;

    /// Returns a parameter-shaped value `x` described by `spec` with the
    /// sharding the rules give `spec` (or `x` unchanged, the default). The
    /// scanned model pins its stacked layer weights
    /// ([`crate::stacked_layer_specs`]) with it.
    fn constrain_param(&self, _: &mut Builder, x: Value, _: &ParamSpec) -> hlo::Result<Value> {
        Ok(x)
    }
}

/// No constraints: one device, or let the partitioner propagate.
pub struct Unconstrained;

impl Constrain for Unconstrained {
    fn constrain(&self, _: &mut Builder, x: Value, _: &[&str]) -> hlo::Result<Value> {
        Ok(x)
    }
}

/// Token-level inputs of one micro-batch, all `[B, T]` i32.
#[derive(Clone, Copy, Debug)]
pub struct Tokens {
    /// Input token ids.
    pub ids: Value,
    /// Position of each token within its document.
    pub positions: Value,
    /// Document id per token; attention stays within equal ids (0 = padding).
    pub segment_ids: Value,
}

/// How to compute.
#[derive(Clone, Copy, Debug)]
pub struct ComputeOptions {
    /// dtype of matmuls and activations (`F32`, or `BF16` with f32 params);
    /// norms, softmax and the loss stay in f32.
    pub dtype: DType,
    /// What each layer keeps for the backward pass.
    pub remat: RematPolicy,
    /// How the weight matmuls run.
    pub matmuls: Matmuls,
    /// Run the decoder layers of [`Gemma::forward`] and [`Gemma::score`] as
    /// one loop (`stablehlo.while`, [`Builder::scan`]) over the layer
    /// weights stacked per layer ([`crate::stacked_layer_specs`]), with the
    /// remat policy applied inside the loop body, instead of one copy of
    /// the layer per layer (MaxText's `scan_layers`). The parameters stay
    /// per layer ([`crate::param_specs`]); the program stacks them. The
    /// loop's gradient keeps only each iteration's input and replays the
    /// iteration. [`Gemma::layers`] (decoding with a KV cache) always
    /// unrolls.
    pub scan_layers: bool,
}

/// How the weight matmuls (projections, MLP, output head) run.
///
/// XLA's CPU backend computes a bf16 matmul by widening both operands to
/// f32, multiplying in f32 and rounding the result; done by the program
/// instead, the widened weights are computed once per step (training: the
/// forward and backward passes share them) or never (generation: stored
/// widened). A product of two bf16 values is exact in f32, so
/// [`Matmuls::F32`] computes exactly what a bf16 matmul with f32
/// accumulation does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Matmuls {
    /// In the compute dtype.
    #[default]
    Compute,
    /// In f32, on operands rounded to the compute dtype (a no-op for f32
    /// compute), the result rounded to it. `weights_rounded`: the weights
    /// are f32 already holding compute-dtype values, so they are not
    /// rounded again.
    F32 {
        /// The weights already hold values of the compute dtype.
        weights_rounded: bool,
    },
    /// A custom call of the named target (registered with the plugin),
    /// given `x [M, in]` and the weight `[out, in]` converted to the
    /// compute dtype, returning `[M, out]` in the compute dtype: products
    /// of compute-dtype values summed in f32, the result rounded once, as
    /// [`Matmuls::F32`] computes. Forward only (no gradient).
    Kernel(&'static str),
}

impl Default for ComputeOptions {
    fn default() -> Self {
        ComputeOptions {
            dtype: DType::F32,
            remat: RematPolicy::None,
            matmuls: Matmuls::Compute,
            scan_layers: false,
        }
    }
}

/// The model: a config and its weights, bound by name from parameter
/// values in [`crate::param_specs_in`] order for their [`Layout`]. A model
/// builds into one program (its stacked layer weights, under
/// [`ComputeOptions::scan_layers`], are built once and reused).
pub struct Gemma<'a> {
    pub(crate) cfg: &'a GemmaConfig,
    pub(crate) weights: Weights,
    pub(crate) opts: ComputeOptions,
    /// The layer weights stacked per layer, once built.
    pub(crate) stacked: OnceCell<Vec<Value>>,
}

impl<'a> Gemma<'a> {
    /// Binds a config to parameter values in [`crate::param_specs`] order
    /// (checked against its count).
    pub fn new(cfg: &'a GemmaConfig, params: &'a [Value], opts: ComputeOptions) -> Result<Self> {
        Self::with_layout(cfg, params, Layout::PerLayer, opts)
    }

    /// Binds a config to parameter values stored as `layout` says
    /// ([`crate::param_specs_in`] order, checked against its count).
    /// Stacked weights feed a scanned model as they are, and an unrolled
    /// one slice by slice.
    pub fn with_layout(
        cfg: &'a GemmaConfig,
        params: &'a [Value],
        layout: Layout,
        opts: ComputeOptions,
    ) -> Result<Self> {
        Ok(Gemma {
            cfg,
            weights: Weights::bind(cfg, layout, params)?,
            opts,
            stacked: OnceCell::new(),
        })
    }

    /// The model's shape.
    pub fn config(&self) -> &GemmaConfig {
        self.cfg
    }

    /// How it computes.
    pub fn options(&self) -> ComputeOptions {
        self.opts
    }

    /// Layer `i`'s weights: its own tensors, or slice `i` of each stacked one.
    fn layer(&self, b: &mut Builder, i: usize) -> hlo::Result<Layer> {
        match &self.weights.layers {
            Layers::PerLayer(layers) => Ok(layers[i].clone()),
            Layers::Stacked(stacked) => b.scope(&format!("model.layers.{i}.unstack"), |b| {
                stacked.slice(b, i)
            }),
        }
    }

    /// Logits `[B, T, V]` in the compute dtype.
    pub fn forward(&self, b: &mut Builder, t: &Tokens, c: &dyn Constrain) -> Result<Value> {
        let h = self.backbone(b, t, c)?;
        self.head(b, h, c)
    }

    /// The last layer's output `[B, T, d]` (before the final norm) for the
    /// batch's own tokens under the causal, per-segment mask.
    pub(crate) fn backbone(&self, b: &mut Builder, t: &Tokens, c: &dyn Constrain) -> Result<Value> {
        let bt = token_dims(b, "ids", t.ids, None)?;
        token_dims(b, "positions", t.positions, Some(bt))?;
        token_dims(b, "segment_ids", t.segment_ids, Some(bt))?;
        let x = self.embed(b, t.ids, c)?;
        if self.opts.scan_layers {
            return self.scanned_layers(b, x, t.positions, t.segment_ids, c);
        }
        let mask = b.scope("model.attention_mask", |b| attention_mask(b, t.segment_ids))?;
        self.layers(b, x, t.positions, &mut MaskedAttention(mask), c)
    }

    /// The scaled embedding `E[ids] * sqrt(d_model)`: `ids [B, T]` gives
    /// `[B, T, d]` in the compute dtype (the factor rounded to it, as HF does).
    pub fn embed(&self, b: &mut Builder, ids: Value, c: &dyn Constrain) -> Result<Value> {
        token_dims(b, "ids", ids, None)?;
        let (cd, d) = (self.opts.dtype, self.cfg.d_model as f64);
        let embed = self.weights.embed;
        let x = b.scope("model.embed_tokens", |b| -> hlo::Result<Value> {
            let rows = b.take_rows(embed, ids)?; // [B, T, d]
            let rows = b.convert(rows, cd)?;
            b.mul_scalar(rows, d.sqrt())
        })?;
        Ok(c.constrain(b, x, &["batch", "seq", "act_embed"])?)
    }

    /// Every decoder layer on `x [B, T, d]` at integer `positions [B, T]`;
    /// `attend` decides what each layer's queries see (the batch's own
    /// tokens under a mask, or a KV cache). Always unrolled, one copy per
    /// layer (see [`ComputeOptions::scan_layers`]).
    pub fn layers(
        &self,
        b: &mut Builder,
        mut x: Value,
        positions: Value,
        attend: &mut dyn Attend,
        c: &dyn Constrain,
    ) -> Result<Value> {
        for i in 0..self.cfg.layers {
            let layer = self.layer(b, i)?;
            x = b.scope(&format!("model.layers.{i}"), |b| {
                b.remat(self.opts.remat, |b| {
                    self.decoder_layer(b, i, &layer, x, positions, &mut *attend)
                })
            })?;
            x = c.constrain(b, x, &["batch", "seq", "act_embed"])?;
        }
        Ok(x)
    }

    /// The final norm and the tied output head: `h [B, T, d]` gives logits
    /// `[B, T, V]` (`h E^T`) in the compute dtype.
    pub fn head(&self, b: &mut Builder, x: Value, c: &dyn Constrain) -> Result<Value> {
        let eps = self.cfg.norm_eps;
        let embed = self.weights.embed;
        let final_norm = self.weights.final_norm;
        let h = b.scope("model.norm", |b| blocks::rms_norm(b, x, final_norm, eps))?;
        let logits = b.scope("lm_head", |b| self.dense(b, h, embed))?;
        Ok(c.constrain(b, logits, &["batch", "seq", "vocab"])?)
    }

    /// `x + Attn(Norm(x))`, then `x + MLP(Norm(x))`.
    pub(crate) fn decoder_layer(
        &self,
        b: &mut Builder,
        index: usize,
        l: &Layer,
        x: Value,
        positions: Value,
        attend: &mut dyn Attend,
    ) -> hlo::Result<Value> {
        let eps = self.cfg.norm_eps;
        let n = b.scope("input_layernorm", |b| {
            blocks::rms_norm(b, x, l.input_norm, eps)
        })?;
        let mut a = b.scope("self_attn", |b| {
            self.attention(b, index, l, n, positions, attend)
        })?;
        if let Some(w) = l.post_attn_out_norm {
            a = b.scope("post_attn_output_norm", |b| blocks::rms_norm(b, a, w, eps))?;
        }
        let x = b.add(x, a)?;
        let n = b.scope("post_attention_layernorm", |b| {
            blocks::rms_norm(b, x, l.post_attention_norm, eps)
        })?;
        let mut m = b.scope("mlp", |b| self.mlp(b, l, n))?;
        if let Some(w) = l.post_mlp_out_norm {
            m = b.scope("post_mlp_output_norm", |b| blocks::rms_norm(b, m, w, eps))?;
        }
        b.add(x, m)
    }

    /// Projections and RoPE; `attend` combines queries with keys and values.
    fn attention(
        &self,
        b: &mut Builder,
        index: usize,
        l: &Layer,
        x: Value,
        positions: Value,
        attend: &mut dyn Attend,
    ) -> hlo::Result<Value> {
        let cfg = self.cfg;
        let [bs, t] = [b.dims(x)[0], b.dims(x)[1]];
        let (h, kv, hd) = (cfg.heads as i64, cfg.kv_heads as i64, cfg.head_dim as i64);
        let proj = |b: &mut Builder, w: Value, heads: i64| -> hlo::Result<Value> {
            let y = self.dense(b, x, w)?; // [B, T, heads * hd]
            b.reshape(y, &[bs, t, heads, hd]) // [B, T, heads, hd]
        };
        let q = b.scope("q_proj", |b| proj(b, l.q, h))?;
        let k = b.scope("k_proj", |b| proj(b, l.k, kv))?;
        let v = b.scope("v_proj", |b| proj(b, l.v, kv))?;
        let q = b.scope("rotary", |b| blocks::rope(b, q, positions, cfg.rope_theta))?;
        let k = b.scope("rotary", |b| blocks::rope(b, k, positions, cfg.rope_theta))?;
        let o = b.scope("attention", |b| attend.attend(b, index, q, k, v))?; // [B, T, H, hd]
        let o = b.reshape(o, &[bs, t, h * hd])?;
        b.scope("o_proj", |b| self.dense(b, o, l.o))
    }

    /// GeGLU: `down(gelu_tanh(gate(x)) * up(x))`.
    fn mlp(&self, b: &mut Builder, l: &Layer, x: Value) -> hlo::Result<Value> {
        let g = b.scope("gate_proj", |b| self.dense(b, x, l.gate))?;
        let g = b.scope("act_fn", |b| b.gelu_tanh(g))?;
        let u = b.scope("up_proj", |b| self.dense(b, x, l.up))?;
        let gu = b.mul(g, u)?;
        b.scope("down_proj", |b| self.dense(b, gu, l.down))
    }

    /// `x W^T` for a weight `w [out, in]`, in the compute dtype; see
    /// [`Matmuls`].
    fn dense(&self, b: &mut Builder, x: Value, w: Value) -> hlo::Result<Value> {
        let cd = self.opts.dtype;
        match self.opts.matmuls {
            Matmuls::F32 { weights_rounded } if cd != DType::F32 => {
                let w = if weights_rounded {
                    b.convert(w, DType::F32)?
                } else {
                    let r = b.convert(w, cd)?;
                    b.convert(r, DType::F32)?
                };
                let xw = b.convert(x, DType::F32)?;
                let y = b.linear(xw, w)?;
                b.convert(y, cd)
            }
            Matmuls::Kernel(target) => {
                let w = b.convert(w, cd)?;
                let dims = b.dims(x).to_vec();
                let (k, n) = (dims[dims.len() - 1], b.dims(w)[0]);
                let m: i64 = dims[..dims.len() - 1].iter().product();
                let x2 = b.reshape(x, &[m, k])?;
                let y = b.custom_call(target, &[x2, w], TensorType::new(cd, [m, n]))?;
                let mut out = dims;
                *out.last_mut().expect("x has a feature axis") = n;
                b.reshape(y, &out)
            }
            _ => {
                let w = b.convert(w, cd)?;
                b.linear(x, w)
            }
        }
    }
}

/// What a layer's queries attend to. Training attends to the batch's own
/// keys and values under a mask; decoding writes them into a KV cache first
/// (see [`crate::decode`]). The blocks around it (norms, projections, RoPE,
/// GeGLU) are the same code either way.
pub trait Attend {
    /// Attention output `[B, T, H, hd]` of layer `layer` for `q [B, T, H, hd]`
    /// and this step's `k`, `v [B, T, KV, hd]` (RoPE applied to q and k).
    fn attend(
        &mut self,
        b: &mut Builder,
        layer: usize,
        q: Value,
        k: Value,
        v: Value,
    ) -> hlo::Result<Value>;
}

/// Attention among the step's own tokens under a `[B, T, T]` mask.
pub struct MaskedAttention(pub Value);

impl Attend for MaskedAttention {
    fn attend(
        &mut self,
        b: &mut Builder,
        _: usize,
        q: Value,
        k: Value,
        v: Value,
    ) -> hlo::Result<Value> {
        blocks::attention(b, q, k, v, self.0)
    }
}

/// `[B, T]` of an integer token-level input `v`, which must have the dims
/// `same` when given: the model's inputs are checked here, so that the
/// layers may index their shapes freely.
pub(crate) fn token_dims(
    b: &Builder,
    name: &'static str,
    v: Value,
    same: Option<[i64; 2]>,
) -> Result<[i64; 2]> {
    let (dims, dtype) = (b.dims(v), b.dtype(v));
    let expected = match same {
        Some([bs, t]) => format!("an integer tensor [{bs}, {t}], the shape of `ids`"),
        None => "an integer tensor [batch, seq]".into(),
    };
    match dims {
        &[bs, t] if dtype.is_int() && same.is_none_or(|s| s == [bs, t]) => Ok([bs, t]),
        _ => Err(Error::Input {
            name,
            found: format!("{dtype:?}{dims:?}"),
            expected,
        }),
    }
}

/// `[B, T, S]` pred: query `t` may attend key `s` when `s <= t` and both
/// are in the same document (segment).
pub(crate) fn attention_mask(b: &mut Builder, segment_ids: Value) -> hlo::Result<Value> {
    let [bs, t] = [b.dims(segment_ids)[0], b.dims(segment_ids)[1]];
    let rows = b.iota(TensorType::i32([bs, t, t]), 1)?;
    let cols = b.iota(TensorType::i32([bs, t, t]), 2)?;
    let causal = b.le(cols, rows)?;
    let q_seg = b.broadcast_in_dim(segment_ids, &[bs, t, t], &[0, 1])?;
    let k_seg = b.broadcast_in_dim(segment_ids, &[bs, t, t], &[0, 2])?;
    let same = b.eq(q_seg, k_seg)?;
    b.and(causal, same)
}

/// Summed next-token cross-entropy (natural log, logsumexp in f32) over the
/// positions where `mask` is 1, and the number of such positions:
/// `logits [B, T, V]`, `targets [B, T]` i32, `mask [B, T]` f32.
pub fn token_loss(
    b: &mut Builder,
    logits: Value,
    targets: Value,
    mask: Value,
) -> Result<(Value, Value)> {
    Ok(b.scope("loss", |b| -> hlo::Result<(Value, Value)> {
        let lp = token_log_probs(b, logits, targets)?;
        let nll = b.neg(lp)?;
        let nll = b.mul(nll, mask)?;
        Ok((b.sum(nll, &[0, 1])?, b.sum(mask, &[0, 1])?))
    })?)
}

/// Each target's log-probability, `log softmax(logits)[target]`, in f32:
/// `logits [B, T, V]` and `targets [B, T]` i32 give `[B, T]`.
pub fn token_log_probs(b: &mut Builder, logits: Value, targets: Value) -> hlo::Result<Value> {
    let lf = b.convert(logits, DType::F32)?;
    let v = b.dims(lf)[2];
    let lse = b.logsumexp(lf, 2)?; // [B, T]
    let hot = b.one_hot(targets, v, DType::F32)?;
    let picked = b.mul(lf, hot)?;
    let picked = b.sum(picked, &[2])?;
    b.sub(picked, lse)
}
