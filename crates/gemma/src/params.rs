//! The parameter tree: every tensor's Hugging Face name, shape (HF layout,
//! `[out, in]` for projections) and logical axes. Import and export are the
//! identity on names and layouts; sharding reads the axes.

use crate::GemmaConfig;

/// Logical axis of a parameter dimension. The mesh's rule table maps these
/// onto mesh axes (`embed` -> fsdp, `heads`/`mlp`/`vocab` -> tensor, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Vocabulary rows of the (tied) embedding.
    Vocab,
    /// The residual width.
    Embed,
    /// Query heads x head_dim, fused as HF stores them.
    Heads,
    /// Key/value heads x head_dim, fused.
    KvHeads,
    /// MLP hidden width.
    Mlp,
    /// A norm scale vector: never sharded.
    Norm,
    /// The output labels of a classification head (1 for a reward model).
    Label,
    /// The leading axis of a per-layer tensor stacked over the decoder
    /// layers ([`stacked_layer_specs`]); the default rules never shard it.
    Layers,
}

impl Axis {
    /// The axis name used in configs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Axis::Vocab => "vocab",
            Axis::Embed => "embed",
            Axis::Heads => "heads",
            Axis::KvHeads => "kv_heads",
            Axis::Mlp => "mlp",
            Axis::Norm => "norm",
            Axis::Label => "label",
            Axis::Layers => "layers",
        }
    }
}

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Hugging Face name, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub name: String,
    /// Shape, HF layout.
    pub shape: Vec<usize>,
    /// Logical axis of each dimension.
    pub axes: Vec<Axis>,
}

impl ParamSpec {
    fn new<const N: usize>(name: String, shape: [usize; N], axes: [Axis; N]) -> Self {
        ParamSpec {
            name,
            shape: shape.to_vec(),
            axes: axes.to_vec(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether this is a norm scale (decay can exclude them).
    pub fn is_norm(&self) -> bool {
        matches!(
            self.axes.as_slice(),
            [Axis::Norm] | [Axis::Layers, Axis::Norm]
        )
    }

    /// Whether this is the embedding.
    pub fn is_embedding(&self) -> bool {
        self.axes.first() == Some(&Axis::Vocab)
    }
}

/// Every parameter of the model, in a fixed order: embedding, then each
/// layer's tensors in the order of the forward pass, then the final norm,
/// then (reward models) the `score` head.
pub fn param_specs(c: &GemmaConfig) -> Vec<ParamSpec> {
    use Axis::*;
    let d = c.d_model;
    let mut out = vec![ParamSpec::new(
        "model.embed_tokens.weight".into(),
        [c.vocab_size, d],
        [Vocab, Embed],
    )];
    for i in 0..c.layers {
        out.extend(layer_specs(c, &i.to_string()));
    }
    out.push(ParamSpec::new("model.norm.weight".into(), [d], [Norm]));
    if c.score_head {
        out.push(ParamSpec::new(
            "score.weight".into(),
            [1, d],
            [Label, Embed],
        ));
    }
    out
}

/// One decoder layer's tensors in the order of the forward pass, named
/// `model.layers.{index}.*`.
fn layer_specs(c: &GemmaConfig, index: &str) -> Vec<ParamSpec> {
    use Axis::*;
    let (d, q, kv, m) = (
        c.d_model,
        c.heads * c.head_dim,
        c.kv_heads * c.head_dim,
        c.mlp_dim,
    );
    let p = |s: &str| format!("model.layers.{index}.{s}.weight");
    let mut out = vec![
        ParamSpec::new(p("input_layernorm"), [d], [Norm]),
        ParamSpec::new(p("self_attn.q_proj"), [q, d], [Heads, Embed]),
        ParamSpec::new(p("self_attn.k_proj"), [kv, d], [KvHeads, Embed]),
        ParamSpec::new(p("self_attn.v_proj"), [kv, d], [KvHeads, Embed]),
        ParamSpec::new(p("self_attn.o_proj"), [d, q], [Embed, Heads]),
    ];
    if c.post_norms {
        out.push(ParamSpec::new(p("post_attn_output_norm"), [d], [Norm]));
    }
    out.push(ParamSpec::new(p("post_attention_layernorm"), [d], [Norm]));
    out.push(ParamSpec::new(p("mlp.gate_proj"), [m, d], [Mlp, Embed]));
    out.push(ParamSpec::new(p("mlp.up_proj"), [m, d], [Mlp, Embed]));
    out.push(ParamSpec::new(p("mlp.down_proj"), [d, m], [Embed, Mlp]));
    if c.post_norms {
        out.push(ParamSpec::new(p("post_mlp_output_norm"), [d], [Norm]));
    }
    out
}

/// The decoder layers' tensors stacked over the layers, as a scanned model
/// ([`crate::ComputeOptions::scan_layers`]) runs them: one spec per tensor
/// of a layer, in the order of the forward pass, with a leading
/// [`Axis::Layers`] dimension of size `layers`. Each is named
/// `model.layers.*.<tensor>.weight`; its slice `i` is exactly the tensor
/// [`param_specs`] names `model.layers.{i}.<tensor>.weight`.
///
/// ```
/// let c = gemma::GemmaConfig::tiny();
/// let s = gemma::stacked_layer_specs(&c);
/// assert_eq!(s[1].name, "model.layers.*.self_attn.q_proj.weight");
/// assert_eq!(s[1].shape[0], c.layers);
/// assert_eq!(s[1].axes[0], gemma::Axis::Layers);
/// ```
pub fn stacked_layer_specs(c: &GemmaConfig) -> Vec<ParamSpec> {
    layer_specs(c, "*")
        .into_iter()
        .map(|mut s| {
            s.shape.insert(0, c.layers);
            s.axes.insert(0, Axis::Layers);
            s
        })
        .collect()
}

/// How the decoder layers' tensors are stored: what a program's parameter
/// inputs, a training state and a checkpoint hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One tensor per layer and tensor, `model.layers.{i}.*` as Hugging
    /// Face stores them ([`param_specs`]).
    #[default]
    PerLayer,
    /// One tensor per tensor of a layer, stacked over the layers
    /// (`model.layers.*.*`, `[layers, ...]`, [`stacked_layer_specs`]): what
    /// a scanned model reads without stacking, so that nothing in a step
    /// (the stacking, its gradient, the optimizer update) grows with depth.
    Stacked,
}

/// Every stored tensor of the model in `layout`, in a fixed order:
/// embedding, the layer tensors (each layer's in turn, or each stacked one),
/// the final norm, then (reward models) the `score` head.
///
/// ```
/// use gemma::{GemmaConfig, Layout, param_specs_in};
/// let c = GemmaConfig::tiny();
/// let per_layer = param_specs_in(&c, Layout::PerLayer);
/// let stacked = param_specs_in(&c, Layout::Stacked);
/// assert_eq!(per_layer.len() - 2, c.layers * (stacked.len() - 2));
/// assert_eq!(stacked[2].name, "model.layers.*.self_attn.q_proj.weight");
/// ```
pub fn param_specs_in(c: &GemmaConfig, layout: Layout) -> Vec<ParamSpec> {
    let mut specs = param_specs(c);
    if layout == Layout::Stacked {
        let n = specs.len() - 1 - c.layers * per_layer(c);
        let tail = specs.split_off(specs.len() - n);
        specs.truncate(1);
        specs.extend(stacked_layer_specs(c));
        specs.extend(tail);
    }
    specs
}

/// Tensors per decoder layer.
pub(crate) fn per_layer(c: &GemmaConfig) -> usize {
    if c.post_norms { 11 } else { 9 }
}

/// The stacked name and layer of a per-layer tensor name:
/// `model.layers.3.mlp.up_proj.weight` gives
/// `("model.layers.*.mlp.up_proj.weight", 3)`; any other name, `None`.
///
/// ```
/// assert_eq!(
///     gemma::stacked_name("model.layers.12.mlp.up_proj.weight"),
///     Some(("model.layers.*.mlp.up_proj.weight".to_string(), 12))
/// );
/// assert_eq!(gemma::stacked_name("model.layers.*.mlp.up_proj.weight"), None);
/// assert_eq!(gemma::stacked_name("model.norm.weight"), None);
/// ```
pub fn stacked_name(name: &str) -> Option<(String, usize)> {
    let rest = name.strip_prefix("model.layers.")?;
    let (index, tensor) = rest.split_once('.')?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((format!("model.layers.*.{tensor}"), index.parse().ok()?))
}

/// Values in [`param_specs`] order (one per per-layer tensor) laid out as
/// [`param_specs_in`]`(c, layout)` says: for [`Layout::Stacked`], each
/// layer tensor's layers concatenated (row-major, layer first).
pub fn to_layout<T>(
    c: &GemmaConfig,
    layout: Layout,
    values: Vec<Vec<T>>,
) -> crate::Result<Vec<Vec<T>>> {
    check_count(c, Layout::PerLayer, values.len())?;
    if layout == Layout::PerLayer {
        return Ok(values);
    }
    let (n, layers) = (per_layer(c), c.layers);
    let mut it = values.into_iter();
    let mut out: Vec<Vec<T>> = it.by_ref().take(1).collect();
    let mut per: Vec<Vec<T>> = it.by_ref().take(layers * n).collect();
    // Each layer's tensor is moved into its stack and freed: the host holds
    // the model once plus one stacked tensor (a 7B's f32 parameters are
    // 34 GB).
    for j in 0..n {
        let mut stacked = Vec::with_capacity(layers * per[j].len());
        for i in 0..layers {
            stacked.append(&mut std::mem::take(&mut per[i * n + j]));
        }
        out.push(stacked);
    }
    out.extend(it);
    Ok(out)
}

/// The inverse of [`to_layout`]: values laid out as `layout` back in
/// [`param_specs`] order.
pub fn from_layout<T>(
    c: &GemmaConfig,
    layout: Layout,
    values: Vec<Vec<T>>,
) -> crate::Result<Vec<Vec<T>>> {
    check_count(c, layout, values.len())?;
    if layout == Layout::PerLayer {
        return Ok(values);
    }
    let (n, layers) = (per_layer(c), c.layers);
    let mut it = values.into_iter();
    let mut out: Vec<Vec<T>> = it.by_ref().take(1).collect();
    let stacked: Vec<Vec<T>> = it.by_ref().take(n).collect();
    // One stacked tensor at a time is split into its layers and freed.
    let mut per: Vec<Vec<T>> = (0..layers * n).map(|_| Vec::new()).collect();
    for (j, mut s) in stacked.into_iter().enumerate() {
        let len = s.len() / layers;
        for i in (0..layers).rev() {
            per[i * n + j] = s.split_off(i * len);
        }
    }
    out.extend(per);
    out.extend(it);
    Ok(out)
}

/// `count` values are one per tensor of [`param_specs_in`]`(c, layout)`.
pub(crate) fn check_count(c: &GemmaConfig, layout: Layout, count: usize) -> crate::Result<()> {
    let want = param_specs_in(c, layout).len();
    if count == want {
        return Ok(());
    }
    Err(crate::Error::config(
        "layers",
        c.layers,
        format!("{count} parameter values given, the model stored {layout:?} has {want}"),
    ))
}

/// Declares every parameter as an unsharded f32 program input, in
/// [`param_specs`] order (single-device programs: eval, tests).
pub fn declare_parameters(b: &mut hlo::Builder, c: &GemmaConfig) -> Vec<hlo::Value> {
    param_specs(c)
        .iter()
        .map(|s| {
            let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
            b.parameter(&s.name, hlo::TensorType::f32(dims))
        })
        .collect()
}
