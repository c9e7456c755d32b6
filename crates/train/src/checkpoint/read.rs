//! Restoring: find the newest complete checkpoint, verify every byte of it,
//! assemble global tensors from their pieces.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::Mmap;
use safetensors::SafeTensors;

use super::format::{Manifest, PieceRecord, TensorRecord, parallel, sha256};
use super::{FORMAT, FORMAT_PER_LAYER, MANIFEST, MARKER, PARTIAL, parse_dir_name};
use crate::{Error, Result, TrainConfig};

/// Checkpoint directories under `root` named `step_N` (complete-looking;
/// `.partial` ones excluded), oldest first. A missing `root` is empty.
pub fn list(root: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", root, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("listing", root, e))?;
        let name = entry.file_name();
        if let Some(step) = name.to_str().and_then(parse_dir_name) {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Removes `step_N.partial` directories: saves interrupted by a crash.
/// Only call this when no save is in flight (at the start of a run).
pub(crate) fn remove_partials(root: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("step_") && name.ends_with(PARTIAL) {
            eprintln!("meshtrain: removing {name}, a checkpoint whose write was interrupted");
            std::fs::remove_dir_all(entry.path())
                .map_err(|e| Error::io("removing", entry.path(), e))?;
        }
    }
    Ok(())
}

/// The newest checkpoint under `root` that verifies; each newer one that
/// does not is reported on stderr and skipped. `every_file`: verify every
/// file's sha256 ([`Checkpoint::open`]; a single host reads them all
/// anyway), else the manifest and file sizes only
/// ([`Checkpoint::open_manifest`]; each host of a large job verifies what
/// it reads).
pub fn latest(root: &Path, every_file: bool) -> Result<Option<Checkpoint>> {
    for (_, dir) in list(root)?.into_iter().rev() {
        let opened = if every_file {
            Checkpoint::open(&dir)
        } else {
            Checkpoint::open_manifest(&dir)
        };
        match opened {
            Ok(c) => return Ok(Some(c)),
            Err(e) => eprintln!("meshtrain: skipping {e}; falling back to an older checkpoint"),
        }
    }
    Ok(None)
}

/// A committed checkpoint. [`Checkpoint::open`] verifies every file up
/// front; [`Checkpoint::open_manifest`] verifies the marker, the manifest
/// and the files' sizes, and each file's sha256 when it is first read: a
/// host of a large job reads (and verifies) only the files holding boxes
/// it needs.
pub struct Checkpoint {
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    files: Mutex<BTreeMap<String, Arc<Mmap>>>,
    bytes_read: AtomicU64,
}

impl Checkpoint {
    /// Opens and verifies a committed checkpoint: the marker matches the
    /// manifest, every file has its size and sha256, every tensor's pieces
    /// are present with their shapes and tile the global shape exactly.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
        let c = Self::open_manifest(dir)?;
        // Every file mapped and checked, all cores at once.
        let checked = parallel(&c.manifest.files, |f| c.verified(&f.path));
        for r in checked {
            r?;
        }
        for t in &c.manifest.tensors {
            for p in &t.pieces {
                c.piece_bytes(p)?;
            }
        }
        Ok(c)
    }

    /// Opens a committed checkpoint reading only its manifest: the marker
    /// matches it, its files exist with their sizes, and each tensor's
    /// pieces tile its shape. Files are verified as they are read.
    pub fn open_manifest(dir: &Path) -> Result<Checkpoint> {
        let bad = |message: String| Error::Checkpoint {
            path: dir.to_owned(),
            message,
        };
        if !dir.is_dir() {
            return Err(bad("does not exist or is not a directory".into()));
        }
        if !dir.join(MARKER).exists() && !dir.join(MANIFEST).exists() {
            let hint = super::models_inside(dir).map_or_else(
                || {
                    "a Hugging Face model directory is used as is by `meshtrain eval` or \
                     model.init = \"hf:DIR\""
                        .into()
                },
                |inside| inside.advice(false),
            );
            return Err(bad(format!(
                "not a meshtrain checkpoint (no {MANIFEST}); {hint}"
            )));
        }
        let marker = std::fs::read_to_string(dir.join(MARKER)).map_err(|_| {
            bad(format!(
                "incomplete: no {MARKER} marker (its write was interrupted)"
            ))
        })?;
        let path = dir.join(MANIFEST);
        let bytes = std::fs::read(&path).map_err(|e| Error::io("reading", &path, e))?;
        if sha256(&bytes) != marker.trim() {
            return Err(bad(format!(
                "{MANIFEST} does not match its {MARKER} marker"
            )));
        }
        let format = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["format"].as_str().map(str::to_owned));
        if format
            .as_deref()
            .is_some_and(|f| f != FORMAT && f != FORMAT_PER_LAYER)
        {
            return Err(bad(format!(
                "format {format:?}, this meshtrain reads {FORMAT:?} and {FORMAT_PER_LAYER:?} (checkpoints of \
                 meshtrain-checkpoint/1 kept one data-loader state for the whole batch; their \
                 parameters can be exported with an older meshtrain and used as model.init)"
            )));
        }
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("{MANIFEST} is not valid: {e}")))?;
        for f in &manifest.files {
            if f.path.split('/').any(|c| c.is_empty() || c == "..") {
                return Err(bad(format!(
                    "file path {:?} is not inside the checkpoint",
                    f.path
                )));
            }
            let p = dir.join(&f.path);
            let len = std::fs::metadata(&p)
                .map_err(|e| bad(format!("{}: missing or unreadable: {e}", f.path)))?
                .len();
            if len != f.bytes {
                return Err(bad(format!(
                    "{}: {len} bytes, the manifest says {} (truncated or corrupt)",
                    f.path, f.bytes
                )));
            }
        }
        let c = Checkpoint {
            dir: dir.to_owned(),
            manifest,
            files: Mutex::new(BTreeMap::new()),
            bytes_read: AtomicU64::new(0),
        };
        for t in &c.manifest.tensors {
            c.check_tiling(t)?;
        }
        Ok(c)
    }

    /// Bytes of checkpoint files read (and verified) so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read.load(Ordering::Relaxed)
    }

    /// File `rel` mapped, checked against its size and sha256 the first time.
    fn verified(&self, rel: &str) -> Result<Arc<Mmap>> {
        if let Some(m) = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(rel)
        {
            return Ok(m.clone());
        }
        let f = self
            .manifest
            .files
            .iter()
            .find(|f| f.path == rel)
            .ok_or_else(|| self.bad(format!("file {rel} is not listed")))?;
        let p = self.dir.join(rel);
        let file = std::fs::File::open(&p)
            .map_err(|e| self.bad(format!("{rel}: missing or unreadable: {e}")))?;
        // SAFETY: checkpoint files are never modified after commit; a
        // concurrent truncation is the only hazard and is caught by the
        // size check before any read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("mapping", &p, e))?;
        if map.len() as u64 != f.bytes {
            return Err(self.bad(format!(
                "{rel}: {} bytes, the manifest says {} (truncated or corrupt)",
                map.len(),
                f.bytes
            )));
        }
        if sha256(&map) != f.sha256 {
            return Err(self.bad(format!(
                "{rel}: sha256 does not match the manifest (corrupt)"
            )));
        }
        self.bytes_read.fetch_add(f.bytes, Ordering::Relaxed);
        let map = Arc::new(map);
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(rel.to_owned(), map.clone());
        Ok(map)
    }

    /// Steps done when it was saved.
    pub fn step(&self) -> u64 {
        self.manifest.step
    }

    /// The resolved config of the run that saved it.
    pub fn config(&self) -> Result<TrainConfig> {
        let path = self.dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
        TrainConfig::from_toml(&text, &path.display().to_string(), &[])
    }

    /// The record of tensor `name` as stored, or an error naming it.
    pub fn record(&self, name: &str) -> Result<&TensorRecord> {
        self.find(name).ok_or_else(|| Error::Checkpoint {
            path: self.dir.clone(),
            message: format!("has no tensor {name}"),
        })
    }

    fn find(&self, name: &str) -> Option<&TensorRecord> {
        self.manifest.tensors.iter().find(|t| t.name == name)
    }

    /// Where tensor `name` (`<group>/<parameter name>`) is, in either
    /// layout ([`gemma::Layout`]): stored under its name; a layer's tensor
    /// as a slice of the stacked one (`model.layers.3.x` in
    /// `model.layers.*.x`); or a stacked one as the layers' own tensors.
    fn locate(&self, name: &str) -> Result<Located<'_>> {
        if let Some(t) = self.find(name) {
            return Ok(Located::Stored(t));
        }
        let (group, param) = name.split_once('/').unwrap_or(("", name));
        if let Some((stacked, layer)) = gemma::stacked_name(param) {
            if let Some(t) = self.find(&format!("{group}/{stacked}"))
                && t.shape.first().is_some_and(|&l| layer < l)
            {
                return Ok(Located::Slice(t, layer));
            }
        } else if let Some(tensor) = param.strip_prefix("model.layers.*.") {
            let layers: Vec<&TensorRecord> = (0..)
                .map_while(|i| self.find(&format!("{group}/model.layers.{i}.{tensor}")))
                .collect();
            if let Some(first) = layers.first() {
                if let Some(t) = layers.iter().find(|t| t.shape != first.shape) {
                    return Err(self.bad(format!(
                        "the layers' tensors of {name} differ in shape: {} is {:?}, {} is {:?}",
                        first.name, first.shape, t.name, t.shape
                    )));
                }
                return Ok(Located::Layers(layers));
            }
        }
        self.record(name).map(Located::Stored)
    }

    /// The global shape of tensor `name` in either layout (see
    /// [`Checkpoint::read_box`]).
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(match self.locate(name)? {
            Located::Stored(t) => t.shape.clone(),
            Located::Slice(t, _) => t.shape[1..].to_vec(),
            Located::Layers(l) => [vec![l.len()], l[0].shape.clone()].concat(),
        })
    }

    /// Assembles global tensor `name` (row-major f32) from its pieces.
    pub fn tensor(&self, name: &str) -> Result<Vec<f32>> {
        let shape = self.shape(name)?;
        self.read_box(name, &shape.iter().map(|&d| 0..d).collect::<Vec<_>>())
    }

    /// The box `ranges` of tensor `name` (row-major f32), read from the
    /// pieces that overlap it only. A checkpoint stored in one layout reads
    /// in the other: `params/model.layers.2.mlp.up_proj.weight` from a
    /// stacked `params/model.layers.*.mlp.up_proj.weight` (its slice 2),
    /// and the stacked one from the layers' own tensors.
    pub fn read_box(&self, name: &str, ranges: &[Range<usize>]) -> Result<Vec<f32>> {
        match self.locate(name)? {
            Located::Stored(t) => self.read_stored(t, ranges),
            Located::Slice(t, layer) => {
                let r: Vec<Range<usize>> = std::iter::once(layer..layer + 1)
                    .chain(ranges.iter().cloned())
                    .collect();
                self.read_stored(t, &r)
            }
            Located::Layers(layers) => {
                let Some((outer, inner)) = ranges.split_first() else {
                    return Err(self.bad(format!("tensor {name} has no box {ranges:?}")));
                };
                if outer.end > layers.len() {
                    return Err(self.bad(format!(
                        "tensor {name} has {} layers, no box {ranges:?}",
                        layers.len()
                    )));
                }
                let mut out = Vec::new();
                for t in &layers[outer.clone()] {
                    out.extend(self.read_stored(t, inner)?);
                }
                Ok(out)
            }
        }
    }

    /// The box `ranges` of stored tensor `t`.
    fn read_stored(&self, t: &TensorRecord, ranges: &[Range<usize>]) -> Result<Vec<f32>> {
        let name = &t.name;
        if ranges.len() != t.shape.len() || ranges.iter().zip(&t.shape).any(|(r, &d)| r.end > d) {
            return Err(self.bad(format!(
                "tensor {name} of shape {:?} has no box {ranges:?}",
                t.shape
            )));
        }
        let mut out = vec![0f32; ranges.iter().map(|r| r.len()).product()];
        for p in &t.pieces {
            let piece = boxed(&p.start, &p.shape);
            if crate::shard::overlap(&piece, ranges).is_none() {
                continue;
            }
            let (map, at, len) = self.piece_location(p)?;
            let bytes = &map[at..at + len];
            crate::shard::copy_overlap(
                |i| {
                    let b = &bytes[4 * i..4 * i + 4];
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                },
                &piece,
                &mut out,
                ranges,
            );
        }
        Ok(out)
    }

    pub(super) fn bad(&self, message: String) -> Error {
        Error::Checkpoint {
            path: self.dir.clone(),
            message,
        }
    }

    /// The file of piece `p` and where its bytes are in it, checked: the
    /// file is listed and verified, holds the key with the manifest's
    /// shape, as F32.
    fn piece_location(&self, p: &PieceRecord) -> Result<(Arc<Mmap>, usize, usize)> {
        let map = self.verified(&p.file)?;
        let st = SafeTensors::deserialize(&map)
            .map_err(|e| self.bad(format!("{}: not a safetensors file: {e}", p.file)))?;
        let view = st
            .tensor(&p.key)
            .map_err(|_| self.bad(format!("{}: has no tensor {}", p.file, p.key)))?;
        if view.shape() != p.shape.as_slice() || view.dtype() != safetensors::Dtype::F32 {
            return Err(self.bad(format!(
                "{}: {} is {:?} {:?}, the manifest says F32 {:?}",
                p.file,
                p.key,
                view.dtype(),
                view.shape(),
                p.shape
            )));
        }
        let data = view.data();
        let at = data.as_ptr() as usize - map.as_ptr() as usize;
        Ok((map.clone(), at, data.len()))
    }

    /// Checks piece `p`'s stored form (see [`Checkpoint::piece_location`]).
    fn piece_bytes(&self, p: &PieceRecord) -> Result<()> {
        self.piece_location(p).map(|_| ())
    }

    /// Each piece is stored with its shape, lies inside the tensor, no two
    /// overlap, and together they cover it.
    fn check_tiling(&self, t: &TensorRecord) -> Result<()> {
        if t.dtype != "F32" {
            return Err(self.bad(format!(
                "tensor {}: dtype {}, expected F32",
                t.name, t.dtype
            )));
        }
        let mut volume = 0usize;
        for (i, p) in t.pieces.iter().enumerate() {
            let inside = p.start.len() == t.shape.len()
                && p.shape.len() == t.shape.len()
                && (0..t.shape.len()).all(|d| p.start[d] + p.shape[d] <= t.shape[d]);
            let overlaps = t.pieces[..i].iter().any(|q| {
                (0..t.shape.len()).all(|d| {
                    p.start[d] < q.start[d] + q.shape[d] && q.start[d] < p.start[d] + p.shape[d]
                })
            });
            if !inside || overlaps {
                return Err(self.bad(format!(
                    "tensor {}: piece at {:?} of shape {:?} {}",
                    t.name,
                    p.start,
                    p.shape,
                    if inside {
                        "overlaps another"
                    } else {
                        "lies outside the tensor"
                    }
                )));
            }
            volume += p.shape.iter().product::<usize>();
        }
        if volume != t.shape.iter().product::<usize>() {
            return Err(self.bad(format!(
                "tensor {}: its pieces cover {volume} of {} elements",
                t.name,
                t.shape.iter().product::<usize>()
            )));
        }
        Ok(())
    }
}

fn boxed(start: &[usize], shape: &[usize]) -> Vec<Range<usize>> {
    start.iter().zip(shape).map(|(&s, &n)| s..s + n).collect()
}

/// Where a tensor is ([`Checkpoint::locate`]).
enum Located<'a> {
    /// Stored under its own name.
    Stored(&'a TensorRecord),
    /// Slice `.1` of a stacked tensor.
    Slice(&'a TensorRecord, usize),
    /// The layers' own tensors, to stack.
    Layers(Vec<&'a TensorRecord>),
}
