//! The crate's one error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong with a Gemma configuration or checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- configuration ----
    /// A configuration value is impossible; names the key and what is allowed.
    #[error("model.{key} = {value}: {expected}")]
    Config {
        /// Config key (without the `model.` prefix).
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        expected: String,
    },
    /// An unknown preset name.
    #[error("model.preset = {0:?}: expected one of \"gemma-2b\", \"gemma-7b\", \"tiny\"")]
    Preset(String),

    /// A model input (token ids, positions, segment ids) has the wrong
    /// rank, shape or element type.
    #[error("model input `{name}` is {found}: expected {expected}")]
    Input {
        /// The input's name.
        name: &'static str,
        /// Its type, as `i32[4]`.
        found: String,
        /// What the model takes.
        expected: String,
    },

    /// Building the tensor program failed (a shape bug: names the op).
    #[error("building the Gemma program: {0}")]
    Program(#[from] hlo::Error),

    // ---- checkpoints ----
    /// A tensor the model needs is not in the checkpoint.
    #[error("{dir}: checkpoint has no tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// Checkpoint directory.
        dir: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape the model needs.
        expected: Vec<usize>,
    },
    /// A tensor the model does not have is in the checkpoint.
    #[error("{dir}: checkpoint tensor `{name}` (shape {shape:?}) is not a parameter of this model")]
    ExtraTensor {
        /// Checkpoint directory.
        dir: PathBuf,
        /// Tensor name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },
    /// A tensor has the wrong shape.
    #[error("{dir}: tensor `{name}` has shape {found:?}, the model needs {expected:?}")]
    TensorShape {
        /// Checkpoint directory.
        dir: PathBuf,
        /// Tensor name.
        name: String,
        /// Shape in the checkpoint.
        found: Vec<usize>,
        /// Shape the model needs.
        expected: Vec<usize>,
    },
    /// A tensor has a dtype the importer does not read.
    #[error("{path}: tensor `{name}` is {dtype}; expected F32, BF16 or F16")]
    TensorDtype {
        /// File.
        path: PathBuf,
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A checkpoint file is malformed.
    #[error("{path}: {reason}")]
    Format {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
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
}

impl Error {
    pub(crate) fn config(
        key: &'static str,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::Config {
            key,
            value: value.to_string(),
            expected: expected.into(),
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

    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
