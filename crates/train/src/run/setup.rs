//! Setting up a run and this host's view of it: the model and plan, the
//! checkpoint to resume, the client and which partitions are this
//! process's, the compiled step, the start-up report, the data rows this
//! host loads, and the state on its devices.

use std::path::PathBuf;
use std::time::Instant;

use pjrt::Client;

use super::Mode;
use super::files::write_file;
use crate::checkpoint::{self, Checkpoint};
use crate::config::TrainConfig;
use crate::device::{PerPartition, Placement};
use crate::exec::Stepper;
use crate::report::ShardingReport;
use crate::state::{self, DeviceState};
use crate::step::{Plan, Slot};
use crate::{Error, Result, mfu};

/// Everything the step loop needs, set up.
pub(super) struct Job<'g> {
    pub cfg: TrainConfig,
    pub model: gemma::GemmaConfig,
    pub plan: Plan,
    pub mode: Mode<'g>,
    /// Whether this process writes the run's files (process 0).
    pub lead: bool,
    pub run_dir: PathBuf,
    pub client: Client,
    pub at: Placement,
    pub stepper: Stepper<'g>,
    pub params: Vec<Slot>,
    pub state: PerPartition<DeviceState>,
    /// Steps done before this run (from the checkpoint).
    pub start: u64,
    /// Each host's data rows.
    pub feed: Vec<HostFeed>,
    pub compile_seconds: f64,
    pub report: ShardingReport,
    /// Peak FLOP/s of the whole job.
    pub peak_flops: f64,
    /// Checkpoint bytes each host of this process read on restore.
    pub restore_bytes: Vec<u64>,
    /// RL's sampler of the step's responses (`train.objective = "rl"`).
    pub rollout: Option<crate::rl::Rollout>,
}

/// The rows of the global batch one host loads, and their loader.
pub(super) struct HostFeed {
    pub host: usize,
    pub rows: Vec<usize>,
    pub loader: data::RowLoader,
}

impl<'g> Job<'g> {
    /// Sets the run up: nothing is trained yet.
    pub(super) fn new(
        cfg: &TrainConfig,
        show_progress: bool,
        mode: Mode<'g>,
        client: Option<Client>,
    ) -> Result<Job<'g>> {
        // The client first: an unset device count is every device it has.
        let client = match client {
            Some(c) => c,
            None => crate::make_client(cfg)?,
        };
        let what = format!("the {} plugin", client.platform_name());
        let cfg = &cfg.with_device_count(client.global_devices().len(), &what, "the job config")?;
        let (model, plan) = crate::step::model_and_plan(cfg)?;
        let lead = mode.rank() == 0;
        let run_dir = cfg.train.run_dir.clone();
        std::fs::create_dir_all(&run_dir).map_err(|e| Error::io("creating", &run_dir, e))?;
        // One process per host (and emulated hosts) verify what they read;
        // a single host reads every file, so verifies them all up front.
        let single_host = cfg.runtime.emulate_hosts <= 1 && !mode.is_spmd();
        let resume = find_resume(cfg, &model, &run_dir.join("checkpoints"), lead, single_host)?;
        let start = resume.as_ref().map_or(0, |c| c.step());
        if lead {
            write_file(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
        }
        let at = Placement::new(cfg, &client, &plan)?;
        let t0 = Instant::now();
        let (mut stepper, params) =
            Stepper::new(cfg, &client, &plan, &at.layout.order, mode.group())?;
        if stepper.frozen_count() > 0 {
            // The reference of DPO and RL: the policy at model.init, frozen
            // (also on resume); then RL's reward model.
            let init = crate::init_params(&model, &cfg.model.init, cfg.model.seed)?;
            let mut frozen = gemma::to_layout(&model, plan.layout(), init)?;
            if cfg.train.objective == crate::objective::Objective::Rl {
                frozen.extend(crate::rl::reward_params(cfg)?);
            }
            stepper.set_frozen(&client, &plan, &at, &frozen)?;
        }
        let compile_seconds = t0.elapsed().as_secs_f64();
        let stats = stepper.main().executable().memory_stats()?;
        eprintln!(
            "meshtrain: {} parameters, mesh data={} fsdp={} tensor={}{}, step compiled in {compile_seconds:.1} s, {:.1} MiB peak per device",
            model.num_params(),
            plan.mesh.data,
            plan.mesh.fsdp,
            plan.mesh.tensor,
            mode.describe(&at),
            stats.peak_bytes as f64 / (1 << 20) as f64
        );
        let report = ShardingReport::new(
            &plan,
            &params,
            at.layout.order.clone(),
            stats,
            &stepper.main().executable().optimized_hlo()?,
        );
        if show_progress {
            eprint!("{}", report.render());
        }
        if lead {
            write_file(&run_dir.join("sharding.txt"), report.render().as_bytes())?;
            // invariant: a JSON value always serializes.
            let json = serde_json::to_string_pretty(&report.to_json()).expect("JSON");
            write_file(&run_dir.join("sharding.json"), json.as_bytes())?;
        }
        let feed = open_feed(cfg, &model, &plan, &at, &stepper, &mode, resume.as_ref())?;
        let (state, restore_bytes) = match &resume {
            Some(c) => {
                let m = c.manifest.mesh;
                eprintln!(
                    "meshtrain: resuming from {} (step {start}, saved under mesh data={} fsdp={} tensor={})",
                    c.dir.display(),
                    m.data,
                    m.fsdp,
                    m.tensor
                );
                state::restore(c, &client, &plan, &at, &params)?
            }
            None => (
                state::initial(cfg, &client, &plan, &at, &params)?,
                Vec::new(),
            ),
        };
        let kind = client.devices().first().map_or("cpu", |d| d.kind.as_str());
        let compute = cfg.compute_options()?.dtype;
        let bf16 = compute == hlo::DType::BF16;
        let xla = cfg.runtime.xla_options(compute)?;
        let matmuls = match (bf16, cfg.runtime.dot_precision()?) {
            (true, _) => mfu::Matmuls::Bf16,
            (false, hlo::DotPrecision::Highest) => mfu::Matmuls::F32Highest,
            (false, _) => mfu::Matmuls::F32,
        };
        let peak_flops = mfu::job_peak_flops(
            kind,
            matmuls,
            plan.mesh.devices() as usize,
            mode.size(),
            cfg.train.peak_flops_per_device,
            || mfu::measure_peak_flops(&client, bf16, &xla),
        )?;
        let rollout = match cfg.train.objective {
            crate::objective::Objective::Rl => Some(crate::rl::Rollout::new(
                cfg, &model, &client, &plan, &at, &params,
            )?),
            _ => None,
        };
        Ok(Job {
            rollout,
            cfg: cfg.clone(),
            model,
            plan,
            mode,
            lead,
            run_dir,
            client,
            at,
            stepper,
            params,
            state,
            start,
            feed,
            compile_seconds,
            report,
            peak_flops,
            restore_bytes,
        })
    }
}

/// The data rows of each host this process runs, from the checkpoint's
/// row states when resuming. A process group's worker loads the whole
/// global batch (its step takes its share of every micro-batch).
fn open_feed(
    cfg: &TrainConfig,
    model: &gemma::GemmaConfig,
    plan: &Plan,
    at: &Placement,
    stepper: &Stepper,
    mode: &Mode,
    resume: Option<&Checkpoint>,
) -> Result<Vec<HostFeed>> {
    let saved = resume.map(|c| c.manifest.loader_rows.clone());
    if let Some(rows) = &saved
        && rows.len() != cfg.data.batch_size
    {
        return Err(Error::Checkpoint {
            // invariant: saved is Some only when resume is.
            path: resume.expect("saved").dir.clone(),
            message: format!(
                "holds the data position of {} batch rows, this run's data.batch_size is {}",
                rows.len(),
                cfg.data.batch_size
            ),
        });
    }
    let rl = cfg.train.objective == crate::objective::Objective::Rl;
    let hosts: Vec<(usize, Vec<usize>)> = match mode {
        Mode::Group(_) => vec![(0, (0..cfg.data.batch_size).collect())],
        // RL loads the step's prompts on its one host; their samples make
        // the step's rows.
        _ if rl => vec![(at.hosts[0], (0..cfg.data.batch_size).collect())],
        _ => at
            .hosts
            .iter()
            .map(|&h| (h, at.layout.batch_rows(plan, &stepper.batch_slots()[0], h)))
            .collect(),
    };
    hosts
        .into_iter()
        .enumerate()
        .map(|(i, (host, rows))| {
            let loader =
                data::RowLoader::new(&cfg.data, &rows, |r| saved.as_ref().map(|s| s[r].clone()))?;
            let info = loader.info();
            if i == 0 && info.truncated + info.dropped > 0 {
                eprintln!(
                    "meshtrain data: {} of {} conversations are longer than data.seq_len = {}: \
                     {} truncated, {} dropped (data.overflow = \"{}\")",
                    info.truncated + info.dropped,
                    info.documents,
                    cfg.data.seq_len,
                    info.truncated,
                    info.dropped,
                    cfg.data.overflow.name()
                );
            }
            if let Some(v) = loader.info().vocab_size
                && v > model.vocab_size
            {
                return Err(Error::config(
                    "data",
                    "data.tokenizer",
                    format!(
                        "its vocabulary has {v} pieces, model.vocab_size is {}",
                        model.vocab_size
                    ),
                ));
            }
            Ok(HostFeed { host, rows, loader })
        })
        .collect()
}

/// The checkpoint `train.resume` asks for, checked against the model. It
/// is opened by its manifest: each host verifies the files it reads.
fn find_resume(
    cfg: &TrainConfig,
    model: &gemma::GemmaConfig,
    root: &std::path::Path,
    lead: bool,
    every_file: bool,
) -> Result<Option<Checkpoint>> {
    let found = match cfg.train.resume.as_str() {
        "none" => {
            if let Some((step, dir)) = checkpoint::list(root)?.pop() {
                return Err(Error::config(
                    "train",
                    "train.resume",
                    format!(
                        "\"none\", but {} holds checkpoints (newest: step {step}); set train.resume = \"auto\" \
                         to continue that run, or choose another train.run_dir",
                        dir.parent().unwrap_or(root).display()
                    ),
                ));
            }
            None
        }
        "auto" => {
            if lead {
                checkpoint::remove_partials(root)?;
            }
            checkpoint::latest(root, every_file)?
        }
        dir if every_file => Some(Checkpoint::open(std::path::Path::new(dir))?),
        dir => Some(Checkpoint::open_manifest(std::path::Path::new(dir))?),
    };
    if let Some(c) = &found {
        let saved = c.config()?.model.resolve()?;
        if saved != *model {
            return Err(Error::Checkpoint {
                path: c.dir.clone(),
                message: format!(
                    "was saved for another model shape: {saved:?}; this run's [model] is {model:?}"
                ),
            });
        }
    }
    Ok(found)
}
