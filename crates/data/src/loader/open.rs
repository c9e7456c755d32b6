//! Opening one source's documents: shards, text/JSONL tokenized in memory, `tokens` rows.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::config::{DataConfig, DataFormat};
use crate::ingest::{InputFormat, expand_inputs, read_file_docs};
use crate::shard::{Manifest, Shard};
use crate::{Error, Result, Tokenizer};

/// Documents by global index.
pub(crate) enum Source {
    Shards {
        shards: Vec<Shard>,
        starts: Vec<u64>,
    },
    Memory(Vec<Vec<u32>>),
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::Shards { starts, .. } => *starts.last().unwrap_or(&0),
            Source::Memory(docs) => docs.len() as u64,
        }
    }

    pub fn read(&self, i: u64, out: &mut Vec<u32>) {
        match self {
            Source::Shards { shards, starts } => {
                let s = starts.partition_point(|&x| x <= i) - 1;
                shards[s].read_doc(i - starts[s], out);
            }
            Source::Memory(docs) => out.extend_from_slice(&docs[i as usize]),
        }
    }
}

/// An opened source and what its tokenizer says.
pub(super) struct Opened {
    pub source: Source,
    pub vocab: Vocab,
}

/// What sources must agree on to be mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vocab {
    /// `<bos>`/`<eos>` put around documents (not for `tokens` rows).
    pub wrap: Option<(u32, u32)>,
    pub pad: u32,
    pub vocab_size: Option<usize>,
    /// Packing applies (never for `tokens` rows).
    pub packing: bool,
}

/// Opens `path` in `format`; `tok` holds the `data.tokenizer`, loaded on first need.
pub(super) fn open_source(
    cfg: &DataConfig,
    format: DataFormat,
    path: &str,
    tok: &mut Option<Tokenizer>,
    cache_dir: &Path,
) -> Result<Opened> {
    match format {
        DataFormat::Shards => {
            let dir = PathBuf::from(path);
            let m = Manifest::read(&dir)?;
            let mut shards = Vec::with_capacity(m.shards.len());
            let mut starts = vec![0u64];
            for info in &m.shards {
                let shard = Shard::open(&dir.join(&info.file))?;
                if shard.documents() != info.documents || shard.tokens() != info.tokens {
                    return Err(Error::shard(
                        shard.path(),
                        format!(
                            "holds {} documents and {} tokens, the manifest says {} and {}",
                            shard.documents(),
                            shard.tokens(),
                            info.documents,
                            info.tokens
                        ),
                    ));
                }
                starts.push(starts.last().expect("non-empty") + shard.documents());
                shards.push(shard);
            }
            if cfg.verify_checksums {
                shards.par_iter().try_for_each(|s| s.verify())?;
            }
            Ok(Opened {
                source: Source::Shards { shards, starts },
                vocab: Vocab {
                    wrap: Some((m.bos_id, m.eos_id)),
                    packing: cfg.packing,
                    pad: m.pad_id,
                    vocab_size: Some(m.vocab_size),
                },
            })
        }
        DataFormat::Text | DataFormat::Jsonl => {
            if tok.is_none() {
                let spec = cfg.tokenizer.as_deref().expect("validated");
                *tok = Some(Tokenizer::load(spec, cache_dir)?);
            }
            let tok = tok.as_ref().expect("just loaded");
            let input = if format == DataFormat::Text {
                InputFormat::Text
            } else {
                InputFormat::Jsonl
            };
            let inputs: Vec<String> = path.split(',').map(|s| s.trim().to_string()).collect();
            let files = expand_inputs(&inputs)?;
            let mut texts = Vec::new();
            for f in &files {
                for d in read_file_docs(f, input, cfg.text_unit, &cfg.field)? {
                    texts.push(d.map_err(|i| Error::BadInput {
                        file: i.file,
                        line: i.line,
                        message: format!(
                            "{} (use `meshtrain tokenize` to skip bad documents)",
                            i.message
                        ),
                    })?);
                }
            }
            let docs: Vec<Vec<u32>> = texts
                .par_iter()
                .map(|t| tok.encode(t))
                .collect::<Result<_>>()?;
            Ok(Opened {
                source: Source::Memory(docs),
                vocab: Vocab {
                    wrap: Some((tok.bos_id(), tok.eos_id())),
                    packing: cfg.packing,
                    pad: tok.pad_id(),
                    vocab_size: Some(tok.vocab_size()),
                },
            })
        }
        DataFormat::Tokens => {
            let rows = read_token_rows(Path::new(path), cfg.seq_len)?;
            Ok(Opened {
                source: Source::Memory(rows),
                vocab: Vocab {
                    wrap: None,
                    packing: false,
                    pad: crate::tokenizer::PAD_ID,
                    vocab_size: None,
                },
            })
        }
    }
}

/// Reads a `tokens` file: `{"input_ids": [[...], ...]}`, or (`.jsonl`) one `{"input_ids": [...]}`
/// or `[...]` per line. Rows longer than `seq_len`, empty rows and ids outside `0..2^31` are errors naming
/// the row (0-based) or line (1-based).
pub fn read_token_rows(path: &Path, seq_len: usize) -> Result<Vec<Vec<u32>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let row_err = |row: usize, message: String| Error::BadRow {
        file: path.to_path_buf(),
        row,
        message,
    };
    let parse_row = |v: &serde_json::Value, row: usize| -> Result<Vec<u32>> {
        let arr = v
            .as_array()
            .ok_or_else(|| row_err(row, "expected an array of token ids".into()))?;
        if arr.is_empty() {
            return Err(row_err(row, "empty row".into()));
        }
        if arr.len() > seq_len {
            return Err(row_err(
                row,
                format!("{} tokens, longer than seq_len {seq_len}", arr.len()),
            ));
        }
        arr.iter()
            .map(|x| {
                x.as_u64()
                    .filter(|&i| i <= i32::MAX as u64)
                    .map(|i| i as u32)
                    .ok_or_else(|| {
                        row_err(
                            row,
                            format!("{x} is not a token id (an integer in 0..2^31)"),
                        )
                    })
            })
            .collect()
    };
    let is_jsonl = path.extension().is_some_and(|e| e == "jsonl");
    if is_jsonl {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = |message: String| Error::BadInput {
                file: path.to_path_buf(),
                line: i as u64 + 1,
                message,
            };
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
            // A bare array is a row too: what `meshtrain tokenizer encode --json` prints.
            let ids = if v.is_array() {
                &v
            } else {
                v.get("input_ids")
                    .ok_or_else(|| bad("missing field \"input_ids\"".into()))?
            };
            rows.push(parse_row(ids, rows.len()).map_err(|e| match e {
                Error::BadRow { message, row, .. } => bad(format!("row {row}: {message}")),
                e => e,
            })?);
        }
        if rows.is_empty() {
            return Err(Error::NoInput {
                pattern: path.display().to_string(),
                message: "no rows".into(),
            });
        }
        Ok(rows)
    } else {
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadInput {
            file: path.to_path_buf(),
            line: e.line() as u64,
            message: format!("invalid JSON: {e}"),
        })?;
        let arr = v
            .get("input_ids")
            .and_then(|x| x.as_array())
            .ok_or_else(|| Error::BadInput {
                file: path.to_path_buf(),
                line: 1,
                message: "expected {\"input_ids\": [[...], ...]}, or a .jsonl file with one row \
                          per line ({\"input_ids\": [...]} or [...])"
                    .into(),
            })?;
        if arr.is_empty() {
            return Err(Error::NoInput {
                pattern: path.display().to_string(),
                message: "no rows".into(),
            });
        }
        arr.iter()
            .enumerate()
            .map(|(i, r)| parse_row(r, i))
            .collect()
    }
}
