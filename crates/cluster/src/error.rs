//! The crate's one error type, and the mapping from gRPC statuses to it.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Metadata key carrying the new generation on an `ABORTED` status.
pub(crate) const GENERATION_KEY: &str = "x-meshtrain-generation";
/// Metadata key carrying the last committed step on an `ABORTED` status.
pub(crate) const RESUME_KEY: &str = "x-meshtrain-resume-hint";
/// Metadata key marking an `ABORTED` status as "the job was stopped".
pub(crate) const STOPPED_KEY: &str = "x-meshtrain-stopped";
/// Metadata key marking a `FAILED_PRECONDITION` status as "the caller is
/// not a member of the job".
pub(crate) const NOT_MEMBER_KEY: &str = "x-meshtrain-not-member";
/// How a stopped status's message starts; the reason follows.
const STOPPED_PREFIX: &str = "the job was stopped: ";

/// What can go wrong in the cluster layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // --- Setup -----------------------------------------------------------
    /// No token in the file or environment variable, or it was empty.
    #[error("no cluster token: {0}")]
    Token(String),
    /// Reading a token, certificate or key file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Binding, connecting or configuring TLS failed.
    #[error("transport to {addr}: {message}")]
    Transport {
        /// The address concerned.
        addr: String,
        /// The transport error, with its causes.
        message: String,
    },

    // --- Membership and collectives ----------------------------------------
    /// A worker was lost (or replaced) while this call waited, or the call
    /// was made in an old generation: restart from the last checkpoint.
    #[error("the job restarted: generation is now {generation}")]
    Restart {
        /// The generation to continue in.
        generation: u64,
    },
    /// The coordinator stopped the job (see
    /// [`crate::CoordinatorHandle::stop`]): every call waiting on other
    /// workers is released with this error, and later calls fail with it.
    #[error("the job was stopped: {reason}")]
    Stopped {
        /// Why, as the coordinator said.
        reason: String,
    },
    /// The coordinator went away (crashed, shut down, unreachable).
    #[error("lost the coordinator at {addr}: {message}")]
    CoordinatorLost {
        /// The coordinator's address.
        addr: String,
        /// What the transport or the coordinator said.
        message: String,
    },
    /// The coordinator does not know this worker: it was restarted (a new
    /// coordinator process resuming the job), or it declared the worker
    /// lost. Registering again may let the worker back in.
    #[error("the coordinator at {addr} no longer knows this worker: {message}")]
    NotMember {
        /// The coordinator's address.
        addr: String,
        /// What the coordinator said.
        message: String,
    },
    /// A blocking call did not complete in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The coordinator refused a call (bad token, version mismatch, full
    /// job, invalid argument, ...).
    #[error("coordinator refused the call ({code:?}): {message}")]
    Rpc {
        /// The gRPC status code.
        code: tonic::Code,
        /// The coordinator's message.
        message: String,
    },
}

impl Error {
    /// The gRPC code for [`Error::Rpc`], `None` for other kinds.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Rpc { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the same call may succeed later against the same address:
    /// no connection or no answer (a coordinator restarting), or a full job
    /// (a slot frees once its silent holder is declared lost). Refusals of
    /// the caller itself (token, version, config) are final.
    pub fn may_succeed_later(&self) -> bool {
        match self {
            Error::Transport { .. } | Error::CoordinatorLost { .. } | Error::Timeout(_) => true,
            Error::Rpc { code, .. } => matches!(
                code,
                tonic::Code::ResourceExhausted | tonic::Code::Unavailable
            ),
            _ => false,
        }
    }

    /// Classifies a status returned by a call to the coordinator at `addr`.
    pub(crate) fn from_status(status: tonic::Status, addr: &str) -> Self {
        use tonic::Code;
        let message = status.message().to_string();
        match status.code() {
            Code::Aborted if status.metadata().contains_key(STOPPED_KEY) => Error::Stopped {
                reason: message
                    .strip_prefix(STOPPED_PREFIX)
                    .unwrap_or(&message)
                    .to_string(),
            },
            Code::Aborted => match generation_of(&status) {
                Some(generation) => Error::Restart { generation },
                None => Error::Rpc {
                    code: Code::Aborted,
                    message,
                },
            },
            Code::FailedPrecondition if status.metadata().contains_key(NOT_MEMBER_KEY) => {
                Error::NotMember {
                    addr: addr.to_string(),
                    message,
                }
            }
            Code::DeadlineExceeded => Error::Timeout(message),
            // Transport failures surface as Unavailable (connection refused
            // or reset), Unknown/Internal with an h2 error, or Cancelled.
            Code::Unavailable | Code::Cancelled => Error::CoordinatorLost {
                addr: addr.to_string(),
                message: full_message(&status),
            },
            Code::Unknown | Code::Internal if std::error::Error::source(&status).is_some() => {
                Error::CoordinatorLost {
                    addr: addr.to_string(),
                    message: full_message(&status),
                }
            }
            code => Error::Rpc { code, message },
        }
    }
}

/// Reads the new generation off an `ABORTED` status.
fn generation_of(status: &tonic::Status) -> Option<u64> {
    metadata_u64(status, GENERATION_KEY)
}

/// Reads a number from a status's metadata.
pub(crate) fn metadata_u64(status: &tonic::Status, key: &str) -> Option<u64> {
    status.metadata().get(key)?.to_str().ok()?.parse().ok()
}

/// The status message followed by its chain of causes.
fn full_message(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    let mut last = out.clone();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        // Wrappers often repeat their cause's text; say it once.
        let text = e.to_string();
        if text != last {
            out.push_str(": ");
            out.push_str(&text);
            last = text;
        }
        source = e.source();
    }
    out
}

/// An `ABORTED` status telling the caller the job moved to `generation`.
/// The last committed step rides along, where there is one.
pub(crate) fn restart_status(
    generation: u64,
    resume_hint: Option<u64>,
    why: &str,
) -> tonic::Status {
    let mut status = tonic::Status::aborted(format!("restart to generation {generation}: {why}"));
    let md = status.metadata_mut();
    md.insert(GENERATION_KEY, generation.into());
    if let Some(step) = resume_hint {
        md.insert(RESUME_KEY, step.into());
    }
    status
}

/// A `FAILED_PRECONDITION` status telling the caller it is not a member.
pub(crate) fn not_member_status(message: String) -> tonic::Status {
    let mut status = tonic::Status::failed_precondition(message);
    status.metadata_mut().insert(
        NOT_MEMBER_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}

/// An `ABORTED` status telling the caller the job was stopped, and why.
pub(crate) fn stopped_status(reason: &str) -> tonic::Status {
    let mut status = tonic::Status::aborted(format!("{STOPPED_PREFIX}{reason}"));
    status.metadata_mut().insert(
        STOPPED_KEY,
        tonic::metadata::MetadataValue::from_static("1"),
    );
    status
}
