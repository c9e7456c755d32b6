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
