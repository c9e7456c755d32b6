//! The step loop: load this host's rows, run the step, log metrics, save
//! checkpoints on their cadence.

use std::io::Write;
use std::time::Instant;

use super::Mode;
use super::files::{open_metrics, progress_bar};
use super::profile::StepProfile;
use super::setup::Job;
use crate::group::GroupSaver;
use crate::tensorboard::EventWriter;
use crate::{Error, Result, checkpoint, mfu, state};

/// What the loop hands to finishing.
pub(super) struct Done {
    /// `(step, loss)` of every step run.
    pub losses: Vec<(u64, f32)>,
    pub median_step_seconds: f64,
}

/// Where a step's metrics go: `metrics.jsonl` of a single process, or the
/// group's coordinator (which writes it for the job).
enum Sink<'g> {
    /// `metrics.jsonl`, and the TensorBoard events when asked for.
    File(std::fs::File, std::path::PathBuf, Option<EventWriter>),
    Group(&'g dyn crate::ProcessGroup),
}

impl Sink<'_> {
    fn write(&mut self, step: u64, line: &serde_json::Value) -> Result<()> {
        match self {
            Sink::File(f, path, tb) => {
                writeln!(f, "{line}").map_err(|e| Error::io("writing", path.as_path(), e))?;
                if let Some(tb) = tb {
                    tb.metrics("train", step, line)?;
                    tb.flush()?;
                }
                Ok(())
            }
            Sink::Group(g) => g.report(step, line),
        }
    }

    /// Makes the lines written so far durable (before a checkpoint can
    /// commit, and at the end).
    fn flush(&mut self) -> Result<()> {
        match self {
            Sink::File(f, path, tb) => {
                f.flush()
                    .map_err(|e| Error::io("writing", path.as_path(), e))?;
                tb.as_mut().map_or(Ok(()), EventWriter::flush)
            }
            Sink::Group(_) => Ok(()),
        }
    }
}

pub(super) fn run_steps(job: &mut Job, show_progress: bool) -> Result<Done> {
    let cfg = job.cfg.clone();
    let start = job.start;
    // A single process's caller reports it (`RunSummary::start_step`).
    if start >= cfg.train.steps && !matches!(job.mode, super::Mode::Single) {
        eprintln!(
            "meshtrain: {} already holds step {start} of train.steps = {}: nothing to train \
             (raise train.steps to continue, or use another train.run_dir to start over)",
            job.run_dir.display(),
            cfg.train.steps
        );
    }
    let tokens_per_step = (crate::rl::step_rows(&cfg) * cfg.data.seq_len) as f64;
    // The step's rows when RL samples them (every one on this host).
    let rl_rows: Vec<usize> = (0..crate::rl::step_rows(&cfg)).collect();
    let flops_per_step = mfu::flops_per_token(&job.model, cfg.data.seq_len) * tokens_per_step;
    let ckpt_root = job.run_dir.join("checkpoints");
    let metrics_path = job.run_dir.join("metrics.jsonl");
    let mut sink = match job.mode.any_group() {
        None => Sink::File(
            open_metrics(&metrics_path, start)?,
            metrics_path,
            open_tensorboard(job)?,
        ),
        Some(g) => Sink::Group(g),
    };
    let mut writer = checkpoint::Writer::new(ckpt_root.clone(), cfg.train.keep_checkpoints);
    let mut group_saver = job.mode.any_group().map(|g| {
        GroupSaver::new(
            g,
            ckpt_root.clone(),
            cfg.train.keep_checkpoints,
            job.mode.is_spmd(),
        )
    });
    let mut profile = StepProfile::new(
        &cfg.train.profile_steps,
        job.run_dir.clone(),
        job.mode.rank(),
    );
    let bar = progress_bar(cfg.train.steps, show_progress);
    bar.set_position(start.min(cfg.train.steps));
    let mut losses = Vec::new();
    let mut times = Vec::new();
    for s in start..cfg.train.steps {
        if let Some(g) = job.mode.any_group() {
            g.check()?;
        }
        profile.begin_step(s, &job.client, |m| {
            bar.suspend(|| eprintln!("meshtrain: {m}"))
        })?;
        let t = Instant::now();
        let mut batches = Vec::with_capacity(job.feed.len());
        for f in &mut job.feed {
            let b = f.loader.next_batch()?;
            check_tokens(&b, job.model.vocab_size, s)?;
            batches.push((f.host, f.rows.as_slice(), b));
        }
        profile.span(s, "load batch", t);
        if let Some(rollout) = &mut job.rollout {
            let t_sample = Instant::now();
            // invariant: RL runs on one host, so one feed.
            let (host, _, prompts) = batches.pop().expect("one host feed");
            let rows = rollout.rows(&prompts, &job.state, s)?;
            batches.push((host, rl_rows.as_slice(), rows));
            profile.span(s, "sample responses", t_sample);
        }
        let t_step = Instant::now();
        let out = job.stepper.run(
            &job.client,
            &job.plan,
            &job.at,
            &job.params,
            &mut job.state,
            &batches,
            s,
        )?;
        profile.span(s, "transfer batch + run step", t_step);
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
            // The rows this process loads: every row but in a multi-host job.
            let mut tokens_by_source = std::collections::BTreeMap::new();
            for (name, n) in job.feed.iter().flat_map(|f| f.loader.tokens_by_source()) {
                *tokens_by_source.entry(name).or_insert(0u64) += n;
            }
            let mut line = serde_json::json!({
                "step": s,
                "loss": out.loss,
                "learning_rate": out.lr,
                "grad_norm": out.grad_norm,
                "tokens_per_second": tokens_per_step / dt,
                "step_time_s": dt,
                "mfu": flops_per_step / dt / job.peak_flops,
                "tokens_by_source": tokens_by_source,
            });
            for (name, value) in &out.extra {
                line[*name] = serde_json::json!(value);
            }
            let t_log = Instant::now();
            sink.write(s, &line)?;
            profile.span(s, "write metrics", t_log);
        }
        if let Some(saver) = &mut group_saver {
            saver.after_step(s)?;
        }
        let every = cfg.train.checkpoint_every;
        if every > 0 && ((s + 1) % every == 0 || s + 1 == cfg.train.steps) {
            sink.flush()?;
            let t_copy = Instant::now();
            let parts = job
                .feed
                .iter()
                .map(|f| {
                    let host = if matches!(job.mode, Mode::Group(_)) {
                        0
                    } else {
                        f.host
                    };
                    state::snapshot(
                        &cfg,
                        &job.plan,
                        &job.at,
                        &job.params,
                        &job.state,
                        host,
                        f.loader.states(),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            profile.span(s, "checkpoint copy to host", t_copy);
            let t_save = Instant::now();
            match &mut group_saver {
                None => writer.start(parts)?,
                Some(saver) => {
                    // invariant: a process group runs one host per process.
                    let part = parts.into_iter().next().expect("one host per process");
                    saver.start(s, part)?
                }
            }
            profile.span(s, "checkpoint hand-off", t_save);
        }
        for path in profile.end_step(s)? {
            bar.suspend(|| eprintln!("meshtrain: profile written to {}", path.display()));
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
    sink.flush()?;
    times.sort_by(f64::total_cmp);
    Ok(Done {
        losses,
        median_step_seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
    })
}

/// Every token id of a batch is inside the vocabulary.
fn check_tokens(batch: &data::Batch, vocab_size: usize, s: u64) -> Result<()> {
    match batch
        .tokens
        .iter()
        .find(|&&id| id < 0 || id as usize >= vocab_size)
    {
        Some(&bad) => Err(Error::config(
            "data",
            "data.path",
            format!(
                "step {s}: token id {bad} is outside the vocabulary (model.vocab_size = {vocab_size})"
            ),
        )),
        None => Ok(()),
    }
}

/// The run's TensorBoard event file (`train.tensorboard`), opened for a
/// run starting at the job's start step, with the resolved config and the
/// sharding report as text.
fn open_tensorboard(job: &Job) -> Result<Option<EventWriter>> {
    if !job.cfg.train.tensorboard || !job.lead {
        return Ok(None);
    }
    let mut w = EventWriter::open(&job.run_dir.join("tensorboard"), job.start)?;
    w.preformatted("config", job.start, &job.cfg.to_toml())?;
    w.preformatted("sharding", job.start, &job.report.render())?;
    w.flush()?;
    Ok(Some(w))
}
