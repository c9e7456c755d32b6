//! The crate's one error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between Rust and a PJRT plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- loading a plugin ----
    /// The shared library could not be opened.
    #[error("cannot load PJRT plugin {path}: {message}")]
    Load {
        /// Path of the `.so`.
        path: PathBuf,
        /// What the dynamic loader said.
        message: String,
    },
    /// The plugin speaks a PJRT C API older than this binding's header.
    #[error(
        "PJRT plugin {path} implements C API {found_major}.{found_minor}; meshtrain needs {need_major}.{need_minor} or newer"
    )]
    ApiVersion {
        /// Path of the `.so`.
        path: PathBuf,
        /// Major version the plugin reports.
        found_major: i32,
        /// Minor version the plugin reports.
        found_minor: i32,
        /// Major version of the header.
        need_major: i32,
        /// Minor version of the header.
        need_minor: i32,
    },
    /// The plugin does not implement an entry point this call needs.
    #[error("the PJRT plugin does not implement {call}")]
    Unsupported {
        /// The C API function name.
        call: &'static str,
    },

    // ---- calls into the plugin ----
    /// A PJRT call returned an error; `message` is the plugin's own text.
    #[error("{call} failed ({code}): {message}")]
    Pjrt {
        /// The C API function name.
        call: &'static str,
        /// The PJRT error code name (e.g. `INVALID_ARGUMENT`).
        code: &'static str,
        /// The plugin's message.
        message: String,
    },

    // ---- arguments refused before reaching the plugin ----
    /// A named option has the wrong type for its name (plugins may abort on this).
    #[error("option `{name}` must be {expected}, got {found}")]
    OptionType {
        /// Option name.
        name: String,
        /// The type the plugin expects.
        expected: &'static str,
        /// The type that was given.
        found: &'static str,
    },
    /// An argument was refused before the call, with the reason.
    #[error("{what}: {reason}")]
    InvalidArgument {
        /// What was being done.
        what: &'static str,
        /// Why it cannot be done.
        reason: String,
    },

    // ---- installing plugins ----
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done (`reading`, `creating`...).
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Installing a plugin failed.
    #[error("installing the {backend} PJRT plugin: {reason}")]
    Install {
        /// `cpu`, `cuda` or `tpu`.
        backend: String,
        /// What went wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            what,
            reason: reason.into(),
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
