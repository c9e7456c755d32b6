//! Duplicate removal for `meshtrain tokenize --dedup exact|near`.
//!
//! * **Exact**: a document is a duplicate when the sha256 (first 128 bits) of its normalised
//!   text equals an earlier document's. Normalised: lowercased, whitespace runs collapsed to
//!   one space, trimmed.
//! * **Near**: MinHash over word 5-gram shingles (words: lowercased runs of letters and
//!   digits), [`PERMUTATIONS`] hash functions, with LSH banding to find candidates. A document
//!   is a near-duplicate when its estimated Jaccard similarity to an earlier *kept* document
//!   is at least the threshold (0.8 by default). Documents are taken in input order and the
//!   first of each cluster is kept, so the output does not depend on the thread count.
//!
//! Bands and rows: the largest `rows` (a power of two, `bands = 128 / rows`) for which a pair
//! at exactly the threshold becomes a candidate with probability ≥ 0.9, `1 - (1 - t^r)^b`;
//! for t = 0.8 that is 16 bands of 8 rows (0.947). Candidates are confirmed on the signatures.
//!
//! # Memory
//!
//! Only hashes are kept, never text: per kept document 16 bytes of exact hash, a 256-byte
//! signature (128 × 16-bit b-bit MinHash values) and one 8-byte `(band key, document)` entry
//! per band, plus hash-table slack (the tables double as they grow). Measured
//! ([`Deduper::heap_bytes`]): 566 bytes per kept document at 20,000 documents
//! (`tests/filter.rs`), 709 at 535,000 (the 1 GB `filter_bench`): 0.5 to 0.75 GB per million
//! at the default threshold (16 bands), and 20 to 40 MB per million for `exact` alone. The band keys are 32-bit: past about 10^8
//! documents in one run, unrelated documents start to share bucket slots, which costs a little
//! recall (never precision, as every candidate is confirmed on its signature).

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

use crate::hash::{IdBuild, ngram_hashes, word_hashes};
use crate::pack::splitmix;
use crate::{Error, Result};

/// MinHash hash functions per signature.
pub const PERMUTATIONS: usize = 128;
/// Words per shingle.
pub const SHINGLE_WORDS: usize = 5;
/// Default Jaccard threshold of `--dedup near`.
pub const DEFAULT_THRESHOLD: f64 = 0.8;

/// Which duplicates [`Deduper`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DedupMode {
    /// None.
    #[default]
    None,
    /// Documents whose normalised text is equal.
    Exact,
    /// Exact duplicates, then near-duplicates (MinHash LSH).
    Near,
}

/// 128 bits of the sha256 of `text` lowercased, whitespace-collapsed and trimmed.
pub fn exact_key(text: &str) -> u128 {
    let mut h = Sha256::new();
    let mut lower = String::new();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            h.update(b" ");
        }
        if word.bytes().any(|b| b.is_ascii_uppercase() || b >= 0x80) {
            lower.clear();
            lower.extend(word.chars().flat_map(char::to_lowercase));
            h.update(lower.as_bytes());
        } else {
            h.update(word.as_bytes());
        }
    }
    let d = h.finalize();
    // invariant: a sha256 digest is 32 bytes.
    u128::from_le_bytes(d[..16].try_into().expect("16 bytes"))
}

/// The parameters `a`, `b` of the hash functions `(a·x + b) >> 32`.
fn coefficients() -> &'static [(u64, u64); PERMUTATIONS] {
    static C: std::sync::OnceLock<[(u64, u64); PERMUTATIONS]> = std::sync::OnceLock::new();
    C.get_or_init(|| {
        std::array::from_fn(|k| {
            let a = splitmix(0x6d69_6e68_6173_6800 ^ k as u64) | 1;
            let b = splitmix(0x6f66_6673_6574_0000 ^ k as u64);
            (a, b)
        })
    })
}

/// A document's MinHash signature: for each hash function, the low 16 bits of the minimum
/// over its shingles. `None` for a text without words.
pub fn signature(text: &str) -> Option<Vec<u16>> {
    let words = word_hashes(text);
    if words.is_empty() {
        return None;
    }
    let coef = coefficients();
    let mut mins = [u32::MAX; PERMUTATIONS];
    let n = SHINGLE_WORDS.min(words.len());
    ngram_hashes(&words, n, |x| {
        for (m, &(a, b)) in mins.iter_mut().zip(coef.iter()) {
            let v = (a.wrapping_mul(x).wrapping_add(b) >> 32) as u32;
            *m = (*m).min(v);
        }
    });
    Some(mins.iter().map(|&m| m as u16).collect())
}

/// Estimated Jaccard similarity of two signatures (b-bit MinHash, 16 bits).
pub fn similarity(a: &[u16], b: &[u16]) -> f64 {
    let equal = a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
    // Unrelated 16-bit values agree with probability 2^-16.
    let c = 1.0 / 65536.0;
    ((equal - c) / (1.0 - c)).max(0.0)
}

/// What [`Deduper::check`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// First of its kind: kept (and remembered).
    Unique,
    /// Same normalised text as an earlier document.
    Exact,
    /// Estimated Jaccard ≥ threshold with an earlier kept document.
    Near,
}

/// What [`Deduper::check`] needs of a document, computed in parallel beforehand.
#[derive(Debug, Clone)]
pub struct DocKeys {
    /// [`exact_key`].
    pub exact: u128,
    /// [`signature`], for `near`.
    pub signature: Option<Vec<u16>>,
}

impl DocKeys {
    /// The keys of `text` that `mode` needs.
    pub fn of(text: &str, mode: DedupMode) -> Self {
        DocKeys {
            exact: exact_key(text),
            signature: if mode == DedupMode::Near {
                signature(text)
            } else {
                None
            },
        }
    }
}

/// The streaming duplicate index: documents go through [`Deduper::check`] in input order.
pub struct Deduper {
    mode: DedupMode,
    threshold: f64,
    rows: usize,
    exact: HashSet<u128, IdBuild>,
    /// Per band: band key -> kept document.
    tables: Vec<HashMap<u32, u32, IdBuild>>,
    /// Kept documents' signatures, back to back.
    signatures: Vec<u16>,
}

impl std::fmt::Debug for Deduper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deduper")
            .field("mode", &self.mode)
            .field("threshold", &self.threshold)
            .field("bands", &self.tables.len())
            .field("rows", &self.rows)
            .field("kept", &self.kept())
            .finish()
    }
}

impl Deduper {
    /// An empty index; `threshold` (for `near`) must be in (0, 1].
    pub fn new(mode: DedupMode, threshold: f64) -> Result<Self> {
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(Error::config(
                "dedup_threshold",
                format!("{threshold} is not a Jaccard similarity in (0, 1]"),
            ));
        }
        let rows = lsh_rows(threshold);
        let bands = if mode == DedupMode::Near {
            PERMUTATIONS / rows
        } else {
            0
        };
        Ok(Deduper {
            mode,
            threshold,
            rows,
            exact: HashSet::default(),
            tables: (0..bands).map(|_| HashMap::default()).collect(),
            signatures: Vec::new(),
        })
    }

    /// Bands and rows of the LSH.
    pub fn bands_rows(&self) -> (usize, usize) {
        (PERMUTATIONS / self.rows, self.rows)
    }

    /// Documents kept by the near-duplicate index.
    pub fn kept(&self) -> usize {
        self.signatures.len() / PERMUTATIONS
    }

    /// Decides whether the next document is a duplicate, and remembers it if not.
    pub fn check(&mut self, keys: &DocKeys) -> Verdict {
        if self.mode == DedupMode::None {
            return Verdict::Unique;
        }
        if !self.exact.insert(keys.exact) {
            return Verdict::Exact;
        }
        let Some(sig) = keys
            .signature
            .as_deref()
            .filter(|_| self.mode == DedupMode::Near)
        else {
            return Verdict::Unique;
        };
        let band_keys: Vec<u32> = sig
            .chunks(self.rows)
            .enumerate()
            .map(|(band, rows)| band_key(band, rows))
            .collect();
        let mut seen: Vec<u32> = Vec::new();
        for (table, key) in self.tables.iter().zip(&band_keys) {
            if let Some(&id) = table.get(key) {
                if seen.contains(&id) {
                    continue;
                }
                seen.push(id);
                let at = id as usize * PERMUTATIONS;
                if similarity(sig, &self.signatures[at..at + PERMUTATIONS]) >= self.threshold {
                    return Verdict::Near;
                }
            }
        }
        let id = self.kept() as u32;
        if self.signatures.len() == self.signatures.capacity() {
            // Grow by a quarter, not double: the signatures are most of the memory.
            let more = self.signatures.len() / 4 + PERMUTATIONS * 64;
            self.signatures.reserve_exact(more);
        }
        self.signatures.extend_from_slice(sig);
        for (table, key) in self.tables.iter_mut().zip(band_keys) {
            table.entry(key).or_insert(id);
        }
        Verdict::Unique
    }

    /// Bytes held by the index (hash tables at their capacity, signatures).
    pub fn heap_bytes(&self) -> u64 {
        // A hashbrown table holds `buckets` slots of the entry plus one control byte each.
        let table = |cap: usize, entry: usize| {
            if cap == 0 {
                0
            } else {
                let buckets = (cap * 8 / 7).next_power_of_two();
                buckets * (entry + 1)
            }
        };
        let mut bytes = table(self.exact.capacity(), 16);
        for t in &self.tables {
            bytes += table(t.capacity(), 8);
        }
        bytes += self.signatures.capacity() * 2;
        bytes as u64
    }
}

/// The largest power-of-two rows per band at which a pair at `threshold` is a candidate with
/// probability ≥ 0.9.
fn lsh_rows(threshold: f64) -> usize {
    let mut best = 1;
    let mut r = 1;
    while r <= PERMUTATIONS {
        let b = (PERMUTATIONS / r) as i32;
        let p = 1.0 - (1.0 - threshold.powi(r as i32)).powi(b);
        if p >= 0.9 {
            best = r;
        }
        r *= 2;
    }
    best
}

fn band_key(band: usize, rows: &[u16]) -> u32 {
    let mut h = splitmix(band as u64 ^ 0xba4d_0000);
    for &v in rows {
        h = splitmix(h ^ v as u64);
    }
    (h >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_key_normalises_case_and_whitespace() {
        assert_eq!(exact_key("Hello  World\n"), exact_key("hello world"));
        assert_eq!(exact_key("ÉTÉ chaud"), exact_key("été   chaud"));
        assert_ne!(exact_key("hello world"), exact_key("hello, world"));
    }

    #[test]
    fn lsh_parameters() {
        assert_eq!(lsh_rows(0.8), 8);
        assert_eq!(lsh_rows(0.9), 8);
        assert_eq!(lsh_rows(0.5), 2);
        assert!(Deduper::new(DedupMode::Near, 1.5).is_err());
        assert!(Deduper::new(DedupMode::Near, 0.0).is_err());
    }

    #[test]
    fn minhash_estimates_jaccard() {
        // Two texts of distinct words sharing a known fraction of their 5-gram shingles.
        let words: Vec<String> = (0..2000).map(|i| format!("w{i}")).collect();
        let a = words[..1000].join(" ");
        let b = words[500..1500].join(" ");
        // 996 shingles each; shared: 496 -> J = 496 / (2 * 996 - 496) = 0.3316
        let j = similarity(&signature(&a).unwrap(), &signature(&b).unwrap());
        assert!((j - 0.3316).abs() < 0.1, "{j}");
        assert_eq!(
            similarity(&signature(&a).unwrap(), &signature(&a).unwrap()),
            1.0
        );
        assert!(signature(" ... ").is_none());
    }

    #[test]
    fn near_duplicates_are_found_and_unrelated_kept() {
        let words: Vec<String> = (0..3000).map(|i| format!("w{i}")).collect();
        let base = words[..300].join(" ");
        let mut edited: Vec<&str> = base.split(' ').collect();
        edited[100] = "changed";
        let edited = edited.join(" ");
        let other = words[1000..1300].join(" ");
        let mut d = Deduper::new(DedupMode::Near, 0.8).unwrap();
        let keys = |t: &str| DocKeys::of(t, DedupMode::Near);
        assert_eq!(d.check(&keys(&base)), Verdict::Unique);
        assert_eq!(d.check(&keys(&base.to_uppercase())), Verdict::Exact);
        assert_eq!(d.check(&keys(&edited)), Verdict::Near);
        assert_eq!(d.check(&keys(&other)), Verdict::Unique);
        assert_eq!(d.kept(), 2);
        assert!(d.heap_bytes() > 2 * 256);
        let mut e = Deduper::new(DedupMode::Exact, 0.8).unwrap();
        assert_eq!(e.check(&keys(&base)), Verdict::Unique);
        assert_eq!(e.check(&keys(&edited)), Verdict::Unique);
        assert_eq!(e.check(&keys(&base)), Verdict::Exact);
    }
}
