//! Chat ids and loss masks equal a SentencePiece reference on the official Gemma tokenizer
//! (golden file written by `scripts/gen_chat_golden.py`): multi-turn, whitespace-padded, code
//! and non-Latin conversations. Fetches the tokenizer into the cache on first use; where that
//! fails the test fails under CI (`CI=true`) and is skipped, loudly, elsewhere.

use data::chat::{Message, encode_chat, parse_conversation};
use serde::Deserialize;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: serde_json::Value,
    text: String,
    input_ids: Vec<u32>,
    loss_mask: Vec<u8>,
}

fn gemma() -> Option<data::Tokenizer> {
    let cache = data::cache_dir();
    match data::setup_tokenizer(&cache) {
        Ok(_) => Some(data::Tokenizer::load("gemma", &cache).expect("fetched tokenizer loads")),
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!("cannot fetch the Gemma tokenizer under CI: {e}");
            }
            eprintln!("\n======== SKIPPED: cannot fetch the Gemma tokenizer: {e} ========\n");
            None
        }
    }
}

#[test]
fn chat_ids_and_masks_equal_sentencepiece() {
    let Some(tok) = gemma() else { return };
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/chat_golden.json");
    let golden: Golden = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let names: Vec<&str> = golden.cases.iter().map(|c| c.name.as_str()).collect();
    for want in ["multi_turn", "whitespace_padded", "code", "non_latin"] {
        assert!(names.contains(&want), "golden lacks {want}");
    }
    for c in &golden.cases {
        let msgs: Vec<Message> =
            parse_conversation(&serde_json::json!({ "messages": c.messages })).unwrap();
        assert_eq!(data::chat::render(&msgs).0, c.text, "{}: rendering", c.name);
        let got = encode_chat(&tok, &msgs).unwrap();
        assert_eq!(got.input_ids, c.input_ids, "{}: ids", c.name);
        assert_eq!(got.loss_mask, c.loss_mask, "{}: loss mask", c.name);
        // The last trained token of a conversation ending with a model turn is <end_of_turn>.
        if let Some(i) = got.loss_mask.iter().rposition(|&m| m == 1) {
            assert_eq!(got.input_ids[i], 107, "{}", c.name);
        }
    }
}
