//! Corpus ingestion: text or JSONL files to token shards (`meshtrain tokenize`).
//!
//! Files are read in order (memory-mapped), cut into documents, and each chunk of documents is
//! checked and tokenized in parallel on all cores (rayon); shards are written in input order, so
//! the output does not depend on the thread count. Problems are reported with file and line:
//! invalid UTF-8, empty documents, invalid JSON, a missing or non-string field, a truncated last
//! line. With [`OnError::Skip`] the document is left out and listed in [`Summary::issues`]; with
//! [`OnError::Fail`] ingestion stops at the first one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::shard::{Manifest, ShardInfo, ShardWriter, shard_file_name};
use crate::{Error, Result, Tokenizer};

/// How input files are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Plain UTF-8 text, cut into documents by [`TextUnit`].
    #[default]
    Text,
    /// One JSON object per line; the document is the string in a field.
    Jsonl,
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
    /// Documents left out.
    pub issues: Vec<Issue>,
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
        )
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

/// A raw document: its first line number and bytes.
pub(crate) struct RawDoc<'a> {
    pub line: u64,
    pub bytes: &'a [u8],
    /// For JSONL: the file ends inside this line (no final newline).
    pub last_unterminated: bool,
}

/// Cuts a file's bytes into raw documents.
pub(crate) fn split_docs(bytes: &[u8], format: InputFormat, unit: TextUnit) -> Vec<RawDoc<'_>> {
    let lines = || {
        let mut line = 0u64;
        let mut start = 0usize;
        std::iter::from_fn(move || {
            if start >= bytes.len() {
                return None;
            }
            line += 1;
            let end = bytes[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| start + i);
            let (body, next, terminated) = match end {
                Some(e) => (&bytes[start..e], e + 1, true),
                None => (&bytes[start..], bytes.len(), false),
            };
            start = next;
            let body = body.strip_suffix(b"\r").unwrap_or(body);
            Some((line, body, terminated))
        })
    };
    match (format, unit) {
        (InputFormat::Jsonl, _) => lines()
            .map(|(line, body, terminated)| RawDoc {
                line,
                bytes: body,
                last_unterminated: !terminated,
            })
            .collect(),
        (InputFormat::Text, TextUnit::File) => vec![RawDoc {
            line: 1,
            bytes,
            last_unterminated: false,
        }],
        (InputFormat::Text, TextUnit::Line) => lines()
            .map(|(line, body, _)| RawDoc {
                line,
                bytes: body,
                last_unterminated: false,
            })
            .collect(),
        (InputFormat::Text, TextUnit::Paragraph) => {
            // Paragraphs keep their inner newlines; offsets are computed on the raw bytes.
            let mut docs = Vec::new();
            let mut cur: Option<(u64, usize, usize)> = None; // (first line, start, end)
            let mut pos = 0usize;
            for (line, body, _) in lines() {
                let line_len = body.len();
                let raw_len = bytes[pos..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|i| i + 1)
                    .unwrap_or(bytes.len() - pos);
                let blank = body.iter().all(|b| b.is_ascii_whitespace());
                if blank {
                    if let Some((l, s, e)) = cur.take() {
                        docs.push(RawDoc {
                            line: l,
                            bytes: &bytes[s..e],
                            last_unterminated: false,
                        });
                    }
                } else {
                    let end = pos + line_len;
                    cur = Some(match cur {
                        Some((l, s, _)) => (l, s, end),
                        None => (line, pos, end),
                    });
                }
                pos += raw_len;
            }
            if let Some((l, s, e)) = cur {
                docs.push(RawDoc {
                    line: l,
                    bytes: &bytes[s..e],
                    last_unterminated: false,
                });
            }
            docs
        }
    }
}

/// Checks one raw document and returns its text, or the issue that makes it unusable.
pub(crate) fn doc_text(
    file: &Path,
    doc: &RawDoc<'_>,
    format: InputFormat,
    field: &str,
) -> std::result::Result<String, Issue> {
    let issue = |line: u64, message: String| Issue {
        file: file.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(doc.bytes).map_err(|e| {
        let prefix = &doc.bytes[..e.valid_up_to()];
        let line = doc.line + prefix.iter().filter(|&&b| b == b'\n').count() as u64;
        let col = prefix.len()
            - prefix
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
        issue(
            line,
            format!("invalid UTF-8 at byte {} of the line", col + 1),
        )
    })?;
    let text = match format {
        InputFormat::Text => text.to_string(),
        InputFormat::Jsonl => {
            let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
                if doc.last_unterminated && e.is_eof() {
                    issue(
                        doc.line,
                        format!("truncated file: the last line ends inside its JSON value ({e})"),
                    )
                } else if text.trim().is_empty() {
                    issue(doc.line, "empty line, expected a JSON object".into())
                } else {
                    issue(doc.line, format!("invalid JSON: {e}"))
                }
            })?;
            let obj = value
                .as_object()
                .ok_or_else(|| issue(doc.line, "expected a JSON object".into()))?;
            match obj.get(field) {
                None => {
                    return Err(issue(doc.line, format!("missing field {field:?}")));
                }
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(other) => {
                    let kind = match other {
                        serde_json::Value::Null => "null",
                        serde_json::Value::Bool(_) => "a boolean",
                        serde_json::Value::Number(_) => "a number",
                        serde_json::Value::Array(_) => "an array",
                        _ => "an object",
                    };
                    return Err(issue(
                        doc.line,
                        format!("field {field:?} is {kind}, expected a string"),
                    ));
                }
            }
        }
    };
    if text.trim().is_empty() {
        return Err(issue(doc.line, "empty document".into()));
    }
    Ok(text)
}

/// Reads one file's documents as text, checking each; used by the loader for `text`/`jsonl`.
pub(crate) fn read_file_docs(
    file: &Path,
    format: InputFormat,
    unit: TextUnit,
    field: &str,
) -> Result<Vec<std::result::Result<String, Issue>>> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    Ok(split_docs(&bytes, format, unit)
        .iter()
        .map(|d| doc_text(file, d, format, field))
        .collect())
}

/// Tokenizes corpora into a shard directory; `progress` is called after each chunk.
pub fn tokenize(
    tokenizer: &Tokenizer,
    opts: &TokenizeOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Summary> {
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
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut total = 0u64;
    for f in &files {
        total += std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len();
    }
    let mut summary = Summary {
        files: files.len(),
        threads: rayon::current_num_threads(),
        ..Summary::default()
    };
    let mut shards: Vec<ShardInfo> = Vec::new();
    let mut writer: Option<ShardWriter> = None;
    const CHUNK_DOCS: usize = 4096;
    const CHUNK_BYTES: usize = 8 << 20;

    for file in &files {
        let handle = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        let len = handle.metadata().map_err(|e| Error::io(file, e))?.len();
        let map;
        let bytes: &[u8] = if len == 0 {
            &[]
        } else {
            // SAFETY: input files are read-only inputs; a concurrent writer would at worst
            // produce a garbled document, which the UTF-8/JSON checks report.
            map = unsafe { memmap2::Mmap::map(&handle) }.map_err(|e| Error::io(file, e))?;
            &map
        };
        let docs = split_docs(bytes, opts.format, opts.text_unit);
        if docs.is_empty() {
            let issue = Issue {
                file: file.clone(),
                line: 1,
                message: "empty file: no documents".into(),
            };
            match opts.on_error {
                OnError::Fail => return Err(issue_error(issue)),
                OnError::Skip => summary.issues.push(issue),
            }
        }
        let mut i = 0;
        while i < docs.len() {
            let mut j = i;
            let mut size = 0;
            while j < docs.len() && j - i < CHUNK_DOCS && size < CHUNK_BYTES {
                size += docs[j].bytes.len();
                j += 1;
            }
            let results: Vec<std::result::Result<Vec<u32>, Issue>> = docs[i..j]
                .par_iter()
                .map(|d| {
                    let text = doc_text(file, d, opts.format, &opts.field)?;
                    tokenizer.encode(&text).map_err(|e| Issue {
                        file: file.clone(),
                        line: d.line,
                        message: e.to_string(),
                    })
                })
                .collect();
            for r in results {
                match r {
                    Ok(ids) => {
                        if writer.is_none() {
                            let path = out.join(shard_file_name(shards.len()));
                            writer = Some(ShardWriter::create(&path)?);
                        }
                        let w = writer.as_mut().expect("just created");
                        w.push(&ids)?;
                        summary.documents += 1;
                        summary.tokens += ids.len() as u64;
                        if w.tokens() >= opts.shard_tokens {
                            shards.push(writer.take().expect("present").finish()?);
                        }
                    }
                    Err(issue) => match opts.on_error {
                        OnError::Fail => return Err(issue_error(issue)),
                        OnError::Skip => summary.issues.push(issue),
                    },
                }
            }
            summary.bytes += size as u64;
            progress(Progress {
                bytes_done: summary.bytes,
                bytes_total: total,
                documents: summary.documents,
                tokens: summary.tokens,
            });
            i = j;
        }
    }
    // Separators (newlines, blank lines) count as read too.
    summary.bytes = total;
    if let Some(w) = writer.take() {
        shards.push(w.finish()?);
    }
    if summary.documents == 0 {
        return Err(Error::NoInput {
            pattern: opts.inputs.join(" "),
            message: format!(
                "no usable document ({} skipped; first: {})",
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
    let manifest = Manifest {
        format: "meshtrain-shards".into(),
        version: crate::shard::SHARD_VERSION,
        tokenizer: tokenizer.name().to_string(),
        vocab_size: tokenizer.vocab_size(),
        bos_id: tokenizer.bos_id(),
        eos_id: tokenizer.eos_id(),
        pad_id: tokenizer.pad_id(),
        documents: summary.documents,
        tokens: summary.tokens,
        shards,
    };
    manifest.write(out)?;
    summary.seconds = start.elapsed().as_secs_f64();
    progress(Progress {
        bytes_done: total,
        bytes_total: total,
        documents: summary.documents,
        tokens: summary.tokens,
    });
    Ok(summary)
}

fn issue_error(issue: Issue) -> Error {
    Error::BadInput {
        file: issue.file,
        line: issue.line,
        message: issue.message,
    }
}
