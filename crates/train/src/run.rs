//! The training loop: mesh -> build the step -> compile (report memory) ->
//! initialise -> loop over batches -> metrics, plot, final export.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use gemma::param_specs;

use crate::config::TrainConfig;
use crate::device::{Placement, make_client};
use crate::exec::Stepper;
use crate::group::GroupSaver;
use crate::step::Plan;
use crate::{Error, ProcessGroup, Result, checkpoint, mfu, state};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// `(step, loss)` of every step.
    pub losses: Vec<(u64, f32)>,
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
}

/// Runs the training job: from scratch, or from the checkpoint
/// `train.resume` names, saving checkpoints as `train.checkpoint_every` asks.
pub fn train(cfg: &TrainConfig, show_progress: bool) -> Result<RunSummary> {
    run(cfg, show_progress, None)
}

/// Runs this process's part of a data-parallel job over `group`: the same
/// config and global batches everywhere, gradients of this process's rows
/// summed over the group, the same update applied by all. `run_dir` must
/// be shared by the processes: process 0 writes the run's files and the
/// checkpoint tensors, every process writes its checkpoint part, and
/// metrics go to the group (its coordinator writes `metrics.jsonl`).
pub fn train_in_group(
    cfg: &TrainConfig,
    show_progress: bool,
    group: &dyn ProcessGroup,
) -> Result<RunSummary> {
    run(cfg, show_progress, Some(group))
}

fn run(
    cfg: &TrainConfig,
    show_progress: bool,
    group: Option<&dyn ProcessGroup>,
) -> Result<RunSummary> {
    let lead = group.is_none_or(|g| g.rank() == 0);
    let (model, plan) = model_and_plan(cfg)?;
    let run_dir = cfg.train.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io("creating", &run_dir, e))?;
    let ckpt_root = run_dir.join("checkpoints");
    let resume = find_resume(cfg, &model, &ckpt_root, lead)?;
    let start = resume.as_ref().map_or(0, |c| c.step());
    if lead {
        write_file(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;
    }

    let client = make_client(cfg)?;
    let loader_state = resume.as_ref().map(|c| c.manifest.loader.clone());
    let mut loader = data::Loader::new(&cfg.data, 0, 1, loader_state)?;
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
    let (at, order) = Placement::new(cfg, &client, &plan)?;
    let t0 = Instant::now();
    let (stepper, params) = Stepper::new(cfg, &client, &plan, &order, group)?;
    let compile_seconds = t0.elapsed().as_secs_f64();
    let stats = stepper.main().executable().memory_stats()?;
    eprintln!(
        "meshtrain: {} parameters, mesh data={} fsdp={} tensor={}{}, step compiled in {compile_seconds:.1} s, {:.1} MiB peak per device",
        model.num_params(),
        plan.mesh.data,
        plan.mesh.fsdp,
        plan.mesh.tensor,
        group.map_or(String::new(), |g| format!(
            " x {} processes (this is {})",
            g.size(),
            g.rank()
        )),
        stats.peak_bytes as f64 / (1 << 20) as f64
    );
    let report = crate::report::ShardingReport::new(
        &plan,
        &params,
        order.clone(),
        stats,
        &stepper.main().executable().optimized_hlo()?,
    );
    if show_progress {
        eprint!("{}", report.render());
    }
    if lead {
        write_file(&run_dir.join("sharding.txt"), report.render().as_bytes())?;
        write_file(
            &run_dir.join("sharding.json"),
            serde_json::to_string_pretty(&report.to_json())
                .expect("JSON")
                .as_bytes(),
        )?;
    }

    let mut state = match &resume {
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
        None => state::initial(cfg, &client, &plan, &at, &params)?,
    };
    drop(resume);
    if start >= cfg.train.steps {
        eprintln!(
            "meshtrain: {} already holds step {start} of train.steps = {}: nothing to train \
             (raise train.steps to continue, or use another train.run_dir to start over)",
            run_dir.display(),
            cfg.train.steps
        );
    }
    let n = plan.mesh.devices();
    let peak = match cfg.train.peak_flops_per_device {
        Some(p) => p * n as f64,
        // Virtual CPU devices share the host's cores: the host is the peak.
        None => mfu::measure_peak_flops(&client, cfg.compute_options()?.dtype == hlo::DType::BF16)?,
    } * group.map_or(1, |g| g.size()) as f64;
    let tokens_per_step = (cfg.data.batch_size * cfg.data.seq_len) as f64;
    let flops_per_step = mfu::flops_per_token(&model, cfg.data.seq_len) * tokens_per_step;

    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = match group {
        None => Some(open_metrics(&metrics_path, start)?),
        Some(_) => None,
    };
    let mut writer = checkpoint::Writer::new(ckpt_root.clone(), cfg.train.keep_checkpoints);
    let mut group_saver =
        group.map(|g| GroupSaver::new(g, ckpt_root.clone(), cfg.train.keep_checkpoints));
    let bar = progress_bar(cfg.train.steps, show_progress);
    bar.set_position(start.min(cfg.train.steps));
    let mut losses = Vec::new();
    let mut times = Vec::new();
    for s in start..cfg.train.steps {
        if let Some(g) = group {
            g.check()?;
        }
        let t = Instant::now();
        let batch = loader.next_batch()?;
        if let Some(&bad) = batch
            .tokens
            .iter()
            .find(|&&id| id < 0 || id as usize >= model.vocab_size)
        {
            return Err(Error::config(
                "data",
                "data.path",
                format!(
                    "step {s}: token id {bad} is outside the vocabulary (model.vocab_size = {})",
                    model.vocab_size
                ),
            ));
        }
        let out = stepper.run(&client, &plan, &at, &params, &mut state, &batch, s)?;
        let dt = t.elapsed().as_secs_f64();
        if !out.loss.is_finite() {
            return Err(Error::Diverged {
                step: s,
                loss: out.loss,
            });
        }
        losses.push((s, out.loss));
        if s > start || cfg.train.steps == start + 1 {
            times.push(dt);
        }
        if s % cfg.train.log_every == 0 || s + 1 == cfg.train.steps {
            let line = serde_json::json!({
                "step": s,
                "loss": out.loss,
                "learning_rate": out.lr,
                "grad_norm": out.grad_norm,
                "tokens_per_second": tokens_per_step / dt,
                "step_time_s": dt,
                "mfu": flops_per_step / dt / peak,
                "tokens_by_source": loader.tokens_by_source(),
            });
            match (&mut metrics, group) {
                (Some(f), _) => {
                    writeln!(f, "{line}").map_err(|e| Error::io("writing", &metrics_path, e))?
                }
                (None, Some(g)) => g.report(s, &line)?,
                (None, None) => unreachable!("a single process writes metrics"),
            }
        }
        if let Some(saver) = &mut group_saver {
            saver.after_step(s)?;
        }
        let every = cfg.train.checkpoint_every;
        if every > 0 && ((s + 1) % every == 0 || s + 1 == cfg.train.steps) {
            if let Some(f) = &mut metrics {
                // Metrics up to the checkpoint are durable before it can commit.
                f.flush()
                    .map_err(|e| Error::io("writing", &metrics_path, e))?;
            }
            let snap = state::snapshot(cfg, &plan, &params, &state, loader.state())?;
            match &mut group_saver {
                None => writer.start(snap)?,
                Some(saver) => saver.start(s, snap)?,
            }
        }
        if let Some(saved) = writer.poll()? {
            bar.suspend(|| eprintln!("meshtrain: checkpoint step {saved} committed"));
        }
        bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s",
            out.loss,
            tokens_per_step / dt
        ));
        bar.inc(1);
    }
    if let Some(saver) = &mut group_saver {
        saver.settle()?;
    }
    if let Some(saved) = writer.wait()? {
        bar.suspend(|| eprintln!("meshtrain: checkpoint step {saved} committed"));
    }
    bar.finish();
    if let Some(f) = &mut metrics {
        f.flush()
            .map_err(|e| Error::io("writing", &metrics_path, e))?;
    }
    if lead {
        // A resumed run's plot starts with the logged steps before it.
        let mut curve = earlier_losses(&metrics_path, start);
        curve.extend(&losses);
        write_file(
            &run_dir.join("loss.svg"),
            crate::plot::loss_svg(&curve, "training loss").as_bytes(),
        )?;
    }
    if cfg.train.export_final && lead {
        let values = state::gather_params(&plan, &params, &state)?;
        let tensors = param_specs(&model)
            .iter()
            .zip(values)
            .map(|(s, data)| gemma::hf::HostTensor {
                shape: s.shape.clone(),
                data,
            })
            .collect::<Vec<_>>();
        gemma::hf::save(
            &run_dir.join("final"),
            &model,
            &tensors,
            gemma::hf::SaveDtype::F32,
        )?;
    }
    times.sort_by(f64::total_cmp);
    Ok(RunSummary {
        losses,
        compile_seconds,
        median_step_seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
        run_dir,
        peak_bytes_per_device: stats.peak_bytes,
        report,
    })
}

/// The model and sharding plan of `cfg`.
fn model_and_plan(cfg: &TrainConfig) -> Result<(gemma::GemmaConfig, Plan)> {
    let model = cfg.model.resolve()?;
    let plan = Plan::new(
        &model,
        cfg.resolved_mesh()?,
        mesh::Rules::with_overrides(&cfg.mesh.rules)?,
    );
    Ok((model, plan))
}

/// The checkpoint `train.resume` asks for, checked against the model.
fn find_resume(
    cfg: &TrainConfig,
    model: &gemma::GemmaConfig,
    root: &std::path::Path,
    lead: bool,
) -> Result<Option<checkpoint::Checkpoint>> {
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
            checkpoint::latest(root)?
        }
        dir => Some(checkpoint::Checkpoint::open(std::path::Path::new(dir))?),
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

/// The JSON objects of a `metrics.jsonl` (unreadable lines skipped).
fn metric_lines(path: &std::path::Path) -> std::io::Result<Vec<serde_json::Value>> {
    Ok(std::fs::read_to_string(path)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// `(step, loss)` of the lines of `metrics.jsonl` before step `start`
/// (empty if it cannot be read: the plot is a convenience).
fn earlier_losses(path: &std::path::Path, start: u64) -> Vec<(u64, f32)> {
    metric_lines(path)
        .unwrap_or_default()
        .iter()
        .filter_map(|v| Some((v["step"].as_u64()?, v["loss"].as_f64()? as f32)))
        .filter(|(s, _)| *s < start)
        .collect()
}

/// Opens `metrics.jsonl` for appending; on a resume from step `start` the
/// lines of steps at or after it (trained again now) are dropped first.
pub fn open_metrics(path: &std::path::Path, start: u64) -> Result<std::fs::File> {
    if start > 0 && path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < start)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_file(path, kept.as_bytes())?;
    } else {
        write_file(path, b"")?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))
}

/// Step times of a run's `metrics.jsonl` after its first logged step (which
/// carries warm-up): `(median, mean, max)` seconds.
pub fn step_time_stats(run_dir: &std::path::Path) -> Result<(f64, f64, f64)> {
    let path = run_dir.join("metrics.jsonl");
    let lines = metric_lines(&path).map_err(|e| Error::io("reading", &path, e))?;
    let mut times: Vec<f64> = lines
        .iter()
        .skip(1)
        .filter_map(|v| v["step_time_s"].as_f64())
        .collect();
    if times.is_empty() {
        return Ok((0.0, 0.0, 0.0));
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    Ok((times[times.len() / 2], mean, times[times.len() - 1]))
}

/// The progress bar of a run (hidden when `show` is false).
pub fn progress_bar(steps: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            .expect("valid template"),
    );
    bar
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}
