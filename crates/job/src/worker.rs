//! `meshtrain worker`: join a job, train this process's share, restart from
//! the last committed checkpoint when another worker is lost.

use std::sync::Arc;
use std::time::Duration;

use cluster::{ClientOptions, Command, TlsClient, WorkerClient};
use train::TrainConfig;

use crate::group::ClusterGroup;
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

/// Runs a worker until the job ends; returns this worker's process id.
pub fn run(opts: Options) -> Result<u32> {
    let digest = opts
        .config
        .as_deref()
        .map(cluster::config_digest)
        .unwrap_or_default();
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
    let client = Arc::new(WorkerClient::connect(copts)?);
    let reg = client.registration().clone();
    let cfg = TrainConfig::from_toml(
        &reg.job_config,
        &format!("the job config from {}", opts.coordinator),
        &[],
    )?;
    let pid = reg.process_id;
    eprintln!(
        "meshtrain worker: process {pid} of {} in the job at {}",
        reg.world_size, opts.coordinator
    );
    let barrier_timeout = seconds(cfg.coordinator.barrier_timeout_s);
    let group = ClusterGroup {
        client: &client,
        timeout: barrier_timeout,
    };
    // CPU workers sum gradients through the coordinator; TPU and GPU hosts
    // run one SPMD program over every host's devices.
    let pod = cfg.runtime.backend != "cpu";
    loop {
        let generation = client.generation();
        match client.barrier(&format!("start-{generation}"), barrier_timeout) {
            Ok(()) => {}
            Err(cluster::Error::Restart { .. }) => {
                await_restart(&client)?;
                continue;
            }
            Err(cluster::Error::Stopped { reason }) => return Err(Error::Stopped(reason)),
            Err(e) => return Err(e.into()),
        }
        let trained = if pod {
            // A fresh multi-process client each generation: the plugin's
            // distributed runtime cannot lose a member and go on.
            let store = Arc::new(CoordinatorStore::new(client.clone()));
            train::make_pod_client(&cfg, store, pid as usize, reg.world_size as usize)
                .and_then(|pjrt| train::train_on_pod(&cfg, opts.show_progress, pjrt, &group))
        } else {
            train::train_in_group(&cfg, opts.show_progress, &group)
        };
        match trained {
            Ok(_) => break,
            Err(train::Error::Interrupted {
                reason,
                restart: true,
            }) => {
                eprintln!(
                    "meshtrain worker {pid}: {reason}; waiting for a replacement, then resuming from the last committed checkpoint"
                );
                await_restart(&client)?;
            }
            Err(train::Error::Interrupted {
                reason,
                restart: false,
            }) => return Err(Error::Stopped(reason)),
            Err(e) => return Err(e.into()),
        }
    }
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

/// Waits until the heartbeat has brought the restart command (a collective
/// may fail before it arrives), then moves into the new generation.
fn await_restart(client: &WorkerClient) -> Result<()> {
    let before = client.generation();
    for _ in 0..600 {
        match client.command() {
            Command::Restart { .. } => {
                client.acknowledge_restart();
                return Ok(());
            }
            Command::Stop { reason } => return Err(Error::Stopped(reason)),
            Command::Continue if client.generation() > before => return Ok(()),
            Command::Continue => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    Err(Error::Stopped(
        "the coordinator did not confirm the restart within 30 s".into(),
    ))
}
