//! The training run, read top-down: set up the job and this host's view of
//! it ([`setup`]), run the steps ([`steps`]), finish ([`finish`]).
//!
//! A run is one of three kinds ([`Mode`]): a single process (which may
//! emulate several hosts, `runtime.emulate_hosts`); a CPU process group
//! that sums gradients through the coordinator; or one process per host of
//! a TPU or GPU pod, all running one SPMD program whose collectives XLA
//! moves itself.

mod files;
mod finish;
mod profile;
mod setup;
mod steps;

use std::path::PathBuf;

use pjrt::Client;

pub use files::{open_metrics, progress_bar, step_time_stats};

use crate::config::TrainConfig;
use crate::device::Placement;
use crate::{ProcessGroup, Result};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// `(step, loss)` of every step.
    pub losses: Vec<(u64, f32)>,
    /// Steps done before this run: those of the checkpoint it resumed
    /// (`train.steps` or more when there was nothing left to train).
    pub start_step: u64,
    /// Seconds to compile the step.
    pub compile_seconds: f64,
    /// Median seconds per step (after the first).
    pub median_step_seconds: f64,
    /// Where metrics, config, plot and the final model are.
    pub run_dir: PathBuf,
    /// Per-device peak bytes of the compiled step.
    pub peak_bytes_per_device: i64,
    /// The start-up sharding report.
    pub report: crate::report::ShardingReport,
    /// Checkpoint bytes each host of this process read when it resumed
    /// (empty for a fresh start).
    pub restore_bytes_per_host: Vec<u64>,
    /// Each host's batch rows (global row indices) of this process.
    pub rows_per_host: Vec<(usize, Vec<usize>)>,
}

/// How the processes of a run share the work.
#[derive(Clone, Copy)]
pub(crate) enum Mode<'g> {
    /// One process, every device its own (or emulating hosts).
    Single,
    /// CPU processes in data parallel: each runs the gradient program on
    /// its rows, the group sums gradients, each applies the update.
    Group(&'g dyn ProcessGroup),
    /// One process per host of one SPMD program over the global mesh: the
    /// group only agrees on checkpoints, collects metrics and watches for
    /// lost hosts.
    Spmd(&'g dyn ProcessGroup),
}

impl<'g> Mode<'g> {
    fn rank(&self) -> usize {
        match self {
            Mode::Single => 0,
            Mode::Group(g) | Mode::Spmd(g) => g.rank(),
        }
    }

    fn size(&self) -> usize {
        match self {
            Mode::Single => 1,
            Mode::Group(g) | Mode::Spmd(g) => g.size(),
        }
    }

    fn is_spmd(&self) -> bool {
        matches!(self, Mode::Spmd(_))
    }

    /// The group whose gradients are summed on the host (CPU only).
    fn group(&self) -> Option<&'g dyn ProcessGroup> {
        match self {
            Mode::Group(g) => Some(*g),
            _ => None,
        }
    }

    /// The group of a multi-process run.
    fn any_group(&self) -> Option<&'g dyn ProcessGroup> {
        match self {
            Mode::Single => None,
            Mode::Group(g) | Mode::Spmd(g) => Some(*g),
        }
    }

    fn describe(&self, at: &Placement) -> String {
        match self {
            Mode::Single if at.hosts.len() > 1 => {
                format!(" over {} emulated hosts", at.hosts.len())
            }
            Mode::Single => String::new(),
            Mode::Group(g) => format!(" x {} processes (this is {})", g.size(), g.rank()),
            Mode::Spmd(g) => format!(
                " over {} hosts (this is process {}, {} local devices)",
                g.size(),
                g.rank(),
                at.local_parts().count()
            ),
        }
    }
}

/// Runs the training job: from scratch, or from the checkpoint
/// `train.resume` names, saving checkpoints as `train.checkpoint_every` asks.
pub fn train(cfg: &TrainConfig, show_progress: bool) -> Result<RunSummary> {
    run(cfg, show_progress, Mode::Single, None)
}

/// Runs this process's part of a CPU data-parallel job over `group`: the
/// same config and global batches everywhere, gradients of this process's
/// rows summed over the group, the same update applied by all. `run_dir`
/// must be shared by the processes: process 0 writes the run's files and
/// the checkpoint tensors, every process writes its checkpoint part, and
/// metrics go to the group (its coordinator writes `metrics.jsonl`).
pub fn train_in_group(
    cfg: &TrainConfig,
    show_progress: bool,
    group: &dyn ProcessGroup,
) -> Result<RunSummary> {
    if cfg.runtime.backend != "cpu" {
        return Err(crate::Error::config(
            "runtime",
            "runtime.backend",
            format!(
                "{:?}: the gradient exchange through the coordinator is for CPU processes only; \
                 a TPU or GPU job runs one SPMD program over every host (train_on_pod), whose \
                 collectives XLA moves over ICI, DCN or NCCL",
                cfg.runtime.backend
            ),
        ));
    }
    run(cfg, show_progress, Mode::Group(group), None)
}

/// Runs this host's part of one SPMD program over a pod (one process per
/// host): `client` is the plugin's multi-process client, brought up with
/// the job's key-value store, whose global devices span every host. This
/// host creates buffers on its own devices only, loads only its rows of
/// each global batch, and writes and reads only its own checkpoint boxes;
/// XLA's collectives move every tensor between hosts. `group` agrees on
/// checkpoints, collects metrics (process 0's files) and watches the hosts.
pub fn train_on_pod(
    cfg: &TrainConfig,
    show_progress: bool,
    client: Client,
    group: &dyn ProcessGroup,
) -> Result<RunSummary> {
    run(cfg, show_progress, Mode::Spmd(group), Some(client))
}

fn run(
    cfg: &TrainConfig,
    show_progress: bool,
    mode: Mode,
    client: Option<Client>,
) -> Result<RunSummary> {
    let mut job = setup::Job::new(cfg, show_progress, mode, client)?;
    let done = steps::run_steps(&mut job, show_progress)?;
    finish::finish(&job, &done)?;
    Ok(RunSummary {
        losses: done.losses,
        start_step: job.start,
        compile_seconds: job.compile_seconds,
        median_step_seconds: done.median_step_seconds,
        run_dir: job.run_dir.clone(),
        peak_bytes_per_device: job.report.memory.peak_bytes,
        report: job.report,
        restore_bytes_per_host: job.restore_bytes,
        rows_per_host: job.feed.iter().map(|f| (f.host, f.rows.clone())).collect(),
    })
}
