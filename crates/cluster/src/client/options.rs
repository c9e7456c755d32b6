//! What a worker is configured with, and what it is told.

use std::time::Duration;

use crate::TlsClient;

/// How a worker reaches its coordinator.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Coordinator address, `host:port`.
    pub coordinator: String,
    /// Shared secret (see [`crate::load_token`]).
    pub token: String,
    /// This host's name, for the coordinator's logs and events.
    pub host: String,
    /// Number of local accelerator devices.
    pub devices: u32,
    /// PJRT backend name.
    pub backend: String,
    /// Must equal the coordinator's.
    pub software_version: String,
    /// [`crate::config_digest`] of the job config this worker was started
    /// with; must equal the coordinator's.
    pub config_digest: String,
    /// How often to heartbeat.
    pub heartbeat_interval: Duration,
    /// After this long without a successful heartbeat the coordinator is
    /// declared lost and every call fails with [`crate::Error::CoordinatorLost`].
    pub coordinator_timeout: Duration,
    /// Limit for connecting and for calls that do not wait on others.
    pub rpc_timeout: Duration,
    /// Limit for an all-reduce (waiting for the slowest worker included).
    pub collective_timeout: Duration,
    /// Connect over TLS.
    pub tls: Option<TlsClient>,
}

impl ClientOptions {
    /// Options with a 1 s heartbeat, a 10 s coordinator timeout, a 10 s
    /// RPC timeout, a 30 min collective timeout, backend `cpu`, no TLS.
    pub fn new(
        coordinator: impl Into<String>,
        token: impl Into<String>,
        software_version: impl Into<String>,
        config_digest: impl Into<String>,
    ) -> Self {
        Self {
            coordinator: coordinator.into(),
            token: token.into(),
            host: std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()),
            devices: 0,
            backend: "cpu".into(),
            software_version: software_version.into(),
            config_digest: config_digest.into(),
            heartbeat_interval: Duration::from_secs(1),
            coordinator_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(10),
            collective_timeout: Duration::from_secs(30 * 60),
            tls: None,
        }
    }
}

/// What the coordinator handed this worker at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// This worker's process id, `0..world_size`.
    pub process_id: u32,
    /// Number of worker processes in the job.
    pub world_size: u32,
    /// The resolved job config (TOML).
    pub job_config: String,
    /// Generation joined in.
    pub generation: u64,
    /// Last committed checkpoint step, to resume from.
    pub resume_hint: Option<u64>,
}

/// What the coordinator wants the training loop to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Keep training.
    Continue,
    /// Stop training (the job is being stopped, or the coordinator is lost).
    Stop {
        /// Why.
        reason: String,
    },
    /// A worker was lost: restore the last committed checkpoint, call
    /// [`crate::WorkerClient::acknowledge_restart`], and continue.
    Restart {
        /// The generation to continue in.
        generation: u64,
        /// Last committed checkpoint step, if known.
        resume_hint: Option<u64>,
    },
}

/// Outcome of [`crate::WorkerClient::commit_checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointVerdict {
    /// Every worker wrote its part: commit.
    pub commit: bool,
    /// Why not, when `!commit`.
    pub reason: String,
}
