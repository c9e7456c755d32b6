//! Building batches from one or more sources, interleaved by weight.

use std::sync::Arc;

use super::open::Source;
use super::{LoaderState, SourceState};
use crate::chat::Overflow;
use crate::pack::{Batch, Order};

/// One source as the producer reads it.
pub(crate) struct Stream {
    pub source: Arc<Source>,
    pub order: Order,
    /// Add `<bos>`/`<eos>` around documents (not for `tokens` rows).
    pub wrap: Option<(u32, u32)>,
    /// Share of the tokens (the weights, normalised).
    pub share: f64,
    /// Documents are conversations: kept whole in one row, cut or left out by `overflow`
    /// when longer than a row.
    pub whole: bool,
}

/// Builds batches from [`Stream`]s.
///
/// The next document comes from the source furthest below its share of the tokens emitted
/// so far (smallest `tokens / share`, ties to the first source), and is emitted whole (across
/// rows and batches) before the next choice. So each source's share converges to its weight,
/// off by less than one document's tokens at any time, and the choice depends only on the
/// state: the source with a document in progress is the one whose `offset` is not 0.
pub(crate) struct Producer {
    pub streams: Vec<Stream>,
    pub seq_len: usize,
    pub rows: usize,
    pub packing: bool,
    pub pad: u32,
    pub state: LoaderState,
    pub overflow: Overflow,
    current: usize,
    doc: Vec<u32>,
    /// Per-token target flags of `doc`.
    mask: Vec<u8>,
    loaded: bool,
}

impl Producer {
    pub fn new(
        streams: Vec<Stream>,
        seq_len: usize,
        rows: usize,
        packing: bool,
        pad: u32,
        state: LoaderState,
        overflow: Overflow,
    ) -> Self {
        Producer {
            streams,
            seq_len,
            rows,
            packing,
            pad,
            state,
            overflow,
            current: 0,
            doc: Vec::new(),
            mask: Vec::new(),
            loaded: false,
        }
    }

    fn pick(&self) -> usize {
        let sources = &self.state.sources;
        if let Some(i) = sources.iter().position(|s| s.offset > 0) {
            return i;
        }
        let mut best = 0;
        let mut best_v = f64::INFINITY;
        for (i, (s, st)) in sources.iter().zip(&self.streams).enumerate() {
            let v = s.tokens as f64 / st.share;
            if v < best_v {
                best = i;
                best_v = v;
            }
        }
        best
    }

    fn load(&mut self) {
        self.current = self.pick();
        let s = &self.state.sources[self.current];
        let stream = &self.streams[self.current];
        let g = stream.order.global(s.epoch, s.document);
        self.doc.clear();
        self.mask.clear();
        if let Some((bos, _)) = stream.wrap {
            self.doc.push(bos);
            self.mask.push(1);
        }
        stream.source.read(g, &mut self.doc, &mut self.mask);
        if let Some((_, eos)) = stream.wrap {
            self.doc.push(eos);
            self.mask.push(1);
        }
        if stream.whole && self.doc.len() > self.seq_len {
            // `error` was checked when the source was opened.
            let keep = match self.overflow {
                Overflow::Drop => 0,
                Overflow::Truncate | Overflow::Error => self.seq_len,
            };
            self.doc.truncate(keep);
            self.mask.truncate(keep);
        }
        self.loaded = true;
    }

    fn advance(&mut self) {
        let host_len = self.streams[self.current].order.host_len();
        let s = &mut self.state.sources[self.current];
        s.document += 1;
        s.offset = 0;
        if s.document >= host_len {
            s.epoch += 1;
            s.document = 0;
        }
        self.loaded = false;
    }

    /// Fills row `r` of `batch` from the stream.
    pub fn fill_row(&mut self, batch: &mut Batch, r: usize) {
        let mut pos = 0;
        let mut segment = 0;
        while pos < self.seq_len {
            if !self.loaded {
                self.load();
            }
            let off = self.state.sources[self.current].offset as usize;
            if off >= self.doc.len() {
                self.advance();
                continue;
            }
            if !self.packing && pos > 0 {
                break;
            }
            let rest = self.doc.len() - off;
            if self.streams[self.current].whole && pos > 0 && rest > self.seq_len - pos {
                // A conversation that does not fit starts the next row.
                break;
            }
            segment += 1;
            let n = (self.seq_len - pos).min(rest);
            batch.put(
                r,
                pos,
                &self.doc[off..off + n],
                &self.mask[off..off + n],
                segment,
            );
            pos += n;
            let s = &mut self.state.sources[self.current];
            s.offset += n as u64;
            s.tokens += n as u64;
        }
        batch.finish_row(r, self.pad);
    }

    /// Counts one batch done (after its rows are filled).
    pub fn count_batch(&mut self) {
        let st = &mut self.state;
        st.batches += 1;
        let SourceState {
            epoch,
            document,
            offset,
            ..
        } = st.sources[0];
        (st.epoch, st.document, st.offset) = (epoch, document, offset);
    }

    pub fn next(&mut self) -> (Batch, LoaderState) {
        let mut batch = Batch::new(self.rows, self.seq_len, self.pad);
        for r in 0..self.rows {
            self.fill_row(&mut batch, r);
        }
        self.count_batch();
        (batch, self.state.clone())
    }
}
