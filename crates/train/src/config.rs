//! The training config: typed TOML sections with unknown keys refused,
//! layered as file -> `--set key=value` overrides, validated before any
//! device work. The resolved config is saved with every run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gemma::GemmaConfig;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A whole training job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `[model]`.
    pub model: ModelConfig,
    /// `[data]`.
    pub data: data::DataConfig,
    /// `[optimizer]`.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// `[train]`.
    pub train: TrainSection,
    /// `[mesh]`.
    #[serde(default)]
    pub mesh: MeshSection,
    /// `[runtime]`.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// `[coordinator]`: multi-process jobs (`meshtrain coordinator`).
    #[serde(default)]
    pub coordinator: CoordinatorSection,
    /// `[dpo]`: for `train.objective = "dpo"` (β defaults to 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dpo: Option<crate::objective::DpoSection>,
    /// `[rl]`: for `train.objective = "rl"` (`rl.reward_model` is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rl: Option<crate::rl::RlSection>,
}

/// `[coordinator]`: supervision of a multi-process job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSection {
    /// A worker silent this long is declared lost (the job restarts from its
    /// last committed checkpoint when a worker takes its place).
    pub heartbeat_timeout_s: f64,
    /// How often workers heartbeat (the coordinator tells each worker at
    /// registration).
    pub heartbeat_interval_s: f64,
    /// Lost workers tolerated before the job is stopped.
    pub max_restarts: u32,
    /// How long workers wait at a barrier (start, restart) for the others.
    pub barrier_timeout_s: f64,
    /// How long a worker that lost its coordinator keeps trying to reach
    /// it again (a coordinator restarted on the same address with the same
    /// config and run directory resumes the job). `0`: never; the worker
    /// stops at once.
    pub reconnect_timeout_s: f64,
    /// The longest wait between two reconnection attempts (the waits start
    /// at 0.1 s and double up to this).
    pub reconnect_backoff_max_s: f64,
    /// PEM certificate chain: serve TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for CoordinatorSection {
    fn default() -> Self {
        CoordinatorSection {
            heartbeat_timeout_s: 10.0,
            heartbeat_interval_s: 1.0,
            max_restarts: 3,
            barrier_timeout_s: 600.0,
            reconnect_timeout_s: 120.0,
            reconnect_backoff_max_s: 2.0,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[model]`: a preset and/or explicit shape fields (which override it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// `gemma-2b`, `gemma-7b` or `tiny`.
    pub preset: Option<String>,
    /// Vocabulary size.
    pub vocab_size: Option<usize>,
    /// Residual width.
    pub d_model: Option<usize>,
    /// Decoder layers.
    pub layers: Option<usize>,
    /// Query heads.
    pub heads: Option<usize>,
    /// Key/value heads.
    pub kv_heads: Option<usize>,
    /// Head width.
    pub head_dim: Option<usize>,
    /// MLP hidden width.
    pub mlp_dim: Option<usize>,
    /// Longest sequence.
    pub max_seq_len: Option<usize>,
    /// RoPE base.
    pub rope_theta: Option<f64>,
    /// RMSNorm epsilon.
    pub norm_eps: Option<f64>,
    /// Post-sub-layer norms (off in released v1 checkpoints).
    pub post_norms: Option<bool>,
    /// A reward model: a `score` head instead of the LM head (set by
    /// `train.objective = "reward"`; a `model.init` causal LM then gets its
    /// head from the seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_head: Option<bool>,
    /// `"random"` or `"hf:DIR"` (a Hugging Face checkpoint directory).
    #[serde(default = "default_init")]
    pub init: String,
    /// Seed of the random initialisation.
    #[serde(default)]
    pub seed: u64,
    /// Compute dtype: `"f32"`, or `"bf16"` (f32 parameters, bf16 matmuls).
    /// Unset: `"bf16"` on the CUDA backends, `"f32"` elsewhere
    /// ([`crate::gpu::default_dtype`]); the saved config records the choice.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Rematerialisation per layer: `"none"`, `"full"` or `"save_matmuls"`.
    #[serde(default = "default_remat")]
    pub remat: String,
    /// Run the decoder layers of the training step as one loop over their
    /// weights stacked per layer (`true`: the program holds one copy of a
    /// layer, so compiling it does not grow with the layers), or unrolled,
    /// one copy per layer (`false`). Unset: scanned on TPU and GPU,
    /// unrolled on the CPU plugin (where the loop compiles and runs
    /// slower). Parameters, checkpoints and Hugging Face import/export
    /// stay per layer either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan_layers: Option<bool>,
}

fn default_init() -> String {
    "random".into()
}
fn default_dtype() -> String {
    "f32".into()
}
fn default_remat() -> String {
    "none".into()
}

/// `[optimizer]`: AdamW with decoupled weight decay (as `torch.optim.AdamW`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// Peak learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay (`p -= lr * wd * p`).
    pub weight_decay: f64,
    /// Whether norm scales are decayed.
    pub decay_norms: bool,
    /// Whether the embedding is decayed.
    pub decay_embedding: bool,
    /// `"constant"`, `"linear"` or `"cosine"` after warmup.
    pub schedule: String,
    /// Linear warmup from 0 over this many steps.
    pub warmup_steps: u64,
    /// Final learning rate of linear/cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this; 0 disables.
    pub clip_grad_norm: f64,
    /// Micro-batches per step (gradient accumulation).
    pub accumulation_steps: usize,
    /// Steps the schedule spans; unset: `train.steps`. Set it to stop a run
    /// early (and resume it later) on the schedule of a longer one.
    pub schedule_steps: Option<u64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            lr: 3e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_norms: true,
            decay_embedding: true,
            schedule: "cosine".into(),
            warmup_steps: 0,
            min_lr_ratio: 0.1,
            clip_grad_norm: 1.0,
            accumulation_steps: 1,
            schedule_steps: None,
        }
    }
}

impl OptimizerConfig {
    /// Whether weight decay applies to `spec` (norms and the embedding can be excluded).
    pub fn decays(&self, spec: &gemma::ParamSpec) -> bool {
        (self.decay_norms || !spec.is_norm()) && (self.decay_embedding || !spec.is_embedding())
    }
}

/// `[train]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps.
    pub steps: u64,
    /// What to optimise: `"lm"` (default), `"reward"`, `"dpo"` or `"rl"`.
    #[serde(default)]
    pub objective: crate::objective::Objective,
    /// Where metrics, the resolved config, the plot and the final model go.
    pub run_dir: PathBuf,
    /// Log every this many steps (and the last).
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Peak FLOP/s of one device for MFU; measured once at start if unset.
    #[serde(default)]
    pub peak_flops_per_device: Option<f64>,
    /// Export the final model as a Hugging Face directory `run_dir/final`.
    #[serde(default = "yes")]
    pub export_final: bool,
    /// Save a checkpoint every this many steps (and after the last); 0: never.
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Committed checkpoints kept in `run_dir/checkpoints` (oldest deleted
    /// first); 0 keeps all.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// `"auto"`: continue from the newest complete checkpoint in
    /// `run_dir/checkpoints` if there is one; `"none"`: start fresh (refused
    /// if `run_dir` holds checkpoints); otherwise a checkpoint directory.
    #[serde(default = "default_resume")]
    pub resume: String,
    /// Write TensorBoard event files to `run_dir/tensorboard` (a single
    /// process, or the coordinator of a multi-process job).
    #[serde(default = "yes")]
    pub tensorboard: bool,
    /// Launch each step before reading the previous one's metrics, so the
    /// host loads and transfers the next batch while the devices compute
    /// (`false`: one step at a time, for debugging). Steps before a
    /// checkpoint, profiled steps and process groups run one at a time.
    #[serde(default = "yes")]
    pub async_steps: bool,
    /// How a checkpoint copies the state off the devices. `"device"` (the
    /// default): copy it on each device first (one extra copy of the
    /// parameters and moments in device memory until it is read), launch
    /// the next step at once and read the copy to the host on the
    /// checkpoint thread. `"host"`: copy it to the host before the next
    /// step starts (no extra device memory; the step waits). Multi-process
    /// jobs (process groups, multi-host SPMD) always copy to the host.
    #[serde(default = "default_checkpoint_copy")]
    pub checkpoint_copy: String,
    /// `[first, last]`: profile these steps (0-based, inclusive, as in
    /// `metrics.jsonl`): host spans as a Chrome trace in
    /// `run_dir/profile/`, and an XLA device profile for TensorBoard's
    /// profile plugin where the PJRT plugin has a profiler. Empty: off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profile_steps: Vec<u64>,
}

fn default_keep() -> usize {
    3
}
fn default_checkpoint_copy() -> String {
    "device".into()
}
fn default_resume() -> String {
    "auto".into()
}

fn default_log_every() -> u64 {
    10
}
fn yes() -> bool {
    true
}

/// `[mesh]`: axis sizes (`-1` = the rest), rule overrides, torus placement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    /// Data-parallel size.
    pub data: i64,
    /// FSDP (ZeRO-3) size.
    pub fsdp: i64,
    /// Tensor-parallel size.
    pub tensor: i64,
    /// Logical axis -> mesh axes overrides, e.g. `embed = []`.
    pub rules: BTreeMap<String, Vec<String>>,
    /// Physical dimension the `tensor` axis runs along: `"x"` or `"y"`.
    pub tensor_along: String,
}

impl Default for MeshSection {
    fn default() -> Self {
        MeshSection {
            data: 1,
            fsdp: -1,
            tensor: 1,
            rules: BTreeMap::new(),
            tensor_along: "x".into(),
        }
    }
}

/// `[runtime]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// `cpu`, `cuda`, `cuda12`, `cuda13` or `tpu`.
    pub backend: String,
    /// Devices of the mesh. 0 (the default): every device the job has,
    /// taken when it starts: all chips of a TPU slice or pod (every host's
    /// together), all GPUs of every node, one CPU device; `meshtrain plan`
    /// takes the chips of `--topology` x `--slices`. On CPU a count is the
    /// plugin's `cpu_device_count`.
    pub device_count: usize,
    /// A plugin `.so` instead of the pinned one.
    pub plugin: Option<PathBuf>,
    /// XLA options for compiling the step (`CompileOptionsProto`'s
    /// `env_option_overrides`), e.g. `xla_cpu_enable_fast_math = true`.
    pub xla_options: BTreeMap<String, toml::Value>,
    /// CPU only: split the client's devices into this many emulated hosts
    /// (consecutive devices each), each running the per-host path of a pod
    /// job (its own batch rows, buffers, checkpoint part and restore
    /// reads); they are combined only when the step executes. 1: off.
    pub emulate_hosts: usize,
    /// GPU: fraction of each GPU's memory XLA's allocator may use
    /// (the CUDA client's `memory_fraction`), in (0, 1].
    pub gpu_memory_fraction: f64,
    /// GPU: reserve that memory when the client starts (`preallocate`);
    /// false: allocate as needed (slower, but the GPU can be shared).
    pub gpu_preallocate: bool,
    /// Deterministic reductions and scatters (GPU: `xla_gpu_deterministic_ops`),
    /// for parity runs; slower. The CPU backend is deterministic already.
    pub deterministic: bool,
    /// Precision of f32 matmuls: `"default"` (the compiler's choice: TF32
    /// tensor cores on NVIDIA Ampere and newer) or `"highest"` (full f32, no
    /// TF32; for parity runs). bf16 matmuls are unaffected.
    pub matmul_precision: String,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            backend: "cpu".into(),
            device_count: 0,
            plugin: None,
            xla_options: BTreeMap::new(),
            emulate_hosts: 1,
            gpu_memory_fraction: 0.9,
            gpu_preallocate: true,
            deterministic: false,
            matmul_precision: "default".into(),
        }
    }
}

impl RuntimeConfig {
    /// The XLA options the step is compiled with: the config's, plus the
    /// defaults measured to be faster here. On CPU in f32, XLA's YNNPACK dot
    /// fusions (`xla_cpu_experimental_ynn_fusion_type = "LIBRARY_FUSION_TYPE_DOT"`) made the
    /// bench step ~15% faster; in bf16 they made it ~85% slower, so bf16
    /// keeps XLA's own dots. On the CUDA backends: [`crate::gpu::xla_options`].
    pub fn xla_options(&self, compute: hlo::DType) -> Result<Vec<(String, pjrt::XlaOption)>> {
        let mut out: Vec<(String, pjrt::XlaOption)> = Vec::new();
        for (k, v) in &self.xla_options {
            let o = match v {
                toml::Value::String(s) => pjrt::XlaOption::Str(s.clone()),
                toml::Value::Boolean(b) => pjrt::XlaOption::Bool(*b),
                toml::Value::Integer(i) => pjrt::XlaOption::Int(*i),
                toml::Value::Float(f) => pjrt::XlaOption::Double(*f),
                other => {
                    return Err(Error::config(
                        "runtime",
                        format!("runtime.xla_options.{k}"),
                        format!("{other}: expected a string, boolean, integer or float"),
                    ));
                }
            };
            out.push((k.clone(), o));
        }
        let ynn = "xla_cpu_experimental_ynn_fusion_type";
        if self.backend == "cpu"
            && compute == hlo::DType::F32
            && !self.xla_options.contains_key(ynn)
        {
            out.push((
                ynn.into(),
                pjrt::XlaOption::Str("LIBRARY_FUSION_TYPE_DOT".into()),
            ));
        }
        if crate::gpu::is_cuda(&self.backend) {
            out.extend(crate::gpu::xla_options(self));
        }
        Ok(out)
    }

    /// The precision f32 matmuls are emitted with (`matmul_precision`).
    pub fn dot_precision(&self) -> Result<hlo::DotPrecision> {
        match self.matmul_precision.as_str() {
            "default" => Ok(hlo::DotPrecision::Default),
            "highest" => Ok(hlo::DotPrecision::Highest),
            other => Err(Error::config(
                "runtime",
                "runtime.matmul_precision",
                format!("{other:?}: expected \"default\" or \"highest\""),
            )),
        }
    }
}

/// The smoke config that ships inside the binary (`configs/smoke.toml`).
pub const SMOKE_TOML: &str = include_str!("../../../configs/smoke.toml");

impl TrainConfig {
    /// Parses TOML text (named `source` in errors), applies `--set`
    /// overrides (`key.path=value`, each key at most once), and validates.
    pub fn from_toml(text: &str, source: &str, sets: &[String]) -> Result<TrainConfig> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|e| Error::config(source, "(file)", format!("not valid TOML: {e}")))?;
        let mut seen = std::collections::BTreeSet::new();
        for set in sets {
            let (key, value) = set
                .split_once('=')
                .ok_or_else(|| Error::config("--set", set, "expected key.path=value"))?;
            let key = key.trim();
            if !seen.insert(key.to_string()) {
                return Err(Error::config("--set", key, "set twice"));
            }
            apply_set(&mut table, key, parse_value(value.trim()))?;
        }
        fill_default_dtype(&mut table);
        crate::objective::fill_score_head(&mut table);
        let set_keys: Vec<&str> = seen.iter().map(String::as_str).collect();
        let origin = |key: &str| {
            let from_set = set_keys.iter().any(|s| {
                *s == key || key.starts_with(&format!("{s}.")) || s.starts_with(&format!("{key}."))
            });
            if from_set { "--set" } else { source }.to_string()
        };
        let de = toml::Value::Table(table);
        let cfg: TrainConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            // The message alone: toml's own text repeats the key on a second line.
            Error::config(origin(&key), key, plain_types(e.inner().message()))
        })?;
        // A value is blamed on where it came from: the file or `--set`.
        cfg.validate(source).map_err(|e| e.blamed_on(origin))?;
        Ok(cfg)
    }

    /// Reads a config file (or the embedded smoke config when `path` is
    /// `None`) with overrides.
    pub fn load(path: Option<&Path>, sets: &[String]) -> Result<TrainConfig> {
        match path {
            None => {
                // The embedded config's corpus and tokenizer ship inside the
                // binary too, unpacked into the cache so any directory works.
                let (corpus, tokenizer) = smoke_assets()?;
                let mut all = sets.to_vec();
                for (key, value) in [("data.path", corpus), ("data.tokenizer", tokenizer)] {
                    if !sets
                        .iter()
                        .any(|s| s.split('=').next().map(str::trim) == Some(key))
                    {
                        all.push(format!(
                            "{key}={}",
                            toml::Value::String(value.display().to_string())
                        ));
                    }
                }
                Self::from_toml(SMOKE_TOML, "configs/smoke.toml (embedded)", &all)
            }
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io("reading", p, e))?;
                Self::from_toml(&text, &p.display().to_string(), sets)
            }
        }
    }

    /// Rows of each micro-batch one of `processes` data-parallel
    /// processes computes; an error if they do not split evenly.
    pub fn rows_per_process(&self, processes: usize) -> Result<usize> {
        let rows = crate::rl::step_rows(self) / self.optimizer.accumulation_steps;
        if processes == 0 || !rows.is_multiple_of(processes) {
            return Err(Error::config(
                "data",
                "data.batch_size",
                format!(
                    "{rows} rows per micro-batch (data.batch_size / optimizer.accumulation_steps) \
                     do not split over {processes} processes"
                ),
            ));
        }
        Ok(rows / processes)
    }

    /// The resolved config as TOML (saved beside the metrics).
    pub fn to_toml(&self) -> String {
        // invariant: every field is a TOML value.
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// Checks every value that does not need a device or the data.
    pub fn validate(&self, source: &str) -> Result<()> {
        self.check(source, "runtime.device_count")
    }

    /// [`TrainConfig::validate`], naming where the device count came from.
    pub(crate) fn check(&self, source: &str, devices_from: &str) -> Result<()> {
        let bad = |key: &str, msg: String| Err(Error::config(source, key, msg));
        let model = self.model.resolve()?;
        crate::objective::check(self, &model, source)?;
        let o = &self.optimizer;
        if !(o.lr > 0.0 && o.lr.is_finite()) {
            return bad(
                "optimizer.lr",
                format!("{} must be a positive number", o.lr),
            );
        }
        for (k, v) in [("optimizer.beta1", o.beta1), ("optimizer.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return bad(k, format!("{v} must be in [0, 1)"));
            }
        }
        if o.eps <= 0.0 {
            return bad("optimizer.eps", format!("{} must be positive", o.eps));
        }
        if o.weight_decay < 0.0 || o.clip_grad_norm < 0.0 {
            return bad(
                "optimizer",
                "weight_decay and clip_grad_norm must be >= 0".into(),
            );
        }
        if !(0.0..=1.0).contains(&o.min_lr_ratio) {
            return bad(
                "optimizer.min_lr_ratio",
                format!("{} must be in [0, 1]", o.min_lr_ratio),
            );
        }
        if !matches!(o.schedule.as_str(), "constant" | "linear" | "cosine") {
            return bad(
                "optimizer.schedule",
                format!(
                    "{:?}: expected \"constant\", \"linear\" or \"cosine\"",
                    o.schedule
                ),
            );
        }
        if o.accumulation_steps == 0 || !self.data.batch_size.is_multiple_of(o.accumulation_steps) {
            return bad(
                "optimizer.accumulation_steps",
                format!(
                    "{} must be at least 1 and divide data.batch_size = {}",
                    o.accumulation_steps, self.data.batch_size
                ),
            );
        }
        if let Some(n) = o.schedule_steps
            && n < self.train.steps
        {
            return bad(
                "optimizer.schedule_steps",
                format!("{n} is less than train.steps = {}", self.train.steps),
            );
        }
        let c = &self.coordinator;
        for (key, v) in [
            ("coordinator.heartbeat_timeout_s", c.heartbeat_timeout_s),
            ("coordinator.heartbeat_interval_s", c.heartbeat_interval_s),
            ("coordinator.barrier_timeout_s", c.barrier_timeout_s),
            (
                "coordinator.reconnect_backoff_max_s",
                c.reconnect_backoff_max_s,
            ),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return bad(key, format!("{v}: expected a positive number of seconds"));
            }
        }
        if !(c.reconnect_timeout_s >= 0.0 && c.reconnect_timeout_s.is_finite()) {
            return bad(
                "coordinator.reconnect_timeout_s",
                format!(
                    "{}: expected a number of seconds, 0 or more",
                    c.reconnect_timeout_s
                ),
            );
        }
        if c.heartbeat_interval_s >= c.heartbeat_timeout_s {
            return bad(
                "coordinator.heartbeat_interval_s",
                format!(
                    "{} must be below coordinator.heartbeat_timeout_s = {}",
                    c.heartbeat_interval_s, c.heartbeat_timeout_s
                ),
            );
        }
        if c.tls_cert.is_some() != c.tls_key.is_some() {
            return bad(
                "coordinator.tls_cert",
                "tls_cert and tls_key go together".into(),
            );
        }
        if self.train.resume.is_empty() {
            return bad(
                "train.resume",
                "expected \"auto\", \"none\" or a checkpoint directory".into(),
            );
        }
        if self.train.steps == 0 || self.train.log_every == 0 {
            return bad(
                "train.steps",
                "train.steps and train.log_every must be at least 1".into(),
            );
        }
        if !matches!(self.train.checkpoint_copy.as_str(), "device" | "host") {
            return bad(
                "train.checkpoint_copy",
                format!(
                    "{:?}: expected \"device\" or \"host\"",
                    self.train.checkpoint_copy
                ),
            );
        }
        let profile_ok = match self.train.profile_steps.as_slice() {
            [] => true,
            [first, last] => first <= last && *last < self.train.steps,
            _ => false,
        };
        if !profile_ok {
            return bad(
                "train.profile_steps",
                format!(
                    "{:?}: expected [first, last], 0-based steps with first <= last < train.steps = {}",
                    self.train.profile_steps, self.train.steps
                ),
            );
        }
        if self.data.seq_len > model.max_seq_len {
            return bad(
                "data.seq_len",
                format!(
                    "{} exceeds model.max_seq_len = {}",
                    self.data.seq_len, model.max_seq_len
                ),
            );
        }
        // Unset (0), the device count is known when the job starts (see
        // `with_device_count`), which validates again with it.
        let devices = self.runtime.device_count;
        let hosts = self.runtime.emulate_hosts;
        if hosts == 0 || (devices > 0 && !devices.is_multiple_of(hosts)) {
            return bad(
                "runtime.emulate_hosts",
                match devices {
                    0 => format!("{hosts}: expected a positive divisor of runtime.device_count"),
                    n => format!(
                        "{hosts}: expected a positive divisor of runtime.device_count = {n}"
                    ),
                },
            );
        }
        if hosts > 1 && self.runtime.backend != "cpu" {
            return bad(
                "runtime.emulate_hosts",
                format!(
                    "{hosts} with backend {:?}: hosts are emulated on the CPU plugin only",
                    self.runtime.backend
                ),
            );
        }
        if hosts > 1 && self.train.export_final && self.train.checkpoint_every == 0 {
            return bad(
                "train.export_final",
                "with several hosts the final model is exported from the final checkpoint: \
                 set train.checkpoint_every (or train.export_final = false)"
                    .into(),
            );
        }
        let fraction = self.runtime.gpu_memory_fraction;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return bad(
                "runtime.gpu_memory_fraction",
                format!("{fraction}: expected a fraction in (0, 1]"),
            );
        }
        self.runtime.dot_precision()?;
        if !matches!(self.mesh.tensor_along.as_str(), "x" | "y") {
            return bad(
                "mesh.tensor_along",
                format!("{:?}: expected \"x\" or \"y\"", self.mesh.tensor_along),
            );
        }
        let mesh = if devices > 0 {
            self.mesh_over(devices_from)?
        } else {
            // The axes given so far (`-1` as 1): what must divide over them.
            let m = self.mesh_config();
            let given = [m.data, m.fsdp, m.tensor]
                .iter()
                .filter(|&&v| v > 0)
                .product();
            m.resolve(given)?
        };
        mesh.check_divides("model.heads", model.heads as i64, &["tensor"])?;
        let micro = (self.data.batch_size / o.accumulation_steps) as i64;
        mesh.check_divides(
            "data.batch_size / optimizer.accumulation_steps",
            micro,
            &["data", "fsdp"],
        )?;
        mesh::Rules::with_overrides(&self.mesh.rules)?;
        let compute = self.compute_options()?;
        self.runtime.xla_options(compute.dtype)?;
        Ok(())
    }

    /// The mesh over `runtime.device_count` devices (an error while the
    /// count is unset: see [`TrainConfig::with_device_count`]).
    pub fn resolved_mesh(&self) -> Result<mesh::Mesh> {
        self.mesh_over("runtime.device_count")
    }

    fn mesh_over(&self, devices_from: &str) -> Result<mesh::Mesh> {
        let devices = self.runtime.device_count;
        if devices == 0 {
            return Err(Error::config(
                "runtime",
                "runtime.device_count",
                "unset: the job's device count is known once the plugin (or, for \
                 `meshtrain plan`, the topology) is open",
            ));
        }
        self.mesh_config()
            .resolve(devices as i64)
            .map_err(|e| match e {
                mesh::Error::Product {
                    data,
                    fsdp,
                    tensor,
                    product,
                    devices,
                } => Error::config(
                    "mesh",
                    "mesh",
                    format!(
                        "data={data} x fsdp={fsdp} x tensor={tensor} = {product} does not equal \
                         the {devices} devices of {devices_from}; set one axis to -1 to take \
                         the devices the others leave"
                    ),
                ),
                e => e.into(),
            })
    }

    fn mesh_config(&self) -> mesh::MeshConfig {
        mesh::MeshConfig {
            data: self.mesh.data,
            fsdp: self.mesh.fsdp,
            tensor: self.mesh.tensor,
        }
    }

    /// The physical dimension the `tensor` axis runs along.
    pub fn tensor_along(&self) -> mesh::TorusAxis {
        if self.mesh.tensor_along == "y" {
            mesh::TorusAxis::Y
        } else {
            mesh::TorusAxis::X
        }
    }

    /// How the parameters and moments are stored on the devices and in
    /// checkpoints: stacked over the layers when the layers are scanned
    /// (nothing in the step then grows with depth), per layer otherwise.
    /// RL keeps them per layer: its sampler reads the policy's state as
    /// generation weights, which are per layer.
    pub fn state_layout(&self) -> gemma::Layout {
        if self.scan_layers() && self.train.objective != crate::objective::Objective::Rl {
            gemma::Layout::Stacked
        } else {
            gemma::Layout::PerLayer
        }
    }

    /// Compute dtype and remat policy.
    pub fn compute_options(&self) -> Result<gemma::ComputeOptions> {
        let dtype = match self.model.dtype.as_str() {
            "f32" => hlo::DType::F32,
            "bf16" => hlo::DType::BF16,
            other => {
                return Err(Error::config(
                    "model",
                    "model.dtype",
                    format!("{other:?}: expected \"f32\" or \"bf16\""),
                ));
            }
        };
        let remat = match self.model.remat.as_str() {
            "none" => hlo::RematPolicy::None,
            "full" => hlo::RematPolicy::Full,
            "save_matmuls" => hlo::RematPolicy::SaveMatmuls,
            other => {
                return Err(Error::config(
                    "model",
                    "model.remat",
                    format!("{other:?}: expected \"none\", \"full\" or \"save_matmuls\""),
                ));
            }
        };
        Ok(gemma::ComputeOptions {
            dtype,
            remat,
            matmuls: gemma::Matmuls::Compute,
            scan_layers: self.scan_layers(),
        })
    }
}

impl TrainConfig {
    /// Whether the training step scans its layers: `model.scan_layers`, or
    /// unset, on every backend but the CPU plugin.
    pub fn scan_layers(&self) -> bool {
        self.model
            .scan_layers
            .unwrap_or(self.runtime.backend != "cpu")
    }
}

impl ModelConfig {
    /// The model shape: the preset (or the HF checkpoint's config) with the
    /// explicit fields applied, validated.
    pub fn resolve(&self) -> Result<GemmaConfig> {
        let mut c = match (&self.preset, self.init.strip_prefix("hf:")) {
            (Some(p), _) => GemmaConfig::preset(p)?,
            (None, Some(dir)) => gemma::hf::load_config(&hf_dir(dir)?)?,
            (None, None) => {
                return Err(Error::config(
                    "model",
                    "model.preset",
                    "missing: give a preset (\"tiny\", \"gemma-2b\", \"gemma-7b\") and override shape fields, or init = \"hf:DIR\"",
                ));
            }
        };
        if self.init != "random" && !self.init.starts_with("hf:") {
            return Err(Error::config(
                "model",
                "model.init",
                format!("{:?}: expected \"random\" or \"hf:DIR\"", self.init),
            ));
        }
        macro_rules! apply {
            ($($f:ident),*) => { $(if let Some(v) = self.$f { c.$f = v; })* };
        }
        apply!(
            vocab_size,
            d_model,
            layers,
            heads,
            kv_heads,
            head_dim,
            mlp_dim,
            max_seq_len,
            rope_theta,
            norm_eps,
            post_norms,
            score_head
        );
        c.validate()?;
        Ok(c)
    }
}

/// The directory of `model.init = "hf:DIR"`, if it is a Hugging Face
/// model directory.
pub(crate) fn hf_dir(dir: &str) -> Result<PathBuf> {
    let path = PathBuf::from(dir);
    if path.join("config.json").is_file() {
        return Ok(path);
    }
    Err(Error::config(
        "model",
        "model.init",
        format!(
            "\"hf:{dir}\": {dir} is not a Hugging Face model directory (no config.json); \
             expected one with config.json and *.safetensors, e.g. a run's final/"
        ),
    ))
}

/// Writes the smoke corpus and tokenizer into the cache (once).
fn smoke_assets() -> Result<(PathBuf, PathBuf)> {
    const CORPUS: &[u8] = include_bytes!("../../../configs/data/tinyshakespeare.txt");
    const TOKENIZER: &[u8] = include_bytes!("../../../configs/data/shakespeare-bpe8k.json");
    let dir = data::cache_dir().join("smoke");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let mut out = Vec::new();
    for (name, bytes) in [
        ("tinyshakespeare.txt", CORPUS),
        ("shakespeare-bpe8k.json", TOKENIZER),
    ] {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            let tmp = path.with_extension("partial");
            std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
            std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming into", &path, e))?;
        }
        out.push(path);
    }
    // invariant: the loop above pushed both assets.
    let tokenizer = out.pop().expect("two assets");
    Ok((out.pop().expect("two assets"), tokenizer))
}

/// Sets `model.dtype` when the config leaves it out: bf16 on GPUs, f32
/// elsewhere ([`crate::gpu::default_dtype`]).
fn fill_default_dtype(table: &mut toml::Table) {
    let backend = table
        .get("runtime")
        .and_then(|r| r.get("backend"))
        .and_then(|b| b.as_str())
        .unwrap_or("cpu")
        .to_string();
    if let Some(model) = table.get_mut("model").and_then(|m| m.as_table_mut())
        && !model.contains_key("dtype")
    {
        let dtype = crate::gpu::default_dtype(&backend);
        model.insert("dtype".into(), toml::Value::String(dtype.into()));
    }
}

/// A deserializer message in words: Rust's integer and float type names
/// become what a config value must be.
fn plain_types(message: &str) -> String {
    let mut out = message.trim().to_string();
    for (rust, plain) in [
        ("u64", "a whole number >= 0"),
        ("usize", "a whole number >= 0"),
        ("u32", "a whole number >= 0"),
        ("i64", "a whole number"),
        ("f64", "a number"),
    ] {
        out = out.replace(&format!("expected {rust}"), &format!("expected {plain}"));
    }
    out
}

/// A `--set` value: TOML if it parses (numbers, booleans, arrays, quoted
/// strings), else the bare text as a string.
fn parse_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

fn apply_set(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(Error::config("--set", key, "empty key segment"));
    }
    let mut t = table;
    for p in &parts[..parts.len() - 1] {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry.as_table_mut().ok_or_else(|| {
            Error::config("--set", key, format!("`{p}` is a value, not a section"))
        })?;
    }
    t.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}
