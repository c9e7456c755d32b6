//! The loader: packing invariants, determinism, host slices, exact resume, `tokens` rows.

mod common;

use data::{Batch, DataConfig, DataFormat, Loader, LoaderState};

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch().unwrap()).collect()
}

/// Checks the invariants every batch must hold.
fn check_batch(b: &Batch, bos: i32, eos: i32, packing: bool) {
    let l = b.seq_len;
    assert_eq!(b.tokens.len(), b.batch * l);
    for r in 0..b.batch {
        let row = r * l..(r + 1) * l;
        let seg = &b.segment_ids[row.clone()];
        let pos = &b.positions[row.clone()];
        let tok = &b.tokens[row.clone()];
        // segments are 1, 2, ... in order, then padding
        let mut expect = 1;
        for t in 0..l {
            if seg[t] == 0 {
                assert!(seg[t..].iter().all(|&s| s == 0), "padding only at the end");
                assert!(!packing || t == l, "packed rows are full");
                break;
            }
            if t > 0 && seg[t] != seg[t - 1] {
                expect += 1;
                assert_eq!(pos[t], 0);
            }
            assert_eq!(seg[t], expect);
            if t > 0 && seg[t] == seg[t - 1] {
                assert_eq!(pos[t], pos[t - 1] + 1);
            }
            if pos[t] == 0 && t > 0 {
                // a segment that starts inside a row starts a document
                assert_eq!(tok[t], bos);
            }
        }
        for t in 0..l {
            let i = r * l + t;
            let real = t + 1 < l && seg[t] != 0 && seg[t + 1] == seg[t];
            assert_eq!(b.loss_mask[i], if real { 1.0 } else { 0.0 });
            if real {
                assert_eq!(b.targets[i], b.tokens[i + 1]);
            }
            if seg[t] != 0 && tok[t] == eos && t + 1 < l {
                assert_ne!(seg[t + 1], seg[t], "eos ends its segment");
            }
        }
    }
}

fn shards_cfg(path: &std::path::Path, seq_len: usize, batch: usize) -> DataConfig {
    DataConfig::new(DataFormat::Shards, path.to_str().unwrap(), seq_len, batch)
}

#[test]
fn packed_batches_hold_their_invariants() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 200, 800);
    let cfg = shards_cfg(&out, 64, 4);
    let mut loader = Loader::new(&cfg, 0, 1, None).unwrap();
    assert_eq!(
        loader.info().vocab_size,
        Some(common::smoke_tokenizer().vocab_size())
    );
    for b in take(&mut loader, 30) {
        check_batch(&b, 2, 1, true);
        assert_eq!(b.real_tokens(), 4 * 64);
    }
}

#[test]
fn unpacked_batches_pad_one_document_per_row() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 100, 1 << 20);
    let mut cfg = shards_cfg(&out, 128, 4);
    cfg.packing = false;
    cfg.shuffle = false;
    let mut loader = Loader::new(&cfg, 0, 1, None).unwrap();
    let tok = common::smoke_tokenizer();
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let first = text.split("\n\n").next().unwrap();
    let b = loader.next_batch().unwrap();
    check_batch(&b, 2, 1, false);
    let seg = &b.segment_ids[..128];
    assert!(seg.iter().all(|&s| s <= 1));
    let n = seg.iter().filter(|&&s| s == 1).count();
    let ids: Vec<u32> = b.tokens[..n].iter().map(|&t| t as u32).collect();
    assert_eq!(ids[0], 2);
    assert_eq!(*ids.last().unwrap(), 1);
    assert_eq!(tok.decode(&ids[1..n - 1]).unwrap(), first);
    assert!(b.tokens[n..128].iter().all(|&t| t == 0));
}

#[test]
fn same_seed_same_batches_other_seed_other_batches() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 200, 1000);
    let cfg = shards_cfg(&out, 32, 2);
    let a = take(&mut Loader::new(&cfg, 0, 1, None).unwrap(), 10);
    let b = take(&mut Loader::new(&cfg, 0, 1, None).unwrap(), 10);
    assert_eq!(a, b);
    let mut other = cfg.clone();
    other.seed = 1;
    let c = take(&mut Loader::new(&other, 0, 1, None).unwrap(), 10);
    assert_ne!(a, c);
    let mut unshuffled = cfg.clone();
    unshuffled.shuffle = false;
    let d = take(&mut Loader::new(&unshuffled, 0, 1, None).unwrap(), 1);
    let tok = common::smoke_tokenizer();
    let text = std::fs::read_to_string(common::corpus_path()).unwrap();
    let first_ids = tok.encode(text.split("\n\n").next().unwrap()).unwrap();
    let n = first_ids.len();
    let got: Vec<u32> = d[0].tokens[1..=n].iter().map(|&t| t as u32).collect();
    assert_eq!(got, first_ids, "shuffle = false reads in file order");
    // prefetch depth does not change the stream
    let mut shallow = cfg.clone();
    shallow.prefetch = 1;
    assert_eq!(take(&mut Loader::new(&shallow, 0, 1, None).unwrap(), 10), a);
}

/// Runs `n` batches straight, and `k` then resume from the saved state (as JSON, as a
/// checkpoint would) for the rest: the batches must be equal.
fn assert_resume_equal(cfg: &DataConfig, host: usize, hosts: usize, n: usize, k: usize) {
    let straight = take(&mut Loader::new(cfg, host, hosts, None).unwrap(), n);
    let mut first = Loader::new(cfg, host, hosts, None).unwrap();
    let mut got = take(&mut first, k);
    let saved = serde_json::to_string(&first.state()).unwrap();
    assert!(saved.len() < 200, "state is small: {saved}");
    drop(first);
    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    assert_eq!(state.batches, k as u64);
    let mut resumed = Loader::new(cfg, host, hosts, Some(state)).unwrap();
    got.extend(take(&mut resumed, n - k));
    assert_eq!(got, straight);
}

#[test]
fn resume_gives_the_same_batches_as_not_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // 60 documents, small rows: the run crosses several epochs.
    let out = common::small_shards(dir.path(), 60, 500);
    for packing in [true, false] {
        let mut cfg = shards_cfg(&out, 48, 4);
        cfg.packing = packing;
        for k in [0, 1, 7, 23] {
            assert_resume_equal(&cfg, 0, 1, 40, k);
        }
        assert_resume_equal(&cfg, 1, 2, 40, 13);
    }
}

#[test]
fn resume_rejects_a_state_from_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 30, 1 << 20);
    let cfg = shards_cfg(&out, 32, 2);
    let mut l = Loader::new(&cfg, 0, 1, None).unwrap();
    l.next_batch().unwrap();
    let state = l.state();
    let mut other = cfg.clone();
    other.seed = 5;
    let err = Loader::new(&other, 0, 1, Some(state)).unwrap_err();
    assert!(err.to_string().contains("cannot resume"), "{err}");
}

#[test]
fn hosts_read_disjoint_slices_of_each_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 40, 1 << 20);
    let mut cfg = shards_cfg(&out, 512, 4);
    cfg.packing = false;
    // With one document per row and rows longer than any paragraph, a row is a document.
    let docs = |host, hosts| {
        let mut l = Loader::new(&cfg, host, hosts, None).unwrap();
        let rows = 40 / hosts;
        let per_batch = 4 / hosts;
        let mut out = Vec::new();
        for b in take(&mut l, rows / per_batch) {
            for r in 0..b.batch {
                let row = &b.tokens[r * 512..(r + 1) * 512];
                out.push(row.to_vec());
            }
        }
        out
    };
    let mut single = docs(0, 1);
    let mut both = docs(0, 2);
    let other = docs(1, 2);
    assert!(both.iter().all(|d| !other.contains(d)));
    both.extend(other);
    single.sort();
    both.sort();
    assert_eq!(
        single, both,
        "two hosts together read each document once per epoch"
    );
    let err = Loader::new(&cfg, 0, 3, None).unwrap_err();
    assert!(err.to_string().contains("batch_size"), "{err}");
}

#[test]
fn text_and_jsonl_formats_load_directly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.jsonl");
    std::fs::write(
        &f,
        "{\"text\": \"To be, or not to be\"}\n{\"text\": \"that is the question\"}\n",
    )
    .unwrap();
    let mut cfg = DataConfig::new(DataFormat::Jsonl, f.to_str().unwrap(), 16, 2);
    cfg.tokenizer = Some(common::smoke_tokenizer_path().display().to_string());
    let mut l = Loader::new(&cfg, 0, 1, None).unwrap();
    for b in take(&mut l, 5) {
        check_batch(&b, 2, 1, true);
    }
    assert_resume_equal(&cfg, 0, 1, 12, 5);

    std::fs::write(&f, "{\"text\": \"ok\"}\n{\"txt\": \"wrong field\"}\n").unwrap();
    let err = Loader::new(&cfg, 0, 1, None).unwrap_err();
    assert!(err.to_string().contains(":2: missing field"), "{err}");

    let t = dir.path().join("c.txt");
    std::fs::write(&t, "one paragraph\n\nanother one\n").unwrap();
    let mut cfg = DataConfig::new(DataFormat::Text, t.to_str().unwrap(), 16, 1);
    cfg.tokenizer = Some(common::smoke_tokenizer_path().display().to_string());
    cfg.text_unit = data::TextUnit::Paragraph;
    assert_eq!(Loader::new(&cfg, 0, 1, None).unwrap().info().documents, 2);
}

#[test]
fn tokens_rows_are_used_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rows.jsonl");
    std::fs::write(
        &f,
        "{\"input_ids\": [5, 6, 7, 8]}\n{\"input_ids\": [9, 10]}\n{\"input_ids\": [11, 12, 13]}\n",
    )
    .unwrap();
    let mut cfg = DataConfig::new(DataFormat::Tokens, f.to_str().unwrap(), 4, 3);
    cfg.shuffle = false;
    let mut l = Loader::new(&cfg, 0, 1, None).unwrap();
    let b = l.next_batch().unwrap();
    assert_eq!(b.tokens, [5, 6, 7, 8, 9, 10, 0, 0, 11, 12, 13, 0]);
    assert_eq!(b.targets, [6, 7, 8, 0, 10, 0, 0, 0, 12, 13, 0, 0]);
    assert_eq!(
        b.loss_mask,
        [1., 1., 1., 0., 1., 0., 0., 0., 1., 1., 0., 0.]
    );
    assert_eq!(b.positions, [0, 1, 2, 3, 0, 1, 0, 0, 0, 1, 2, 0]);
    assert_eq!(b.predictions(), 3 + 1 + 2);
    assert_eq!(l.next_batch().unwrap(), b, "next epoch, same file order");
    cfg.shuffle = true;
    assert_resume_equal(&cfg, 0, 1, 8, 3);

    // A row longer than seq_len names the row.
    let j = dir.path().join("rows.json");
    std::fs::write(&j, r#"{"input_ids": [[1, 2], [1, 2, 3, 4, 5]]}"#).unwrap();
    let cfg = DataConfig::new(DataFormat::Tokens, j.to_str().unwrap(), 4, 1);
    let err = Loader::new(&cfg, 0, 1, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("row 1: 5 tokens, longer than seq_len 4"),
        "{err}"
    );
    std::fs::write(&f, "{\"input_ids\": [1]}\n{\"input_ids\": [1, -3]}\n").unwrap();
    let cfg = DataConfig::new(DataFormat::Tokens, f.to_str().unwrap(), 4, 1);
    let err = Loader::new(&cfg, 0, 1, None).unwrap_err();
    assert!(err.to_string().contains(":2:"), "{err}");
}

#[test]
fn a_jsonl_line_may_be_a_bare_array_of_ids() {
    // What `meshtrain tokenizer encode --json` prints, one row per line.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("rows.jsonl");
    std::fs::write(&f, "[2, 506, 3444]\n{\"input_ids\": [7, 8]}\n").unwrap();
    let rows = data::read_token_rows(&f, 4).unwrap();
    assert_eq!(rows, [vec![2, 506, 3444], vec![7, 8]]);
    // In a .json file it is named with the formats that are read.
    let j = dir.path().join("rows.json");
    std::fs::write(&j, "[2, 506, 3444]").unwrap();
    let err = data::read_token_rows(&j, 4).unwrap_err().to_string();
    assert!(
        err.contains("or a .jsonl file with one row per line ({\"input_ids\": [...]} or [...])"),
        "{err}"
    );
}

#[test]
fn config_is_strict() {
    let err = toml::from_str::<DataConfig>(
        "format = \"shards\"\npath = \"x\"\nseq_len = 8\nbatch_size = 1\nshufle = false\n",
    )
    .unwrap_err();
    assert!(err.to_string().contains("shufle"), "{err}");
    let cfg: DataConfig = toml::from_str(
        "format = \"tokens\"\npath = \"x.json\"\nseq_len = 8\nbatch_size = 2\nshuffle = false\n",
    )
    .unwrap();
    assert!(!cfg.shuffle);
    assert!(cfg.validate(0, 1).is_ok());
    assert!(cfg.validate(0, 3).is_err());
    let mut text = cfg.clone();
    text.format = DataFormat::Text;
    assert!(
        text.validate(0, 1)
            .unwrap_err()
            .to_string()
            .contains("data.tokenizer")
    );
}
