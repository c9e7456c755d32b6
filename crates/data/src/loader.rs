//! The training data loader: deterministic, per-host, prefetching, exactly resumable.
//!
//! Each host visits its slice of a per-epoch permutation of all documents (see
//! [`crate::pack`]); only the documents of that slice are read. A background thread builds
//! batches ahead of the training step into a bounded queue of `data.prefetch` batches. The state
//! after a batch is where the stream stands (epoch, document, token offset in it): restoring it
//! reproduces the following batches exactly.
//!
//! Why no shuffle buffer: a streaming shuffle buffer mixes only documents that are near each
//! other in storage, and its contents would have to be saved with every checkpoint for exact
//! resume. Shards are memory-mapped with a document index, so any document can be read directly;
//! the order is a keyed permutation of *all* documents across all shards, computed on the fly
//! (O(1) memory, no table), and the resume state stays five integers. Memory is bounded by the
//! prefetch queue. The price is random rather than sequential reads within the shards, which
//! the page cache and local SSDs serve well; on slow network storage, copy shards locally.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{DataConfig, DataFormat};
use crate::ingest::{InputFormat, expand_inputs, read_file_docs};
use crate::pack::{Batch, Order, splitmix};
use crate::shard::{Manifest, Shard};
use crate::{Error, Result, Tokenizer};

/// Where a loader stands after a batch: save it with a checkpoint, give it to [`Loader::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderState {
    /// Epoch (pass over the data) in progress.
    pub epoch: u64,
    /// Index of the current document in this host's order for the epoch.
    pub document: u64,
    /// Tokens of that document (with `<bos>`) already emitted.
    pub offset: u64,
    /// Batches emitted since the start of training.
    pub batches: u64,
    /// Hash of everything that decides the stream (data size, seed, hosts, shapes); a state is
    /// only accepted by a loader with the same fingerprint.
    pub fingerprint: u64,
}

/// Documents by global index.
enum Source {
    Shards {
        shards: Vec<Shard>,
        starts: Vec<u64>,
    },
    Memory(Vec<Vec<u32>>),
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Shards { starts, .. } => *starts.last().unwrap_or(&0),
            Source::Memory(docs) => docs.len() as u64,
        }
    }

    fn read(&self, i: u64, out: &mut Vec<u32>) {
        match self {
            Source::Shards { shards, starts } => {
                let s = starts.partition_point(|&x| x <= i) - 1;
                shards[s].read_doc(i - starts[s], out);
            }
            Source::Memory(docs) => out.extend_from_slice(&docs[i as usize]),
        }
    }
}

/// What a loader reads, besides its batches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataInfo {
    /// Vocabulary size of the tokenizer that made the data (`None` for `tokens`).
    pub vocab_size: Option<usize>,
    /// Documents (rows for `tokens`) in the data, all hosts together.
    pub documents: u64,
    /// `<pad>` id used for padding.
    pub pad_id: u32,
    /// Rows per batch on this host.
    pub rows_per_host: usize,
}

/// Builds batches from a [`Source`] in [`Order`].
pub(crate) struct Producer {
    source: Arc<Source>,
    order: Order,
    seq_len: usize,
    rows: usize,
    /// Add `<bos>`/`<eos>` around documents (not for `tokens` rows).
    wrap: Option<(u32, u32)>,
    packing: bool,
    pad: u32,
    state: LoaderState,
    doc: Vec<u32>,
    loaded: bool,
}

impl Producer {
    /// The stream of host (or row stream) `host` of `hosts` over `opened`,
    /// filling `batch_size / hosts` rows a batch, at the start or at `resume`.
    pub(crate) fn new(
        cfg: &DataConfig,
        opened: &Opened,
        host: usize,
        hosts: usize,
        resume: Option<LoaderState>,
    ) -> Result<Producer> {
        let n = opened.source.len();
        if n < hosts as u64 {
            return Err(Error::config(
                "data.path",
                format!("{n} documents cannot be split over {hosts} hosts"),
            ));
        }
        let rows = cfg.batch_size / hosts;
        let mut fp = splitmix(n);
        for v in [
            cfg.seed,
            cfg.shuffle as u64,
            opened.packing as u64,
            host as u64,
            hosts as u64,
            cfg.seq_len as u64,
            rows as u64,
            cfg.format as u64,
        ] {
            fp = splitmix(fp ^ v);
        }
        let state = match resume {
            None => LoaderState {
                epoch: 0,
                document: 0,
                offset: 0,
                batches: 0,
                fingerprint: fp,
            },
            Some(s) if s.fingerprint != fp => {
                return Err(Error::Resume(format!(
                    "the saved state is for other data or settings (fingerprint {:#x}, this loader {fp:#x}): \
                     data size, seed, shuffle, packing, host index/count, seq_len and batch size must match",
                    s.fingerprint
                )));
            }
            Some(s) => s,
        };
        let producer = Producer {
            source: opened.source.clone(),
            order: Order {
                n,
                host: host as u64,
                hosts: hosts as u64,
                shuffle: cfg.shuffle,
                seed: cfg.seed,
            },
            seq_len: cfg.seq_len,
            rows,
            wrap: opened.wrap,
            packing: opened.packing,
            pad: opened.pad,
            state,
            doc: Vec::new(),
            loaded: false,
        };
        if state.document >= producer.order.host_len() {
            return Err(Error::Resume(format!(
                "document {} is past this host's {} documents",
                state.document,
                producer.order.host_len()
            )));
        }
        Ok(producer)
    }

    /// Where the stream stands.
    pub(crate) fn state(&self) -> LoaderState {
        self.state
    }

    fn load(&mut self) {
        let g = self.order.global(self.state.epoch, self.state.document);
        self.doc.clear();
        if let Some((bos, _)) = self.wrap {
            self.doc.push(bos);
        }
        self.source.read(g, &mut self.doc);
        if let Some((_, eos)) = self.wrap {
            self.doc.push(eos);
        }
        self.loaded = true;
    }

    fn advance(&mut self) {
        let s = &mut self.state;
        s.document += 1;
        s.offset = 0;
        if s.document >= self.order.host_len() {
            s.epoch += 1;
            s.document = 0;
        }
        self.loaded = false;
    }

    pub(crate) fn fill_row(&mut self, batch: &mut Batch, r: usize) {
        let mut pos = 0;
        let mut segment = 0;
        while pos < self.seq_len {
            if !self.loaded {
                self.load();
            }
            let off = self.state.offset as usize;
            if off >= self.doc.len() {
                self.advance();
                continue;
            }
            if !self.packing && pos > 0 {
                break;
            }
            segment += 1;
            let n = (self.seq_len - pos).min(self.doc.len() - off);
            batch.put(r, pos, &self.doc[off..off + n], segment);
            pos += n;
            self.state.offset += n as u64;
        }
        batch.finish_row(r, self.pad);
    }

    /// Counts one batch done (after its rows are filled).
    pub(crate) fn count_batch(&mut self) {
        self.state.batches += 1;
    }

    fn next(&mut self) -> (Batch, LoaderState) {
        let mut batch = Batch::new(self.rows, self.seq_len, self.pad);
        for r in 0..self.rows {
            self.fill_row(&mut batch, r);
        }
        self.state.batches += 1;
        (batch, self.state)
    }
}

/// The data loader. See the module docs.
pub struct Loader {
    rx: Option<Receiver<(Batch, LoaderState)>>,
    thread: Option<JoinHandle<()>>,
    state: LoaderState,
    info: DataInfo,
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
        let opened = open_source(cfg, cache_dir)?;
        let mut producer = Producer::new(cfg, &opened, host_index, host_count, resume)?;
        let state = producer.state;
        let info = opened.info(producer.rows);
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
        })
    }

    /// The next batch of this host; waits only if the prefetch queue is empty.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        let (batch, state) = rx
            .recv()
            .map_err(|_| Error::LoaderStopped("the producer thread ended".into()))?;
        self.state = state;
        Ok(batch)
    }

    /// The state after the last batch returned (the start state before the first).
    pub fn state(&self) -> LoaderState {
        self.state
    }

    /// What the data is.
    pub fn info(&self) -> &DataInfo {
        &self.info
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

/// A data source opened once (files mapped or tokenized), shared by the
/// streams that read it.
pub(crate) struct Opened {
    source: Arc<Source>,
    /// `<bos>`/`<eos>` around documents (not for `tokens` rows).
    wrap: Option<(u32, u32)>,
    packing: bool,
    pad: u32,
    vocab_size: Option<usize>,
}

impl Opened {
    pub(crate) fn info(&self, rows: usize) -> DataInfo {
        DataInfo {
            vocab_size: self.vocab_size,
            documents: self.source.len(),
            pad_id: self.pad,
            rows_per_host: rows,
        }
    }
}

pub(crate) fn open_source(cfg: &DataConfig, cache_dir: &Path) -> Result<Opened> {
    let (source, wrap, packing, pad, vocab_size) = open_parts(cfg, cache_dir)?;
    Ok(Opened {
        source: Arc::new(source),
        wrap,
        packing,
        pad,
        vocab_size,
    })
}

type Parts = (Source, Option<(u32, u32)>, bool, u32, Option<usize>);

fn open_parts(cfg: &DataConfig, cache_dir: &Path) -> Result<Parts> {
    match cfg.format {
        DataFormat::Shards => {
            let dir = PathBuf::from(&cfg.path);
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
            let source = Source::Shards { shards, starts };
            Ok((
                source,
                Some((m.bos_id, m.eos_id)),
                cfg.packing,
                m.pad_id,
                Some(m.vocab_size),
            ))
        }
        DataFormat::Text | DataFormat::Jsonl => {
            let spec = cfg.tokenizer.as_deref().expect("validated");
            let tok = Tokenizer::load(spec, cache_dir)?;
            let format = if cfg.format == DataFormat::Text {
                InputFormat::Text
            } else {
                InputFormat::Jsonl
            };
            let inputs: Vec<String> = cfg.path.split(',').map(|s| s.trim().to_string()).collect();
            let files = expand_inputs(&inputs)?;
            let mut texts = Vec::new();
            for f in &files {
                for d in read_file_docs(f, format, cfg.text_unit, &cfg.field)? {
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
            Ok((
                Source::Memory(docs),
                Some((tok.bos_id(), tok.eos_id())),
                cfg.packing,
                tok.pad_id(),
                Some(tok.vocab_size()),
            ))
        }
        DataFormat::Tokens => {
            let path = PathBuf::from(&cfg.path);
            let rows = read_token_rows(&path, cfg.seq_len)?;
            Ok((
                Source::Memory(rows),
                None,
                false,
                crate::tokenizer::PAD_ID,
                None,
            ))
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
