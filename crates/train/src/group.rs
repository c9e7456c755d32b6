//! Multi-process data parallelism, as the training loop sees it: a group of
//! processes that sum gradients, agree on checkpoints and report metrics.
//! The transport (the coordinator's gRPC service) implements it elsewhere;
//! training stays free of networking.

use crate::Result;

/// The processes of a data-parallel job. Every process runs the same
/// config and sees the same global batch; process `rank` computes the
/// gradient of its rows, and the sum over processes is applied everywhere.
pub trait ProcessGroup {
    /// This process's index, `0..size()`.
    fn rank(&self) -> usize;
    /// Number of processes.
    fn size(&self) -> usize;
    /// Sums `data` elementwise over all processes for step `step`; every
    /// process gets identical bytes. An interrupted job returns
    /// [`crate::Error::Interrupted`].
    fn all_reduce_sum(&self, step: u64, data: &mut [f32]) -> Result<()>;
    /// Says whether this process wrote its part of checkpoint `step`;
    /// returns whether every process did (then it may be committed).
    fn agree_checkpoint(&self, step: u64, written: std::result::Result<(), String>)
    -> Result<bool>;
    /// Reports step metrics (the same JSON object a single process writes
    /// to `metrics.jsonl`); the job's coordinator writes them.
    fn report(&self, step: u64, metrics: &serde_json::Value) -> Result<()>;
    /// Called between steps: an error stops the loop (a lost process, a
    /// stop request).
    fn check(&self) -> Result<()>;
}
