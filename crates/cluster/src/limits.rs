//! What one peer may send the coordinator and make it hold. Every limit
//! is checked before anything is stored; a call beyond one is refused with
//! `RESOURCE_EXHAUSTED` (or `INVALID_ARGUMENT` for a malformed field) and a
//! message naming the field, its size and the limit, and the coordinator
//! goes on serving everyone else.

use std::time::Duration;

/// The largest gRPC message either side decodes or encodes (all-reduce
/// payloads travel in chunks of a quarter of it). A larger message is
/// refused by the transport before it is buffered whole.
pub const MAX_MESSAGE_BYTES: usize = crate::payload::MAX_MESSAGE_BYTES;

/// Concurrent calls (HTTP/2 streams) on one connection: a worker uses two
/// connections and at most a few calls on each at once (one collective,
/// the plugin's key-value gets on a pod host).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;

/// The longest wait a call may ask for (`timeout_ms` beyond it is capped).
pub const MAX_WAIT: Duration = Duration::from_secs(86_400);

/// A key of the key-value store, a barrier name.
pub const MAX_KEY_BYTES: usize = 1024;

/// One value of the key-value store.
pub const MAX_VALUE_BYTES: usize = 8 << 20;

/// Keys in the key-value store at once.
pub const MAX_KV_KEYS: usize = 65_536;

/// The key-value store's values together.
pub const MAX_KV_BYTES: usize = 256 << 20;

/// Distinct barrier names over the life of a job.
pub const MAX_BARRIERS: usize = 65_536;

/// A host name at registration.
pub const MAX_HOST_BYTES: usize = 256;

/// One step's metrics JSON from one worker, or one checkpoint error text.
pub const MAX_REPORT_BYTES: usize = 1 << 20;

/// Steps whose metrics wait for some worker's report; honest workers keep
/// this to a few (a step completes when every live worker reported it).
pub const MAX_PENDING_METRIC_STEPS: usize = 1024;

/// Checkpoint agreements under way at once.
pub const MAX_PENDING_CHECKPOINTS: usize = 1024;

/// All-reduces under way at once (honest workers: one or two per step).
pub const MAX_PENDING_REDUCES: usize = 64;

/// Refuses `what` of `len` bytes beyond `max`.
pub(crate) fn check_len(what: &str, len: usize, max: usize) -> Result<(), tonic::Status> {
    if len > max {
        return Err(tonic::Status::resource_exhausted(format!(
            "{what} is {len} bytes, more than the coordinator's limit of {max}"
        )));
    }
    Ok(())
}

/// Refuses a new entry of `what` when `count` already reached `max`.
pub(crate) fn check_count(what: &str, count: usize, max: usize) -> Result<(), tonic::Status> {
    if count >= max {
        return Err(tonic::Status::resource_exhausted(format!(
            "{what}: the coordinator already holds {count}, its limit"
        )));
    }
    Ok(())
}
