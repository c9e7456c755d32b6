//! The training data loader: deterministic, per-host, prefetching, exactly resumable, over one
//! source or a weighted mixture of sources.
//!
//! Each host visits its slice of a per-epoch permutation of each source's documents (see
//! [`crate::pack`]); only the documents of that slice are read. A background thread builds
//! batches ahead of the training step into a bounded queue of `data.prefetch` batches. The state
//! after a batch is where each source's stream stands (epoch, document, token offset in it,
//! tokens emitted): restoring it reproduces the following batches exactly.
//!
//! # Mixtures
//!
//! With `[[data.sources]]` ([`crate::config::SourceConfig`]) the next document comes from the
//! source furthest below its share of the tokens emitted so far, so each source's share of
//! the tokens converges to its weight (off by less than one document at any time), with no
//! randomness to save. Each source has its own epochs: one that runs out starts its next
//! epoch (a new permutation) and the loader says so on stderr, while the others go on.
//! Weights may change between a save and a resume (to anneal a mixture); the sources
//! themselves (names, data) may not. [`Loader::tokens_by_source`] gives each source's
//! cumulative tokens on this host, for `metrics.jsonl`. A single `path` is a mixture of one
//! source named `data`, and states saved before mixtures existed still load.
//!
//! Why no shuffle buffer: a streaming shuffle buffer mixes only documents that are near each
//! other in storage, and its contents would have to be saved with every checkpoint for exact
//! resume. Shards are memory-mapped with a document index, so any document can be read directly;
//! the order is a keyed permutation of *all* documents across all shards, computed on the fly
//! (O(1) memory, no table), and the resume state stays a few integers per source. Memory is
//! bounded by the prefetch queue. The price is random rather than sequential reads within the
//! shards, which the page cache and local SSDs serve well; on slow network storage, copy shards
//! locally.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, SourceConfig};
use crate::hash::fnv64;
use crate::pack::{Batch, Order, splitmix};
use crate::{Error, Result};

mod open;
mod producer;

use open::{Source, Vocab, open_source, overflow_message};
pub use open::{read_token_rows, read_token_rows_with_mask};
use producer::{Producer, Stream};

/// Where a loader stands after a batch: save it with a checkpoint, give it to [`Loader::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderState {
    /// Epoch of the first source (the only one without a mixture).
    pub epoch: u64,
    /// Index of the first source's current document in this host's order for its epoch.
    pub document: u64,
    /// Tokens of that document (with `<bos>`) already emitted.
    pub offset: u64,
    /// Batches emitted since the start of training.
    pub batches: u64,
    /// Hash of everything that decides the stream (sources and their sizes, seed, hosts,
    /// shapes); a state is only accepted by a loader with the same fingerprint.
    pub fingerprint: u64,
    /// Every source's position, in config order. Empty in states saved before mixtures
    /// existed: then `epoch`, `document` and `offset` are the one source's position.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceState>,
}

/// Where one source of a [`LoaderState`] stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceState {
    /// The source's name (`data` for a single `path`).
    pub name: String,
    /// Epoch (pass over this source) in progress.
    pub epoch: u64,
    /// Index of the current document in this host's order for the epoch.
    pub document: u64,
    /// Tokens of that document (with `<bos>`) already emitted.
    pub offset: u64,
    /// Tokens (padding excluded) this source has put into batches on this host.
    pub tokens: u64,
}

/// What a loader reads, besides its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataInfo {
    /// Vocabulary size of the tokenizer that made the data (`None` for `tokens`).
    pub vocab_size: Option<usize>,
    /// Documents (rows for `tokens`) in the data, all sources and hosts together.
    pub documents: u64,
    /// `<pad>` id used for padding.
    pub pad_id: u32,
    /// Rows per batch on this host.
    pub rows_per_host: usize,
    /// Each source's name and documents (all hosts together).
    pub sources: Vec<(String, u64)>,
    /// Conversations longer than `data.seq_len`, all sources together: cut to `seq_len`
    /// tokens (`data.overflow = "truncate"`) each time they are read.
    pub truncated: u64,
    /// Conversations longer than `data.seq_len` left out (`data.overflow = "drop"`).
    pub dropped: u64,
}

/// The data loader. See the module docs.
pub struct Loader {
    rx: Option<Receiver<(Batch, LoaderState)>>,
    thread: Option<JoinHandle<()>>,
    state: LoaderState,
    info: DataInfo,
    host: usize,
    host_docs: Vec<u64>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("state", &self.state)
            .field("info", &self.info)
            .finish()
    }
}

impl Loader {
    /// Opens the data of `cfg` for host `host_index` of `host_count`, at the start or at a saved
    /// state. `gemma` as tokenizer is looked up in [`crate::cache_dir`].
    pub fn new(
        cfg: &DataConfig,
        host_index: usize,
        host_count: usize,
        resume: Option<LoaderState>,
    ) -> Result<Self> {
        Self::with_cache_dir(cfg, host_index, host_count, resume, &crate::cache_dir())
    }

    /// [`Loader::new`] with an explicit cache directory for the tokenizer.
    pub fn with_cache_dir(
        cfg: &DataConfig,
        host_index: usize,
        host_count: usize,
        resume: Option<LoaderState>,
        cache_dir: &Path,
    ) -> Result<Self> {
        cfg.validate(host_index, host_count)?;
        let sources = Sources::open(cfg, cache_dir)?;
        let mut producer = sources.producer(cfg, host_index, host_count, resume)?;
        let state = producer.state.clone();
        let info = sources.info(producer.rows);
        let host_docs = producer
            .streams
            .iter()
            .map(|s| s.order.host_len())
            .collect();
        let (tx, rx): (SyncSender<(Batch, LoaderState)>, _) = sync_channel(cfg.prefetch);
        let thread = std::thread::Builder::new()
            .name(format!("data-loader-{host_index}"))
            .spawn(move || {
                loop {
                    if tx.send(producer.next()).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::LoaderStopped(e.to_string()))?;
        Ok(Loader {
            rx: Some(rx),
            thread: Some(thread),
            state,
            info,
            host: host_index,
            host_docs,
        })
    }

    /// The next batch of this host; waits only if the prefetch queue is empty. A source that
    /// starts a new epoch in it is reported on stderr.
    pub fn next_batch(&mut self) -> Result<Batch> {
        // invariant: only Drop takes the receiver.
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        let (batch, state) = rx
            .recv()
            .map_err(|_| Error::LoaderStopped("the producer thread ended".into()))?;
        for (i, (old, new)) in self.state.sources.iter().zip(&state.sources).enumerate() {
            if new.epoch > old.epoch {
                eprintln!(
                    "meshtrain data: source {:?} ran out of its {} documents on host {}: \
                     epoch {} of it starts",
                    new.name, self.host_docs[i], self.host, new.epoch
                );
            }
        }
        self.state = state;
        Ok(batch)
    }

    /// The state after the last batch returned (the start state before the first).
    pub fn state(&self) -> LoaderState {
        self.state.clone()
    }

    /// What the data is.
    pub fn info(&self) -> &DataInfo {
        &self.info
    }

    /// Tokens (padding excluded) each source has put into this host's batches so far, resumed
    /// runs included: `tokens_by_source` in `metrics.jsonl`.
    pub fn tokens_by_source(&self) -> BTreeMap<String, u64> {
        self.state
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.tokens))
            .collect()
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver makes the producer's next send fail, which ends it.
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The sources of a config, opened once (files mapped or tokenized) and shared by the
/// streams that read them: one per host for [`Loader`], one per row for
/// [`crate::RowLoader`].
pub(crate) struct Sources {
    list: Vec<SourceConfig>,
    opened: Vec<Arc<Source>>,
    /// Per source: `<bos>`/`<eos>` around documents, and whether they are conversations.
    wraps: Vec<(Option<(u32, u32)>, bool)>,
    /// Conversations longer than a row, all sources.
    overflowing: u64,
    overflow: crate::chat::Overflow,
    /// What every source's tokenizer says (checked equal).
    vocab: Vocab,
    mixture: bool,
}

impl Sources {
    /// Opens every source of `cfg` and checks they share one tokenizer.
    pub(crate) fn open(cfg: &DataConfig, cache_dir: &Path) -> Result<Sources> {
        let mixture = !cfg.sources.is_empty();
        let list = cfg.source_list();
        let mut tok = None;
        let mut opened = Vec::with_capacity(list.len());
        let mut wraps = Vec::with_capacity(list.len());
        let mut overflowing = 0;
        let mut first: Option<Vocab> = None;
        for (i, src) in list.iter().enumerate() {
            // invariant: source_list() resolves every format.
            let format = src.format.expect("resolved");
            let o = open_source(cfg, format, &src.path, &mut tok, cache_dir)?;
            if o.conversations {
                let key = source_key(mixture, i, &src.name);
                overflowing += count_overflowing(cfg, &o.source, &key)?;
            }
            match first {
                None => first = Some(o.vocab),
                Some(f) if f != o.vocab => {
                    return Err(Error::config(
                        &source_key(mixture, i, &src.name),
                        format!(
                            "made with another tokenizer than data.sources[0] (vocabulary {:?}, \
                             <pad> {}; the first source has {:?}, {}): \
                             all sources must share one tokenizer",
                            o.vocab.vocab_size, o.vocab.pad, f.vocab_size, f.pad
                        ),
                    ));
                }
                Some(_) => {}
            }
            opened.push(Arc::new(o.source));
            wraps.push((o.wrap, o.conversations));
        }
        Ok(Sources {
            list,
            opened,
            wraps,
            overflowing,
            overflow: cfg.overflow,
            // invariant: validate() (run by Loader::new) refuses a config without sources.
            vocab: first.expect("at least one source"),
            mixture,
        })
    }

    /// The stream of host (or row stream) `host` of `hosts`, filling
    /// `data.batch_size / hosts` rows a batch, at the start or at `resume`.
    pub(crate) fn producer(
        &self,
        cfg: &DataConfig,
        host: usize,
        hosts: usize,
        resume: Option<LoaderState>,
    ) -> Result<Producer> {
        let total_weight: f64 = self.list.iter().map(|s| s.weight).sum();
        let mut streams = Vec::with_capacity(self.list.len());
        let mut fp = splitmix(0x6d69_7874_7572_6500);
        for (i, (src, source)) in self.list.iter().zip(&self.opened).enumerate() {
            let name = &src.name;
            let n = source.len();
            if n < hosts as u64 {
                return Err(Error::config(
                    &source_key(self.mixture, i, name),
                    format!("{n} documents cannot be split over {hosts} hosts"),
                ));
            }
            let seed = if self.mixture {
                splitmix(cfg.seed ^ fnv64(name.as_bytes()))
            } else {
                cfg.seed
            };
            for v in [
                n,
                fnv64(name.as_bytes()),
                // invariant: source_list() resolves every format.
                src.format.expect("resolved") as u64,
            ] {
                fp = splitmix(fp ^ v);
            }
            streams.push(Stream {
                source: source.clone(),
                order: Order {
                    n,
                    host: host as u64,
                    hosts: hosts as u64,
                    shuffle: cfg.shuffle,
                    seed,
                },
                wrap: self.wraps[i].0,
                share: src.weight / total_weight,
                whole: self.wraps[i].1,
            });
        }
        let Vocab { pad, packing, .. } = self.vocab;
        let rows = cfg.batch_size / hosts;
        let common = [
            cfg.seed,
            cfg.shuffle as u64,
            packing as u64,
            host as u64,
            hosts as u64,
            cfg.seq_len as u64,
            rows as u64,
        ];
        if !self.mixture {
            // The fingerprint of states saved before mixtures: they must still resume.
            fp = splitmix(streams[0].order.n);
            for v in common.into_iter().chain([cfg.format as u64]) {
                fp = splitmix(fp ^ v);
            }
        } else {
            for v in common {
                fp = splitmix(fp ^ v);
            }
        }
        if self.wraps.iter().any(|w| w.1) {
            // How long conversations are cut or left out decides the stream too.
            fp = splitmix(fp ^ (0x100 + cfg.overflow as u64));
        }
        let state = start_state(&self.list, &streams, resume, fp, packing, rows, cfg.seq_len)?;
        Ok(Producer::new(
            streams,
            cfg.seq_len,
            rows,
            packing,
            pad,
            state,
            cfg.overflow,
        ))
    }

    /// What the data is, for a loader filling `rows` rows a batch.
    pub(crate) fn info(&self, rows: usize) -> DataInfo {
        DataInfo {
            vocab_size: self.vocab.vocab_size,
            documents: self.opened.iter().map(|s| s.len()).sum(),
            pad_id: self.vocab.pad,
            rows_per_host: rows,
            sources: self
                .list
                .iter()
                .zip(&self.opened)
                .map(|(l, s)| (l.name.clone(), s.len()))
                .collect(),
            truncated: match self.overflow {
                crate::chat::Overflow::Drop => 0,
                _ => self.overflowing,
            },
            dropped: match self.overflow {
                crate::chat::Overflow::Drop => self.overflowing,
                _ => 0,
            },
        }
    }
}

/// Counts a conversation source's documents longer than `data.seq_len`; under
/// `data.overflow = "error"` the first is an error, under `drop` a source of only such
/// conversations is one.
fn count_overflowing(cfg: &DataConfig, source: &Source, key: &str) -> Result<u64> {
    let n = source.len();
    let mut count = 0;
    for i in 0..n {
        let len = source.doc_len(i);
        if len > cfg.seq_len as u64 {
            if cfg.overflow == crate::chat::Overflow::Error {
                return Err(Error::config(
                    key,
                    format!(
                        "{}: {}",
                        source.describe(i),
                        overflow_message(len as usize, cfg.seq_len)
                    ),
                ));
            }
            count += 1;
        }
    }
    if count == n && cfg.overflow == crate::chat::Overflow::Drop {
        return Err(Error::config(
            key,
            format!(
                "all {n} conversations are longer than data.seq_len = {} and \
                 data.overflow = \"drop\" leaves none",
                cfg.seq_len
            ),
        ));
    }
    Ok(count)
}

/// The config key that names source `i`.
fn source_key(mixture: bool, i: usize, name: &str) -> String {
    if mixture {
        format!("data.sources[{i}] ({name:?})")
    } else {
        "data.path".to_string()
    }
}

/// The state to start from: fresh, or a saved one checked against this loader.
fn start_state(
    list: &[SourceConfig],
    streams: &[Stream],
    resume: Option<LoaderState>,
    fingerprint: u64,
    packing: bool,
    rows: usize,
    seq_len: usize,
) -> Result<LoaderState> {
    let Some(mut s) = resume else {
        return Ok(LoaderState {
            fingerprint,
            sources: list
                .iter()
                .map(|l| SourceState {
                    name: l.name.clone(),
                    ..SourceState::default()
                })
                .collect(),
            ..LoaderState::default()
        });
    };
    if s.fingerprint != fingerprint {
        return Err(Error::Resume(format!(
            "the saved state is for other data or settings (fingerprint {:#x}, this loader \
             {fingerprint:#x}): sources and their sizes, seed, shuffle, packing, host index/count, \
             seq_len and batch size must match",
            s.fingerprint
        )));
    }
    if s.sources.is_empty() && list.len() == 1 {
        // Saved before mixtures: one source, and no token count. Packed rows are full, so
        // the count is exact then; without packing it restarts at 0.
        let tokens = if packing {
            s.batches * (rows * seq_len) as u64
        } else {
            0
        };
        s.sources = vec![SourceState {
            name: list[0].name.clone(),
            epoch: s.epoch,
            document: s.document,
            offset: s.offset,
            tokens,
        }];
    }
    let names: Vec<&str> = s.sources.iter().map(|x| x.name.as_str()).collect();
    let expected: Vec<&str> = list.iter().map(|l| l.name.as_str()).collect();
    if names != expected {
        return Err(Error::Resume(format!(
            "the saved state has sources {names:?}, this loader {expected:?}"
        )));
    }
    for (src, stream) in s.sources.iter().zip(streams) {
        if src.document >= stream.order.host_len() {
            return Err(Error::Resume(format!(
                "source {:?}: document {} is past this host's {} documents",
                src.name,
                src.document,
                stream.order.host_len()
            )));
        }
    }
    if s.sources.iter().filter(|x| x.offset > 0).count() > 1 {
        return Err(Error::Resume(
            "more than one source has a document in progress: the state is corrupt".into(),
        ));
    }
    Ok(s)
}
