//! Token shards: the on-disk format written by `meshtrain tokenize` and read by the loader.
//!
//! A shard directory holds `manifest.json` and shard files `shard-00000.mtok`, ... Each shard
//! file is, all integers little-endian:
//!
//! | offset | size | content |
//! |---|---|---|
//! | 0 | 8 | magic `MTSHARD\0` |
//! | 8 | 4 | format version, `1` or `2` (u32) |
//! | 12 | 4 | bytes per token, `4` (u32) |
//! | 16 | 4·T | the tokens of all documents, back to back (u32), no `<bos>`/`<eos>` |
//! | 16+4T | 8·(D+1) | document offsets in tokens (u64): document `i` is `[off[i], off[i+1])`, `off[0] = 0`, `off[D] = T` |
//! | end-48 | 8 | D, number of documents (u64) |
//! | end-40 | 8 | T, number of tokens (u64) |
//! | end-32 | 32 | sha256 of every byte before it |
//!
//! Version 2 (written by `meshtrain tokenize --format chat`) is version 1 whose tokens carry
//! their loss-mask bit in bit 31: `id = t & 0x7FFF_FFFF`, target when `t >> 31 == 1` (ids
//! stay below 2^31). Version 1 shards, with no mask, are written for plain text and read as
//! before (every token a target); the manifest of a version 2 directory says `"version": 2`
//! and `"loss_mask": true`.
//!
//! A file is exactly `16 + 4T + 8(D+1) + 48` bytes; a truncated file is detected by its size
//! and a corrupt one by the checksum ([`Shard::verify`]). Shards are written to `*.tmp` and
//! renamed when complete; the manifest is written last, so a directory with a manifest is whole.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// First 8 bytes of every shard file.
pub const SHARD_MAGIC: &[u8; 8] = b"MTSHARD\0";
/// The newest shard format version this crate writes and reads (2: tokens carry a
/// loss-mask bit); version 1 shards are still written for unmasked data and read.
pub const SHARD_VERSION: u32 = 2;
/// The loss-mask bit of a token in a version 2 shard.
pub const MASK_BIT: u32 = 1 << 31;
/// Name of the manifest in a shard directory.
pub const MANIFEST_FILE: &str = "manifest.json";
const HEADER: usize = 16;
const FOOTER: usize = 48;

/// `manifest.json`: what a shard directory holds and which tokenizer made it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always `"meshtrain-shards"`.
    pub format: String,
    /// 1, or 2 when the tokens carry loss masks.
    pub version: u32,
    /// The tokenizer name or path given to `meshtrain tokenize`.
    pub tokenizer: String,
    /// Its vocabulary size.
    pub vocab_size: usize,
    /// Its `<bos>` id.
    pub bos_id: u32,
    /// Its `<eos>` id.
    pub eos_id: u32,
    /// Its `<pad>` id.
    pub pad_id: u32,
    /// Total documents.
    pub documents: u64,
    /// Total tokens.
    pub tokens: u64,
    /// The shards, in order.
    pub shards: Vec<ShardInfo>,
    /// The tokens carry loss masks (version 2; conversations from `--format chat`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub loss_mask: bool,
}

/// One shard in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardInfo {
    /// File name within the directory.
    pub file: String,
    /// Documents in it.
    pub documents: u64,
    /// Tokens in it.
    pub tokens: u64,
    /// sha256 of the whole file.
    pub sha256: String,
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::BadInput {
            file: path.clone(),
            line: e.line() as u64,
            message: format!("invalid manifest: {e}"),
        })?;
        if m.format != "meshtrain-shards" || !(1..=SHARD_VERSION).contains(&m.version) {
            return Err(Error::shard(
                path,
                format!(
                    "manifest is {} v{}, expected meshtrain-shards v1 to v{SHARD_VERSION}",
                    m.format, m.version
                ),
            ));
        }
        if m.loss_mask != (m.version == 2) {
            return Err(Error::shard(
                path,
                format!(
                    "manifest v{} says loss_mask = {}: masks come with version 2 only",
                    m.version, m.loss_mask
                ),
            ));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` (to a temporary name, then renamed).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join("manifest.json.tmp");
        // invariant: a manifest of numbers and strings always serializes.
        let text = serde_json::to_string_pretty(self).expect("manifest serializes");
        std::fs::write(&tmp, text + "\n").map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
    }
}

/// Writes one shard file.
pub struct ShardWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<std::fs::File>,
    hash: Sha256,
    offsets: Vec<u64>,
    masked: bool,
}

impl ShardWriter {
    /// Starts a version 1 shard at `path` (written as `path.tmp` until
    /// [`ShardWriter::finish`]).
    pub fn create(path: &Path) -> Result<Self> {
        Self::create_version(path, false)
    }

    /// Starts a version 2 shard, whose documents carry loss masks
    /// ([`ShardWriter::push_masked`]).
    pub fn create_masked(path: &Path) -> Result<Self> {
        Self::create_version(path, true)
    }

    fn create_version(path: &Path, masked: bool) -> Result<Self> {
        let tmp = path.with_extension("mtok.tmp");
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = ShardWriter {
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            offsets: vec![0],
            masked,
        };
        let version: u32 = if masked { 2 } else { 1 };
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(SHARD_MAGIC);
        header[8..12].copy_from_slice(&version.to_le_bytes());
        header[12..16].copy_from_slice(&4u32.to_le_bytes());
        w.put(&header)?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.hash.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io(&self.tmp, e))
    }

    /// Appends one document (to a masked shard: every token a target).
    pub fn push(&mut self, doc: &[u32]) -> Result<()> {
        let ones = vec![1u8; if self.masked { doc.len() } else { 0 }];
        self.push_tokens(doc, &ones)
    }

    /// Appends one document and its loss mask (`mask[i] != 0`: token `i` is a target) to a
    /// shard made by [`ShardWriter::create_masked`].
    pub fn push_masked(&mut self, doc: &[u32], mask: &[u8]) -> Result<()> {
        if !self.masked || mask.len() != doc.len() {
            return Err(Error::shard(
                &self.path,
                format!(
                    "push_masked: {} tokens with {} mask values on a {} shard",
                    doc.len(),
                    mask.len(),
                    if self.masked { "masked" } else { "version 1" }
                ),
            ));
        }
        self.push_tokens(doc, mask)
    }

    fn push_tokens(&mut self, doc: &[u32], mask: &[u8]) -> Result<()> {
        let mut bytes = Vec::with_capacity(doc.len() * 4);
        for (i, &t) in doc.iter().enumerate() {
            if t >= MASK_BIT {
                return Err(Error::shard(
                    &self.path,
                    format!("token id {t} does not fit below 2^31"),
                ));
            }
            let bit = if self.masked && mask[i] != 0 {
                MASK_BIT
            } else {
                0
            };
            bytes.extend_from_slice(&(t | bit).to_le_bytes());
        }
        self.put(&bytes)?;
        // invariant: offsets starts as [0] and only grows.
        let last = *self.offsets.last().expect("offsets start with 0");
        self.offsets.push(last + doc.len() as u64);
        Ok(())
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        // invariant: offsets starts as [0] and only grows.
        *self.offsets.last().expect("offsets start with 0")
    }

    /// Documents written so far.
    pub fn documents(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    /// Writes the index and footer, renames the file into place and describes it.
    pub fn finish(mut self) -> Result<ShardInfo> {
        let offsets = std::mem::take(&mut self.offsets);
        let mut bytes = Vec::with_capacity(offsets.len() * 8 + 16);
        for o in &offsets {
            bytes.extend_from_slice(&o.to_le_bytes());
        }
        let (docs, tokens) = (offsets.len() as u64 - 1, offsets[offsets.len() - 1]);
        bytes.extend_from_slice(&docs.to_le_bytes());
        bytes.extend_from_slice(&tokens.to_le_bytes());
        self.put(&bytes)?;
        let digest = self.hash.clone().finalize();
        self.out
            .write_all(&digest)
            .map_err(|e| Error::io(&self.tmp, e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        let whole = crate::setup::sha256_file(&self.tmp)?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        Ok(ShardInfo {
            file: self
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            documents: docs,
            tokens,
            sha256: whole,
        })
    }
}

/// A memory-mapped shard file, validated on open.
pub struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    documents: u64,
    tokens: u64,
    masked: bool,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("path", &self.path)
            .field("documents", &self.documents)
            .field("tokens", &self.tokens)
            .finish()
    }
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    // invariant: a slice of exactly 8 bytes; callers stay inside the length checked by open().
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Shard {
    /// Opens and checks the size, magic, version and index of a shard (not its checksum:
    /// see [`Shard::verify`]).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: shard files are written once and renamed into place; nothing writes to them
        // while they are read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let len = map.len();
        if len < HEADER + 8 + FOOTER {
            return Err(Error::shard(
                path,
                format!(
                    "truncated: {len} bytes, at least {} expected",
                    HEADER + 8 + FOOTER
                ),
            ));
        }
        if &map[..8] != SHARD_MAGIC {
            return Err(Error::shard(path, "not a meshtrain shard (bad magic)"));
        }
        // invariant: open() checked the file holds the header.
        let version = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes"));
        let width = u32::from_le_bytes(map[12..16].try_into().expect("4 bytes"));
        if !(1..=SHARD_VERSION).contains(&version) || width != 4 {
            return Err(Error::shard(
                path,
                format!(
                    "version {version} with {width}-byte tokens, expected version 1 to \
                     {SHARD_VERSION} with 4-byte tokens"
                ),
            ));
        }
        let documents = u64_at(&map, len - 48);
        let tokens = u64_at(&map, len - 40);
        let expected = (HEADER as u128) + 4 * tokens as u128 + 8 * (documents as u128 + 1) + 48;
        if expected != len as u128 {
            return Err(Error::shard(
                path,
                format!(
                    "truncated or corrupt: {len} bytes, but its footer ({documents} documents, \
                     {tokens} tokens) means {expected} bytes"
                ),
            ));
        }
        let shard = Shard {
            path: path.to_path_buf(),
            map,
            documents,
            tokens,
            masked: version == 2,
        };
        let mut prev = 0;
        for i in 0..=documents {
            let o = shard.offset(i);
            if o < prev || o > tokens || (i == 0 && o != 0) || (i == documents && o != tokens) {
                return Err(Error::shard(
                    path,
                    format!("corrupt index: offset {i} is {o}"),
                ));
            }
            prev = o;
        }
        Ok(shard)
    }

    fn offset(&self, i: u64) -> u64 {
        u64_at(
            &self.map,
            HEADER + 4 * self.tokens as usize + 8 * i as usize,
        )
    }

    /// Recomputes the sha256 in the footer.
    pub fn verify(&self) -> Result<()> {
        let n = self.map.len() - 32;
        let digest = Sha256::digest(&self.map[..n]);
        if digest.as_slice() != &self.map[n..] {
            return Err(Error::shard(
                &self.path,
                "checksum mismatch: the file is corrupt",
            ));
        }
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of documents.
    pub fn documents(&self) -> u64 {
        self.documents
    }

    /// Number of tokens.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Length of document `i` in tokens.
    pub fn doc_len(&self, i: u64) -> u64 {
        self.offset(i + 1) - self.offset(i)
    }

    /// Whether the tokens carry loss masks (version 2).
    pub fn masked(&self) -> bool {
        self.masked
    }

    fn raw(&self, i: u64) -> impl Iterator<Item = u32> + '_ {
        let (a, b) = (self.offset(i) as usize, self.offset(i + 1) as usize);
        self.map[HEADER + 4 * a..HEADER + 4 * b]
            .chunks_exact(4)
            // invariant: chunks_exact(4).
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
    }

    /// Appends the tokens of document `i` (< [`Shard::documents`]) to `out`.
    pub fn read_doc(&self, i: u64, out: &mut Vec<u32>) {
        let keep = if self.masked { !MASK_BIT } else { u32::MAX };
        out.extend(self.raw(i).map(|t| t & keep));
    }

    /// Appends the tokens of document `i` to `out` and their loss mask to `mask` (all 1 in a
    /// version 1 shard).
    pub fn read_doc_masked(&self, i: u64, out: &mut Vec<u32>, mask: &mut Vec<u8>) {
        for t in self.raw(i) {
            if self.masked {
                out.push(t & !MASK_BIT);
                mask.push((t >> 31) as u8);
            } else {
                out.push(t);
                mask.push(1);
            }
        }
    }
}

/// The shard name for index `i`.
pub fn shard_file_name(i: usize) -> String {
    format!("shard-{i:05}.mtok")
}
