//! Multi-process training jobs. One process runs [`coordinator::run`]: it
//! serves the job (the `cluster` crate's gRPC service), supervises the
//! workers, shows one progress bar and writes the job's `metrics.jsonl`.
//! Every other process runs [`worker::run`]: it registers, receives the
//! resolved job config, waits at the start barrier and trains its share of
//! each global batch with [`train::train_in_group`]; gradients are summed
//! through the coordinator. When a worker is lost, the others stop their
//! step, wait for a replacement at a new barrier, and every process
//! resumes from the last committed checkpoint (its loader state included,
//! so no batch is trained twice or skipped).
//!
//! On TPU and GPU ([`pod`]) every worker brings up the plugin's
//! multi-process client through the coordinator's key-value store and all
//! run one SPMD program over the global mesh; XLA's collectives move the
//! data and the coordinator never carries a tensor. The data-parallel
//! gradient exchange through the coordinator is for CPU processes only,
//! which the CPU plugin cannot join (it is refused for other backends).
#![deny(missing_docs)]

pub mod coordinator;
mod error;
mod group;
pub mod pod;
pub mod resume;
pub mod worker;

pub use error::{Error, Result};

/// What workers and coordinator must agree on: this build's version.
pub const SOFTWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Environment variable holding the job token when no token file is given.
pub const TOKEN_ENV: &str = "MESHTRAIN_TOKEN";

fn seconds(s: f64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(s)
}
