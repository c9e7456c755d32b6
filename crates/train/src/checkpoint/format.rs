//! What a checkpoint's JSON files hold, and the low-level file writing:
//! safetensors files hashed while written, fsync of files and directories.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A file of the checkpoint: path relative to the checkpoint directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    /// Relative path (`/`-separated).
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lowercase hex sha256 of the contents.
    pub sha256: String,
}

/// One box of a global tensor, stored as one safetensors entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PieceRecord {
    /// The safetensors file (relative path).
    pub file: String,
    /// Its key in that file.
    pub key: String,
    /// Index of the box's first element along each dimension.
    pub start: Vec<usize>,
    /// The box's shape.
    pub shape: Vec<usize>,
}

/// A global tensor and where its pieces are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorRecord {
    /// `params/<hf name>`, `m/<hf name>` or `v/<hf name>`.
    pub name: String,
    /// Global shape.
    pub shape: Vec<usize>,
    /// Element type as safetensors names it (`F32`).
    pub dtype: String,
    /// Pieces, which tile the global shape.
    pub pieces: Vec<PieceRecord>,
}

/// The mesh the checkpoint was saved under (restore may use another).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshRecord {
    /// Data-parallel size.
    pub data: i64,
    /// FSDP size.
    pub fsdp: i64,
    /// Tensor-parallel size.
    pub tensor: i64,
}

/// What one process wrote (`part-P.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Part {
    pub process: usize,
    pub step: u64,
    pub files: Vec<FileRecord>,
    pub tensors: Vec<TensorRecord>,
    /// The data-loader state of each batch row this process loaded.
    pub loader_rows: Vec<(usize, data::LoaderState)>,
}

/// `manifest.json`: everything needed to verify and restore a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// `meshtrain-checkpoint/3` (`/2` before stacked tensors).
    pub format: String,
    /// Optimizer steps done (the step counter of the program).
    pub step: u64,
    /// The mesh it was saved under.
    pub mesh: MeshRecord,
    /// Processes that wrote parts.
    pub processes: usize,
    /// Where the data stream of each row of the global batch stands
    /// (index = row, see [`data::RowLoader`]): the next batch is the one
    /// after `step`.
    pub loader_rows: Vec<data::LoaderState>,
    /// Seed the parameters were initialised from. The step itself draws no
    /// random numbers (no dropout); the data order's randomness is the
    /// loader state's.
    pub seed: u64,
    /// meshtrain version that wrote it.
    pub software_version: String,
    /// Every file but the manifest and the marker.
    pub files: Vec<FileRecord>,
    /// Every tensor.
    pub tensors: Vec<TensorRecord>,
}

/// Lowercase hex sha256.
pub(crate) fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// sha256 of bytes.
pub(crate) fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Writes `bytes` to `path` through a temporary name, fsynced, and returns
/// its record (relative to `root`).
pub(crate) fn write_durable(root: &Path, rel: &str, bytes: &[u8]) -> Result<FileRecord> {
    let path = root.join(rel);
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| Error::io("renaming into", &path, e))?;
    Ok(FileRecord {
        path: rel.to_string(),
        bytes: bytes.len() as u64,
        sha256: sha256(bytes),
    })
}

/// fsync of a directory (makes renames and new entries durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("syncing directory", dir, e))
}

/// Writes f32 tensors as one safetensors file, fsynced, hashing the bytes
/// as they go out (no second read).
pub(crate) fn write_safetensors(
    root: &Path,
    rel: &str,
    tensors: &[(&str, &[usize], &[f32])],
) -> Result<FileRecord> {
    let path = root.join(rel);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (key, shape, data) in tensors {
        let end = offset + data.len() * 4;
        header.insert(
            key.to_string(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [offset, end]}),
        );
        offset = end;
    }
    // invariant: numbers and strings always serialize.
    let mut head = serde_json::to_vec(&header).expect("JSON");
    // Pad the header so the data starts 8-byte aligned, as safetensors does.
    head.resize(head.len().div_ceil(8) * 8, b' ');
    let io = |e| Error::io("writing", &path, e);
    let file = File::create(&path).map_err(|e| Error::io("creating", &path, e))?;
    let mut out = HashingWriter {
        inner: BufWriter::with_capacity(1 << 22, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    out.write_all(&(head.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&head).map_err(io)?;
    let mut buf = Vec::with_capacity(1 << 20);
    for (_, _, data) in tensors {
        for chunk in data.chunks(1 << 18) {
            buf.clear();
            buf.extend(chunk.iter().flat_map(|v| v.to_le_bytes()));
            out.write_all(&buf).map_err(io)?;
        }
    }
    let (bytes, hash) = (out.bytes, out.hash.finalize());
    let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(FileRecord {
        path: rel.to_string(),
        bytes,
        sha256: hex(&hash),
    })
}

struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// `f` over `items` on up to all cores, results in item order.
pub(crate) fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        done.push((i, f(item)));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            // `f` returns its errors; a panic in it is a bug, passed on as it
            // was (the checkpoint Writer's thread turns it into an error).
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
