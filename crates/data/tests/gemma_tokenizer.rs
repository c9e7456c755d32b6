//! The official Gemma tokenizer gives SentencePiece's ids (golden ids written by
//! `scripts/gen_gemma_golden.py` with the `sentencepiece` package on `tokenizer.gemma`) and
//! round-trips. Fetches the tokenizer into `$MESHTRAIN_HOME` (or the default cache) on first
//! use; skips, loudly, only when that fetch fails.

use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
    corpus: Corpus,
}

#[derive(Deserialize)]
struct Corpus {
    file: String,
    split: String,
    tokens: usize,
    ids_sha256: String,
}

#[derive(Deserialize)]
struct Case {
    text: String,
    ids: Vec<u32>,
    decoded: String,
}

fn gemma() -> Option<data::Tokenizer> {
    let cache = data::cache_dir();
    match data::setup_tokenizer(&cache) {
        Ok(_) => Some(data::Tokenizer::load("gemma", &cache).expect("fetched tokenizer loads")),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("cannot fetch the Gemma tokenizer, and CI must run this check: {e}")
        }
        Err(e) => {
            eprintln!(
                "\n======== SKIPPED: cannot fetch the Gemma tokenizer into {}: {e} ========\n",
                cache.display()
            );
            None
        }
    }
}

#[test]
fn gemma_ids_equal_sentencepiece_and_round_trip() {
    let Some(tok) = gemma() else { return };
    assert_eq!(tok.vocab_size(), 256_000);
    assert_eq!((tok.pad_id(), tok.eos_id(), tok.bos_id()), (0, 1, 2));
    assert_eq!(tok.piece_to_id("<start_of_turn>"), Some(106));
    assert_eq!(tok.piece_to_id("<end_of_turn>"), Some(107));
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/gemma_golden.json");
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(golden.cases.len() >= 20);
    let mut bad = Vec::new();
    for c in &golden.cases {
        let ids = tok.encode(&c.text).unwrap();
        if ids != c.ids {
            bad.push(format!(
                "{:?}\n  ours {:?}\n  spm  {:?}",
                c.text, ids, c.ids
            ));
        }
        assert_eq!(
            tok.decode(&c.ids).unwrap(),
            c.decoded,
            "decode of {:?}",
            c.text
        );
        assert_eq!(
            tok.decode(&ids).unwrap(),
            c.text,
            "round trip of {:?}",
            c.text
        );
    }
    assert!(
        bad.is_empty(),
        "ids differ from SentencePiece:\n{}",
        bad.join("\n")
    );

    // The whole smoke corpus, paragraph by paragraph.
    use sha2::Digest;
    let path = format!(
        "{}/../../{}",
        env!("CARGO_MANIFEST_DIR"),
        golden.corpus.file
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut hash = sha2::Sha256::new();
    let mut n = 0;
    for para in text.split(golden.corpus.split.as_str()) {
        let ids = tok.encode(para).unwrap();
        n += ids.len();
        assert_eq!(tok.decode(&ids).unwrap(), para);
        for i in ids {
            hash.update(i.to_le_bytes());
        }
    }
    assert_eq!(n, golden.corpus.tokens);
    let digest: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        digest, golden.corpus.ids_sha256,
        "corpus ids differ from SentencePiece"
    );
}

#[test]
fn gemma_shards_decode_to_the_input() {
    let Some(tok) = gemma() else { return };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.jsonl");
    std::fs::write(&f, "{\"text\": \"Hello 世界 😀\\n\\tcode()\"}\n{\"text\": \"<start_of_turn>user\\nhi<end_of_turn>\"}\n").unwrap();
    let opts = data::TokenizeOptions {
        inputs: vec![f.display().to_string()],
        output: dir.path().join("out"),
        format: data::InputFormat::Jsonl,
        ..Default::default()
    };
    let s = data::tokenize(&tok, &opts, &|_| {}).unwrap();
    assert_eq!(s.documents, 2);
    let m = data::shard::Manifest::read(&opts.output).unwrap();
    assert_eq!((m.vocab_size, m.tokenizer.as_str()), (256_000, "gemma"));
    let shard = data::shard::Shard::open(&opts.output.join(&m.shards[0].file)).unwrap();
    let mut ids = Vec::new();
    shard.read_doc(1, &mut ids);
    assert_eq!(ids[0], 106);
    assert_eq!(
        tok.decode(&ids).unwrap(),
        "<start_of_turn>user\nhi<end_of_turn>"
    );
}
