//! The step loop: load this host's rows, run the step, log metrics, save
//! checkpoints on their cadence.

use std::io::Write;
use std::time::Instant;

use super::Mode;
use super::files::{open_metrics, progress_bar};
use super::profile::StepProfile;
use super::setup::Job;
use crate::exec::Launched;
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
    let metrics_path = job.run_dir.join("metrics.jsonl");
    let sink = match job.mode.any_group() {
        None => Sink::File(
            open_metrics(&metrics_path, start)?,
            metrics_path,
            open_tensorboard(job)?,
        ),
        Some(g) => Sink::Group(g),
    };
    let ckpt_root = job.run_dir.join("checkpoints");
    let mut tail = Tail {
        tokens_per_step: (crate::rl::step_rows(&cfg) * cfg.data.seq_len) as f64,
        flops_per_step: mfu::flops_per_token(&job.model, cfg.data.seq_len)
            * (crate::rl::step_rows(&cfg) * cfg.data.seq_len) as f64,
        sink,
        writer: checkpoint::Writer::new(ckpt_root.clone(), cfg.train.keep_checkpoints),
        group_saver: job.mode.any_group().map(|g| {
            GroupSaver::new(
                g,
                ckpt_root.clone(),
                cfg.train.keep_checkpoints,
                job.mode.is_spmd(),
            )
        }),
        profile: StepProfile::new(
            &cfg.train.profile_steps,
            job.run_dir.clone(),
            job.mode.rank(),
        ),
        bar: progress_bar(cfg.train.steps, show_progress),
        losses: Vec::new(),
        times: Vec::new(),
        last_done: Instant::now(),
        device_copy_failed: false,
    };
    tail.bar.set_position(start.min(cfg.train.steps));
    // The step's rows when RL samples them (every one on this host).
    let rl_rows: Vec<usize> = (0..crate::rl::step_rows(&cfg)).collect();
    // The step launched last: its numbers are read, logged and checkpointed
    // once the next step is on its way, so the host loads and transfers a
    // batch while the devices compute.
    let mut pending: Option<Pending> = None;
    for s in start..cfg.train.steps {
        if let Some(g) = job.mode.any_group() {
            g.check()?;
        }
        // A checkpoint after the previous step copied to the host reads
        // the state (and the data position) this step moves on from (one
        // copied on the devices was taken when it was launched); a process
        // group and a profiled step run one step at a time.
        if let Some(p) = pending.take_if(|p| !tail.overlaps(job, p.step)) {
            tail.finish(job, p)?;
        }
        let next = match start_step(job, &mut tail, &rl_rows, s) {
            Ok(next) => next,
            Err(e) => {
                // The step launched before still logs and saves what it
                // owes (a checkpoint copied on the devices included).
                if let Some(p) = pending.take()
                    && let Err(also) = tail.finish(job, p)
                {
                    eprintln!("meshtrain: {also}");
                }
                return Err(e);
            }
        };
        if let Some(p) = pending.replace(next) {
            tail.finish(job, p)?;
        }
    }
    if let Some(p) = pending.take() {
        tail.finish(job, p)?;
    }
    if let Some(saver) = &mut tail.group_saver {
        saver.settle()?;
    }
    if let Some(saved) = tail.writer.wait()? {
        tail.bar
            .suspend(|| eprintln!("meshtrain: checkpoint step {saved} committed"));
    }
    tail.bar.finish();
    tail.sink.flush()?;
    let mut times = tail.times;
    times.sort_by(f64::total_cmp);
    Ok(Done {
        losses: tail.losses,
        median_step_seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
    })
}

/// Loads step `s`'s batch (and samples it, RL), launches the step and,
/// when a checkpoint follows it, copies the state on the devices.
fn start_step(job: &mut Job, tail: &mut Tail, rl_rows: &[usize], s: u64) -> Result<Pending> {
    tail.profile.begin_step(s, &job.client, |m| {
        tail.bar.suspend(|| eprintln!("meshtrain: {m}"))
    })?;
    let t = Instant::now();
    let mut batches = Vec::with_capacity(job.feed.len());
    // The rows this process loads: every row but in a multi-host job.
    let mut tokens_by_source = std::collections::BTreeMap::new();
    for f in &mut job.feed {
        let b = f.loader.next_batch()?;
        check_tokens(&b, job.model.vocab_size, s)?;
        for (name, n) in f.loader.tokens_by_source() {
            *tokens_by_source.entry(name).or_insert(0u64) += n;
        }
        batches.push((f.host, f.rows.as_slice(), b));
    }
    tail.profile.span(s, "load batch", t);
    if let Some(rollout) = &mut job.rollout {
        let t_sample = Instant::now();
        // invariant: RL runs on one host, so one feed.
        let (host, _, prompts) = batches.pop().expect("one host feed");
        let rows = rollout.rows(&prompts, &job.state, s)?;
        batches.push((host, rl_rows, rows));
        tail.profile.span(s, "sample responses", t_sample);
    }
    let t_step = Instant::now();
    let launched = job.stepper.launch(
        &job.client,
        &job.plan,
        &job.at,
        &job.params,
        &mut job.state,
        &batches,
        s,
    )?;
    tail.profile.span(s, "transfer batch + launch step", t_step);
    let on_device = if tail.copies_on_device(job, s) {
        let t_copy = Instant::now();
        match device_copies(job) {
            Ok(parts) => {
                tail.profile
                    .span(s, "checkpoint copy on the devices", t_copy);
                Some(parts)
            }
            Err(e) => {
                // A runtime that cannot copy a buffer on its own device
                // checkpoints through the host, as `"host"` does.
                tail.bar.suspend(|| {
                    eprintln!(
                        "meshtrain: train.checkpoint_copy = \"device\": {e}; \
                         checkpoints copy the state to the host instead"
                    )
                });
                tail.device_copy_failed = true;
                None
            }
        }
    } else {
        None
    };
    Ok(Pending {
        step: s,
        launched,
        tokens_by_source,
        on_device,
    })
}

/// A launched step not yet finished.
struct Pending {
    step: u64,
    launched: Launched,
    /// Tokens loaded per source up to this step's batch.
    tokens_by_source: std::collections::BTreeMap<String, u64>,
    /// The checkpoint after this step, copied on the devices when it was
    /// launched (`train.checkpoint_copy = "device"`): one part per host.
    on_device: Option<Vec<state::DeviceSnapshot>>,
}

/// Copies the state after the step just launched on the devices, one part
/// per host with its loader states after that step's batch.
fn device_copies(job: &Job) -> Result<Vec<state::DeviceSnapshot>> {
    job.feed
        .iter()
        .map(|f| {
            state::snapshot_on_device(
                &job.cfg,
                &job.plan,
                &job.at,
                &job.params,
                &job.state,
                f.host,
                f.loader.states(),
            )
        })
        .collect()
}

/// What happens after a step: its metrics, checkpoints, the profile and
/// the progress bar.
struct Tail<'g> {
    tokens_per_step: f64,
    flops_per_step: f64,
    sink: Sink<'g>,
    writer: checkpoint::Writer,
    group_saver: Option<GroupSaver<'g>>,
    profile: StepProfile,
    bar: indicatif::ProgressBar,
    losses: Vec<(u64, f32)>,
    times: Vec<f64>,
    /// When the last step finished.
    last_done: Instant,
    /// The runtime refused a copy on the devices: checkpoints copy to the
    /// host from then on.
    device_copy_failed: bool,
}

impl Tail<'_> {
    /// Whether the step after `s` may be launched before `s` is finished:
    /// a checkpoint after `s` copied on the devices does not stop it.
    fn overlaps(&self, job: &Job, s: u64) -> bool {
        job.cfg.train.async_steps
            && job.mode.any_group().is_none()
            && (!checkpoint_after(&job.cfg, s) || self.copies_on_device(job, s))
            && !self.profile.active(s)
            && !self.profile.active(s + 1)
    }

    /// Whether the checkpoint after step `s` (if one is taken) is copied
    /// on the devices when `s` is launched: `train.checkpoint_copy =
    /// "device"` in a single process (emulated hosts included); a
    /// multi-process job (process group, multi-host SPMD) copies to the host.
    fn copies_on_device(&self, job: &Job, s: u64) -> bool {
        checkpoint_after(&job.cfg, s)
            && !self.device_copy_failed
            && job.cfg.train.checkpoint_copy == "device"
            && job.mode.any_group().is_none()
    }

    /// Waits for step `p` and logs it, checkpoints after it on the
    /// cadence, and moves the profile and the bar on.
    fn finish(&mut self, job: &mut Job, p: Pending) -> Result<()> {
        let cfg = &job.cfg;
        let s = p.step;
        let t_wait = Instant::now();
        let out = p.launched.finish()?;
        self.profile.span(s, "wait for the step", t_wait);
        // The wall time between two steps' ends: what a step costs when
        // the host's work overlaps the devices'.
        let dt = self.last_done.elapsed().as_secs_f64();
        self.last_done = Instant::now();
        if !out.loss.is_finite() {
            return Err(Error::Diverged {
                step: s,
                loss: out.loss,
            });
        }
        self.losses.push((s, out.loss));
        if s > job.start || cfg.train.steps == job.start + 1 {
            self.times.push(dt);
        }
        if s.is_multiple_of(cfg.train.log_every) || s + 1 == cfg.train.steps {
            let mut line = serde_json::json!({
                "step": s,
                "loss": out.loss,
                "learning_rate": out.lr,
                "grad_norm": out.grad_norm,
                "tokens_per_second": self.tokens_per_step / dt,
                "step_time_s": dt,
                "mfu": self.flops_per_step / dt / job.peak_flops,
                "tokens_by_source": p.tokens_by_source,
            });
            for (name, value) in &out.extra {
                line[*name] = serde_json::json!(value);
            }
            let t_log = Instant::now();
            self.sink.write(s, &line)?;
            self.profile.span(s, "write metrics", t_log);
        }
        if let Some(saver) = &mut self.group_saver {
            saver.after_step(s)?;
        }
        if let Some(parts) = p.on_device {
            self.sink.flush()?;
            let t_save = Instant::now();
            self.writer.start_with(s + 1, move || {
                parts
                    .into_iter()
                    .map(|part| part.into_snapshot(s + 1))
                    .collect()
            })?;
            self.profile.span(s, "checkpoint hand-off", t_save);
        } else if checkpoint_after(cfg, s) {
            self.sink.flush()?;
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
                        cfg,
                        &job.plan,
                        &job.at,
                        &job.params,
                        &job.state,
                        host,
                        f.loader.states(),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            self.profile.span(s, "checkpoint copy to host", t_copy);
            let t_save = Instant::now();
            match &mut self.group_saver {
                None => self.writer.start(parts)?,
                Some(saver) => {
                    // invariant: a process group runs one host per process.
                    let part = parts.into_iter().next().expect("one host per process");
                    saver.start(s, part)?
                }
            }
            self.profile.span(s, "checkpoint hand-off", t_save);
        }
        for path in self.profile.end_step(s)? {
            self.bar
                .suspend(|| eprintln!("meshtrain: profile written to {}", path.display()));
        }
        if let Some(saved) = self.writer.poll()? {
            self.bar
                .suspend(|| eprintln!("meshtrain: checkpoint step {saved} committed"));
        }
        self.bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s",
            out.loss,
            self.tokens_per_step / dt
        ));
        self.bar.inc(1);
        Ok(())
    }
}

/// Whether a checkpoint is taken after step `s` (`train.checkpoint_every`,
/// and after the last step).
fn checkpoint_after(cfg: &crate::TrainConfig, s: u64) -> bool {
    let every = cfg.train.checkpoint_every;
    every > 0 && ((s + 1).is_multiple_of(every) || s + 1 == cfg.train.steps)
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
