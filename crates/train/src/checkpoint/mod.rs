//! Checkpoints: sharded, written in the background, visible only when
//! complete, verified on restore, restorable under another mesh.
//!
//! # Layout
//! ```text
//! run_dir/checkpoints/
//!   step_00000100/              a committed checkpoint (100 steps done)
//!     COMMITTED                 sha256 of manifest.json, written last
//!     manifest.json             step, mesh, each batch row's loader state, every file's
//!                               size and sha256,
//!                               every tensor's global shape and where its pieces are
//!     config.toml               the resolved config of the run
//!     part-00000.json           what process 0 wrote (one per process)
//!     shards/p00000-d00003-007.safetensors
//!                               pieces device (partition) 3 of process 0 owns:
//!                               `params/<hf name>`, `m/<hf name>`, `v/<hf name>`, each a
//!                               box of the global tensor (a scanned run stores each layer
//!                               tensor stacked: `params/model.layers.*.<tensor>`); files of at most 64 MiB (unless
//!                               one box is larger)
//!     shards/p00000-whole-000.safetensors
//!                               tensors stored whole (replicated, e.g. norms), which
//!                               every host reads
//!   step_00000200.partial/      being written (or left by a crash): never read
//! ```
//! A tensor replicated over some mesh axes is written once: of the devices
//! holding the same box, the lowest partition writes it.
//!
//! # Commit protocol
//! Each process writes its files into `step_N.partial/`, fsyncs them and
//! records their sha256 in its `part-P.json` (written to a temporary name,
//! fsynced, renamed). When every process has written its part (on a
//! multi-host job the coordinator agrees on that), one process merges the
//! parts into `manifest.json`, fsyncs the directory, renames it to
//! `step_N/` and writes `COMMITTED`; then the oldest checkpoints beyond
//! `train.keep_checkpoints` are deleted. A directory without a matching
//! `COMMITTED` is incomplete and is never restored.
//!
//! Each process writes the boxes its own devices hold (a box replicated
//! over hosts is written by the host of the lowest partition holding it)
//! and the loader states of the batch rows it loads.
//!
//! # Restore
//! [`Checkpoint::open`] checks the marker, the manifest, every file's size
//! and sha256, and that each tensor's pieces tile its global shape.
//! [`Checkpoint::open_manifest`] checks all but the files' contents, which
//! are verified when first read: a host reads, with
//! [`Checkpoint::read_box`], only the pieces overlapping the boxes its own
//! devices hold under the run's mesh (any mesh, any number of hosts).

mod export;
mod format;
mod read;
mod write;

pub use export::{Inside, is_checkpoint, models_inside};
pub use format::{FileRecord, Manifest, MeshRecord, PieceRecord, TensorRecord};
pub(crate) use read::remove_partials;
pub use read::{Checkpoint, latest, list};
pub use write::{Piece, Snapshot, SnapshotTensor, Writer, commit, partial_dir, save, write_part};

/// Directory name of the checkpoint after `step` steps.
pub fn dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

/// The step of a committed-looking directory name (`step_00000100`).
fn parse_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("step_")?;
    if digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse().ok()
    } else {
        None
    }
}

/// Suffix of a checkpoint being written.
const PARTIAL: &str = ".partial";
/// The commit marker.
const MARKER: &str = "COMMITTED";
/// The manifest.
const MANIFEST: &str = "manifest.json";
/// The format written in manifests: since version 3 the parameters and
/// moments may be stored stacked over the layers
/// (`params/model.layers.*.<tensor>`, `[layers, ...]`, when the layers
/// are scanned, [`gemma::Layout::Stacked`]); either layout restores into
/// either.
const FORMAT: &str = "meshtrain-checkpoint/3";
/// The format before stacked tensors: still read.
const FORMAT_PER_LAYER: &str = "meshtrain-checkpoint/2";
