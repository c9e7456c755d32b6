//! Saving: a host snapshot of the training state, written by a background
//! thread into `step_N.partial/`, committed by rename and marker.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use super::format::{
    FileRecord, Manifest, MeshRecord, Part, TensorRecord, parallel, sha256, sync_dir,
    write_durable, write_safetensors,
};
use super::{FORMAT, MANIFEST, MARKER, PARTIAL, dir_name};
use crate::{Error, Result};

/// The training state after `step` steps, copied off the devices.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Steps done.
    pub step: u64,
    /// Mesh of the run.
    pub mesh: MeshRecord,
    /// Loader state of each batch row this process loads, after the
    /// step's batch: `(row, state)`.
    pub loader_rows: Vec<(usize, data::LoaderState)>,
    /// Parameter init seed.
    pub seed: u64,
    /// The resolved config (TOML).
    pub config_toml: String,
    /// `params/*`, `m/*`, `v/*`: the pieces this process writes.
    pub tensors: Vec<SnapshotTensor>,
}

/// One global tensor's pieces held by this process.
#[derive(Clone, Debug)]
pub struct SnapshotTensor {
    /// `params/<hf name>`, `m/<hf name>`, `v/<hf name>`.
    pub name: String,
    /// Global shape.
    pub shape: Vec<usize>,
    /// The boxes this process writes (each box once).
    pub pieces: Vec<Piece>,
}

/// A box of a global tensor, from one device.
#[derive(Clone, Debug)]
pub struct Piece {
    /// Partition (device) that held it; names the file it goes to.
    pub device: usize,
    /// First index along each dimension.
    pub start: Vec<usize>,
    /// Box shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Target size of one shard file: big enough to stream, small enough that
/// a large model's files are written (and verified) by all cores at once.
const FILE_BYTES: usize = 64 << 20;

fn part_name(process: usize) -> String {
    format!("part-{process:05}.json")
}

/// The directory a checkpoint of `step` is written into before commit.
pub fn partial_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("{}{PARTIAL}", dir_name(step)))
}

/// Writes this process's files of `snap` into `partial` (created by the
/// caller) and its `part-P.json`. Process 0 also writes `config.toml`.
pub fn write_part(partial: &Path, process: usize, snap: &Snapshot) -> Result<()> {
    let shards = partial.join("shards");
    std::fs::create_dir_all(&shards).map_err(|e| Error::io("creating", &shards, e))?;
    // Files per device, so a host restoring under the same sharding reads
    // its own devices' files; whole (unsharded) tensors, which every host
    // reads, go to files of their own (`None`).
    let mut by_device: BTreeMap<Option<usize>, Vec<(&str, &Piece)>> = BTreeMap::new();
    let sharded_mesh = snap.mesh.data * snap.mesh.fsdp * snap.mesh.tensor > 1;
    for t in &snap.tensors {
        for p in &t.pieces {
            let whole = sharded_mesh && p.shape == t.shape;
            let key = (!whole).then_some(p.device);
            by_device.entry(key).or_default().push((&t.name, p));
        }
    }
    let file_name = |device: &Option<usize>, k: usize| match device {
        Some(d) => format!("shards/p{process:05}-d{d:05}-{k:03}.safetensors"),
        None => format!("shards/p{process:05}-whole-{k:03}.safetensors"),
    };
    let mut files = Vec::new();
    let mut tensors: Vec<TensorRecord> = snap
        .tensors
        .iter()
        .map(|t| TensorRecord {
            name: t.name.clone(),
            shape: t.shape.clone(),
            dtype: "F32".into(),
            pieces: Vec::new(),
        })
        .collect();
    let index: BTreeMap<&str, usize> = snap
        .tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    // Files of at most FILE_BYTES (a larger box gets a file of its own),
    // written in parallel.
    let mut jobs: Vec<(String, Vec<(&str, &Piece)>)> = Vec::new();
    for (device, pieces) in &by_device {
        let mut chunk: Vec<(&str, &Piece)> = Vec::new();
        let mut bytes = 0;
        for &(name, p) in pieces {
            if !chunk.is_empty() && bytes + 4 * p.data.len() > FILE_BYTES {
                let rel = file_name(device, jobs.len());
                jobs.push((rel, std::mem::take(&mut chunk)));
                bytes = 0;
            }
            bytes += 4 * p.data.len();
            chunk.push((name, p));
        }
        let rel = file_name(device, jobs.len());
        jobs.push((rel, chunk));
    }
    let written = parallel(&jobs, |(rel, pieces)| {
        let entries: Vec<(&str, &[usize], &[f32])> = pieces
            .iter()
            .map(|(name, p)| (*name, p.shape.as_slice(), p.data.as_slice()))
            .collect();
        write_safetensors(partial, rel, &entries)
    });
    for ((rel, pieces), record) in jobs.iter().zip(written) {
        files.push(record?);
        for (name, p) in pieces {
            tensors[index[name]].pieces.push(super::PieceRecord {
                file: rel.clone(),
                key: name.to_string(),
                start: p.start.clone(),
                shape: p.shape.clone(),
            });
        }
    }
    if process == 0 {
        files.push(write_durable(
            partial,
            "config.toml",
            snap.config_toml.as_bytes(),
        )?);
    }
    fault_stall(snap.step);
    let part = Part {
        process,
        step: snap.step,
        files,
        tensors,
        loader_rows: snap.loader_rows.clone(),
    };
    sync_dir(&shards)?;
    write_durable(
        partial,
        &part_name(process),
        // invariant: numbers and strings always serialize.
        &serde_json::to_vec_pretty(&part).expect("JSON"),
    )?;
    Ok(())
}

/// Fault injection for the crash tests: `MESHTRAIN_FAULT_CHECKPOINT_STALL=STEP:SECONDS`
/// pauses the save of step STEP after its shard files, before it can commit.
fn fault_stall(step: u64) {
    let Ok(spec) = std::env::var("MESHTRAIN_FAULT_CHECKPOINT_STALL") else {
        return;
    };
    if let Some((at, secs)) = spec.split_once(':')
        && at.parse() == Ok(step)
        && let Ok(secs) = secs.parse::<f64>()
    {
        eprintln!(
            "meshtrain: checkpoint step {step}: shards written, stalling {secs} s (fault injection)"
        );
        std::thread::sleep(std::time::Duration::from_secs_f64(secs));
    }
}

/// Merges the `processes` parts of `step_N.partial/` into the manifest,
/// renames the directory to `step_N/`, writes the marker, and deletes the
/// oldest committed checkpoints beyond `keep` (0 keeps all).
pub fn commit(root: &Path, snap: &Snapshot, processes: usize, keep: usize) -> Result<PathBuf> {
    let partial = partial_dir(root, snap.step);
    let mut files: Vec<FileRecord> = Vec::new();
    let mut tensors: BTreeMap<String, TensorRecord> = BTreeMap::new();
    let mut rows: BTreeMap<usize, data::LoaderState> = BTreeMap::new();
    for process in 0..processes {
        let path = partial.join(part_name(process));
        let text = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        let part: Part = serde_json::from_slice(&text).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            message: format!("not a valid part file: {e}"),
        })?;
        if part.step != snap.step || part.process != process {
            return Err(Error::Checkpoint {
                path,
                message: format!(
                    "holds process {} step {}, expected process {process} step {}",
                    part.process, part.step, snap.step
                ),
            });
        }
        files.extend(part.files);
        for (row, state) in part.loader_rows {
            if rows
                .insert(row, state.clone())
                .is_some_and(|had| had != state)
            {
                return Err(Error::Checkpoint {
                    path,
                    message: format!("row {row}'s loader state differs from another part's"),
                });
            }
        }
        for t in part.tensors {
            match tensors.get_mut(&t.name) {
                Some(have) if have.shape == t.shape => have.pieces.extend(t.pieces),
                Some(have) => {
                    return Err(Error::Checkpoint {
                        path,
                        message: format!(
                            "tensor {} has shape {:?} here and {:?} in another part",
                            t.name, t.shape, have.shape
                        ),
                    });
                }
                None => {
                    tensors.insert(t.name.clone(), t);
                }
            }
        }
        files.push(FileRecord {
            path: part_name(process),
            bytes: text.len() as u64,
            sha256: sha256(&text),
        });
    }
    if rows.keys().copied().ne(0..rows.len()) {
        return Err(Error::Checkpoint {
            path: partial,
            message: format!(
                "the parts hold loader states of rows {:?}, not of every row of the batch",
                rows.keys().collect::<Vec<_>>()
            ),
        });
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        step: snap.step,
        mesh: snap.mesh,
        processes,
        loader_rows: rows.into_values().collect(),
        seed: snap.seed,
        software_version: env!("CARGO_PKG_VERSION").into(),
        files,
        tensors: tensors.into_values().collect(),
    };
    // invariant: numbers and strings always serialize.
    let bytes = serde_json::to_vec_pretty(&manifest).expect("JSON");
    write_durable(&partial, MANIFEST, &bytes)?;
    sync_dir(&partial)?;
    let done = root.join(dir_name(snap.step));
    if done.exists() {
        // Same step saved again (a resumed run passing an old checkpoint):
        // the new one replaces it; every other checkpoint stays.
        std::fs::remove_dir_all(&done).map_err(|e| Error::io("removing", &done, e))?;
    }
    std::fs::rename(&partial, &done).map_err(|e| Error::io("renaming into", &done, e))?;
    sync_dir(root)?;
    write_durable(&done, MARKER, sha256(&bytes).as_bytes())?;
    sync_dir(&done)?;
    if keep > 0 {
        prune(root, keep)?;
    }
    Ok(done)
}

/// Deletes the oldest committed checkpoints so that `keep` remain.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let committed: Vec<_> = super::list(root)?
        .into_iter()
        .filter(|(_, dir)| dir.join(MARKER).is_file())
        .collect();
    for (_, dir) in committed.iter().take(committed.len().saturating_sub(keep)) {
        std::fs::remove_dir_all(dir).map_err(|e| Error::io("removing old checkpoint", dir, e))?;
    }
    Ok(())
}

/// Saves a checkpoint under `root` (blocking) from the parts of every
/// process: `parts[P]` is what process `P` writes (one part for a single
/// process; one per host when emulating hosts). On failure the partial
/// directory is removed and the error says which checkpoint is still the
/// newest.
pub fn save(root: &Path, parts: &[Snapshot], keep: usize) -> Result<PathBuf> {
    let snap = &parts[0];
    let partial = partial_dir(root, snap.step);
    let result = (|| {
        if partial.exists() {
            std::fs::remove_dir_all(&partial).map_err(|e| Error::io("removing", &partial, e))?;
        }
        std::fs::create_dir_all(&partial).map_err(|e| Error::io("creating", &partial, e))?;
        for (process, part) in parts.iter().enumerate() {
            write_part(&partial, process, part)?;
        }
        commit(root, snap, parts.len(), keep)
    })();
    result.map_err(|source| {
        let _ = std::fs::remove_dir_all(&partial);
        save_failed(root, snap.step, source)
    })
}

/// The error of a failed save of `step`, saying which checkpoint is still
/// the newest.
fn save_failed(root: &Path, step: u64, source: Error) -> Error {
    let kept = match super::list(root).ok().and_then(|l| l.last().cloned()) {
        Some((step, _)) => format!("the newest checkpoint is still step {step}"),
        None => "there is no earlier checkpoint".into(),
    };
    Error::Save {
        step,
        kept,
        source: Box::new(source),
    }
}

/// Saves in the background, one checkpoint at a time.
pub struct Writer {
    root: PathBuf,
    keep: usize,
    job: Option<(u64, JoinHandle<Result<PathBuf>>)>,
}

impl Writer {
    /// A writer into `root` (`run_dir/checkpoints`) keeping `keep` checkpoints.
    pub fn new(root: PathBuf, keep: usize) -> Writer {
        Writer {
            root,
            keep,
            job: None,
        }
    }

    /// Waits for the previous save (returning its error), then starts
    /// writing `parts` (one per process, see [`save`]) on a background thread.
    pub fn start(&mut self, parts: Vec<Snapshot>) -> Result<()> {
        let step = parts[0].step;
        self.start_with(step, move || Ok(parts))
    }

    /// Waits for the previous save (returning its error), then, on a
    /// background thread, makes the parts of the checkpoint after `step`
    /// steps with `parts` (e.g. reads them off the devices) and writes
    /// them. An error of `parts` fails the save like a write error.
    pub fn start_with<F>(&mut self, step: u64, parts: F) -> Result<()>
    where
        F: FnOnce() -> Result<Vec<Snapshot>> + Send + 'static,
    {
        self.wait()?;
        std::fs::create_dir_all(&self.root).map_err(|e| Error::io("creating", &self.root, e))?;
        let (root, keep) = (self.root.clone(), self.keep);
        let handle = std::thread::Builder::new()
            .name(format!("checkpoint-{step}"))
            .spawn(move || match parts() {
                Ok(parts) => save(&root, &parts, keep),
                Err(e) => Err(save_failed(&root, step, e)),
            })
            .map_err(|e| Error::io("starting the checkpoint thread for", &self.root, e))?;
        self.job = Some((step, handle));
        Ok(())
    }

    /// The step of a save that finished since the last call, or its error.
    pub fn poll(&mut self) -> Result<Option<u64>> {
        match &self.job {
            Some((_, h)) if h.is_finished() => self.wait(),
            _ => Ok(None),
        }
    }

    /// Waits for the save in flight; its step, or its error.
    pub fn wait(&mut self) -> Result<Option<u64>> {
        let Some((step, handle)) = self.job.take() else {
            return Ok(None);
        };
        match handle.join() {
            Ok(r) => r.map(|_| Some(step)),
            Err(_) => Err(Error::Checkpoint {
                path: partial_dir(&self.root, step),
                message: "the checkpoint thread panicked".into(),
            }),
        }
    }
}

impl Drop for Writer {
    /// A save in flight is finished (it is a valid checkpoint even if the
    /// run stops with an error).
    fn drop(&mut self) {
        if let Err(e) = self.wait() {
            eprintln!("meshtrain: {e}");
        }
    }
}
