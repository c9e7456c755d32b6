//! Loading chosen rows of the global batch, for hosts of a sharded job.
//!
//! Row `r` of every global batch of `data.batch_size` rows is filled from
//! stream `r`: the documents `r, r + B, r + 2B, ...` of each epoch's order,
//! packed into that row alone (the stream of [`crate::Loader`] host `r` of
//! `B`). So a global batch does not depend on how many hosts load it or on
//! the mesh: any host can load exactly the rows its devices hold, and a
//! checkpoint's row states resume under any mesh and any number of hosts.
//! The source is opened once and the rows are built on one background
//! thread, a bounded `data.prefetch` batches ahead.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use crate::loader::Sources;
use crate::pack::Batch;
use crate::{DataConfig, DataInfo, Error, LoaderState, Result};

/// The rows `rows` (global row indices, ascending) of every global batch.
pub struct RowLoader {
    rows: Vec<usize>,
    rx: Option<Receiver<(Batch, Vec<LoaderState>)>>,
    thread: Option<JoinHandle<()>>,
    states: Vec<LoaderState>,
    info: DataInfo,
}

impl std::fmt::Debug for RowLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowLoader")
            .field("rows", &self.rows)
            .field("info", &self.info)
            .finish()
    }
}

impl RowLoader {
    /// Opens the data of `cfg` for `rows` (ascending, each below
    /// `data.batch_size`), each at the start or at the state `resume(row)`
    /// gives. `gemma` as tokenizer is looked up in [`crate::cache_dir`].
    pub fn new(
        cfg: &DataConfig,
        rows: &[usize],
        resume: impl Fn(usize) -> Option<LoaderState>,
    ) -> Result<Self> {
        Self::with_cache_dir(cfg, rows, resume, &crate::cache_dir())
    }

    /// [`RowLoader::new`] with an explicit cache directory for the tokenizer.
    pub fn with_cache_dir(
        cfg: &DataConfig,
        rows: &[usize],
        resume: impl Fn(usize) -> Option<LoaderState>,
        cache_dir: &Path,
    ) -> Result<Self> {
        let b = cfg.batch_size;
        cfg.validate(0, b.max(1))?;
        if rows.is_empty() || rows.windows(2).any(|w| w[0] >= w[1]) || rows[rows.len() - 1] >= b {
            return Err(Error::config(
                "rows",
                format!("{rows:?}: ascending row indices below data.batch_size = {b} expected"),
            ));
        }
        let sources = Sources::open(cfg, cache_dir)?;
        let mut streams = rows
            .iter()
            .map(|&r| {
                sources.producer(cfg, r, b, resume(r)).map_err(|e| match e {
                    Error::Resume(m) => Error::Resume(format!("row {r}: {m}")),
                    other => other,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let states: Vec<LoaderState> = streams.iter().map(|s| s.state.clone()).collect();
        let info = sources.info(rows.len());
        let (seq_len, pad) = (cfg.seq_len, info.pad_id);
        let (tx, rx) = sync_channel(cfg.prefetch);
        let thread = std::thread::Builder::new()
            .name("data-loader-rows".into())
            .spawn(move || {
                loop {
                    let mut batch = Batch::new(streams.len(), seq_len, pad);
                    for (i, s) in streams.iter_mut().enumerate() {
                        s.fill_row(&mut batch, i);
                        s.count_batch();
                    }
                    let states = streams.iter().map(|s| s.state.clone()).collect();
                    if tx.send((batch, states)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::LoaderStopped(e.to_string()))?;
        Ok(RowLoader {
            rows: rows.to_vec(),
            rx: Some(rx),
            thread: Some(thread),
            states,
            info,
        })
    }

    /// The next batch's rows, in the order of `rows`.
    pub fn next_batch(&mut self) -> Result<Batch> {
        // invariant: only Drop takes the receiver.
        let rx = self.rx.as_ref().expect("receiver lives until drop");
        let (batch, states) = rx
            .recv()
            .map_err(|_| Error::LoaderStopped("the producer thread ended".into()))?;
        let epochs = |st: &[LoaderState], i: usize| st.iter().map(|s| s.sources[i].epoch).max();
        for (i, (name, documents)) in self.info.sources.iter().enumerate() {
            if let (Some(new), Some(old)) = (epochs(&states, i), epochs(&self.states, i))
                && new > old
            {
                eprintln!(
                    "meshtrain data: a row stream ran out of its share of source {name:?} \
                     ({documents} documents): epoch {new} of it starts"
                );
            }
        }
        self.states = states;
        Ok(batch)
    }

    /// The global row indices this loader fills.
    pub fn rows(&self) -> &[usize] {
        &self.rows
    }

    /// Each row's state after the last batch returned (the start state
    /// before the first), as `(row, state)`.
    pub fn states(&self) -> Vec<(usize, LoaderState)> {
        self.rows.iter().copied().zip(self.states.clone()).collect()
    }

    /// Tokens (padding excluded) each source has put into this loader's
    /// rows so far, resumed runs included.
    pub fn tokens_by_source(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in self.states.iter().flat_map(|s| &s.sources) {
            *out.entry(s.name.clone()).or_insert(0) += s.tokens;
        }
        out
    }

    /// What the data is (`rows_per_host` is the number of rows loaded).
    pub fn info(&self) -> &DataInfo {
        &self.info
    }
}

impl Drop for RowLoader {
    fn drop(&mut self) {
        self.rx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
