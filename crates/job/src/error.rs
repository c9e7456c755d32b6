//! The crate's one error type.

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong running a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Training (config, data, devices, checkpoints).
    #[error(transparent)]
    Train(#[from] train::Error),
    /// The transport or the coordinator.
    #[error(transparent)]
    Cluster(#[from] cluster::Error),
    /// The coordinator stopped the job.
    #[error("the job was stopped: {0}")]
    Stopped(String),
    /// The coordinator's saved job state cannot be resumed.
    #[error("{path}: {message}")]
    JobState {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A worker lost its coordinator and could not reach it again.
    #[error(
        "lost the coordinator at {addr}: {why}; not reachable again within {waited_s} s          (coordinator.reconnect_timeout_s): {last}"
    )]
    CoordinatorGone {
        /// The coordinator's address.
        addr: String,
        /// How it was lost.
        why: String,
        /// How long the worker tried to reconnect.
        waited_s: f64,
        /// The last attempt's error.
        last: String,
    },
    /// Writing the job's files.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}
