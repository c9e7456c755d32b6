//! The crate's one error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in tokenizing, ingesting and loading.
///
/// Variants name the file, line, row or field involved and what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- I/O ----
    /// An operating-system I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    // ---- user input ----
    /// A document or line of an input corpus that cannot be used.
    #[error("{file}:{line}: {message}")]
    BadInput {
        /// The input file.
        file: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A row of a `tokens` file that cannot be used.
    #[error("{file}: row {row}: {message}")]
    BadRow {
        /// The tokens file.
        file: PathBuf,
        /// 0-based row index.
        row: usize,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A shard file that is truncated, corrupt or of another version.
    #[error("shard {file}: {message}")]
    BadShard {
        /// The shard file.
        file: PathBuf,
        /// What is wrong and what was expected.
        message: String,
    },
    /// An input pattern that matches no file, or a malformed glob.
    #[error("input {pattern:?}: {message}")]
    NoInput {
        /// The pattern or path as given.
        pattern: String,
        /// Why nothing could be read.
        message: String,
    },
    /// An invalid value in a [`crate::DataConfig`] or command option.
    #[error("data config: {field}: {message}")]
    Config {
        /// The offending field, e.g. `data.batch_size`.
        field: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A saved [`crate::LoaderState`] that does not fit the loader it is given to.
    #[error("cannot resume data loader: {0}")]
    Resume(String),

    // ---- tokenizer ----
    /// Loading, training or running a tokenizer failed.
    #[error("tokenizer {name}: {message}")]
    Tokenizer {
        /// The tokenizer file or name.
        name: String,
        /// What went wrong.
        message: String,
    },
    /// Fetching the official tokenizer at setup time failed.
    #[error("setup tokenizer: {0}")]
    Setup(String),
    /// A fetched file whose digest is not the pinned one.
    #[error("{path}: sha256 {actual}, expected {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// The digest found.
        actual: String,
    },

    // ---- loader ----
    /// The background prefetch thread stopped.
    #[error("data loader thread stopped: {0}")]
    LoaderStopped(String),
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn shard(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::BadShard {
            file: file.into(),
            message: message.into(),
        }
    }
}
