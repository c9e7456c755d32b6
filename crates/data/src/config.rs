//! `[data]` in the training config.

use serde::{Deserialize, Serialize};

use crate::chat::Overflow;
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
    /// JSONL conversations, one `{"messages": [...]}` per line, in Gemma's chat format with
    /// the loss on model turns only ([`crate::chat`]); tokenized in memory at start. Each
    /// conversation stays whole in one row; longer ones follow [`DataConfig::overflow`].
    Chat,
    /// Preference pairs for reward modelling and DPO ([`crate::prefs`]): token level
    /// `{"chosen": [[ids]...], "rejected": [[ids]...]}` or chat JSONL `{"prompt": [messages],
    /// "chosen": "...", "rejected": "..."}`. One pair per row (chosen, then rejected as a
    /// second segment), never packed; `batch_size` counts pairs, `seq_len` bounds a pair.
    Preferences,
}

/// The `[data]` table of a training config.
///
/// One source (`format` and `path`), or a weighted mixture of sources (`[[data.sources]]`,
/// see [`SourceConfig`]):
///
/// ```
/// let cfg: data::DataConfig = toml::from_str(r#"
///     format = "shards"
///     path = "/data/corpus"
///     seq_len = 256
///     batch_size = 4
/// "#).unwrap();
/// assert!(cfg.shuffle && cfg.packing);
///
/// let mix: data::DataConfig = toml::from_str(r#"
///     tokenizer = "gemma"
///     seq_len = 2048
///     batch_size = 512
///     [[sources]]
///     name = "web"
///     path = "/data/web"
///     weight = 0.8
///     [[sources]]
///     name = "code"
///     path = "/data/code/*.jsonl"
///     format = "jsonl"
///     weight = 0.2
/// "#).unwrap();
/// assert_eq!(mix.sources[1].format, Some(data::DataFormat::Jsonl));
/// assert!(mix.validate(0, 1).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Input format of `path`, and of each source that does not name its own (default
    /// `shards`).
    #[serde(default = "default_format")]
    pub format: DataFormat,
    /// `tokens`: the JSON/JSONL file; `shards`: the directory; `text`/`jsonl`/`chat`: files,
    /// directories or glob patterns separated by commas. Empty when `sources` is given.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// Tokens per training sequence. May be left out of the `[data]` table (0) when the
    /// training crate fills it from its own config before [`crate::Loader::new`].
    #[serde(default)]
    pub seq_len: usize,
    /// Global batch size in sequences; each of `host_count` hosts gets `batch_size / host_count`.
    /// May be left out (0) like `seq_len`.
    #[serde(default)]
    pub batch_size: usize,
    /// Shuffle documents (rows for `tokens`) each epoch; `false` takes them in file order.
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// Seed of the shuffle.
    #[serde(default)]
    pub seed: u64,
    /// For `text`/`jsonl`/`chat`: `gemma` or the path of a `tokenizer.json`.
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
    /// A conversation (`chat`, or shards written with `--format chat`) longer than `seq_len`:
    /// `truncate` (keep its first `seq_len` tokens), `drop` or `error`.
    #[serde(default)]
    pub overflow: Overflow,
    /// A weighted mixture instead of `path` (`[[data.sources]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceConfig>,
}

/// One source of a mixture (`[[data.sources]]`).
///
/// The loader interleaves sources so that each one's share of the tokens follows its weight
/// (see [`crate::loader`]); weights are relative and need not sum to 1. Every source uses the
/// `[data]` settings (`tokenizer`, `field`, `text_unit`, `packing`, ...), and shards must
/// have been made with the same tokenizer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Its name, in `tokens_by_source` and messages.
    pub name: String,
    /// Like `data.path`.
    pub path: String,
    /// Relative share of the tokens (positive).
    pub weight: f64,
    /// Its format (default: `data.format`); `tokens` cannot be mixed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<DataFormat>,
}

fn default_format() -> DataFormat {
    DataFormat::Shards
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
            overflow: Overflow::default(),
            sources: Vec::new(),
        }
    }

    /// A mixture config: `sources` as `(name, format, path, weight)`.
    pub fn mixture(
        sources: &[(&str, DataFormat, &str, f64)],
        seq_len: usize,
        batch_size: usize,
    ) -> Self {
        let mut cfg = DataConfig::new(DataFormat::Shards, "", seq_len, batch_size);
        cfg.sources = sources
            .iter()
            .map(|&(name, format, path, weight)| SourceConfig {
                name: name.into(),
                path: path.into(),
                weight,
                format: Some(format),
            })
            .collect();
        cfg
    }

    /// The sources, each with its format resolved: the mixture, or `path` as one source named
    /// `data` with weight 1.
    pub fn source_list(&self) -> Vec<SourceConfig> {
        if self.sources.is_empty() {
            vec![SourceConfig {
                name: "data".into(),
                path: self.path.clone(),
                weight: 1.0,
                format: Some(self.format),
            }]
        } else {
            self.sources
                .iter()
                .map(|s| SourceConfig {
                    format: Some(s.format.unwrap_or(self.format)),
                    ..s.clone()
                })
                .collect()
        }
    }

    /// Checks values that do not need the data: sizes, and that the batch divides over hosts.
    pub fn validate(&self, host_index: usize, host_count: usize) -> Result<()> {
        if self.seq_len < 2 {
            return Err(Error::config(
                "data.seq_len",
                format!(
                    "{} is too small or unset: at least 2 expected",
                    self.seq_len
                ),
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
        self.validate_sources()?;
        let needs_tokenizer = self.source_list().iter().any(|s| {
            matches!(
                s.format,
                Some(DataFormat::Text | DataFormat::Jsonl | DataFormat::Chat)
            )
        });
        if needs_tokenizer && self.tokenizer.is_none() {
            return Err(Error::config(
                "data.tokenizer",
                "required for format text, jsonl or chat (`gemma` or a tokenizer.json path)",
            ));
        }
        Ok(())
    }

    fn validate_sources(&self) -> Result<()> {
        if self.sources.is_empty() {
            if self.path.is_empty() {
                return Err(Error::config(
                    "data.path",
                    "missing: a file, directory or glob expected (or [[data.sources]])",
                ));
            }
            return Ok(());
        }
        if !self.path.is_empty() {
            return Err(Error::config(
                "data.path",
                format!(
                    "{:?} given together with [[data.sources]]: use one or the other",
                    self.path
                ),
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            let field = |f: &str| format!("data.sources[{i}].{f}");
            if s.name.trim().is_empty() {
                return Err(Error::config(&field("name"), "empty: a name expected"));
            }
            if self.sources[..i].iter().any(|o| o.name == s.name) {
                return Err(Error::config(
                    &field("name"),
                    format!(
                        "{:?} is used by an earlier source: names must differ",
                        s.name
                    ),
                ));
            }
            if s.path.is_empty() {
                return Err(Error::config(&field("path"), "empty: a path expected"));
            }
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return Err(Error::config(
                    &field("weight"),
                    format!("{} is not a positive number", s.weight),
                ));
            }
            if matches!(
                s.format.unwrap_or(self.format),
                DataFormat::Tokens | DataFormat::Preferences
            ) {
                return Err(Error::config(
                    &field("format"),
                    "tokens rows and preference pairs are whole training rows and cannot be \
                     mixed: shards, text, jsonl or chat expected",
                ));
            }
        }
        Ok(())
    }
}
