//! NVIDIA GPU defaults, all in one place: the CUDA client's options, the
//! XLA options a training step is compiled with on a GPU, and bf16 compute
//! when a config names no dtype. Keys of `[runtime]` that feed them:
//! `gpu_memory_fraction`, `gpu_preallocate`, `deterministic`,
//! `matmul_precision`; `runtime.xla_options` overrides any XLA default
//! below by name.

use pjrt::{OptionValue, XlaOption};

use crate::config::RuntimeConfig;

/// Whether `backend` (a `runtime.backend` value) is an NVIDIA GPU.
pub fn is_cuda(backend: &str) -> bool {
    matches!(backend, "cuda" | "cuda12" | "cuda13" | "gpu")
}

/// The compute dtype when `model.dtype` is not given: bf16 matmuls (f32
/// parameters and optimizer state) on GPUs, whose tensor cores run bf16
/// several times faster than f32; f32 elsewhere.
pub fn default_dtype(backend: &str) -> &'static str {
    if is_cuda(backend) { "bf16" } else { "f32" }
}

/// The CUDA client's creation options: `memory_fraction` of each GPU's
/// memory for XLA's allocator, reserved up front when `preallocate` (one
/// large block: no fragmentation or cudaMalloc in the step; off, memory is
/// taken as needed and other processes can share the GPU).
pub fn client_options(rt: &RuntimeConfig) -> Vec<(&'static str, OptionValue)> {
    vec![
        (
            "memory_fraction",
            OptionValue::Float(rt.gpu_memory_fraction as f32),
        ),
        ("preallocate", OptionValue::Bool(rt.gpu_preallocate)),
    ]
}

/// XLA options for training on NVIDIA GPUs, from the flags large JAX GPU
/// training setups use (every name checked against the CUDA plugin's own
/// flag table by `crates/train/tests/gpu.rs`):
/// - the latency-hiding scheduler overlaps FSDP's all-gathers and
///   reduce-scatters with the layers' matmuls;
/// - collectives are combined up to 128 MiB (all-gather, all-reduce) and
///   64 MiB (reduce-scatter) so each layer's parameters move in few large
///   NCCL calls;
/// - the all-gather of the next layer's parameters is pipelined into the
///   previous iteration of the layer loop, and the loop is double-buffered;
/// - collectives run on the highest-priority stream.
pub const GPU_TRAINING_XLA_OPTIONS: &[(&str, XlaDefault)] = &[
    (
        "xla_gpu_enable_latency_hiding_scheduler",
        XlaDefault::Bool(true),
    ),
    (
        "xla_gpu_enable_highest_priority_async_stream",
        XlaDefault::Bool(true),
    ),
    (
        "xla_gpu_all_gather_combine_threshold_bytes",
        XlaDefault::Int(134_217_728),
    ),
    (
        "xla_gpu_all_reduce_combine_threshold_bytes",
        XlaDefault::Int(134_217_728),
    ),
    (
        "xla_gpu_reduce_scatter_combine_threshold_bytes",
        XlaDefault::Int(67_108_864),
    ),
    (
        "xla_gpu_enable_pipelined_all_gather",
        XlaDefault::Bool(true),
    ),
    (
        "xla_gpu_enable_pipelined_reduce_scatter",
        XlaDefault::Bool(true),
    ),
    (
        "xla_gpu_enable_while_loop_double_buffering",
        XlaDefault::Bool(true),
    ),
];

/// With `runtime.deterministic = true`: reductions and scatters in a fixed
/// order, run to run (slower; for parity runs).
pub const GPU_DETERMINISTIC_XLA_OPTIONS: &[(&str, XlaDefault)] =
    &[("xla_gpu_deterministic_ops", XlaDefault::Bool(true))];

/// A default XLA option value.
#[derive(Clone, Copy, Debug)]
pub enum XlaDefault {
    /// A boolean flag.
    Bool(bool),
    /// An integer flag.
    Int(i64),
}

impl XlaDefault {
    fn value(self) -> XlaOption {
        match self {
            XlaDefault::Bool(b) => XlaOption::Bool(b),
            XlaDefault::Int(i) => XlaOption::Int(i),
        }
    }
}

/// The GPU defaults for `rt`, leaving out those `rt.xla_options` sets.
pub fn xla_options(rt: &RuntimeConfig) -> Vec<(String, XlaOption)> {
    let mut all: Vec<&(&str, XlaDefault)> = GPU_TRAINING_XLA_OPTIONS.iter().collect();
    if rt.deterministic {
        all.extend(GPU_DETERMINISTIC_XLA_OPTIONS);
    }
    all.into_iter()
        .filter(|(k, _)| !rt.xla_options.contains_key(*k))
        .map(|(k, v)| (k.to_string(), v.value()))
        .collect()
}
