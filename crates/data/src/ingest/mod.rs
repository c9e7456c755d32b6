//! Corpus ingestion: text or JSONL files to token shards (`meshtrain tokenize`).
//!
//! Files are read in order (memory-mapped), cut into documents, and each chunk of documents is
//! checked and tokenized in parallel on all cores (rayon); shards are written in input order, so
//! the output does not depend on the thread count. Problems are reported with file and line:
//! invalid UTF-8, empty documents, invalid JSON, a missing or non-string field, a truncated last
//! line. With [`OnError::Skip`] the document is left out and listed in [`Summary::issues`]; with
//! [`OnError::Fail`] ingestion stops at the first one.
//!
//! Before tokenizing, documents can be filtered ([`FilterOptions`]): exact and near
//! duplicates, documents that overlap evaluation sets, personal and sensitive data. Hashes
//! are computed in parallel, the duplicate index sees documents in input order (so the
//! output still does not depend on the thread count), and the [`FilterReport`] in
//! [`Summary::filter`] says what was removed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::shard::{Manifest, ShardInfo, ShardWriter, shard_file_name};
use crate::{Error, Result, Tokenizer};

mod chat;
mod docs;
mod filter;

use docs::{RawDoc, segment_end};
pub(crate) use docs::{doc_text, read_file_docs, split_docs};
use filter::Filter;
pub use filter::{FilterOptions, FilterReport, PiiMode};

/// How input files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Plain UTF-8 text, cut into documents by [`TextUnit`].
    #[default]
    Text,
    /// One JSON object per line; the document is the string in a field.
    Jsonl,
    /// One conversation `{"messages": [...]}` per line, in Gemma's chat format: written to
    /// shards that carry the loss mask ([`crate::shard`] version 2).
    Chat,
}

/// What one document is in a text file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TextUnit {
    /// The whole file.
    #[default]
    File,
    /// Paragraphs separated by one or more blank lines (blank lines are not documents).
    Paragraph,
    /// Each line (its newline is not part of it; an empty line is an empty document).
    Line,
}

/// What to do with a document that cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Leave it out and report it in the [`Summary`].
    #[default]
    Skip,
    /// Stop with an error naming file and line.
    Fail,
}

/// Options of [`tokenize`].
#[derive(Debug, Clone)]
pub struct TokenizeOptions {
    /// Files, directories (their files, sorted) or glob patterns.
    pub inputs: Vec<String>,
    /// Output directory; must not already hold a manifest.
    pub output: PathBuf,
    /// Input format.
    pub format: InputFormat,
    /// JSONL field holding the text.
    pub field: String,
    /// Document unit of text files.
    pub text_unit: TextUnit,
    /// A new shard is started once a shard holds this many tokens.
    pub shard_tokens: u64,
    /// Skip or refuse bad documents.
    pub on_error: OnError,
    /// Deduplication, decontamination and personal-data filtering.
    pub filter: FilterOptions,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        TokenizeOptions {
            inputs: Vec::new(),
            output: PathBuf::new(),
            format: InputFormat::Text,
            field: "text".into(),
            text_unit: TextUnit::File,
            shard_tokens: 1 << 26,
            on_error: OnError::Skip,
            filter: FilterOptions::default(),
        }
    }
}

/// A document that was left out, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issue {
    /// The input file.
    pub file: PathBuf,
    /// 1-based line where the document (or the problem) is.
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Issue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// What [`tokenize`] did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Input files read.
    pub files: usize,
    /// Documents written.
    pub documents: u64,
    /// Tokens written.
    pub tokens: u64,
    /// Input bytes read.
    pub bytes: u64,
    /// Shard files written.
    pub shards: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Threads used.
    pub threads: usize,
    /// Documents left out because they could not be used.
    pub issues: Vec<Issue>,
    /// What the filters did (all documents counted even with no filter on).
    pub filter: FilterReport,
}

impl Summary {
    /// Input megabytes (10^6 bytes) per second.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    /// Tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} documents, {} tokens, {:.1} MB in {:.2} s: {:.2} MB/s \
             ({:.2} MB/s per thread, {} threads), {:.0} tokens/s, {} shards, {} skipped",
            self.files,
            self.documents,
            self.tokens,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.mb_per_s(),
            self.mb_per_s() / self.threads.max(1) as f64,
            self.threads,
            self.tokens_per_s(),
            self.shards,
            self.issues.len()
        )?;
        if self.filter.dedup != crate::dedup::DedupMode::None
            || self.filter.pii.is_some()
            || self.filter.eval_texts > 0
        {
            write!(f, "\n{}", self.filter)?;
        }
        Ok(())
    }
}

/// Progress of [`tokenize`]: input bytes done of total.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Bytes processed.
    pub bytes_done: u64,
    /// Bytes in all inputs.
    pub bytes_total: u64,
    /// Documents written so far.
    pub documents: u64,
    /// Tokens written so far.
    pub tokens: u64,
}

/// Expands files, directories and glob patterns into a sorted, deduplicated file list.
pub fn expand_inputs(inputs: &[String]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pat in inputs {
        let before = files.len();
        if pat.contains(['*', '?', '[']) {
            let paths = glob::glob(pat).map_err(|e| Error::NoInput {
                pattern: pat.clone(),
                message: e.to_string(),
            })?;
            for p in paths {
                let p = p.map_err(|e| {
                    let path = e.path().to_path_buf();
                    Error::io(path, e.into())
                })?;
                if p.is_file() {
                    files.push(p);
                }
            }
        } else {
            let p = PathBuf::from(pat);
            if p.is_dir() {
                let rd = std::fs::read_dir(&p).map_err(|e| Error::io(&p, e))?;
                let mut inner: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                inner.sort();
                files.extend(inner);
            } else if p.is_file() {
                files.push(p);
            } else {
                return Err(Error::NoInput {
                    pattern: pat.clone(),
                    message: "no such file or directory".into(),
                });
            }
        }
        if files.len() == before {
            return Err(Error::NoInput {
                pattern: pat.clone(),
                message: "matches no file".into(),
            });
        }
    }
    if files.is_empty() {
        return Err(Error::NoInput {
            pattern: String::new(),
            message: "no input given".into(),
        });
    }
    files.sort();
    files.dedup();
    Ok(files)
}

/// Tokenizes corpora into a shard directory; `progress` is called after each chunk.
pub fn tokenize(
    tokenizer: &Tokenizer,
    opts: &TokenizeOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Summary> {
    if opts.format == InputFormat::Chat {
        return chat::tokenize_chat(tokenizer, opts, progress);
    }
    let start = Instant::now();
    let files = expand_inputs(&opts.inputs)?;
    if opts.shard_tokens == 0 {
        return Err(Error::config("shard_tokens", "must be positive"));
    }
    let out = &opts.output;
    if out.join(crate::shard::MANIFEST_FILE).exists() {
        return Err(Error::config(
            "output",
            format!(
                "{} already holds a tokenized corpus (manifest.json); remove it or choose another directory",
                out.display()
            ),
        ));
    }
    let filter = Filter::new(&opts.filter)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let sizes: Vec<u64> = files
        .iter()
        .map(|f| Ok(std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len()))
        .collect::<Result<_>>()?;
    let total: u64 = sizes.iter().sum();
    let mut summary = Summary {
        files: files.len(),
        threads: rayon::current_num_threads(),
        ..Summary::default()
    };
    let mut shards: Vec<ShardInfo> = Vec::new();

    let mut sink = Sink {
        out,
        opts,
        tokenizer,
        files: &files,
        writer: None,
        shards: &mut shards,
        summary: &mut summary,
        filter,
    };
    // Files are taken in groups of about CHUNK_BYTES (so that many small files are tokenized in
    // parallel), large files in segments of about CHUNK_BYTES cut at document boundaries (so
    // that memory stays bounded); documents go to the thread pool CHUNK_DOCS at a time.
    let mut f0 = 0;
    let mut done = 0u64;
    while f0 < files.len() {
        let mut f1 = f0;
        let mut group_bytes = 0u64;
        while f1 < files.len()
            && (f1 == f0 || group_bytes + sizes[f1] <= CHUNK_BYTES as u64)
            && f1 - f0 < CHUNK_DOCS
        {
            group_bytes += sizes[f1];
            f1 += 1;
        }
        let maps: Vec<Option<memmap2::Mmap>> = files[f0..f1]
            .iter()
            .map(|f| map_file(f))
            .collect::<Result<_>>()?;
        let mut pending: Vec<Item<'_>> = Vec::new();
        let mut pending_bytes = 0usize;
        for (k, map) in maps.iter().enumerate() {
            let fi = f0 + k;
            let bytes: &[u8] = map.as_deref().unwrap_or(&[]);
            let mut start = 0;
            let mut line_base = 0u64;
            let mut any = false;
            while start < bytes.len() {
                let end = segment_end(bytes, start, opts.format, opts.text_unit, CHUNK_BYTES);
                let seg = &bytes[start..end];
                for mut d in split_docs(seg, opts.format, opts.text_unit) {
                    d.line += line_base;
                    d.last_unterminated &= end == bytes.len();
                    any = true;
                    pending_bytes += d.bytes.len();
                    pending.push(Item::Doc(fi, d));
                    if pending.len() >= CHUNK_DOCS || pending_bytes >= CHUNK_BYTES {
                        sink.flush(&mut pending)?;
                        pending_bytes = 0;
                        progress(sink.progress(done + (end - start) as u64 / 2, total));
                    }
                }
                line_base += seg.iter().filter(|&&b| b == b'\n').count() as u64;
                start = end;
            }
            if !any {
                pending.push(Item::Issue(Issue {
                    file: files[fi].clone(),
                    line: 1,
                    message: "empty file: no documents".into(),
                }));
            }
        }
        sink.flush(&mut pending)?;
        done += group_bytes;
        sink.summary.bytes = done;
        progress(sink.progress(done, total));
        f0 = f1;
    }
    let writer = sink.writer.take();
    let report = sink.filter.finish_report(sink.summary.issues.len());
    summary.filter = report;
    // Separators (newlines, blank lines) count as read too.
    summary.bytes = total;
    if let Some(w) = writer {
        shards.push(w.finish()?);
    }
    write_manifest(out, opts, tokenizer, &mut summary, shards, false)?;
    summary.seconds = start.elapsed().as_secs_f64();
    progress(Progress {
        bytes_done: total,
        bytes_total: total,
        documents: summary.documents,
        tokens: summary.tokens,
    });
    Ok(summary)
}

/// Writes the manifest of the shards `tokenize` wrote (version 2 when they
/// carry loss masks), or refuses an output without a usable document.
pub(super) fn write_manifest(
    out: &Path,
    opts: &TokenizeOptions,
    tokenizer: &Tokenizer,
    summary: &mut Summary,
    shards: Vec<ShardInfo>,
    loss_mask: bool,
) -> Result<()> {
    if summary.documents == 0 {
        let what = if loss_mask {
            "conversation"
        } else {
            "document"
        };
        return Err(Error::NoInput {
            pattern: opts.inputs.join(" "),
            message: format!(
                "no usable {what} ({} skipped; first: {})",
                summary.issues.len(),
                summary
                    .issues
                    .first()
                    .map(|i| i.to_string())
                    .unwrap_or_default()
            ),
        });
    }
    summary.shards = shards.len();
    Manifest {
        format: "meshtrain-shards".into(),
        version: if loss_mask { 2 } else { 1 },
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        bos_id: tokenizer.bos_id(),
        eos_id: tokenizer.eos_id(),
        pad_id: tokenizer.pad_id(),
        documents: summary.documents,
        tokens: summary.tokens,
        shards,
        loss_mask,
    }
    .write(out)
}

const CHUNK_DOCS: usize = 4096;
const CHUNK_BYTES: usize = 8 << 20;

/// A document waiting for the thread pool, or a problem found while cutting files.
enum Item<'a> {
    Doc(usize, RawDoc<'a>),
    Issue(Issue),
}

/// Where tokenized documents go, in input order.
struct Sink<'a> {
    out: &'a Path,
    opts: &'a TokenizeOptions,
    tokenizer: &'a Tokenizer,
    files: &'a [PathBuf],
    writer: Option<ShardWriter>,
    shards: &'a mut Vec<ShardInfo>,
    summary: &'a mut Summary,
    filter: Filter,
}

impl Sink<'_> {
    /// Checks, filters and tokenizes `items` in parallel and writes them in order.
    fn flush(&mut self, items: &mut Vec<Item<'_>>) -> Result<()> {
        let (opts, tok, files) = (self.opts, self.tokenizer, self.files);
        // 1. In parallel: check each document, take its text, hash it for the filters.
        let filter = &self.filter;
        let prepared: Vec<std::result::Result<(usize, u64, filter::Prepared), Issue>> = items
            .par_iter()
            .map(|item| match item {
                Item::Issue(i) => Err(i.clone()),
                Item::Doc(fi, d) => {
                    let text = doc_text(&files[*fi], d, opts.format, &opts.field)?;
                    Ok((*fi, d.line, filter.prepare(text)))
                }
            })
            .collect();
        items.clear();
        // 2. In input order: duplicates (the index must see documents in a fixed order).
        let decided: Vec<_> = prepared
            .into_iter()
            .map(|r| r.map(|(fi, line, p)| (fi, line, self.filter.decide(&p), p)))
            .collect();
        // 3. In parallel: personal data, then tokens.
        let filter = &self.filter;
        let outcomes: Vec<std::result::Result<filter::Outcome, Issue>> = decided
            .into_par_iter()
            .map(|r| {
                let (fi, line, fate, p) = r?;
                filter.finish(p, fate, tok).map_err(|message| Issue {
                    file: files[fi].clone(),
                    line,
                    message,
                })
            })
            .collect();
        // 4. In input order: write and count.
        for r in outcomes {
            match r {
                Ok(outcome) => {
                    self.filter.count(&outcome);
                    let Some(ids) = outcome.ids else { continue };
                    if self.writer.is_none() {
                        let path = self.out.join(shard_file_name(self.shards.len()));
                        self.writer = Some(ShardWriter::create(&path)?);
                    }
                    // invariant: set just above when it was None.
                    let w = self.writer.as_mut().expect("just created");
                    w.push(&ids)?;
                    self.summary.documents += 1;
                    self.summary.tokens += ids.len() as u64;
                    if w.tokens() >= opts.shard_tokens {
                        // invariant: borrowed as Some just above.
                        let w = self.writer.take().expect("present");
                        self.shards.push(w.finish()?);
                    }
                }
                Err(issue) => match opts.on_error {
                    OnError::Fail => return Err(issue_error(issue)),
                    OnError::Skip => self.summary.issues.push(issue),
                },
            }
        }
        Ok(())
    }

    fn progress(&self, bytes_done: u64, bytes_total: u64) -> Progress {
        Progress {
            bytes_done,
            bytes_total,
            documents: self.summary.documents,
            tokens: self.summary.tokens,
        }
    }
}

/// Memory-maps a file (`None` when empty: empty maps are not portable).
fn map_file(file: &Path) -> Result<Option<memmap2::Mmap>> {
    let handle = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
    if handle.metadata().map_err(|e| Error::io(file, e))?.len() == 0 {
        return Ok(None);
    }
    // SAFETY: input files are read-only inputs; a concurrent writer would at worst produce a
    // garbled document, which the UTF-8/JSON checks report.
    let map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| Error::io(file, e))?;
    Ok(Some(map))
}

fn issue_error(issue: Issue) -> Error {
    Error::BadInput {
        file: issue.file,
        line: issue.line,
        message: issue.message,
    }
}
