//! Tokenizers: the official Gemma tokenizer and small byte-fallback BPE tokenizers for smoke runs.
//!
//! Both are stored as Hugging Face `tokenizer.json` files and run by the `tokenizers` crate.
//! For the Gemma vocabulary the loader applies the two details that make its ids equal to
//! SentencePiece on `tokenizer.gemma` (checked by `tests/gemma_tokenizer.rs`):
//!
//! * SentencePiece matches its 245 *user-defined* pieces (`<start_of_turn>`, `<end_of_turn>`,
//!   `<unused0..99>`, runs of newlines, spaces and tabs, a few HTML tags) as whole pieces
//!   wherever they occur in the text; the published `tokenizer.json` lists only the four control
//!   tokens as added tokens, so the others are added here (ids 4..=216 and 255968..=255999).
//! * SentencePiece never turns the text `<bos>` into the control id 2; neither do we
//!   (`encode_special_tokens`): control ids come only from packing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tokenizers::{AddedToken, TokenizerImpl};

use crate::{Error, Result};

/// `<pad>` in the Gemma vocabulary (and in tokenizers trained by [`train_bpe`]).
pub const PAD_ID: u32 = 0;
/// `<eos>`.
pub const EOS_ID: u32 = 1;
/// `<bos>`.
pub const BOS_ID: u32 = 2;
/// `<unk>`.
pub const UNK_ID: u32 = 3;
/// Number of pieces in the Gemma vocabulary.
pub const GEMMA_VOCAB_SIZE: usize = 256_000;

/// The special pieces of every tokenizer this crate makes, in id order (ids 0..=5).
pub const SPECIAL_PIECES: [&str; 6] = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<start_of_turn>",
    "<end_of_turn>",
];

/// Ids of the Gemma SentencePiece model's user-defined pieces.
const GEMMA_USER_DEFINED: [std::ops::RangeInclusive<u32>; 2] = [4..=216, 255_968..=255_999];

/// A token's byte range `(start, end)` in the encoded text.
pub type Span = (usize, usize);

/// A loaded tokenizer with its special ids.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    name: String,
    bos: u32,
    eos: u32,
    pad: u32,
    /// Cached: `tokenizers` builds the whole vocabulary map to count it.
    vocab_size: usize,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("name", &self.name)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// Runs `f`, turning a panic in it (in the `tokenizers` library, on a
/// malformed tokenizer) into its message.
fn unpanicked<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

impl Tokenizer {
    /// Loads a tokenizer by name: `gemma` is the official Gemma tokenizer in `cache_dir`
    /// (fetched by [`crate::setup_tokenizer`] if it is not there yet); anything else is the
    /// path of a `tokenizer.json` file.
    pub fn load(spec: &str, cache_dir: &Path) -> Result<Self> {
        if spec == "gemma" {
            let path = crate::setup_tokenizer(cache_dir)?;
            let mut t = Self::from_file(&path)?;
            t.name = "gemma".into();
            Ok(t)
        } else {
            Self::from_file(Path::new(spec))
        }
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        if !path.is_file() {
            return Err(Error::Tokenizer {
                name,
                message: "no such file (use `gemma` for the official tokenizer, \
                          or the path of a tokenizer.json)"
                    .into(),
            });
        }
        let bad = |message: String| Error::Tokenizer {
            name: name.clone(),
            message,
        };
        // The `tokenizers` library panics on some malformed files (found by
        // fuzzing): its panics are this file's errors.
        let inner = unpanicked(|| tokenizers::Tokenizer::from_file(path))
            .map_err(|m| bad(format!("not a valid tokenizer.json: {m}")))?
            .map_err(|e| bad(e.to_string()))?;
        Self::from_inner(inner, name)
    }

    /// Wraps a `tokenizers` tokenizer, applying the Gemma details if it has the Gemma vocabulary.
    pub fn from_inner(mut inner: tokenizers::Tokenizer, name: String) -> Result<Self> {
        let special = |piece: &str| {
            inner.token_to_id(piece).ok_or_else(|| Error::Tokenizer {
                name: name.clone(),
                message: format!("vocabulary has no {piece} piece"),
            })
        };
        let (bos, eos, pad) = (special("<bos>")?, special("<eos>")?, special("<pad>")?);
        let is_gemma = inner.get_vocab_size(true) == GEMMA_VOCAB_SIZE
            && inner.id_to_token(106).as_deref() == Some("<start_of_turn>");
        if is_gemma {
            let pieces: Vec<AddedToken> = GEMMA_USER_DEFINED
                .iter()
                .flat_map(|r| r.clone())
                .filter_map(|id| inner.id_to_token(id))
                .map(|p| AddedToken::from(p, false).normalized(true))
                .collect();
            inner.add_tokens(&pieces);
        }
        inner.set_encode_special_tokens(true);
        let vocab_size = inner.get_vocab_size(true);
        Ok(Tokenizer {
            inner,
            name,
            bos,
            eos,
            pad,
            vocab_size,
        })
    }

    /// The name it was loaded by (`gemma` or a path).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Id of `<bos>`.
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// Id of `<eos>`.
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Id of `<pad>`.
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The piece of an id.
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a piece.
    pub fn piece_to_id(&self, piece: &str) -> Option<u32> {
        self.inner.token_to_id(piece)
    }

    /// Token ids of `text`, without `<bos>` or `<eos>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = unpanicked(|| self.inner.encode_fast(text, false))
            .map_err(|m| self.panicked(m))?
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token ids of `text` with each token's byte range in `text`.
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<u32>, Vec<Span>)> {
        let enc = unpanicked(|| self.inner.encode(text, false))
            .map_err(|m| self.panicked(m))?
            .map_err(|e| self.err(e))?;
        Ok((enc.get_ids().to_vec(), enc.get_offsets().to_vec()))
    }

    /// The text of `ids`; control tokens are written as their pieces (`<bos>`).
    ///
    /// `decode(encode(s)) == s` for any `s` without the character U+2581 (`▁`), which
    /// SentencePiece itself decodes to a space.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let n = self.vocab_size();
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= n) {
            return Err(Error::Tokenizer {
                name: self.name.clone(),
                message: format!("id {bad} is out of range (vocabulary of {n})"),
            });
        }
        unpanicked(|| self.inner.decode(ids, false))
            .map_err(|m| self.panicked(m))?
            .map_err(|e| self.err(e))
    }

    fn panicked(&self, message: String) -> Error {
        Error::Tokenizer {
            name: self.name.clone(),
            message: format!("the tokenizer failed: {message}"),
        }
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Tokenizer {
            name: self.name.clone(),
            message: e.to_string(),
        }
    }
}

/// Trains a byte-fallback BPE tokenizer of `vocab_size` ids on text files and saves it as a
/// `tokenizer.json` at `out`.
///
/// Ids 0..=5 are [`SPECIAL_PIECES`] (same ids as Gemma's `<pad>`, `<eos>`, `<bos>`, `<unk>`),
/// 6..=261 the byte pieces `<0x00>`..`<0xFF>`, then the learned pieces. Text is split before
/// each space (kept as `▁`, never added or removed) and between digits, as in Gemma.
pub fn train_bpe(files: &[PathBuf], vocab_size: usize, out: &Path) -> Result<Tokenizer> {
    use tokenizers::decoders::DecoderWrapper;
    use tokenizers::decoders::byte_fallback::ByteFallback;
    use tokenizers::decoders::fuse::Fuse;
    use tokenizers::decoders::sequence::Sequence as DecSeq;
    use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::PreTokenizerWrapper;
    use tokenizers::pre_tokenizers::digits::Digits;
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
    use tokenizers::processors::PostProcessorWrapper;

    let name = out.display().to_string();
    let terr = |e: tokenizers::Error| Error::Tokenizer {
        name: name.clone(),
        message: e.to_string(),
    };
    let n_fixed = SPECIAL_PIECES.len() + 256;
    if vocab_size < n_fixed + 16 {
        return Err(Error::config(
            "vocab_size",
            format!(
                "{vocab_size} is too small: at least {} expected",
                n_fixed + 16
            ),
        ));
    }
    for f in files {
        if !f.is_file() {
            return Err(Error::NoInput {
                pattern: f.display().to_string(),
                message: "not a file".into(),
            });
        }
    }
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size - 256)
        .min_frequency(2)
        .show_progress(false)
        // Printable ASCII, tab, newline and the space mark are pieces even if the corpus lacks
        // some (digits, say); everything else falls back to bytes.
        .initial_alphabet(
            (' '..='~')
                .chain(['\t', '\n', '\r', '▁'])
                .filter(|&c| c != ' ')
                .collect(),
        )
        .special_tokens(
            SPECIAL_PIECES
                .iter()
                .map(|p| AddedToken::from(*p, true))
                .collect(),
        )
        .build();
    let model = BPE::builder()
        .unk_token("<unk>".into())
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(terr)?;
    let mut tk: TokenizerImpl<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    > = TokenizerImpl::new(model);
    tk.with_pre_tokenizer(Some(PreTokenizerWrapper::Sequence(PreSeq::new(vec![
        PreTokenizerWrapper::Metaspace(Metaspace::new('▁', PrependScheme::Never, true)),
        PreTokenizerWrapper::Digits(Digits::new(true)),
    ]))));
    tk.with_decoder(Some(DecoderWrapper::Sequence(DecSeq::new(vec![
        DecoderWrapper::Replace(
            tokenizers::normalizers::replace::Replace::new("▁", " ").map_err(terr)?,
        ),
        DecoderWrapper::ByteFallback(ByteFallback::new()),
        DecoderWrapper::Fuse(Fuse::new()),
    ]))));
    let files: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    tk.train_from_files(&mut trainer, files).map_err(terr)?;

    // Insert the byte pieces after the special ones and mark the chat pieces as plain
    // added tokens (matched in text, as SentencePiece's user-defined pieces are).
    let json = tk.to_string(false).map_err(terr)?;
    let mut doc: serde_json::Value = serde_json::from_str(&json).map_err(|e| Error::Tokenizer {
        name: name.clone(),
        message: e.to_string(),
    })?;
    let vocab = doc["model"]["vocab"]
        .as_object()
        .ok_or_else(|| Error::Tokenizer {
            name: name.clone(),
            message: "trained model has no vocab".into(),
        })?;
    let mut new_vocab: HashMap<String, u64> = HashMap::new();
    for (piece, id) in vocab {
        let id = id.as_u64().unwrap_or(0);
        let id = if id >= SPECIAL_PIECES.len() as u64 {
            id + 256
        } else {
            id
        };
        new_vocab.insert(piece.clone(), id);
    }
    for b in 0..256u64 {
        new_vocab.insert(format!("<0x{b:02X}>"), SPECIAL_PIECES.len() as u64 + b);
    }
    let mut sorted: Vec<(String, u64)> = new_vocab.into_iter().collect();
    sorted.sort_by_key(|(_, id)| *id);
    let mut map = serde_json::Map::new();
    for (p, id) in sorted {
        map.insert(p, id.into());
    }
    doc["model"]["vocab"] = serde_json::Value::Object(map);
    if let Some(added) = doc["added_tokens"].as_array_mut() {
        for t in added {
            let chat = matches!(
                t["content"].as_str(),
                Some("<start_of_turn>" | "<end_of_turn>")
            );
            if chat {
                t["special"] = false.into();
            }
        }
    }
    let text = serde_json::to_string(&doc).map_err(|e| Error::Tokenizer {
        name: name.clone(),
        message: e.to_string(),
    })?;
    let inner: tokenizers::Tokenizer = text.parse().map_err(terr)?;
    let tmp = out.with_extension("json.tmp");
    std::fs::write(&tmp, &text).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Tokenizer::from_inner(inner, name)
}
