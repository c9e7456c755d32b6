//! Transport and supervision for multi-host meshtrain jobs.
//!
//! One process runs the [`Coordinator`]; every training process is a
//! worker holding a [`WorkerClient`]. They speak gRPC (the service
//! `meshtrain.cluster.v1.Cluster` in `proto/meshtrain/cluster.proto`).
//!
//! # Protocol
//!
//! * **Register**: a worker presents its software version and the sha256
//!   ([`config_digest`]) of its job config; a mismatch is refused with a
//!   message naming both values. It gets a process id in `0..N`, the
//!   resolved job config, the current *generation* and a resume hint (the
//!   last committed checkpoint step). A lost worker's slot is taken by the
//!   next registrant (replacement).
//! * **Heartbeat**: every worker heartbeats; one silent for the heartbeat
//!   timeout is declared lost. Its slot is freed, the generation goes up,
//!   every collective still waiting in the old generation fails with
//!   [`Error::Restart`], and the survivors' heartbeats answer
//!   [`Command::Restart`]. The training loop polls [`WorkerClient::command`]
//!   between steps.
//! * **Collectives**: named barriers, an all-reduce of `f32`/`f64` data, and
//!   a checkpoint agreement (commit only if every worker wrote its part;
//!   the last committed step is remembered). All wait for the full world
//!   size of the current generation.
//! * **Key-value store** with the semantics PJRT's distributed runtime
//!   expects from its `kv_put`/`kv_get` callbacks (put once, blocking get).
//! * **Metrics** are collected per step and handed to the embedding
//!   program ([`Event::Metrics`]) once every live worker reported.
//! * **Leave**: a clean exit; when every worker has left the job is
//!   finished ([`Event::Finished`]).
//! * **Stop** ([`CoordinatorHandle::stop`]): every call waiting on other
//!   workers is released with [`Error::Stopped`] and the reason, later
//!   calls fail with it, heartbeats answer [`Command::Stop`];
//!   [`CoordinatorHandle::untold_workers`] says who has yet to hear it.
//!
//! No call waits without a limit: collectives end at their timeout, at a
//! stop and at shutdown on the coordinator, and the client bounds every
//! call by its own deadline too. Shutting down waits a short grace period
//! for open connections, then drops them.
//!
//! A worker whose coordinator disappears fails within a bounded time with
//! [`Error::CoordinatorLost`] ("lost the coordinator at ADDR: ...") instead
//! of hanging: calls in flight fail when the connection drops, HTTP/2
//! keep-alives detect silent peers, and the heartbeat declares the
//! coordinator lost after [`ClientOptions::coordinator_timeout`].
//!
//! # Why a star all-reduce
//!
//! Every worker streams its gradient to the coordinator, which adds the
//! contributions in process-id order and streams the same bytes back to
//! all. The fixed summation order makes the update bit-identical on every
//! worker and runs reproducible whatever the arrival order; recovery is
//! simple because the coordinator already knows the membership. The cost
//! is coordinator bandwidth of O(N·size) per step, which is fine for
//! CPU data parallelism on a few hosts. On TPU and GPU the PJRT plugin's
//! own collectives move the tensors; there this crate only provides the
//! key-value store and supervision.
//!
//! # Security model
//!
//! Every call carries a shared job token (`authorization: Bearer ...`),
//! compared in constant time; a missing or wrong token is refused with
//! `UNAUTHENTICATED` and logged. The token is read from a file or an
//! environment variable ([`load_token`]), never from a command-line
//! literal. TLS (rustls) is optional ([`TlsServer`], [`TlsClient`]); without
//! it the token and the data travel in clear, so the CLI listens on
//! `127.0.0.1` by default and a wider listen address belongs on a trusted
//! network or behind TLS. The token authenticates workers to the
//! coordinator; it does not isolate workers of the same job from each
//! other.
//!
//! ```
//! use cluster::{ClientOptions, Coordinator, CoordinatorOptions, WorkerClient, config_digest};
//! let config = "[model]\nsize = \"smoke\"\n";
//! let coord = Coordinator::start(CoordinatorOptions::new(
//!     "127.0.0.1:0".parse().unwrap(), 1, "secret", "0.1.0", config,
//! ))?;
//! let worker = WorkerClient::connect(ClientOptions::new(
//!     coord.addr().to_string(), "secret", "0.1.0", config_digest(config),
//! ))?;
//! let mut grads = vec![1.0f32; 4];
//! worker.all_reduce_sum(0, &mut grads)?;
//! assert_eq!(grads, [1.0; 4]); // one worker: the sum is its own gradient
//! worker.leave()?;
//! # Ok::<(), cluster::Error>(())
//! ```
#![deny(missing_docs)]

mod auth;
mod client;
mod coordinator;
mod error;
#[doc(hidden)]
pub mod fuzz;
pub mod limits;
mod payload;
mod tls;

/// The generated gRPC messages, client and server (`meshtrain.cluster.v1`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("meshtrain.cluster.v1");
}

pub use auth::load_token;
pub use client::{CheckpointVerdict, ClientOptions, Command, Registration, WorkerClient};
pub use coordinator::{Coordinator, CoordinatorHandle, CoordinatorOptions, Event};
pub use error::{Error, Result};
pub use tls::{TlsClient, TlsServer};

/// sha256 hex of a job config: what workers present at registration.
pub fn config_digest(config: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(config.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
