//! Preference pairs for reward modelling and DPO (`data.format = "preferences"`).
//!
//! A file is either token level, one JSON object `{"chosen": [[ids]...], "rejected":
//! [[ids]...]}` (row `i` of each is a pair), or JSONL text, one `{"prompt": [messages],
//! "chosen": "...", "rejected": "..."}` per line, where each response becomes the model turn
//! after the prompt, rendered in Gemma's chat format ([`crate::chat`]).
//!
//! A pair is one document and one row of the batch: the chosen sequence as segment 1, the
//! rejected one as segment 2 (positions restarting at 0), so `data.seq_len` bounds the two
//! together and `data.batch_size` counts pairs. The per-token flags are the chat loss mask
//! (model turns; every token for token-level pairs), with [`NEW_SEGMENT`] on the rejected
//! sequence's first token.

use std::path::Path;

use serde_json::Value;

use crate::chat::{Message, Role, encode_chat, parse_conversation};
use crate::{Error, Result, Tokenizer};

/// Flag bit of a document's per-token flags: this token starts a new segment (positions
/// restart), used between the two sequences of a preference pair.
pub const NEW_SEGMENT: u8 = 2;

/// One pair: `(chosen ids, chosen target flags, rejected ids, rejected target flags)`.
pub type Pair = (Vec<u32>, Vec<u8>, Vec<u32>, Vec<u8>);

/// Reads the pairs of `path`, with where each came from (`line N` or `row N`); text pairs
/// need `tok`.
pub fn read_pairs(path: &Path, tok: Option<&Tokenizer>) -> Result<Vec<(String, Pair)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let whole: Option<Value> = serde_json::from_str(&text).ok();
    let pairs = match whole {
        Some(v) if v.get("chosen").is_some_and(Value::is_array) => token_pairs(path, &v)?,
        _ => {
            let Some(tok) = tok else {
                return Err(Error::config(
                    "data.tokenizer",
                    format!(
                        "required for the text preference pairs of {} (`gemma` or a tokenizer.json path)",
                        path.display()
                    ),
                ));
            };
            text_pairs(path, &text, tok)?
        }
    };
    if pairs.is_empty() {
        return Err(Error::NoInput {
            pattern: path.display().to_string(),
            message: "no preference pairs".into(),
        });
    }
    Ok(pairs)
}

/// A pair as one document: its tokens and per-token flags.
pub fn pair_document(p: &Pair) -> (Vec<u32>, Vec<u8>) {
    let (c, cm, r, rm) = p;
    let mut ids = c.clone();
    ids.extend(r);
    let mut mask = cm.clone();
    mask.extend(rm);
    mask[c.len()] |= NEW_SEGMENT;
    (ids, mask)
}

fn token_pairs(path: &Path, v: &Value) -> Result<Vec<(String, Pair)>> {
    let rows = |key: &str| -> Result<Vec<Vec<u32>>> {
        let bad = |row: usize, message: String| Error::BadRow {
            file: path.to_owned(),
            row,
            message,
        };
        let list = v.get(key).and_then(Value::as_array).ok_or_else(|| {
            Error::config(
                "data.path",
                format!(
                    "{}: \"{key}\" missing or not an array of rows; expected \
                     {{\"chosen\": [[ids]...], \"rejected\": [[ids]...]}}",
                    path.display()
                ),
            )
        })?;
        list.iter()
            .enumerate()
            .map(|(i, row)| {
                let ids = row
                    .as_array()
                    .ok_or_else(|| bad(i, format!("\"{key}\" row is not an array of token ids")))?;
                if ids.is_empty() {
                    return Err(bad(i, format!("\"{key}\" row is empty")));
                }
                ids.iter()
                    .map(|x| {
                        x.as_u64()
                            .filter(|&n| n <= u32::MAX as u64)
                            .map(|n| n as u32)
                            .ok_or_else(|| bad(i, format!("\"{key}\": {x} is not a token id")))
                    })
                    .collect()
            })
            .collect()
    };
    let (chosen, rejected) = (rows("chosen")?, rows("rejected")?);
    if chosen.len() != rejected.len() {
        return Err(Error::config(
            "data.path",
            format!(
                "{}: {} chosen rows but {} rejected rows; row i of each is a pair",
                path.display(),
                chosen.len(),
                rejected.len()
            ),
        ));
    }
    Ok(chosen
        .into_iter()
        .zip(rejected)
        .enumerate()
        .map(|(i, (c, r))| {
            let (cm, rm) = (vec![1; c.len()], vec![1; r.len()]);
            (format!("row {i}"), (c, cm, r, rm))
        })
        .collect())
}

fn text_pairs(path: &Path, text: &str, tok: &Tokenizer) -> Result<Vec<(String, Pair)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| Error::BadInput {
            file: path.to_owned(),
            line: i as u64 + 1,
            message,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let prompt = v.get("prompt").ok_or_else(|| {
            bad("missing \"prompt\": {\"prompt\": [messages], \"chosen\": \"...\", \"rejected\": \"...\"} expected".into())
        })?;
        let prompt = parse_conversation(&serde_json::json!({ "messages": prompt }))
            .map_err(|m| bad(format!("\"prompt\": {m}")))?;
        if prompt.last().map(|m| m.role) != Some(Role::User) {
            return Err(bad("\"prompt\" must end with a user message".into()));
        }
        let encode = |key: &str| -> Result<(Vec<u32>, Vec<u8>)> {
            let response = v
                .get(key)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("\"{key}\" missing or not a string")))?;
            let mut conv = prompt.clone();
            conv.push(Message::new(Role::Model, response));
            let c = encode_chat(tok, &conv)?;
            Ok((c.input_ids, c.loss_mask))
        };
        let (c, cm) = encode("chosen")?;
        let (r, rm) = encode("rejected")?;
        out.push((format!("line {}", i + 1), (c, cm, r, rm)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_pairs_become_two_segment_documents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"chosen": [[2, 5, 6]], "rejected": [[2, 7]]}"#).unwrap();
        let pairs = read_pairs(&path, None).unwrap();
        let (ids, mask) = pair_document(&pairs[0].1);
        assert_eq!(ids, [2, 5, 6, 2, 7]);
        assert_eq!(mask, [1, 1, 1, 1 | NEW_SEGMENT, 1]);
    }

    #[test]
    fn bad_pairs_name_file_and_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, r#"{"chosen": [[2, 5]], "rejected": [[2, -1]]}"#).unwrap();
        let e = read_pairs(&path, None).unwrap_err().to_string();
        assert!(
            e.contains("p.json") && e.contains("row 0") && e.contains("-1"),
            "{e}"
        );
        std::fs::write(&path, r#"{"chosen": [[2, 5]], "rejected": []}"#).unwrap();
        let e = read_pairs(&path, None).unwrap_err().to_string();
        assert!(e.contains("1 chosen rows but 0 rejected"), "{e}");
        std::fs::write(&path, "{\"prompt\": [], \"chosen\": \"a\"}\n").unwrap();
        let e = read_pairs(&path, None).unwrap_err().to_string();
        assert!(e.contains("data.tokenizer"), "{e}");
    }
}
