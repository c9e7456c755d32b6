//! `[data]` in the training config.

use serde::{Deserialize, Serialize};

use crate::ingest::TextUnit;
use crate::{Error, Result};

/// Where training sequences come from (`data.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    /// Pre-tokenized rows: a JSON file `{"input_ids": [[...], ...]}` or JSONL with one
    /// `{"input_ids": [...]}` per line. Each row is one training sequence used as is.
    Tokens,
    /// A directory written by `meshtrain tokenize` (see [`crate::shard`]).
    Shards,
    /// Plain text files (file, directory or glob), tokenized in memory when the loader starts.
    Text,
    /// JSONL files with the text in [`DataConfig::field`], tokenized in memory at start.
    Jsonl,
}

/// The `[data]` table of a training config.
///
/// ```
/// let cfg: data::DataConfig = toml::from_str(r#"
///     format = "shards"
///     path = "/data/corpus"
///     seq_len = 256
///     batch_size = 4
/// "#).unwrap();
/// assert!(cfg.shuffle && cfg.packing);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Input format.
    pub format: DataFormat,
    /// `tokens`: the JSON/JSONL file; `shards`: the directory; `text`/`jsonl`: files,
    /// directories or glob patterns separated by commas.
    pub path: String,
    /// Tokens per training sequence.
    pub seq_len: usize,
    /// Global batch size in sequences; each of `host_count` hosts gets `batch_size / host_count`.
    pub batch_size: usize,
    /// Shuffle documents (rows for `tokens`) each epoch; `false` takes them in file order.
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Seed of the shuffle.
    #[serde(default)]
    pub seed: u64,
    /// For `text`/`jsonl`: `gemma` or the path of a `tokenizer.json`.
    #[serde(default)]
    pub tokenizer: Option<String>,
    /// For `jsonl`: the field holding the text.
    #[serde(default = "default_field")]
    pub field: String,
    /// For `text`: what one document is.
    #[serde(default)]
    pub text_unit: TextUnit,
    /// Pack documents into full sequences (`true`), or one document per sequence, padded.
    /// Ignored by `tokens`, whose rows are always used as is.
    #[serde(default = "default_true")]
    pub packing: bool,
    /// Batches prepared ahead by the background thread.
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// Check every shard's sha256 when the loader starts (reads all shards once).
    #[serde(default = "default_true")]
    pub verify_checksums: bool,
}

fn default_true() -> bool {
    true
}

fn default_field() -> String {
    "text".into()
}

fn default_prefetch() -> usize {
    8
}

impl DataConfig {
    /// A config with the defaults for everything but the required fields.
    pub fn new(
        format: DataFormat,
        path: impl Into<String>,
        seq_len: usize,
        batch_size: usize,
    ) -> Self {
        DataConfig {
            format,
            path: path.into(),
            seq_len,
            batch_size,
            shuffle: true,
            seed: 0,
            tokenizer: None,
            field: default_field(),
            text_unit: TextUnit::File,
            packing: true,
            prefetch: default_prefetch(),
            verify_checksums: true,
        }
    }

    /// Checks values that do not need the data: sizes, and that the batch divides over hosts.
    pub fn validate(&self, host_index: usize, host_count: usize) -> Result<()> {
        if self.seq_len < 2 {
            return Err(Error::config(
                "data.seq_len",
                format!("{} is too small: at least 2 expected", self.seq_len),
            ));
        }
        if host_count == 0 || host_index >= host_count {
            return Err(Error::config(
                "host_index",
                format!("host {host_index} of {host_count}: expected 0 <= host_index < host_count"),
            ));
        }
        if self.batch_size == 0 || !self.batch_size.is_multiple_of(host_count) {
            return Err(Error::config(
                "data.batch_size",
                format!(
                    "{} does not divide over {host_count} hosts: a positive multiple of {host_count} expected",
                    self.batch_size
                ),
            ));
        }
        if self.prefetch == 0 {
            return Err(Error::config("data.prefetch", "must be at least 1"));
        }
        if matches!(self.format, DataFormat::Text | DataFormat::Jsonl) && self.tokenizer.is_none() {
            return Err(Error::config(
                "data.tokenizer",
                "required for format text or jsonl (`gemma` or a tokenizer.json path)",
            ));
        }
        Ok(())
    }
}
