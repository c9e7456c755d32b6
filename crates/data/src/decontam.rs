//! Decontamination for `meshtrain tokenize --decontaminate FILE...`: training documents that
//! share a 13-gram of words with any evaluation text are dropped.
//!
//! Words are lowercased runs of letters and digits, as for near-duplicate detection, so
//! punctuation, case and spacing do not hide an overlap. Evaluation files:
//!
//! * `.jsonl`: each line is a JSON value; all its strings, joined by newlines, are one text
//!   (so a question and its answer count together);
//! * `.json`: each element of a top-level array (else the whole value) is one text, likewise;
//! * anything else: the whole file is one text.
//!
//! A text of fewer than 13 words has no 13-gram and cannot be matched; such texts are counted
//! ([`Contamination::too_short`]) and reported, not silently ignored. Memory: 8 bytes (plus
//! table slack) per distinct evaluation 13-gram.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::hash::{IdBuild, ngram_hashes, word_hashes};
use crate::{Error, Result};

/// Words per n-gram.
pub const NGRAM_WORDS: usize = 13;

/// The 13-grams of a set of evaluation texts.
#[derive(Debug, Default)]
pub struct Contamination {
    ngrams: HashSet<u64, IdBuild>,
    /// Evaluation texts read.
    pub texts: u64,
    /// Of those, texts with fewer than 13 words (they cannot be matched).
    pub too_short: u64,
    /// The files read.
    pub files: Vec<PathBuf>,
}

impl Contamination {
    /// Reads evaluation texts from `files` (see the module docs for the formats).
    pub fn from_files(files: &[PathBuf]) -> Result<Self> {
        let mut c = Contamination::default();
        for f in files {
            c.add_file(f)?;
        }
        Ok(c)
    }

    fn add_file(&mut self, file: &Path) -> Result<()> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("");
        let bad = |line: u64, e: serde_json::Error| Error::BadInput {
            file: file.to_path_buf(),
            line,
            message: format!("invalid JSON in an evaluation file: {e}"),
        };
        match ext {
            "jsonl" => {
                for (i, line) in text.lines().enumerate() {
                    if line.trim().is_empty() {
                        continue;
                    }
                    let v: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| bad(i as u64 + 1, e))?;
                    self.add_text(&strings_of(&v));
                }
            }
            "json" => {
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| bad(e.line() as u64, e))?;
                match &v {
                    serde_json::Value::Array(items) => {
                        for item in items {
                            self.add_text(&strings_of(item));
                        }
                    }
                    other => self.add_text(&strings_of(other)),
                }
            }
            _ => self.add_text(&text),
        }
        self.files.push(file.to_path_buf());
        Ok(())
    }

    /// Adds one evaluation text.
    pub fn add_text(&mut self, text: &str) {
        self.texts += 1;
        let words = word_hashes(text);
        if words.len() < NGRAM_WORDS {
            self.too_short += 1;
        }
        ngram_hashes(&words, NGRAM_WORDS, |h| {
            self.ngrams.insert(h);
        });
    }

    /// Distinct evaluation 13-grams.
    pub fn ngrams(&self) -> usize {
        self.ngrams.len()
    }

    /// Whether `text` shares a 13-gram with an evaluation text.
    pub fn contains(&self, text: &str) -> bool {
        if self.ngrams.is_empty() {
            return false;
        }
        let words = word_hashes(text);
        let mut hit = false;
        ngram_hashes(&words, NGRAM_WORDS, |h| {
            hit = hit || self.ngrams.contains(&h);
        });
        hit
    }
}

/// All strings in a JSON value, depth first, joined by newlines.
fn strings_of(v: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::String(s) => {
                if !out.is_empty() {
                    out.push('\n');
                }
                out.push_str(s);
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Object(o) => o.values().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_13_gram_is_caught_and_12_are_not() {
        let mut c = Contamination::default();
        c.add_text(
            "Q: The quick brown fox jumps over the lazy dog near the quiet river bank today?",
        );
        c.add_text("too short to match anything");
        assert_eq!((c.texts, c.too_short), (2, 1));
        // 13 words in a row, with other case and punctuation.
        assert!(c.contains(
            "Intro... THE QUICK brown fox, jumps over the lazy dog near the quiet river. Outro"
        ));
        // 12 of them only.
        assert!(
            !c.contains("Intro the quick brown fox jumps over the lazy dog near the quiet. Outro")
        );
        assert!(!c.contains(""));
    }

    #[test]
    fn eval_files_in_three_formats() {
        let dir = tempfile::tempdir().unwrap();
        let q = "one two three four five six seven eight nine ten eleven twelve thirteen";
        let jsonl = dir.path().join("e.jsonl");
        std::fs::write(
            &jsonl,
            format!("{{\"q\": \"{q}\", \"n\": 3}}\n\n{{\"q\": \"short\"}}\n"),
        )
        .unwrap();
        let json = dir.path().join("e.json");
        std::fs::write(&json, format!("[{{\"q\": \"x\", \"a\": [\"{q}\"]}}]")).unwrap();
        let txt = dir.path().join("e.txt");
        std::fs::write(&txt, q).unwrap();
        for f in [&jsonl, &json, &txt] {
            let c = Contamination::from_files(std::slice::from_ref(f)).unwrap();
            assert!(
                c.contains(&format!("training text: {q}!")),
                "{}",
                f.display()
            );
        }
        std::fs::write(&jsonl, "{\"q\": 1}\n{bad\n").unwrap();
        let err = Contamination::from_files(&[jsonl]).unwrap_err();
        assert!(err.to_string().contains("e.jsonl:2:"), "{err}");
    }
}
