//! `meshtrain worker`: join a job, train this process's share, restart from
//! the last committed checkpoint when another worker is lost, and reconnect
//! (with backoff, for `coordinator.reconnect_timeout_s`) when the
//! coordinator itself is lost: a coordinator restarted with the same config
//! and run directory resumes the job.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{ClientOptions, Command, TlsClient, WorkerClient};
use train::TrainConfig;

use crate::group::{ClusterGroup, LostFlag};
use crate::pod::CoordinatorStore;
use crate::{Error, Result, SOFTWARE_VERSION, seconds};

/// How to join a job.
pub struct Options {
    /// Coordinator address, `host:port`.
    pub coordinator: String,
    /// The job token.
    pub token: String,
    /// TLS to the coordinator.
    pub tls: Option<TlsClient>,
    /// This worker's own resolved config (TOML): the coordinator refuses
    /// the worker if it differs from the job's. `None`: take the job's.
    pub config: Option<String>,
    /// Backend and local device count reported at registration.
    pub backend: String,
    /// Local devices.
    pub devices: u32,
    /// Show a progress bar.
    pub show_progress: bool,
}

/// How a session with one coordinator ended, short of success.
enum Ended {
    /// The coordinator went away: reconnect.
    Lost(String),
    /// Anything else ends the worker.
    Failed(Error),
}

impl From<Error> for Ended {
    fn from(e: Error) -> Ended {
        Ended::Failed(e)
    }
}

/// Runs a worker until the job ends; returns this worker's process id (the
/// last one it held, when it reconnected).
pub fn run(opts: Options) -> Result<u32> {
    let digest = opts
        .config
        .as_deref()
        .map(cluster::config_digest)
        .unwrap_or_default();
    let mut client = Arc::new(WorkerClient::connect(client_options(&opts, digest))?);
    let reg = client.registration().clone();
    let cfg = TrainConfig::from_toml(
        &reg.job_config,
        &format!("the job config from {}", opts.coordinator),
        &[],
    )?;
    // A coordinator reached again must serve this very job.
    let job_digest = cluster::config_digest(&reg.job_config);
    loop {
        eprintln!(
            "meshtrain worker: process {} of {} in the job at {}",
            client.process_id(),
            client.world_size(),
            opts.coordinator
        );
        match session(&opts, &cfg, &client) {
            Ok(()) => break,
            Err(Ended::Failed(e)) => return Err(e),
            Err(Ended::Lost(why)) => {
                // The old connection (and its heartbeat) go first.
                drop(client);
                client = Arc::new(reconnect(&opts, &cfg, &job_digest, &why)?);
            }
        }
    }
    let pid = client.process_id();
    // The plugin's client (and the store it held) went with the run.
    match Arc::try_unwrap(client) {
        Ok(c) => c.leave()?,
        Err(_) => {
            return Err(Error::Stopped(
                "the plugin client still holds the coordinator connection".into(),
            ));
        }
    }
    Ok(pid)
}

fn client_options(opts: &Options, digest: String) -> ClientOptions {
    let mut copts = ClientOptions::new(
        opts.coordinator.clone(),
        opts.token.clone(),
        SOFTWARE_VERSION,
        digest,
    );
    copts.host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    copts.backend = opts.backend.clone();
    copts.devices = opts.devices;
    copts.tls = opts.tls.clone();
    copts
}

/// Trains with one coordinator until the job ends (`Ok`), the coordinator
/// is lost, or something else fails.
fn session(
    opts: &Options,
    cfg: &TrainConfig,
    client: &Arc<WorkerClient>,
) -> std::result::Result<(), Ended> {
    let pid = client.process_id();
    let world = client.world_size();
    let barrier_timeout = seconds(cfg.coordinator.barrier_timeout_s);
    let lost = LostFlag::default();
    let group = ClusterGroup {
        client,
        timeout: barrier_timeout,
        lost: lost.clone(),
    };
    let gone = |e: &cluster::Error| match e {
        cluster::Error::CoordinatorLost { .. } | cluster::Error::NotMember { .. } => {
            Some(e.to_string())
        }
        _ => None,
    };
    // CPU workers sum gradients through the coordinator; TPU and GPU hosts
    // run one SPMD program over every host's devices.
    let pod = cfg.runtime.backend != "cpu";
    loop {
        let generation = client.generation();
        match client.barrier(&format!("start-{generation}"), barrier_timeout) {
            Ok(()) => {}
            Err(cluster::Error::Restart { .. }) => {
                await_restart(client)?;
                continue;
            }
            Err(cluster::Error::Stopped { reason }) => return Err(Error::Stopped(reason).into()),
            Err(e) => {
                return Err(match gone(&e) {
                    Some(why) => Ended::Lost(why),
                    None => Ended::Failed(e.into()),
                });
            }
        }
        let trained = if pod {
            // A fresh multi-process client each generation: the plugin's
            // distributed runtime cannot lose a member and go on.
            let store = Arc::new(CoordinatorStore::watched(client.clone(), lost.clone()));
            train::make_pod_client(cfg, store, pid as usize, world as usize)
                .and_then(|pjrt| train::train_on_pod(cfg, opts.show_progress, pjrt, &group))
        } else {
            train::train_in_group(cfg, opts.show_progress, &group)
        };
        if let Err(e) = &trained
            && let Some(why) = lost.get().or_else(|| client.coordinator_lost())
        {
            eprintln!("meshtrain worker {pid}: {e}");
            return Err(Ended::Lost(why));
        }
        match trained {
            Ok(_) => return Ok(()),
            Err(train::Error::Interrupted {
                reason,
                restart: true,
            }) => {
                eprintln!(
                    "meshtrain worker {pid}: {reason}; waiting for a replacement, then resuming from the last committed checkpoint"
                );
                await_restart(client)?;
            }
            Err(train::Error::Interrupted {
                reason,
                restart: false,
            }) => return Err(Error::Stopped(reason).into()),
            Err(e) => return Err(Error::from(e).into()),
        }
    }
}

/// Waits until the heartbeat has brought the restart command (a collective
/// may fail before it arrives), then moves into the new generation.
fn await_restart(client: &WorkerClient) -> std::result::Result<(), Ended> {
    let before = client.generation();
    for _ in 0..600 {
        if let Some(why) = client.coordinator_lost() {
            return Err(Ended::Lost(why));
        }
        match client.command() {
            Command::Restart { .. } => {
                client.acknowledge_restart();
                return Ok(());
            }
            Command::Stop { reason } => return Err(Error::Stopped(reason).into()),
            Command::Continue if client.generation() > before => return Ok(()),
            Command::Continue => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Err(Error::Stopped("the coordinator did not confirm the restart within 30 s".into()).into())
}

/// Registers again with the coordinator at the same address, waiting 0.1 s
/// after the first failed attempt and twice as long after each next one
/// (at most `coordinator.reconnect_backoff_max_s`), for at most
/// `coordinator.reconnect_timeout_s`. Only failures that a restarting
/// coordinator explains are retried: no connection, no answer, and a full
/// job (this worker's old slot is freed once its heartbeat is missed).
fn reconnect(opts: &Options, cfg: &TrainConfig, digest: &str, why: &str) -> Result<WorkerClient> {
    let limit = seconds(cfg.coordinator.reconnect_timeout_s);
    let cap = seconds(cfg.coordinator.reconnect_backoff_max_s);
    eprintln!(
        "meshtrain worker: lost the coordinator at {}: {why}; reconnecting for up to {:?} \
         (coordinator.reconnect_timeout_s)",
        opts.coordinator, limit
    );
    let start = Instant::now();
    let mut wait = Duration::from_millis(100).min(cap);
    let mut attempts = 0u32;
    loop {
        let last = if limit.is_zero() {
            "reconnecting is off".to_string()
        } else {
            attempts += 1;
            match WorkerClient::connect(client_options(opts, digest.to_string())) {
                Ok(c) => {
                    eprintln!(
                        "meshtrain worker: reconnected to {} after {attempts} attempt(s) in {:.1} s; \
                         resuming from the last committed checkpoint",
                        opts.coordinator,
                        start.elapsed().as_secs_f64()
                    );
                    return Ok(c);
                }
                Err(e) if e.may_succeed_later() => e.to_string(),
                Err(e) => return Err(e.into()),
            }
        };
        if start.elapsed() + wait > limit {
            return Err(Error::CoordinatorGone {
                addr: opts.coordinator.clone(),
                why: why.to_string(),
                waited_s: start.elapsed().as_secs_f64(),
                last,
            });
        }
        std::thread::sleep(wait);
        wait = (wait * 2).min(cap);
    }
}
