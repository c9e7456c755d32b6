//! Training for meshtrain: the layered config ([`TrainConfig`]), the whole
//! training step as one program ([`step::build_step`]: forward, loss,
//! backward, global grad norm, clipping, AdamW, schedule, accumulation,
//! donation), and the loop ([`train`]) that writes metrics, a loss plot and
//! the final model.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
mod device;
mod error;
pub mod eval;
mod exec;
pub mod generate;
pub mod gpu;
mod group;
pub mod host;
mod init;
pub mod mfu;
pub mod objective;
pub mod plan;
mod plot;
pub mod report;
mod resolve;
pub mod reward;
pub mod rl;
mod run;
pub mod schedule;
pub mod shard;
mod state;
pub mod step;
pub mod tasks;
pub mod tensorboard;

pub use config::TrainConfig;
pub use device::{make_client, make_pod_client};
pub use error::{Error, Result};
pub use group::ProcessGroup;
pub use init::init_params;
pub use plot::loss_svg;
pub use run::{
    RunSummary, open_metrics, progress_bar, step_time_stats, train, train_in_group, train_on_pod,
};
