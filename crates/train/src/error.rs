//! The crate's one error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while configuring or running training.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A config key has an impossible value or is unknown.
    #[error("{source_name}: {key}: {message}")]
    Config {
        /// The file (or `--set`) the bad value came from.
        source_name: String,
        /// Dotted key path.
        key: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The model shape or a checkpoint.
    #[error(transparent)]
    Model(#[from] gemma::Error),
    /// The mesh.
    #[error(transparent)]
    Mesh(#[from] mesh::Error),
    /// The data pipeline.
    #[error(transparent)]
    Data(#[from] data::Error),
    /// Building the step program (a shape bug: names the op).
    #[error("building the step program: {0}")]
    Program(#[from] hlo::Error),
    /// The PJRT runtime.
    #[error(transparent)]
    Runtime(#[from] pjrt::Error),
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A checkpoint is incomplete, corrupt or does not fit the run.
    #[error("checkpoint {path}: {message}")]
    Checkpoint {
        /// The checkpoint directory (or file in it).
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A directory given as a model is neither a Hugging Face model nor a
    /// checkpoint.
    #[error("{path}: {message}")]
    NotAModel {
        /// The directory.
        path: PathBuf,
        /// What it is not, and what was expected.
        message: String,
    },
    /// Writing a checkpoint failed; its partial files were removed.
    #[error("saving the checkpoint of step {step} failed ({kept}): {source}")]
    Save {
        /// The step being saved.
        step: u64,
        /// Which checkpoint remains the newest.
        kept: String,
        /// Why.
        source: Box<Error>,
    },
    /// A multi-process job was interrupted (a process was lost or the
    /// coordinator asked to stop); it may restart from its last checkpoint.
    #[error("job interrupted: {reason}")]
    Interrupted {
        /// Why.
        reason: String,
        /// Whether the job restarts (else it stops).
        restart: bool,
    },
    /// The process group failed (transport, coordinator).
    #[error("process group: {0}")]
    Group(String),
    /// Training produced a non-finite loss.
    #[error("step {step}: loss is {loss}; stopping (lower optimizer.lr or enable clipping)")]
    Diverged {
        /// Step number.
        step: u64,
        /// The loss.
        loss: f32,
    },
}

impl Error {
    pub(crate) fn config(
        source_name: impl Into<String>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error::Config {
            source_name: source_name.into(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A config error's source set to `origin(key)`: where the value came from.
    pub(crate) fn blamed_on(self, origin: impl Fn(&str) -> String) -> Self {
        match self {
            Error::Config { key, message, .. } => Error::Config {
                source_name: origin(&key),
                key,
                message,
            },
            e => e,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
