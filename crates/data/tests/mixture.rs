//! Weighted source mixtures: proportions follow the weights, resume is exact, old states load.

mod common;

use std::path::{Path, PathBuf};

use data::shard::{Manifest, ShardWriter, shard_file_name};
use data::{Batch, DataConfig, DataFormat, Loader, LoaderState, RowLoader};

/// A shard directory of `docs` documents whose tokens are all in `ids` (lengths 5..=40).
fn make_shards(
    dir: &Path,
    name: &str,
    docs: usize,
    ids: std::ops::Range<u32>,
    vocab: usize,
) -> PathBuf {
    let out = dir.join(name);
    std::fs::create_dir_all(&out).unwrap();
    let mut w = ShardWriter::create(&out.join(shard_file_name(0))).unwrap();
    let mut x = 0x9e37u64 ^ ids.start as u64;
    for _ in 0..docs {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 5 + (x >> 33) as usize % 36;
        let doc: Vec<u32> = (0..len)
            .map(|k| ids.start + ((x >> 20) as u32 + k as u32 * 7) % (ids.end - ids.start))
            .collect();
        w.push(&doc).unwrap();
    }
    let info = w.finish().unwrap();
    Manifest {
        format: "meshtrain-shards".into(),
        version: 1,
        tokenizer: "test".into(),
        vocab_size: vocab,
        bos_id: 2,
        eos_id: 1,
        pad_id: 0,
        documents: info.documents,
        tokens: info.tokens,
        shards: vec![info],
        loss_mask: false,
    }
    .write(&out)
    .unwrap();
    out
}

struct Mix {
    _dir: tempfile::TempDir,
    cfg: DataConfig,
}

/// Three sources, token ids 100.., 200.., 300.., weights 5:3:2; the last one is small, so it
/// runs through several epochs.
fn mixture(seq_len: usize, batch: usize) -> Mix {
    let dir = tempfile::tempdir().unwrap();
    let web = make_shards(dir.path(), "web", 400, 100..200, 512);
    let math = make_shards(dir.path(), "math", 300, 200..300, 512);
    let code = make_shards(dir.path(), "code", 12, 300..400, 512);
    let cfg = DataConfig::mixture(
        &[
            ("web", DataFormat::Shards, web.to_str().unwrap(), 5.0),
            ("math", DataFormat::Shards, math.to_str().unwrap(), 3.0),
            ("code", DataFormat::Shards, code.to_str().unwrap(), 2.0),
        ],
        seq_len,
        batch,
    );
    Mix { _dir: dir, cfg }
}

fn take(loader: &mut Loader, n: usize) -> Vec<Batch> {
    (0..n).map(|_| loader.next_batch().unwrap()).collect()
}

#[test]
fn proportions_converge_to_the_weights() {
    let m = mixture(64, 4);
    let mut loader = Loader::new(&m.cfg, 0, 1, None).unwrap();
    assert_eq!(
        loader.info().sources,
        [
            ("web".into(), 400),
            ("math".into(), 300),
            ("code".into(), 12)
        ]
    );
    let batches = take(&mut loader, 300);
    // Independently of the loader's counters: content tokens by id range.
    let mut content = [0u64; 3];
    for b in &batches {
        for (&t, &s) in b.tokens.iter().zip(&b.segment_ids) {
            if s != 0 && t >= 100 {
                content[(t as usize - 100) / 100] += 1;
            }
        }
    }
    let total: u64 = content.iter().sum();
    let by_source = loader.tokens_by_source();
    let counted: u64 = by_source.values().sum();
    assert_eq!(
        counted,
        300 * 4 * 64,
        "packed rows are full: every token is counted"
    );
    for (i, (name, w)) in [("web", 0.5), ("math", 0.3), ("code", 0.2)]
        .iter()
        .enumerate()
    {
        let share = content[i] as f64 / total as f64;
        assert!(
            (share - w).abs() < 0.02,
            "{name}: content share {share}, weight {w}"
        );
        let share = by_source[*name] as f64 / counted as f64;
        assert!(
            (share - w).abs() < 0.005,
            "{name}: counted share {share}, weight {w}"
        );
    }
    // The small source went round many more times than the large ones.
    let state = loader.state();
    assert!(
        state.sources[2].epoch > 10 * state.sources[0].epoch,
        "{state:?}"
    );
    // Shares follow the weights early on too, not only on average.
    let mut early = Loader::new(&m.cfg, 0, 1, None).unwrap();
    take(&mut early, 10);
    let t = early.tokens_by_source();
    let share = t["web"] as f64 / t.values().sum::<u64>() as f64;
    assert!((share - 0.5).abs() < 0.05, "after 10 batches: {share}");
}

/// `n` batches straight, and `k` then a resume from the saved state (through JSON, as in a
/// checkpoint) for the rest: the same batches.
fn assert_resume_equal(cfg: &DataConfig, host: usize, hosts: usize, n: usize, k: usize) {
    let mut straight_loader = Loader::new(cfg, host, hosts, None).unwrap();
    let straight = take(&mut straight_loader, n);
    let mut first = Loader::new(cfg, host, hosts, None).unwrap();
    let mut got = take(&mut first, k);
    let saved = serde_json::to_string(&first.state()).unwrap();
    drop(first);
    let state: LoaderState = serde_json::from_str(&saved).unwrap();
    let mut resumed = Loader::new(cfg, host, hosts, Some(state)).unwrap();
    got.extend(take(&mut resumed, n - k));
    assert_eq!(got, straight, "k = {k}");
    assert_eq!(resumed.state(), straight_loader.state());
    assert_eq!(
        resumed.tokens_by_source(),
        straight_loader.tokens_by_source()
    );
}

#[test]
fn resuming_a_mixture_gives_the_same_batches_as_a_straight_run() {
    for packing in [true, false] {
        let mut m = mixture(32, 4);
        m.cfg.packing = packing;
        // 60 batches cross several epochs of the small source.
        for k in [0, 1, 9, 31] {
            assert_resume_equal(&m.cfg, 0, 1, 60, k);
        }
        assert_resume_equal(&m.cfg, 1, 2, 60, 17);
    }
}

#[test]
fn hosts_of_a_mixture_read_disjoint_documents() {
    // Unpacked rows longer than any document: a row is one document.
    let mut m = mixture(64, 4);
    m.cfg.packing = false;
    m.cfg.shuffle = false;
    let rows = |host: usize| -> Vec<Vec<i32>> {
        let mut l = Loader::new(&m.cfg, host, 2, None).unwrap();
        take(&mut l, 2)
            .iter()
            .flat_map(|b| b.tokens.chunks(64).map(|r| r.to_vec()).collect::<Vec<_>>())
            .collect()
    };
    let (a, b) = (rows(0), rows(1));
    assert!(a.iter().all(|r| !b.contains(r)), "hosts share a document");
}

#[test]
fn a_state_saved_before_mixtures_still_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = common::small_shards(dir.path(), 60, 500);
    let cfg = DataConfig::new(DataFormat::Shards, out.to_str().unwrap(), 48, 4);
    let straight = take(&mut Loader::new(&cfg, 0, 1, None).unwrap(), 30);
    let mut first = Loader::new(&cfg, 0, 1, None).unwrap();
    take(&mut first, 11);
    // The state as meshtrain wrote it before mixtures: no `sources`.
    let mut v = serde_json::to_value(first.state()).unwrap();
    v.as_object_mut().unwrap().remove("sources");
    let old: LoaderState = serde_json::from_value(v).unwrap();
    assert!(old.sources.is_empty());
    let mut resumed = Loader::new(&cfg, 0, 1, Some(old)).unwrap();
    assert_eq!(take(&mut resumed, 19), straight[11..]);
    assert_eq!(resumed.tokens_by_source()["data"], 30 * 4 * 48);
}

#[test]
fn weights_may_change_on_resume_but_sources_may_not() {
    let m = mixture(32, 4);
    let mut l = Loader::new(&m.cfg, 0, 1, None).unwrap();
    take(&mut l, 5);
    let state = l.state();
    let mut annealed = m.cfg.clone();
    annealed.sources[2].weight = 6.0;
    let mut r = Loader::new(&annealed, 0, 1, Some(state.clone())).unwrap();
    take(&mut r, 40);
    let t = r.tokens_by_source();
    assert!(t["code"] > t["web"], "the new weights apply: {t:?}");
    let mut fewer = m.cfg.clone();
    fewer.sources.pop();
    let err = Loader::new(&fewer, 0, 1, Some(state)).unwrap_err();
    assert!(err.to_string().contains("cannot resume"), "{err}");
}

#[test]
fn mixture_configs_are_checked() {
    let m = mixture(32, 4);
    let check = |edit: &dyn Fn(&mut DataConfig), expect: &str| {
        let mut cfg = m.cfg.clone();
        edit(&mut cfg);
        let err = Loader::new(&cfg, 0, 1, None).unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    };
    check(
        &|c| c.sources[1].name = "web".into(),
        "data.sources[1].name",
    );
    check(&|c| c.sources[2].weight = 0.0, "data.sources[2].weight");
    check(
        &|c| c.sources[0].format = Some(DataFormat::Tokens),
        "cannot be mixed",
    );
    check(&|c| c.path = "x".into(), "together with [[data.sources]]");
    check(
        &|c| {
            let other = make_shards(
                Path::new(&c.sources[0].path).parent().unwrap(),
                "other",
                10,
                5..50,
                1024,
            );
            c.sources[1].path = other.display().to_string();
        },
        "data.sources[1] (\"math\"): made with another tokenizer",
    );
    let mut none = DataConfig::new(DataFormat::Shards, "", 32, 4);
    none.sources.clear();
    assert!(
        none.validate(0, 1)
            .unwrap_err()
            .to_string()
            .contains("data.path")
    );

    // TOML round trip, as the training config is saved with a run.
    let text = toml::to_string(&m.cfg).unwrap();
    assert!(text.contains("[[sources]]"), "{text}");
    let back: DataConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, m.cfg);
}

#[test]
fn text_and_shard_sources_mix() {
    let dir = tempfile::tempdir().unwrap();
    let shards = common::small_shards(dir.path(), 50, 1 << 20);
    let text = dir.path().join("math.jsonl");
    std::fs::write(
        &text,
        "{\"text\": \"one plus one is two\"}\n{\"text\": \"two times two\"}\n",
    )
    .unwrap();
    let mut cfg = DataConfig::mixture(
        &[
            ("plays", DataFormat::Shards, shards.to_str().unwrap(), 3.0),
            ("math", DataFormat::Jsonl, text.to_str().unwrap(), 1.0),
        ],
        32,
        2,
    );
    cfg.tokenizer = Some(common::smoke_tokenizer_path().display().to_string());
    let mut l = Loader::new(&cfg, 0, 1, None).unwrap();
    take(&mut l, 200);
    let t = l.tokens_by_source();
    let share = t["math"] as f64 / (t["math"] + t["plays"]) as f64;
    assert!((share - 0.25).abs() < 0.02, "{t:?}");
    assert!(l.state().sources[1].epoch > 10);
}

/// Row `i` of `b`, as a batch of one row.
fn row_of(b: &Batch, i: usize) -> Batch {
    let s = b.seq_len;
    let r = i * s..(i + 1) * s;
    Batch {
        tokens: b.tokens[r.clone()].to_vec(),
        targets: b.targets[r.clone()].to_vec(),
        loss_mask: b.loss_mask[r.clone()].to_vec(),
        segment_ids: b.segment_ids[r.clone()].to_vec(),
        positions: b.positions[r].to_vec(),
        batch: 1,
        seq_len: s,
    }
}

#[test]
fn row_streams_of_a_mixture_are_host_streams_and_resume_exactly() {
    let (b, n, k) = (4, 40, 13);
    let m = mixture(32, b);
    // Row r of the global batch is host r of B's stream, whichever rows a loader takes.
    let mut hosts: Vec<Loader> = (0..b)
        .map(|r| Loader::new(&m.cfg, r, b, None).unwrap())
        .collect();
    let mut all = RowLoader::new(&m.cfg, &[0, 1, 2, 3], |_| None).unwrap();
    let mut some = RowLoader::new(&m.cfg, &[1, 3], |_| None).unwrap();
    let mut straight = Vec::new();
    let mut saved = String::new();
    for step in 0..n {
        let batch = all.next_batch().unwrap();
        let part = some.next_batch().unwrap();
        for (r, h) in hosts.iter_mut().enumerate() {
            assert_eq!(row_of(&batch, r), row_of(&h.next_batch().unwrap(), 0));
        }
        assert_eq!(row_of(&part, 0), row_of(&batch, 1), "step {step}");
        assert_eq!(row_of(&part, 1), row_of(&batch, 3), "step {step}");
        if step + 1 == k {
            saved = serde_json::to_string(&all.states()).unwrap();
        }
        if step >= k {
            straight.push(batch);
        }
    }
    // Token counts add up over the rows, and follow the weights.
    let by_source = all.tokens_by_source();
    assert_eq!(by_source.values().sum::<u64>(), (n * b * 32) as u64);
    let share = by_source["web"] as f64 / (n * b * 32) as f64;
    assert!((share - 0.5).abs() < 0.05, "web share {share}");
    // Resuming every row from its saved state (through JSON) gives the same batches.
    let states: Vec<(usize, LoaderState)> = serde_json::from_str(&saved).unwrap();
    let mut resumed = RowLoader::new(&m.cfg, &[0, 1, 2, 3], |r| {
        states.iter().find(|(x, _)| *x == r).map(|(_, s)| s.clone())
    })
    .unwrap();
    for (i, want) in straight.iter().enumerate() {
        assert_eq!(
            &resumed.next_batch().unwrap(),
            want,
            "batch {} after resume",
            k + i
        );
    }
    // A row's state is refused for another row.
    let err = RowLoader::new(&m.cfg, &[0, 1], |r| Some(states[1 - r].1.clone())).unwrap_err();
    assert!(err.to_string().contains("row 0"), "{err}");
}
