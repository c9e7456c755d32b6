//! Opening one source's documents: shards, text/JSONL/chat tokenized in memory, `tokens` rows.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::chat::Overflow;
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
    /// Documents and, when some tokens are not targets, every document's per-token flags.
    Memory {
        docs: Vec<Vec<u32>>,
        masks: Option<Vec<Vec<u8>>>,
    },
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::Shards { starts, .. } => *starts.last().unwrap_or(&0),
            Source::Memory { docs, .. } => docs.len() as u64,
        }
    }

    /// Tokens in document `i`.
    pub fn doc_len(&self, i: u64) -> u64 {
        match self {
            Source::Shards { shards, starts } => {
                let s = starts.partition_point(|&x| x <= i) - 1;
                shards[s].doc_len(i - starts[s])
            }
            Source::Memory { docs, .. } => docs[i as usize].len() as u64,
        }
    }

    /// Where document `i` is, for messages.
    pub fn describe(&self, i: u64) -> String {
        match self {
            Source::Shards { shards, starts } => {
                let s = starts.partition_point(|&x| x <= i) - 1;
                format!("{} document {}", shards[s].path().display(), i - starts[s])
            }
            Source::Memory { .. } => format!("document {i}"),
        }
    }

    /// Appends document `i`'s tokens to `out` and their target flags to `mask`.
    pub fn read(&self, i: u64, out: &mut Vec<u32>, mask: &mut Vec<u8>) {
        match self {
            Source::Shards { shards, starts } => {
                let s = starts.partition_point(|&x| x <= i) - 1;
                shards[s].read_doc_masked(i - starts[s], out, mask);
            }
            Source::Memory { docs, masks } => {
                let d = &docs[i as usize];
                out.extend_from_slice(d);
                match masks {
                    Some(m) => mask.extend_from_slice(&m[i as usize]),
                    None => mask.extend(std::iter::repeat_n(1, d.len())),
                }
            }
        }
    }
}

/// An opened source and what its tokenizer says.
pub(super) struct Opened {
    pub source: Source,
    pub vocab: Vocab,
    /// `<bos>`/`<eos>` put around documents (not for `tokens` rows or conversations, which
    /// carry their own `<bos>`).
    pub wrap: Option<(u32, u32)>,
    /// Documents are conversations, kept whole in a row.
    pub conversations: bool,
}

/// What sources must agree on to be mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Vocab {
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
                // invariant: starts begins as [0].
                starts.push(starts.last().expect("non-empty") + shard.documents());
                shards.push(shard);
            }
            if cfg.verify_checksums {
                shards.par_iter().try_for_each(|s| s.verify())?;
            }
            Ok(Opened {
                source: Source::Shards { shards, starts },
                wrap: if m.loss_mask {
                    None
                } else {
                    Some((m.bos_id, m.eos_id))
                },
                conversations: m.loss_mask,
                vocab: Vocab {
                    packing: cfg.packing,
                    pad: m.pad_id,
                    vocab_size: Some(m.vocab_size),
                },
            })
        }
        DataFormat::Text | DataFormat::Jsonl => {
            if tok.is_none() {
                // invariant: validate() requires a tokenizer for text and JSONL sources.
                let spec = cfg.tokenizer.as_deref().expect("validated");
                *tok = Some(Tokenizer::load(spec, cache_dir)?);
            }
            // invariant: loaded just above when it was None.
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
                source: Source::Memory { docs, masks: None },
                wrap: Some((tok.bos_id(), tok.eos_id())),
                conversations: false,
                vocab: Vocab {
                    packing: cfg.packing,
                    pad: tok.pad_id(),
                    vocab_size: Some(tok.vocab_size()),
                },
            })
        }
        DataFormat::Chat => {
            if tok.is_none() {
                // invariant: validate() requires a tokenizer for text and JSONL sources.
                let spec = cfg.tokenizer.as_deref().expect("validated");
                *tok = Some(Tokenizer::load(spec, cache_dir)?);
            }
            // invariant: loaded just above when it was None.
            let tok = tok.as_ref().expect("just loaded");
            let inputs: Vec<String> = path.split(',').map(|s| s.trim().to_string()).collect();
            let files = expand_inputs(&inputs)?;
            let mut convs = Vec::new();
            for f in &files {
                for (line, msgs) in crate::chat::read_chat_file(f)? {
                    convs.push((f, line, msgs));
                }
            }
            if convs.is_empty() {
                return Err(Error::NoInput {
                    pattern: path.to_string(),
                    message: "no conversations".into(),
                });
            }
            let encoded: Vec<crate::chat::ChatTokens> = convs
                .par_iter()
                .map(|(_, _, m)| crate::chat::encode_conversation(tok, m))
                .collect::<Result<_>>()?;
            if cfg.overflow == Overflow::Error
                && let Some((i, c)) = encoded
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.input_ids.len() > cfg.seq_len)
            {
                return Err(Error::BadInput {
                    file: convs[i].0.clone(),
                    line: convs[i].1,
                    message: overflow_message(c.input_ids.len(), cfg.seq_len),
                });
            }
            let (docs, masks) = encoded
                .into_iter()
                .map(|c| (c.input_ids, c.loss_mask))
                .unzip();
            Ok(Opened {
                source: Source::Memory {
                    docs,
                    masks: Some(masks),
                },
                wrap: None,
                conversations: true,
                vocab: Vocab {
                    packing: cfg.packing,
                    pad: tok.pad_id(),
                    vocab_size: Some(tok.vocab_size()),
                },
            })
        }
        DataFormat::Preferences => {
            if tok.is_none()
                && let Some(spec) = cfg.tokenizer.as_deref()
            {
                *tok = Some(Tokenizer::load(spec, cache_dir)?);
            }
            let file = Path::new(path);
            let pairs = crate::prefs::read_pairs(file, tok.as_ref())?;
            if cfg.overflow != Overflow::Drop
                && let Some((at, p)) = pairs
                    .iter()
                    .find(|(_, p)| p.0.len() + p.2.len() > cfg.seq_len)
            {
                return Err(Error::config(
                    "data.seq_len",
                    format!(
                        "{}: {at}: the pair holds {} + {} tokens, more than data.seq_len = {} \
                         (a pair fills one row; a cut pair would lose its rejected sequence): \
                         raise data.seq_len, or set data.overflow = \"drop\" to leave such pairs out",
                        file.display(),
                        p.0.len(),
                        p.2.len(),
                        cfg.seq_len
                    ),
                ));
            }
            let (docs, masks) = pairs
                .iter()
                .map(|(_, p)| crate::prefs::pair_document(p))
                .unzip();
            Ok(Opened {
                source: Source::Memory {
                    docs,
                    masks: Some(masks),
                },
                wrap: None,
                conversations: true,
                vocab: Vocab {
                    packing: false,
                    pad: tok
                        .as_ref()
                        .map_or(crate::tokenizer::PAD_ID, |t| t.pad_id()),
                    vocab_size: tok.as_ref().map(|t| t.vocab_size()),
                },
            })
        }
        DataFormat::Tokens => {
            let rows = read_token_rows_with_mask(Path::new(path), cfg.seq_len)?;
            let any_mask = rows.iter().any(|(_, m)| m.is_some());
            let (docs, masks): (Vec<Vec<u32>>, Vec<Vec<u8>>) = rows
                .into_iter()
                .map(|(ids, m)| {
                    let m = m.unwrap_or_else(|| vec![1; ids.len()]);
                    (ids, m)
                })
                .unzip();
            Ok(Opened {
                source: Source::Memory {
                    docs,
                    masks: any_mask.then_some(masks),
                },
                wrap: None,
                conversations: false,
                vocab: Vocab {
                    packing: false,
                    pad: crate::tokenizer::PAD_ID,
                    vocab_size: None,
                },
            })
        }
    }
}

/// What a conversation longer than a row is told, under `data.overflow = "error"`.
pub(crate) fn overflow_message(len: usize, seq_len: usize) -> String {
    format!(
        "conversation of {len} tokens is longer than data.seq_len = {seq_len} \
         (data.overflow = \"error\"; \"truncate\" or \"drop\" to go on)"
    )
}

/// Reads a `tokens` file: `{"input_ids": [[...], ...]}`, or (`.jsonl`) one `{"input_ids": [...]}`
/// or `[...]` per line. Rows longer than `seq_len`, empty rows and ids outside `0..2^31` are
/// errors naming the row (0-based) or line (1-based). A `loss_mask` is ignored here: see
/// [`read_token_rows_with_mask`].
pub fn read_token_rows(path: &Path, seq_len: usize) -> Result<Vec<Vec<u32>>> {
    Ok(read_token_rows_with_mask(path, seq_len)?
        .into_iter()
        .map(|(ids, _)| ids)
        .collect())
}

/// A `tokens` row: its ids and, when given, its `loss_mask`.
pub type MaskedRow = (Vec<u32>, Option<Vec<u8>>);

/// [`read_token_rows`] with each row's optional `loss_mask`: `{"input_ids": [[...]],
/// "loss_mask": [[...]]}` (the same shape), or `{"input_ids": [...], "loss_mask": [...]}` per
/// JSONL line. `loss_mask[t] = 1` makes token `t` a target, predicted from the tokens before
/// it (token 0 has none and is never one); values are 0 or 1.
pub fn read_token_rows_with_mask(path: &Path, seq_len: usize) -> Result<Vec<MaskedRow>> {
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
    let parse_mask =
        |v: Option<&serde_json::Value>, len: usize, row: usize| -> Result<Option<Vec<u8>>> {
            let Some(v) = v else { return Ok(None) };
            let arr = v
                .as_array()
                .ok_or_else(|| row_err(row, "loss_mask: expected an array of 0 and 1".into()))?;
            if arr.len() != len {
                return Err(row_err(
                    row,
                    format!(
                        "loss_mask has {} values for {len} input_ids: the same length expected",
                        arr.len()
                    ),
                ));
            }
            arr.iter()
                .map(|x| match x.as_u64() {
                    Some(0) => Ok(0),
                    Some(1) => Ok(1),
                    _ => match x.as_bool() {
                        Some(b) => Ok(b as u8),
                        None => Err(row_err(row, format!("loss_mask value {x} is not 0 or 1"))),
                    },
                })
                .collect::<Result<Vec<u8>>>()
                .map(Some)
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
            let (ids, mask) = if v.is_array() {
                (&v, None)
            } else {
                (
                    v.get("input_ids")
                        .ok_or_else(|| bad("missing field \"input_ids\"".into()))?,
                    v.get("loss_mask"),
                )
            };
            let row = rows.len();
            let parsed = parse_row(ids, row)
                .and_then(|ids| Ok((parse_mask(mask, ids.len(), row)?, ids)))
                .map_err(|e| match e {
                    Error::BadRow { message, row, .. } => bad(format!("row {row}: {message}")),
                    e => e,
                })?;
            rows.push((parsed.1, parsed.0));
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
        let masks = match v.get("loss_mask") {
            None => None,
            Some(m) => {
                let m = m.as_array().ok_or_else(|| Error::BadInput {
                    file: path.to_path_buf(),
                    line: 1,
                    message: "loss_mask: expected an array of rows, like input_ids".into(),
                })?;
                if m.len() != arr.len() {
                    return Err(Error::BadInput {
                        file: path.to_path_buf(),
                        line: 1,
                        message: format!(
                            "loss_mask has {} rows, input_ids {}: the same shape expected",
                            m.len(),
                            arr.len()
                        ),
                    });
                }
                Some(m)
            }
        };
        arr.iter()
            .enumerate()
            .map(|(i, r)| {
                let ids = parse_row(r, i)?;
                let mask = parse_mask(masks.map(|m| &m[i]), ids.len(), i)?;
                Ok((ids, mask))
            })
            .collect()
    }
}
