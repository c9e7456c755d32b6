//! Word hashing shared by near-duplicate detection and decontamination, and a hasher for
//! tables whose keys are already hashes.

use std::hash::{BuildHasherDefault, Hasher};

use crate::pack::splitmix;

/// A [`Hasher`] for keys that are already uniformly random (hash values): one multiply, so
/// that the high bits (which hashbrown uses for its control bytes) are mixed too.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

const MIX: u64 = 0x9E37_79B9_7F4A_7C15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(MIX);
        }
    }

    fn write_u32(&mut self, x: u32) {
        self.0 = (x as u64).wrapping_mul(MIX);
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = x.wrapping_mul(MIX);
    }

    fn write_u128(&mut self, x: u128) {
        self.0 = (x as u64 ^ (x >> 64) as u64).wrapping_mul(MIX);
    }
}

/// Builds [`IdHasher`]s.
pub(crate) type IdBuild = BuildHasherDefault<IdHasher>;

/// FNV-1a of `bytes`, mixed: a stable 64-bit hash (names, keys).
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(h)
}

/// The hashes of the words of `text`, in order: maximal runs of letters and digits,
/// lowercased.
pub(crate) fn word_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::with_capacity(text.len() / 6);
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0100_0000_01b3;
    let mut h = FNV_OFFSET;
    let mut in_word = false;
    let mut push = |h: &mut u64, in_word: &mut bool| {
        if *in_word {
            out.push(splitmix(*h));
            *h = FNV_OFFSET;
            *in_word = false;
        }
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b < 0x80 {
            if b.is_ascii_alphanumeric() {
                h = (h ^ b.to_ascii_lowercase() as u64).wrapping_mul(FNV_PRIME);
                in_word = true;
            } else {
                push(&mut h, &mut in_word);
            }
            i += 1;
        } else {
            // invariant: i is a char boundary below text.len().
            let c = text[i..].chars().next().expect("char boundary");
            if c.is_alphanumeric() {
                for l in c.to_lowercase() {
                    let mut buf = [0u8; 4];
                    for &u in l.encode_utf8(&mut buf).as_bytes() {
                        h = (h ^ u as u64).wrapping_mul(FNV_PRIME);
                    }
                }
                in_word = true;
            } else {
                push(&mut h, &mut in_word);
            }
            i += c.len_utf8();
        }
    }
    push(&mut h, &mut in_word);
    out
}

/// Calls `f` with a hash of each run of `n` consecutive words (none if fewer than `n`):
/// a rolling polynomial over the word hashes, finished with a mix.
pub(crate) fn ngram_hashes(words: &[u64], n: usize, mut f: impl FnMut(u64)) {
    if n == 0 || words.len() < n {
        return;
    }
    const P: u64 = 0x100_0000_01b3_u64.wrapping_mul(0x9E37_79B9) | 1;
    let top = (1..n).fold(1u64, |acc, _| acc.wrapping_mul(P)); // P^(n-1)
    let mut h = 0u64;
    for &w in &words[..n] {
        h = h.wrapping_mul(P).wrapping_add(w);
    }
    f(splitmix(h));
    for i in n..words.len() {
        h = h
            .wrapping_sub(words[i - n].wrapping_mul(top))
            .wrapping_mul(P)
            .wrapping_add(words[i]);
        f(splitmix(h));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lowercased_alphanumeric_runs() {
        let a = word_hashes("Hello, WORLD! été-2024");
        let b = word_hashes("hello world ÉTÉ 2024");
        assert_eq!(a.len(), 4);
        assert_eq!(a, b);
        assert!(word_hashes(" .,; ").is_empty());
    }

    #[test]
    fn rolling_ngrams_equal_direct_ones() {
        let words: Vec<u64> = (0..40).map(splitmix).collect();
        let mut rolled = Vec::new();
        ngram_hashes(&words, 13, |h| rolled.push(h));
        assert_eq!(rolled.len(), 28);
        for (i, &h) in rolled.iter().enumerate() {
            let mut direct = Vec::new();
            ngram_hashes(&words[i..i + 13], 13, |h| direct.push(h));
            assert_eq!(direct, [h]);
        }
        let mut none = Vec::new();
        ngram_hashes(&words[..12], 13, |h| none.push(h));
        assert!(none.is_empty());
    }
}
