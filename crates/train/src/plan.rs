//! Planning a pod job on a machine without the pod: build the exact step
//! program a training run would build, compile it with libtpu for a TPU
//! topology (deviceless), and report whether it fits, what it costs and
//! what bounds the step time.
//!
//! Chip figures (Google Cloud TPU documentation, "TPU v5e", "TPU v5p",
//! "TPU v6e" system-architecture pages): peak bf16 FLOP/s per chip, HBM per
//! chip, and inter-chip interconnect bandwidth per chip.

use std::time::Instant;

use pjrt::{CompileOptions, Error as PjrtError, OptionValue, Plugin, Topology};

use crate::config::TrainConfig;
use crate::report::{Collective, ShardingReport};
use crate::step::build_for;
use crate::{Error, Result, mfu};

/// A TPU generation as planning needs it.
#[derive(Clone, Copy, Debug)]
pub struct Chip {
    /// Name in topology strings (`v5e`).
    pub name: &'static str,
    /// Peak dense bf16 FLOP/s of one chip.
    pub peak_bf16_flops: f64,
    /// HBM of one chip in bytes (the compiler's limit, when libtpu reports
    /// one, is used instead).
    pub hbm_bytes: u64,
    /// Inter-chip interconnect bandwidth of one chip, bytes/s.
    pub ici_bytes_per_s: f64,
    /// Slice shapes that exist as products.
    pub shapes: &'static [&'static str],
}

/// The chips meshtrain can plan for.
pub const CHIPS: &[Chip] = &[
    Chip {
        name: "v5e",
        peak_bf16_flops: 197e12,
        hbm_bytes: 16 << 30,
        ici_bytes_per_s: 1600e9 / 8.0,
        shapes: &["1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"],
    },
    Chip {
        name: "v6e",
        peak_bf16_flops: 918e12,
        hbm_bytes: 32 << 30,
        ici_bytes_per_s: 3584e9 / 8.0,
        shapes: &["1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"],
    },
    Chip {
        name: "v5p",
        peak_bf16_flops: 459e12,
        hbm_bytes: 95 << 30,
        ici_bytes_per_s: 4800e9 / 8.0,
        shapes: &[
            "2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8", "8x8x16",
            "8x16x16",
        ],
    },
];

/// Parses `v5e:16x16` and refuses shapes that are not products.
pub fn parse_topology(name: &str) -> Result<(&'static Chip, String)> {
    let bad = |msg: String| Error::config("--topology", name, msg);
    let (generation, shape) = name
        .split_once(':')
        .ok_or_else(|| bad("expected GENERATION:SHAPE, e.g. v5e:16x16".into()))?;
    let chip = CHIPS.iter().find(|c| c.name == generation).ok_or_else(|| {
        bad(format!(
            "unknown TPU generation {generation:?}; expected one of v5e, v6e, v5p"
        ))
    })?;
    if !chip.shapes.contains(&shape) {
        return Err(bad(format!(
            "{generation} slices come as {}; {shape} is not one",
            chip.shapes.join(", ")
        )));
    }
    Ok((chip, shape.to_string()))
}

/// What `meshtrain plan` reports.
#[derive(Clone, Debug)]
pub struct PlanReport {
    /// Topology name.
    pub topology: String,
    /// Chips.
    pub devices: usize,
    /// Hosts (processes).
    pub hosts: usize,
    /// Whether the step fits in HBM.
    pub fits: bool,
    /// Per-chip peak bytes (needed bytes when it does not fit).
    pub per_device_peak_bytes: u64,
    /// HBM per chip the compiler plans against.
    pub hbm_bytes_per_device: u64,
    /// Model FLOPs of one step (PaLM's 6N + 12LHQT per token).
    pub flops_per_step: f64,
    /// Compile seconds.
    pub compile_seconds: f64,
    /// Sharding and memory details (when it compiled).
    pub sharding: Option<ShardingReport>,
    /// Compute-bound step time at peak, seconds.
    pub compute_seconds: f64,
    /// Time of the step's collectives at ICI bandwidth, seconds (each
    /// collective counted as often as the loops around it iterate).
    pub collective_seconds: f64,
    /// The compiler's message when it does not fit.
    pub oom: Option<String>,
    /// The chip.
    pub chip: &'static str,
    /// Slices.
    pub slices: usize,
    /// Bytes each chip sends across slices per step: the ring all-reduce of
    /// its gradient shard over the slices, `2 (S - 1) / S` times the f32
    /// gradient bytes it holds (0 for one slice).
    pub cross_slice_bytes_per_chip: u64,
}

/// Compiles the training step of `cfg` for `slices` copies of `topology`
/// without a TPU, on all their chips (`runtime.device_count` unset, or
/// equal to their number). With several slices the mesh's `data` axis (a
/// multiple of `slices`; see [`TrainConfig::place_slices`]) spans them:
/// gradients are reduced across slices once per step.
pub fn plan(cfg: &TrainConfig, topology: &str, slices: usize) -> Result<PlanReport> {
    if slices == 0 {
        return Err(Error::config("--slices", "0", "at least 1"));
    }
    let (chip, topo) = open_topology(topology, slices)?;
    let devices = topo.devices()?;
    let n = devices.len();
    let hosts = devices
        .iter()
        .map(|d| d.info.process_index)
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    let hbm = devices
        .first()
        .and_then(|d| d.int("device_memory_bytes_limit"))
        .map_or(chip.hbm_bytes, |b| b as u64);

    let mut cfg = cfg.clone();
    cfg.runtime.backend = "tpu".into();
    let what = if slices > 1 {
        format!("{slices} slices of {topology}")
    } else {
        topology.to_string()
    };
    let given = cfg.runtime.device_count;
    if given != 0 && given != n {
        return Err(Error::config(
            "plan",
            "runtime.device_count",
            format!(
                "{given}, but there are {n} chips in {what}; leave runtime.device_count unset \
                 (or 0) to plan for all of them"
            ),
        ));
    }
    let cfg = cfg.with_device_count(n, &what, "plan")?;
    if slices > 1 && cfg.resolved_mesh()?.data % slices as i64 != 0 {
        return Err(Error::config(
            "plan",
            "mesh.data",
            format!(
                "{} must be a multiple of --slices {slices}: the data axis spans the slices",
                cfg.resolved_mesh()?.data
            ),
        ));
    }
    let (model, step_plan, step) = build_for(&cfg)?;
    // The device order training uses on the pod: by chip coordinates.
    let order = crate::host::JobLayout::new(&step_plan, &devices, cfg.tensor_along(), |d| {
        d.info.process_index.max(0) as usize
    })?
    .order;
    let options = CompileOptions {
        device_assignment: Some(vec![order.clone()]),
        ..CompileOptions::spmd(n as i64)
    };
    let flops_per_step = mfu::flops_per_token(&model, cfg.data.seq_len)
        * (cfg.data.batch_size * cfg.data.seq_len) as f64;
    let compute_seconds = flops_per_step / (n as f64 * chip.peak_bf16_flops);
    let t0 = Instant::now();
    let compiled = topo.compile(&step.program.to_mlir(), &options);
    let compile_seconds = t0.elapsed().as_secs_f64();
    let mut report = PlanReport {
        topology: topology.to_string(),
        devices: n,
        hosts,
        fits: false,
        per_device_peak_bytes: 0,
        hbm_bytes_per_device: hbm,
        flops_per_step,
        compile_seconds,
        sharding: None,
        compute_seconds,
        collective_seconds: 0.0,
        oom: None,
        chip: chip.name,
        slices,
        cross_slice_bytes_per_chip: 0,
    };
    match compiled {
        Ok(exe) => {
            let stats = exe.memory_stats()?;
            let hlo = exe.optimized_hlo().unwrap_or_default();
            let sharding = ShardingReport::new(&step_plan, &step.params, order, stats, &hlo);
            let bytes: u64 = sharding
                .collectives
                .iter()
                .map(|c: &Collective| c.bytes)
                .sum();
            report.collective_seconds = bytes as f64 / chip.ici_bytes_per_s;
            report.per_device_peak_bytes = stats
                .peak_bytes
                .max(stats.argument_bytes + stats.temp_bytes)
                as u64;
            report.fits = report.per_device_peak_bytes <= hbm;
            let s = slices as f64;
            report.cross_slice_bytes_per_chip =
                (2.0 * (s - 1.0) / s * sharding.param_bytes_per_device as f64) as u64;
            report.sharding = Some(sharding);
        }
        Err(PjrtError::Pjrt { message, .. }) if is_oom(&message) => {
            report.per_device_peak_bytes = needed_bytes(&message).unwrap_or(0);
            report.oom = Some(message);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(report)
}

/// libtpu's description of `slices` copies of `topology` (e.g.
/// `v5e:16x16`), with no TPU: every chip with its coordinates, slice and
/// owning host (process index), as a pod's processes see them.
pub fn open_topology(topology: &str, slices: usize) -> Result<(&'static Chip, Topology)> {
    let (chip, shape) = parse_topology(topology)?;
    let path = pjrt::install::resolve(pjrt::install::Backend::Tpu, None)?;
    let plugin = Plugin::load(path)?;
    let dims: Vec<i64> = shape
        .split('x')
        // invariant: parse_topology() accepted only the listed shapes, all numeric.
        .map(|d| d.parse().expect("listed shapes are numeric"))
        .collect();
    let torus = dims.iter().take(2).all(|&d| d >= 16);
    let wrap = if torus { vec![1, 1, 0] } else { vec![0, 0, 0] };
    let topo = Topology::new(
        &plugin,
        topology,
        &[
            ("chip_config_name", OptionValue::Str("default".into())),
            (
                "chips_per_host_bounds",
                OptionValue::Ints(host_bounds(&dims)),
            ),
            ("num_slices", OptionValue::Int(slices as i64)),
            ("wrap", OptionValue::Ints(wrap)),
        ],
    )?;
    Ok((chip, topo))
}

/// Chips per host: four (2x2) on multi-host slices; single-host products
/// (1x1, and the eight-chip 2x4) are one host.
fn host_bounds(dims: &[i64]) -> Vec<i64> {
    match dims {
        [1, 1] => vec![1, 1, 1],
        [2, 4] => vec![2, 4, 1],
        _ => vec![2, 2, 1],
    }
}

fn is_oom(message: &str) -> bool {
    message.contains("Ran out of memory")
        || message.contains("HbmOom")
        || message.contains("exceeds available HBM")
}

/// The bytes libtpu says the program needs: "Used 17.53G of 15.75G hbm".
fn needed_bytes(message: &str) -> Option<u64> {
    let used = message.split("Used ").nth(1)?;
    let number: String = used
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let value: f64 = number.parse().ok()?;
    let unit = used[number.len()..].chars().next()?;
    let scale = match unit {
        'K' => 1u64 << 10,
        'M' => 1 << 20,
        'G' => 1 << 30,
        'T' => 1 << 40,
        _ => 1,
    };
    Some((value * scale as f64) as u64)
}

impl PlanReport {
    /// The report as text.
    pub fn render(&self) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let mut s = format!(
            "topology {} x {} slice(s) ({} chips {}, {} hosts); step compiled in {:.1} s\n",
            self.topology, self.slices, self.devices, self.chip, self.hosts, self.compile_seconds
        );
        if self.slices > 1 {
            s += &format!(
                "across slices (data-center network): {:.1} MiB per chip per step ({:.2} GiB for the job), gradients reduced once per step\n",
                self.cross_slice_bytes_per_chip as f64 / (1u64 << 20) as f64,
                (self.cross_slice_bytes_per_chip * self.devices as u64) as f64
                    / (1u64 << 30) as f64
            );
        }
        if let Some(r) = &self.sharding {
            s += &r.render();
        }
        if self.fits {
            s += &format!(
                "fits: peak {:.2} GiB per chip of {:.2} GiB HBM\n",
                gib(self.per_device_peak_bytes),
                gib(self.hbm_bytes_per_device)
            );
        } else {
            s += &format!(
                "does not fit: needs {} GiB per chip, has {:.2} GiB; try more fsdp (mesh.fsdp), model.remat = \"full\", or a smaller per-device batch (data.batch_size)\n",
                if self.per_device_peak_bytes > 0 {
                    format!("{:.2}", gib(self.per_device_peak_bytes))
                } else {
                    // The compiler ran out of memory: it reports no peak.
                    format!("more than {:.2}", gib(self.hbm_bytes_per_device))
                },
                gib(self.hbm_bytes_per_device)
            );
        }
        let (lo, hi) = (
            self.compute_seconds.max(self.collective_seconds),
            self.compute_seconds + self.collective_seconds,
        );
        // Collectives in a loop of unknown trip count were counted once.
        let at_least = match &self.sharding {
            Some(r) if r.collectives.iter().any(|c| c.lower_bound) => "\u{2265}",
            _ => "",
        };
        s += &format!(
            "model FLOPs per step {:.3e}; at peak: compute {:.3} s, collectives {at_least}{:.3} s at ICI bandwidth; ideal step {:.3}-{:.3} s, MFU bound {:.0}%-{:.0}%\n",
            self.flops_per_step,
            self.compute_seconds,
            self.collective_seconds,
            lo,
            hi,
            100.0 * self.compute_seconds / hi.max(1e-12),
            100.0 * self.compute_seconds / lo.max(1e-12)
        );
        s
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "topology": self.topology,
            "devices": self.devices,
            "hosts": self.hosts,
            "fits": self.fits,
            "per_device_peak_bytes": self.per_device_peak_bytes,
            "hbm_bytes_per_device": self.hbm_bytes_per_device,
            "flops_per_step": self.flops_per_step,
            "compile_seconds": self.compile_seconds,
            "compute_seconds": self.compute_seconds,
            "collective_seconds": self.collective_seconds,
            "oom": self.oom,
            "slices": self.slices,
            "cross_slice_bytes_per_chip": self.cross_slice_bytes_per_chip,
            "sharding": self.sharding.as_ref().map(ShardingReport::to_json),
        })
    }
}
