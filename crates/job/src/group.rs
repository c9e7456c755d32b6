//! The workers of a job as the training loop's process group.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster::{Command, WorkerClient};
use train::ProcessGroup;

/// A worker's view of the job: collectives go through the coordinator.
pub(crate) struct ClusterGroup<'a> {
    pub client: &'a WorkerClient,
    /// How long a checkpoint agreement may wait for the slowest worker.
    pub timeout: Duration,
    /// Set when a call found the coordinator gone.
    pub lost: LostFlag,
}

/// Whether (and how) a call of this session found the coordinator gone:
/// the worker then reconnects instead of stopping. Shared by the group and
/// the pod's key-value store.
#[derive(Clone, Default)]
pub(crate) struct LostFlag(Arc<Mutex<Option<String>>>);

impl LostFlag {
    /// Records `e` if it says the coordinator is gone (or, restarted, no
    /// longer knows this worker); returns `e`.
    pub fn note(&self, e: cluster::Error) -> cluster::Error {
        if let cluster::Error::CoordinatorLost { .. } | cluster::Error::NotMember { .. } = &e {
            let mut lost = self.0.lock().unwrap_or_else(|p| p.into_inner());
            lost.get_or_insert_with(|| e.to_string());
        }
        e
    }

    /// How the coordinator was found gone, if it was.
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The job lost a worker and restarts in `generation`.
fn lost(generation: u64) -> train::Error {
    train::Error::Interrupted {
        reason: format!("a worker was lost (job generation {generation})"),
        restart: true,
    }
}

/// A lost worker means restart; a stopped job stops this worker, saying
/// why; anything else stops it too.
fn to_train(e: cluster::Error) -> train::Error {
    match e {
        cluster::Error::Restart { generation } => lost(generation),
        cluster::Error::Stopped { reason } => train::Error::Interrupted {
            reason,
            restart: false,
        },
        other => train::Error::Group(other.to_string()),
    }
}

impl ProcessGroup for ClusterGroup<'_> {
    fn rank(&self) -> usize {
        self.client.process_id() as usize
    }

    fn size(&self) -> usize {
        self.client.world_size() as usize
    }

    fn all_reduce_sum(&self, step: u64, data: &mut [f32]) -> train::Result<()> {
        self.client
            .all_reduce_sum(step, data)
            .map_err(|e| to_train(self.lost.note(e)))
    }

    fn agree_checkpoint(
        &self,
        step: u64,
        written: std::result::Result<(), String>,
    ) -> train::Result<bool> {
        let error = written.as_ref().err().cloned().unwrap_or_default();
        let verdict = self
            .client
            .commit_checkpoint(step, written.is_ok(), &error, self.timeout)
            .map_err(|e| to_train(self.lost.note(e)))?;
        if !verdict.commit {
            eprintln!(
                "meshtrain worker: checkpoint {step} not committed: {}",
                verdict.reason
            );
            // A lost worker also aborts the agreement; the restart (or
            // stop) command follows on the next heartbeat.
            let t = std::time::Instant::now();
            while t.elapsed() < 2 * self.client.heartbeat_interval() {
                if self.client.command() != Command::Continue {
                    return self.check().map(|()| false);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(verdict.commit)
    }

    fn report(&self, step: u64, metrics: &serde_json::Value) -> train::Result<()> {
        self.client
            .report_metrics(step, &metrics.to_string())
            .map_err(|e| to_train(self.lost.note(e)))
    }

    fn check(&self) -> train::Result<()> {
        if let Some(why) = self.lost.get().or_else(|| self.client.coordinator_lost()) {
            return Err(train::Error::Interrupted {
                reason: format!("lost the coordinator: {why}"),
                restart: true,
            });
        }
        match self.client.command() {
            Command::Continue => Ok(()),
            Command::Stop { reason } => Err(train::Error::Interrupted {
                reason,
                restart: false,
            }),
            Command::Restart { generation, .. } => Err(lost(generation)),
        }
    }
}
