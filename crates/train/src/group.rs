//! Multi-process data parallelism, as the training loop sees it: a group of
//! processes that sum gradients, agree on checkpoints and report metrics.
//! The transport (the coordinator's gRPC service) implements it elsewhere;
//! training stays free of networking.

use std::path::PathBuf;
use std::thread::JoinHandle;

use crate::checkpoint::{self, Snapshot};
use crate::{Error, Result};

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

/// Checkpoints of a process group, written in the background: every
/// process writes its part (process 0 the tensors, which all processes hold
/// identically) on a thread while training goes on; at the end of the next
/// step, the same step everywhere, the processes agree and process 0
/// commits. The agreement point is fixed so no process can wait for it
/// while another waits in the next step's all-reduce.
pub(crate) struct GroupSaver<'g> {
    group: &'g dyn ProcessGroup,
    root: PathBuf,
    keep: usize,
    pending: Option<Pending>,
}

struct Pending {
    /// Loop step at which the save started.
    started: u64,
    /// The snapshot without tensors (what commit needs).
    header: Snapshot,
    write: JoinHandle<Result<()>>,
}

impl<'g> GroupSaver<'g> {
    pub(crate) fn new(group: &'g dyn ProcessGroup, root: PathBuf, keep: usize) -> Self {
        GroupSaver {
            group,
            root,
            keep,
            pending: None,
        }
    }

    /// Starts writing this process's part of `snap` (taken after loop step `s`).
    pub(crate) fn start(&mut self, s: u64, mut snap: Snapshot) -> Result<()> {
        self.settle()?;
        let rank = self.group.rank();
        if rank != 0 {
            snap.tensors.clear();
        }
        let header = Snapshot {
            tensors: Vec::new(),
            config_toml: snap.config_toml.clone(),
            loader: snap.loader.clone(),
            ..snap
        };
        let partial = checkpoint::partial_dir(&self.root, snap.step);
        let write = std::thread::Builder::new()
            .name(format!("checkpoint-{}", snap.step))
            .spawn(move || {
                std::fs::create_dir_all(&partial)
                    .map_err(|e| Error::io("creating", &partial, e))?;
                checkpoint::write_part(&partial, rank, &snap)
            })
            .map_err(|e| Error::io("starting the checkpoint thread for", &self.root, e))?;
        self.pending = Some(Pending {
            started: s,
            header,
            write,
        });
        Ok(())
    }

    /// At the end of loop step `s`: settles a save started before it.
    pub(crate) fn after_step(&mut self, s: u64) -> Result<()> {
        match &self.pending {
            Some(p) if p.started < s => self.settle(),
            _ => Ok(()),
        }
    }

    /// Waits for this process's part, agrees with the others, and (process
    /// 0) commits.
    pub(crate) fn settle(&mut self) -> Result<()> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        let step = p.header.step;
        let written = match p.write.join() {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("the checkpoint thread panicked".to_string()),
        };
        let all = self.group.agree_checkpoint(step, written.clone())?;
        if let Err(e) = written {
            return Err(Error::Save {
                step,
                kept: "this process's part failed".into(),
                source: Box::new(Error::Group(e)),
            });
        }
        if !all {
            return Err(Error::Group(format!(
                "checkpoint of step {step}: another process failed to write its part"
            )));
        }
        if self.group.rank() == 0 {
            checkpoint::commit(&self.root, &p.header, self.group.size(), self.keep)?;
            eprintln!("meshtrain: checkpoint step {step} committed");
        }
        Ok(())
    }
}

impl Drop for GroupSaver<'_> {
    /// A run that stops (error, restart) lets its part finish writing, so
    /// a restart in this process never races its own writer.
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            let _ = p.write.join();
        }
    }
}
