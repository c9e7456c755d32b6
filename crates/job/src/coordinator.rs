//! `meshtrain coordinator`: serve a job, supervise its workers, write its
//! metrics, stop it after too many lost workers.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use cluster::{Coordinator, CoordinatorOptions, Event, TlsServer};
use train::TrainConfig;

use crate::resume::JobState;
use crate::{Error, Result, SOFTWARE_VERSION, seconds};

/// How to run a job.
pub struct Options {
    /// The resolved job config (sent to every worker).
    pub config: TrainConfig,
    /// Address to listen on (the CLI defaults to loopback).
    pub listen: SocketAddr,
    /// Workers in the job.
    pub workers: u32,
    /// The job token.
    pub token: String,
    /// Show a progress bar.
    pub show_progress: bool,
    /// Called with the bound address once listening (e.g. to print it).
    pub on_listen: Option<Box<dyn FnOnce(SocketAddr)>>,
}

/// What a finished job reports.
#[derive(Debug, Clone)]
pub struct Summary {
    /// `(step, loss)` of every logged step, as in `metrics.jsonl`.
    pub losses: Vec<(u64, f64)>,
    /// Workers lost (and replaced) during the job.
    pub restarts: u32,
}

/// Runs the job to its end.
pub fn run(opts: Options) -> Result<Summary> {
    let cfg = &opts.config;
    cfg.rows_per_process(opts.workers as usize)?;
    let mut co = CoordinatorOptions::new(
        opts.listen,
        opts.workers,
        opts.token.clone(),
        SOFTWARE_VERSION,
        cfg.to_toml(),
    );
    co.heartbeat_timeout = seconds(cfg.coordinator.heartbeat_timeout_s);
    co.heartbeat_interval = seconds(cfg.coordinator.heartbeat_interval_s);
    if let (Some(cert), Some(key)) = (&cfg.coordinator.tls_cert, &cfg.coordinator.tls_key) {
        co.tls = Some(TlsServer {
            cert_pem_path: cert.clone(),
            key_pem_path: key.clone(),
        });
    }
    // A job under way in this run directory (its coordinator died) is
    // resumed: past its generations, with its losses counted.
    let run_dir = &cfg.train.run_dir;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::Io {
        action: "creating",
        path: run_dir.clone(),
        source: e,
    })?;
    let digest = co.config_digest();
    let mut state = match JobState::resume(run_dir, &digest, opts.workers)? {
        Some(mut st) => {
            st.generation += 1;
            st.starts += 1;
            eprintln!(
                "meshtrain coordinator: resuming the job under way in {} (coordinator start {}, \
                 generation {}, last committed checkpoint {}); its workers reconnect and resume \
                 from the last committed checkpoint",
                run_dir.display(),
                st.starts,
                st.generation,
                st.last_committed
                    .map_or_else(|| "none".to_string(), |s| format!("step {s}")),
            );
            st
        }
        None => JobState::new(digest, opts.workers),
    };
    state.save(run_dir)?;
    co.start_generation = state.generation;
    co.last_committed = state.last_committed;
    let handle = Coordinator::start(co)?;
    eprintln!(
        "meshtrain coordinator: listening on {} for {} workers",
        handle.addr(),
        opts.workers
    );
    if let Some(f) = opts.on_listen {
        f(handle.addr());
    }
    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics: Option<std::fs::File> = None;
    let mut events: Option<train::tensorboard::EventWriter> = None;
    let mut losses: Vec<(u64, f64)> = Vec::new();
    let bar = train::progress_bar(cfg.train.steps, opts.show_progress);
    let say = |msg: String| bar.suspend(|| eprintln!("meshtrain coordinator: {msg}"));
    let mut restarts = state.restarts;
    let mut stopped: Option<String> = None;
    loop {
        // A stopped job is over once every worker still running has been
        // told why (its calls waiting on others were released with the
        // reason); a worker that does not answer is declared lost within the
        // heartbeat timeout. Workers busy or blocked cannot keep it alive.
        if stopped.is_some() && handle.untold_workers().is_empty() {
            break;
        }
        let Some(event) = handle.next_event(Duration::from_millis(200)) else {
            continue;
        };
        match event {
            Event::Registered {
                process_id,
                host,
                replacement,
            } => say(format!(
                "worker {process_id} registered from {host}{}",
                if replacement { " (replacement)" } else { "" }
            )),
            Event::Lost {
                process_id,
                host,
                generation,
            } => {
                restarts += 1;
                state.restarts = restarts;
                state.generation = state.generation.max(generation);
                state.save(run_dir)?;
                if stopped.is_some() {
                    say(format!("worker {process_id} ({host}) lost"));
                } else if restarts > cfg.coordinator.max_restarts {
                    let reason = format!(
                        "worker {process_id} ({host}) lost; {restarts} losses exceed coordinator.max_restarts = {}",
                        cfg.coordinator.max_restarts
                    );
                    say(reason.clone());
                    handle.stop(reason.clone());
                    stopped = Some(reason);
                } else {
                    say(format!(
                        "worker {process_id} ({host}) lost: heartbeat silent for {} s; the job waits for a worker to take its place, then resumes from the last committed checkpoint (generation {generation})",
                        cfg.coordinator.heartbeat_timeout_s
                    ));
                }
            }
            Event::Metrics { step, reports } => {
                let Some((_, line)) = reports.first() else {
                    continue;
                };
                // A restart trains steps again: their old lines go.
                if metrics.is_none() || losses.last().is_some_and(|(s, _)| *s >= step) {
                    metrics = Some(train::open_metrics(&metrics_path, step)?);
                    losses.retain(|(s, _)| *s < step);
                    if cfg.train.tensorboard {
                        drop(events.take()); // flushed before the files are trimmed
                        events = Some(open_events(cfg, step)?);
                    }
                }
                // invariant: opened just above when it was None.
                let file = metrics.as_mut().expect("opened above");
                writeln!(file, "{line}")
                    .and_then(|()| file.flush())
                    .map_err(|e| Error::Io {
                        action: "writing",
                        path: metrics_path.clone(),
                        source: e,
                    })?;
                let parsed = serde_json::from_str::<serde_json::Value>(line).ok();
                if let (Some(w), Some(v)) = (&mut events, &parsed) {
                    w.metrics("train", step, v)?;
                    w.flush()?;
                }
                let loss = parsed.and_then(|v| v["loss"].as_f64()).unwrap_or(f64::NAN);
                losses.push((step, loss));
                bar.set_position(step + 1);
                bar.set_message(format!("loss {loss:.4}"));
            }
            Event::CheckpointCommitted { step } => {
                state.last_committed = state.last_committed.max(Some(step));
                state.save(run_dir)?;
                say(format!("checkpoint {step}: every worker wrote its part"))
            }
            Event::CheckpointAborted { step, reason } => {
                say(format!("checkpoint {step} not committed: {reason}"))
            }
            Event::Left { process_id } => say(format!("worker {process_id} finished")),
            Event::Finished => break,
            _ => {}
        }
    }
    bar.finish();
    handle.shutdown();
    state.finished = true;
    state.save(run_dir)?;
    match stopped {
        Some(reason) => Err(Error::Stopped(reason)),
        None => Ok(Summary { losses, restarts }),
    }
}

/// The job's TensorBoard event file for a run (re)starting at `step`: the
/// resolved config, and the sharding report its process 0 wrote into the
/// shared run directory, as text.
fn open_events(cfg: &TrainConfig, step: u64) -> Result<train::tensorboard::EventWriter> {
    let run_dir = &cfg.train.run_dir;
    let mut w = train::tensorboard::EventWriter::open(&run_dir.join("tensorboard"), step)?;
    w.preformatted("config", step, &cfg.to_toml())?;
    if let Ok(report) = std::fs::read_to_string(run_dir.join("sharding.txt")) {
        w.preformatted("sharding", step, &report)?;
    }
    w.flush()?;
    Ok(w)
}
