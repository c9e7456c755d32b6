//! Batches and packing: documents to rows of `seq_len` tokens with segment ids and positions.
//!
//! Packing (`data.packing = true`): documents become `<bos> tokens <eos>` and are laid end to
//! end; a row is cut every `seq_len` tokens, so a document may continue in the next row.
//! Conversations (`data.format = "chat"`, or shards with loss masks) are kept whole: one that
//! does not fit in what is left of a row starts the next row, and the rest is padding. Each
//! document piece in a row gets its own segment id (1, 2, ... within the row; 0 is padding) and
//! positions that restart at 0. Without packing a row holds one document piece and is padded
//! with `<pad>`. In both, `targets[t] = tokens[t+1]` and `loss_mask[t] = 1` exactly when `t+1`
//! is in the row, in the same segment as `t`, and a target of its document (every token of
//! plain text; the model turns of a conversation; a `tokens` row's own `loss_mask`): the last
//! position of a row, the last token of each document piece, and padding predict nothing.

/// One host's batch; every field is row-major `[batch, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Model inputs.
    pub tokens: Vec<i32>,
    /// The next token of each position (`tokens[t+1]` within a segment, else `<pad>`).
    pub targets: Vec<i32>,
    /// 1.0 where `targets` is a real prediction, 0.0 for padding, row ends and document ends.
    pub loss_mask: Vec<f32>,
    /// Document id within the row, from 1; 0 is padding. Attention only within equal ids.
    pub segment_ids: Vec<i32>,
    /// Position within the document piece, restarting at 0.
    pub positions: Vec<i32>,
    /// Rows.
    pub batch: usize,
    /// Tokens per row.
    pub seq_len: usize,
}

impl Batch {
    /// An all-padding batch.
    pub fn new(batch: usize, seq_len: usize, pad: u32) -> Self {
        let n = batch * seq_len;
        Batch {
            tokens: vec![pad as i32; n],
            targets: vec![pad as i32; n],
            loss_mask: vec![0.0; n],
            segment_ids: vec![0; n],
            positions: vec![0; n],
            batch,
            seq_len,
        }
    }

    /// Number of positions with `loss_mask == 1`.
    pub fn predictions(&self) -> usize {
        self.loss_mask.iter().filter(|&&m| m > 0.0).count()
    }

    /// Number of non-padding tokens.
    pub fn real_tokens(&self) -> usize {
        self.segment_ids.iter().filter(|&&s| s != 0).count()
    }

    /// Sets tokens `pos..pos+piece.len()` of row `r` to one segment; `mask[i] != 0` when
    /// token `i` is a target. Until [`Batch::finish_row`], `loss_mask` holds these per-token
    /// flags.
    pub(crate) fn put(&mut self, r: usize, pos: usize, piece: &[u32], mask: &[u8], segment: i32) {
        let base = r * self.seq_len + pos;
        // A preference pair's second sequence starts a segment of its own.
        let (mut segment, mut start) = (segment, 0);
        for (i, &t) in piece.iter().enumerate() {
            if i > 0 && mask[i] & crate::prefs::NEW_SEGMENT != 0 {
                (segment, start) = (segment + 1, i);
            }
            self.tokens[base + i] = t as i32;
            self.segment_ids[base + i] = segment;
            self.positions[base + i] = (i - start) as i32;
            self.loss_mask[base + i] = if mask[i] != 0 { 1.0 } else { 0.0 };
        }
    }

    /// Derives `targets` and `loss_mask` of row `r` from its tokens, segments and per-token
    /// target flags: position `t` predicts token `t+1` when both are in one segment and
    /// `t+1` is a target.
    pub(crate) fn finish_row(&mut self, r: usize, pad: u32) {
        let l = self.seq_len;
        for t in r * l..(r + 1) * l {
            let next = t + 1 < (r + 1) * l;
            let same =
                next && self.segment_ids[t] != 0 && self.segment_ids[t + 1] == self.segment_ids[t];
            // Ascending `t`: `loss_mask[t + 1]` still holds token t+1's flag.
            let target = same && self.loss_mask[t + 1] > 0.0;
            self.targets[t] = if same { self.tokens[t + 1] } else { pad as i32 };
            self.loss_mask[t] = if target { 1.0 } else { 0.0 };
        }
    }
}

/// The order in which one host visits documents: a keyed pseudo-random permutation of all
/// documents per epoch (or file order), of which host `h` of `H` takes positions `h, h+H, ...`.
///
/// The permutation is a 4-round Feistel network over the next power of four with cycle walking:
/// a bijection on `0..n` computed in O(1) memory, so the position in it is the whole state.
#[derive(Debug, Clone)]
pub(crate) struct Order {
    pub n: u64,
    pub host: u64,
    pub hosts: u64,
    pub shuffle: bool,
    pub seed: u64,
}

pub(crate) fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Order {
    /// Documents this host visits per epoch.
    pub fn host_len(&self) -> u64 {
        (self.n - self.host).div_ceil(self.hosts)
    }

    /// The global document index of this host's `k`-th document in `epoch`.
    pub fn global(&self, epoch: u64, k: u64) -> u64 {
        let p = k * self.hosts + self.host;
        if self.shuffle {
            permute(p, self.n, splitmix(self.seed ^ splitmix(epoch)))
        } else {
            p
        }
    }
}

/// A bijection on `0..n` chosen by `key`.
pub(crate) fn permute(x: u64, n: u64, key: u64) -> u64 {
    if n <= 1 {
        return x;
    }
    let bits = 64 - (n - 1).leading_zeros();
    let half = bits.div_ceil(2);
    let mask = (1u64 << half) - 1;
    let mut y = x;
    loop {
        let (mut l, mut r) = (y >> half, y & mask);
        for round in 0..4u64 {
            let f = splitmix(key ^ splitmix((round << 40) ^ r)) & mask;
            (l, r) = (r, l ^ f);
        }
        y = (l << half) | r;
        if y < n {
            return y;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permute_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 8, 100, 1000, 4097] {
            let mut seen = vec![false; n as usize];
            for x in 0..n {
                let y = permute(x, n, 42);
                assert!(y < n);
                assert!(!seen[y as usize], "n={n}: {y} twice");
                seen[y as usize] = true;
            }
        }
        let a: Vec<u64> = (0..50).map(|x| permute(x, 50, 1)).collect();
        let b: Vec<u64> = (0..50).map(|x| permute(x, 50, 2)).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn hosts_partition_an_epoch() {
        let n = 103;
        let mut all = Vec::new();
        for host in 0..4 {
            let o = Order {
                n,
                host,
                hosts: 4,
                shuffle: true,
                seed: 9,
            };
            all.extend((0..o.host_len()).map(|k| o.global(3, k)));
        }
        all.sort();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn targets_and_mask_follow_segments() {
        let mut b = Batch::new(1, 6, 0);
        b.put(0, 0, &[2, 10, 1], &[1, 1, 1], 1);
        b.put(0, 3, &[2, 11], &[1, 1], 2);
        b.finish_row(0, 0);
        assert_eq!(b.tokens, [2, 10, 1, 2, 11, 0]);
        assert_eq!(b.segment_ids, [1, 1, 1, 2, 2, 0]);
        assert_eq!(b.positions, [0, 1, 2, 0, 1, 0]);
        assert_eq!(b.targets, [10, 1, 0, 11, 0, 0]);
        assert_eq!(b.loss_mask, [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
        // Per-token target flags: only tokens 2 and 4 are targets.
        let mut b = Batch::new(1, 6, 0);
        b.put(0, 0, &[2, 10, 1], &[0, 0, 1], 1);
        b.put(0, 3, &[2, 11, 12], &[1, 1, 0], 2);
        b.finish_row(0, 0);
        assert_eq!(b.targets, [10, 1, 0, 11, 12, 0]);
        assert_eq!(b.loss_mask, [0.0, 1.0, 0.0, 1.0, 0.0, 0.0]);
    }
}
