//! The model's weights by name: a program's parameter values bound to the
//! tensors they are ([`crate::param_specs_in`] names them), so that the
//! model reads `embed`, a layer's `q` or the `final_norm` instead of
//! positions in a list.

use std::collections::HashMap;

use hlo::{Builder, Value};

use crate::{GemmaConfig, Layout, Result, param_specs_in};

/// Every weight of the model.
pub(crate) struct Weights {
    /// `model.embed_tokens.weight` `[vocab, d]` (also the tied output head).
    pub embed: Value,
    /// The decoder layers' weights.
    pub layers: Layers,
    /// `model.norm.weight` `[d]`.
    pub final_norm: Value,
    /// `score.weight` `[1, d]` of a reward model.
    pub score: Option<Value>,
}

/// The decoder layers' weights, as stored.
pub(crate) enum Layers {
    /// One [`Layer`] per decoder layer.
    PerLayer(Vec<Layer>),
    /// One [`Layer`] whose every tensor is stacked over the layers.
    Stacked(Layer),
}

impl Weights {
    /// Binds `values`, stored as `layout` says, to the tensors they are.
    pub fn bind(cfg: &GemmaConfig, layout: Layout, values: &[Value]) -> Result<Weights> {
        crate::params::check_count(cfg, layout, values.len())?;
        let by_name: HashMap<String, Value> = param_specs_in(cfg, layout)
            .into_iter()
            .map(|s| s.name)
            .zip(values.iter().copied())
            .collect();
        // invariant: the count is checked and every name below is one of
        // `param_specs_in`'s for this config.
        let get = |name: &str| by_name[name];
        let layer = |index: &str| {
            Layer::from_fn(cfg.post_norms, |t| {
                get(&format!("model.layers.{index}.{t}.weight"))
            })
        };
        let layers = match layout {
            Layout::PerLayer => {
                Layers::PerLayer((0..cfg.layers).map(|i| layer(&i.to_string())).collect())
            }
            Layout::Stacked => Layers::Stacked(layer("*")),
        };
        Ok(Weights {
            embed: get("model.embed_tokens.weight"),
            layers,
            final_norm: get("model.norm.weight"),
            score: cfg.score_head.then(|| get("score.weight")),
        })
    }
}

/// One layer's weights (or, stacked, all layers' of each tensor).
#[derive(Clone)]
pub(crate) struct Layer {
    pub input_norm: Value,
    pub q: Value,
    pub k: Value,
    pub v: Value,
    pub o: Value,
    pub post_attn_out_norm: Option<Value>,
    pub post_attention_norm: Value,
    pub gate: Value,
    pub up: Value,
    pub down: Value,
    pub post_mlp_out_norm: Option<Value>,
}

impl Layer {
    /// A layer from each tensor's value by its name within the layer
    /// (`self_attn.q_proj`); the post norms only when `post`.
    fn from_fn(post: bool, mut get: impl FnMut(&str) -> Value) -> Layer {
        Layer {
            input_norm: get("input_layernorm"),
            q: get("self_attn.q_proj"),
            k: get("self_attn.k_proj"),
            v: get("self_attn.v_proj"),
            o: get("self_attn.o_proj"),
            post_attn_out_norm: post.then(|| get("post_attn_output_norm")),
            post_attention_norm: get("post_attention_layernorm"),
            gate: get("mlp.gate_proj"),
            up: get("mlp.up_proj"),
            down: get("mlp.down_proj"),
            post_mlp_out_norm: post.then(|| get("post_mlp_output_norm")),
        }
    }

    /// The tensors in the order of the forward pass, the order
    /// [`crate::stacked_layer_specs`] lists them: what a loop over the
    /// layers carries, and [`Layer::from_tensors`] reads back.
    pub fn tensors(&self) -> Vec<Value> {
        let mut out = vec![self.input_norm, self.q, self.k, self.v, self.o];
        out.extend(self.post_attn_out_norm);
        out.extend([self.post_attention_norm, self.gate, self.up, self.down]);
        out.extend(self.post_mlp_out_norm);
        out
    }

    /// The inverse of [`Layer::tensors`].
    pub fn from_tensors(t: &[Value], post: bool) -> Layer {
        let mut it = t.iter().copied();
        // invariant: `t` comes from `tensors()` of a layer with the same
        // `post`, or a loop body's slices of them.
        Layer::from_fn(post, |name| {
            it.next().unwrap_or_else(|| panic!("no {name}"))
        })
    }

    /// Each tensor mapped through `f` (slicing a stacked layer, stacking
    /// layers).
    pub fn try_map(&self, mut f: impl FnMut(Value) -> hlo::Result<Value>) -> hlo::Result<Layer> {
        let post = self.post_attn_out_norm.is_some();
        let t = self
            .tensors()
            .into_iter()
            .map(&mut f)
            .collect::<hlo::Result<Vec<_>>>()?;
        Ok(Layer::from_tensors(&t, post))
    }

    /// Layer `i` of a stacked layer.
    pub fn slice(&self, b: &mut Builder, i: usize) -> hlo::Result<Layer> {
        self.try_map(|w| {
            let s = b.slice_axis(w, 0, i as i64, 1)?;
            let dims = b.dims(s)[1..].to_vec();
            b.reshape(s, &dims)
        })
    }
}
