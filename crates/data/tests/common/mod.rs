//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The committed smoke tokenizer.
pub fn smoke_tokenizer_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/data/shakespeare-bpe8k.json")
}

/// The committed smoke corpus.
pub fn corpus_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/data/tinyshakespeare.txt")
}

pub fn smoke_tokenizer() -> data::Tokenizer {
    data::Tokenizer::from_file(&smoke_tokenizer_path()).expect("smoke tokenizer loads")
}

/// Tokenizes the first `n` paragraphs of the corpus into a shard directory under `dir`.
pub fn small_shards(dir: &Path, paragraphs: usize, shard_tokens: u64) -> PathBuf {
    let text = std::fs::read_to_string(corpus_path()).unwrap();
    let paras: Vec<&str> = text.split("\n\n").take(paragraphs).collect();
    let input = dir.join("input.txt");
    std::fs::write(&input, paras.join("\n\n")).unwrap();
    let out = dir.join("shards");
    let opts = data::TokenizeOptions {
        inputs: vec![input.display().to_string()],
        output: out.clone(),
        text_unit: data::TextUnit::Paragraph,
        shard_tokens,
        ..Default::default()
    };
    let s = data::tokenize(&smoke_tokenizer(), &opts, &|_| {}).unwrap();
    assert_eq!(s.documents as usize, paras.len());
    assert!(s.issues.is_empty(), "{:?}", s.issues);
    out
}
