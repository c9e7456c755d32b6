//! `meshtrain tokenize --format chat`: JSONL conversations to version 2 shards, whose tokens
//! carry the loss mask of Gemma's chat format ([`crate::chat`]).

use std::path::Path;
use std::time::Instant;

use rayon::prelude::*;

use super::{Issue, OnError, Progress, Summary, TokenizeOptions, expand_inputs, issue_error};
use crate::chat::{ChatTokens, encode_chat, parse_line};
use crate::shard::{MANIFEST_FILE, ShardInfo, ShardWriter, shard_file_name};
use crate::{Error, Result, Tokenizer};

/// Tokenizes every conversation of the inputs (one `{"messages": [...]}` per line) into masked
/// shards. Bad lines are skipped and listed, or stop the run under [`OnError::Fail`].
pub(super) fn tokenize_chat(
    tokenizer: &Tokenizer,
    opts: &TokenizeOptions,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Summary> {
    let start = Instant::now();
    if opts.filter.active() {
        return Err(Error::config(
            "--format chat",
            "the dedup, PII and decontamination filters read text documents, not conversations: \
             leave them out (filter the conversations' text beforehand)",
        ));
    }
    let files = expand_inputs(&opts.inputs)?;
    if opts.shard_tokens == 0 {
        return Err(Error::config("shard_tokens", "must be positive"));
    }
    let out = &opts.output;
    if out.join(MANIFEST_FILE).exists() {
        return Err(Error::config(
            "output",
            format!(
                "{} already holds a tokenized corpus (manifest.json); remove it or choose another directory",
                out.display()
            ),
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut summary = Summary {
        files: files.len(),
        threads: rayon::current_num_threads(),
        ..Summary::default()
    };
    let total: u64 = files
        .iter()
        .map(|f| Ok(std::fs::metadata(f).map_err(|e| Error::io(f, e))?.len()))
        .sum::<Result<u64>>()?;
    let mut shards: Vec<ShardInfo> = Vec::new();
    let mut writer: Option<ShardWriter> = None;
    for file in &files {
        let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
        summary.bytes += bytes.len() as u64;
        let lines: Vec<(u64, &[u8])> = bytes
            .split(|&b| b == b'\n')
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l))
            .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
            .collect();
        let encoded: Vec<std::result::Result<ChatTokens, Issue>> = lines
            .par_iter()
            .map(|&(line, raw)| encode_line(tokenizer, file, line, raw))
            .collect();
        for r in encoded {
            match r {
                Ok(c) => {
                    if writer.is_none() {
                        let path = out.join(shard_file_name(shards.len()));
                        writer = Some(ShardWriter::create_masked(&path)?);
                    }
                    // invariant: set just above when it was None.
                    let w = writer.as_mut().expect("just created");
                    w.push_masked(&c.input_ids, &c.loss_mask)?;
                    summary.documents += 1;
                    summary.tokens += c.input_ids.len() as u64;
                    if w.tokens() >= opts.shard_tokens {
                        // invariant: borrowed as Some just above.
                        shards.push(writer.take().expect("present").finish()?);
                    }
                }
                Err(issue) => match opts.on_error {
                    OnError::Fail => return Err(issue_error(issue)),
                    OnError::Skip => summary.issues.push(issue),
                },
            }
        }
        progress(Progress {
            bytes_done: summary.bytes,
            bytes_total: total,
            documents: summary.documents,
            tokens: summary.tokens,
        });
    }
    if let Some(w) = writer {
        shards.push(w.finish()?);
    }
    summary.filter.documents_in = summary.documents + summary.issues.len() as u64;
    summary.filter.documents_out = summary.documents;
    super::write_manifest(out, opts, tokenizer, &mut summary, shards, true)?;
    summary.seconds = start.elapsed().as_secs_f64();
    Ok(summary)
}

fn encode_line(
    tok: &Tokenizer,
    file: &Path,
    line: u64,
    raw: &[u8],
) -> std::result::Result<ChatTokens, Issue> {
    let issue = |message: String| Issue {
        file: file.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(raw)
        .map_err(|e| issue(format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1)))?;
    let msgs = parse_line(text.strip_suffix('\r').unwrap_or(text)).map_err(issue)?;
    encode_chat(tok, &msgs).map_err(|e| issue(e.to_string()))
}
