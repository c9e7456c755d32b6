//! Supervised fine-tuning data: `data.format = "chat"`, conversations packed whole with their
//! loss masks, `data.overflow`, shards carrying masks (`tokenize --format chat`, version 2),
//! and `tokens` rows with a `loss_mask`.

mod common;

use data::chat::{Overflow, encode_chat, parse_line};
use data::{Batch, DataConfig, DataFormat, Loader, RowLoader};

/// `n` arithmetic conversations of varying length, one per line.
fn conversations(n: usize) -> String {
    (0..n)
        .map(|i| {
            let q = format!("What is {i} plus {}?", i * 7 % 13);
            let a = format!("{} {}", i + i * 7 % 13, "is the answer. ".repeat(i % 4));
            let mut msgs = vec![
                serde_json::json!({"role": "user", "content": q}),
                serde_json::json!({"role": "model", "content": a}),
            ];
            if i % 3 == 0 {
                msgs.push(serde_json::json!({"role": "user", "content": "And times two?"}));
                msgs.push(
                    serde_json::json!({"role": "assistant", "content": format!("{}", 2 * i)}),
                );
            }
            serde_json::json!({ "messages": msgs }).to_string() + "\n"
        })
        .collect()
}

fn chat_cfg(path: &std::path::Path, seq_len: usize, batch: usize) -> DataConfig {
    let mut cfg = DataConfig::new(DataFormat::Chat, path.to_str().unwrap(), seq_len, batch);
    cfg.tokenizer = Some(common::smoke_tokenizer_path().display().to_string());
    cfg.shuffle = false;
    cfg
}

/// Every segment of `b` is one whole conversation of `expected`, with its mask shifted onto
/// the positions that predict the trained tokens; returns the conversations seen in order.
fn segments(b: &Batch) -> Vec<(Vec<u32>, Vec<u8>)> {
    let l = b.seq_len;
    let mut out = Vec::new();
    for r in 0..b.batch {
        let mut t = 0;
        while t < l && b.segment_ids[r * l + t] != 0 {
            let s = b.segment_ids[r * l + t];
            let start = t;
            while t < l && b.segment_ids[r * l + t] == s {
                assert_eq!(b.positions[r * l + t], (t - start) as i32);
                t += 1;
            }
            let ids: Vec<u32> = (start..t).map(|k| b.tokens[r * l + k] as u32).collect();
            // The token-level mask: token k is a target iff position k-1 predicts it.
            let mut mask = vec![0u8];
            for k in start + 1..t {
                let m = b.loss_mask[r * l + k - 1];
                if m > 0.0 {
                    assert_eq!(b.targets[r * l + k - 1], b.tokens[r * l + k]);
                }
                mask.push((m > 0.0) as u8);
            }
            // The last position of a segment predicts nothing.
            assert_eq!(b.loss_mask[r * l + t - 1], 0.0);
            out.push((ids, mask));
        }
        assert!(
            b.loss_mask[r * l + t..(r + 1) * l]
                .iter()
                .all(|&m| m == 0.0)
        );
    }
    out
}

fn encoded(text: &str) -> Vec<(Vec<u32>, Vec<u8>)> {
    let tok = common::smoke_tokenizer();
    text.lines()
        .map(|l| {
            let c = encode_chat(&tok, &parse_line(l).unwrap()).unwrap();
            (c.input_ids, c.loss_mask)
        })
        .collect()
}

#[test]
fn chat_conversations_are_packed_whole_with_their_masks() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.jsonl");
    let text = conversations(30);
    std::fs::write(&f, &text).unwrap();
    let expected = encoded(&text);
    let longest = expected.iter().map(|c| c.0.len()).max().unwrap();
    let seq_len = longest + 20;
    let mut loader = Loader::new(&chat_cfg(&f, seq_len, 2), 0, 1, None).unwrap();
    let info = loader.info().clone();
    assert_eq!((info.documents, info.truncated, info.dropped), (30, 0, 0));
    let mut seen = Vec::new();
    let mut packed_rows = 0;
    while seen.len() < 30 {
        let b = loader.next_batch().unwrap();
        for r in 0..b.batch {
            if b.segment_ids[r * seq_len..(r + 1) * seq_len].contains(&2) {
                packed_rows += 1;
            }
        }
        seen.extend(segments(&b));
    }
    assert!(packed_rows > 0, "some rows hold two conversations");
    // In file order, each conversation whole, with the mask encode_chat gives
    // (the first token, <bos>, is never a target).
    for (i, (got, want)) in seen.iter().zip(&expected).enumerate() {
        assert_eq!(got.0, want.0, "conversation {i}");
        assert_eq!(got.1, want.1, "mask of conversation {i}");
    }
}

#[test]
fn overflow_truncates_drops_or_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.jsonl");
    let text = conversations(12);
    std::fs::write(&f, &text).unwrap();
    let expected = encoded(&text);
    let seq_len = 24;
    let long: Vec<usize> = (0..12).filter(|&i| expected[i].0.len() > seq_len).collect();
    assert!(!long.is_empty() && long.len() < 12);

    let mut cfg = chat_cfg(&f, seq_len, 1);
    cfg.packing = false;
    let mut loader = Loader::new(&cfg, 0, 1, None).unwrap();
    assert_eq!(loader.info().truncated, long.len() as u64);
    for want in &expected {
        let got = segments(&loader.next_batch().unwrap());
        let n = want.0.len().min(seq_len);
        assert_eq!(got[0].0, want.0[..n]);
        assert_eq!(got[0].1, want.1[..n]);
    }

    cfg.overflow = Overflow::Drop;
    let mut loader = Loader::new(&cfg, 0, 1, None).unwrap();
    assert_eq!(
        (loader.info().truncated, loader.info().dropped),
        (0, long.len() as u64)
    );
    for want in expected.iter().filter(|c| c.0.len() <= seq_len) {
        assert_eq!(segments(&loader.next_batch().unwrap())[0].0, want.0);
    }

    cfg.overflow = Overflow::Error;
    let err = Loader::new(&cfg, 0, 1, None).unwrap_err().to_string();
    let line = long[0] + 1;
    assert!(
        err.contains(&format!("c.jsonl:{line}:")) && err.contains("longer than data.seq_len = 24"),
        "{err}"
    );
}

#[test]
fn bad_conversations_name_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.jsonl");
    let mut text = conversations(2);
    text.push_str(r#"{"messages": [{"role": "system", "content": "be nice"}]}"#);
    std::fs::write(&f, &text).unwrap();
    let err = Loader::new(&chat_cfg(&f, 64, 1), 0, 1, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c.jsonl:3:") && err.contains("system"),
        "{err}"
    );
}

#[test]
fn chat_shards_stream_like_the_chat_format() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.jsonl");
    let mut text = conversations(20);
    text.push_str("not json\n");
    std::fs::write(&f, &text).unwrap();
    let out = dir.path().join("shards");
    let opts = data::TokenizeOptions {
        inputs: vec![f.display().to_string()],
        output: out.clone(),
        format: data::InputFormat::Chat,
        shard_tokens: 200,
        ..Default::default()
    };
    let s = data::tokenize(&common::smoke_tokenizer(), &opts, &|_| {}).unwrap();
    assert_eq!(s.documents, 20);
    assert_eq!(s.issues.len(), 1);
    assert_eq!(s.issues[0].line, 21);
    let m = data::shard::Manifest::read(&out).unwrap();
    assert!(m.shards.len() > 1);
    assert_eq!((m.version, m.loss_mask), (2, true));
    let shard = data::shard::Shard::open(&out.join(&m.shards[0].file)).unwrap();
    assert!(shard.masked());
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    shard.read_doc_masked(0, &mut ids, &mut mask);
    let want = &encoded(&text[..text.find('\n').unwrap()])[0];
    assert_eq!((&ids, &mask), (&want.0, &want.1));

    // Streamed from shards, the batches equal those of data.format = "chat".
    let seq_len = 48;
    let chat = chat_cfg(&f, seq_len, 2);
    let chat_file = dir.path().join("ok.jsonl");
    std::fs::write(&chat_file, conversations(20)).unwrap();
    let chat = DataConfig {
        path: chat_file.display().to_string(),
        ..chat
    };
    let mut shards = DataConfig::new(DataFormat::Shards, out.to_str().unwrap(), seq_len, 2);
    shards.shuffle = false;
    let mut a = RowLoader::new(&chat, &[0, 1], |_| None).unwrap();
    let mut b = RowLoader::new(&shards, &[0, 1], |_| None).unwrap();
    for _ in 0..6 {
        assert_eq!(a.next_batch().unwrap(), b.next_batch().unwrap());
    }
}

#[test]
fn version_1_shards_still_read_and_masks_need_version_2() {
    let dir = tempfile::tempdir().unwrap();
    let p1 = dir.path().join("a.mtok");
    let mut w = data::shard::ShardWriter::create(&p1).unwrap();
    w.push(&[5, 6, 7]).unwrap();
    assert!(w.push_masked(&[1], &[1]).is_err());
    w.finish().unwrap();
    let s = data::shard::Shard::open(&p1).unwrap();
    assert!(!s.masked());
    let (mut ids, mut mask) = (Vec::new(), Vec::new());
    s.read_doc_masked(0, &mut ids, &mut mask);
    assert_eq!((ids, mask), (vec![5, 6, 7], vec![1, 1, 1]));
    assert_eq!(
        std::fs::read(&p1).unwrap()[8],
        1,
        "plain shards stay version 1"
    );

    let p2 = dir.path().join("b.mtok");
    let mut w = data::shard::ShardWriter::create_masked(&p2).unwrap();
    w.push_masked(&[5, 6, 7], &[0, 1, 0]).unwrap();
    assert!(w.push_masked(&[1 << 31], &[1]).is_err());
    w.finish().unwrap();
    let s = data::shard::Shard::open(&p2).unwrap();
    let mut ids = Vec::new();
    s.read_doc(0, &mut ids);
    assert_eq!(ids, [5, 6, 7]);
    s.verify().unwrap();
}

#[test]
fn tokens_rows_take_an_optional_loss_mask() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rows.json");
    std::fs::write(
        &f,
        r#"{"input_ids": [[2, 10, 11, 12], [2, 20, 21]], "loss_mask": [[0, 0, 1, 1], [0, 1, 0]]}"#,
    )
    .unwrap();
    let mut cfg = DataConfig::new(DataFormat::Tokens, f.to_str().unwrap(), 4, 2);
    cfg.shuffle = false;
    let b = Loader::new(&cfg, 0, 1, None).unwrap().next_batch().unwrap();
    // Position t predicts token t+1: a target where loss_mask[t+1] = 1.
    assert_eq!(b.loss_mask, [0., 1., 1., 0., 1., 0., 0., 0.]);
    assert_eq!(b.targets, [10, 11, 12, 0, 20, 21, 0, 0]);

    let j = dir.path().join("rows.jsonl");
    std::fs::write(
        &j,
        "{\"input_ids\": [2, 10, 11], \"loss_mask\": [0, 1, 1]}\n[2, 5]\n",
    )
    .unwrap();
    let rows = data::read_token_rows_with_mask(&j, 4).unwrap();
    assert_eq!(rows[0].1.as_deref(), Some(&[0u8, 1, 1][..]));
    assert_eq!(rows[1].1, None);

    for (bad, expect) in [
        (
            r#"{"input_ids": [[2, 3]], "loss_mask": [[1]]}"#,
            "1 values for 2 input_ids",
        ),
        (
            r#"{"input_ids": [[2, 3]], "loss_mask": [[1, 2]]}"#,
            "value 2 is not 0 or 1",
        ),
        (
            r#"{"input_ids": [[2, 3]], "loss_mask": []}"#,
            "loss_mask has 0 rows",
        ),
    ] {
        std::fs::write(&f, bad).unwrap();
        let err = data::read_token_rows_with_mask(&f, 4)
            .unwrap_err()
            .to_string();
        assert!(err.contains("rows.json") && err.contains(expect), "{err}");
    }
}

/// A conversation ending with a user message is a prompt: it ends with the generation prompt
/// (`<start_of_turn>model\n`, untrained); one ending with a model turn is encoded as before.
#[test]
fn a_conversation_ending_with_a_user_message_ends_with_the_generation_prompt() {
    let tok = data::Tokenizer::load(
        common::smoke_tokenizer_path().to_str().unwrap(),
        &data::cache_dir(),
    )
    .unwrap();
    let user = parse_line(r#"{"messages": [{"role": "user", "content": "Hi there"}]}"#).unwrap();
    let prompt = data::chat::encode_conversation(&tok, &user).unwrap();
    let plain = encode_chat(&tok, &user).unwrap();
    let tail = tok.encode("<start_of_turn>model\n").unwrap();
    assert_eq!(
        prompt.input_ids,
        [plain.input_ids.clone(), tail.clone()].concat()
    );
    assert!(prompt.loss_mask.iter().all(|&m| m == 0));
    let text = tok.decode(&prompt.input_ids[1..]).unwrap();
    assert_eq!(data::chat::render_prompt(&user), text);

    let answered = parse_line(
        r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Hello"}]}"#,
    )
    .unwrap();
    assert_eq!(
        data::chat::encode_conversation(&tok, &answered).unwrap(),
        encode_chat(&tok, &answered).unwrap()
    );
}
