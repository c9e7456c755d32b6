//! Cutting input files into documents and checking each one.

use std::path::Path;

use super::{InputFormat, Issue, TextUnit};
use crate::{Error, Result};

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
        (InputFormat::Jsonl | InputFormat::Chat, _) => lines()
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
        InputFormat::Jsonl | InputFormat::Chat => {
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
/// End of the segment of `bytes` that starts at `start`: about `target` bytes, cut at a
/// document boundary (a newline; a blank line for paragraphs; never for whole-file documents).
pub(super) fn segment_end(
    bytes: &[u8],
    start: usize,
    format: InputFormat,
    unit: TextUnit,
    target: usize,
) -> usize {
    let probe = start + target;
    if probe >= bytes.len() || (format == InputFormat::Text && unit == TextUnit::File) {
        return bytes.len();
    }
    let paragraph = format == InputFormat::Text && unit == TextUnit::Paragraph;
    let rest = &bytes[probe..];
    let cut = if paragraph {
        rest.windows(2).position(|w| w == b"\n\n").map(|i| i + 1)
    } else {
        rest.iter().position(|&b| b == b'\n')
    };
    cut.map_or(bytes.len(), |i| probe + i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cutting a file into segments gives the same documents and line numbers as not cutting.
    #[test]
    fn segments_cut_at_document_boundaries() {
        let text = b"one\ntwo two\n\nthree\n\n\nfour four four\nfive\n\nsix";
        for (format, unit) in [
            (InputFormat::Jsonl, TextUnit::File),
            (InputFormat::Text, TextUnit::Line),
            (InputFormat::Text, TextUnit::Paragraph),
            (InputFormat::Text, TextUnit::File),
        ] {
            let whole: Vec<(u64, Vec<u8>, bool)> = split_docs(text, format, unit)
                .into_iter()
                .map(|d| (d.line, d.bytes.to_vec(), d.last_unterminated))
                .collect();
            for target in [1, 3, 7, 100] {
                let mut got = Vec::new();
                let (mut start, mut base) = (0, 0);
                while start < text.len() {
                    let end = segment_end(text, start, format, unit, target);
                    assert!(end > start);
                    let seg = &text[start..end];
                    for d in split_docs(seg, format, unit) {
                        let last = d.last_unterminated && end == text.len();
                        got.push((d.line + base, d.bytes.to_vec(), last));
                    }
                    base += seg.iter().filter(|&&b| b == b'\n').count() as u64;
                    start = end;
                }
                assert_eq!(got, whole, "{format:?} {unit:?} target {target}");
            }
        }
    }
}
