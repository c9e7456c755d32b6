//! Evaluation tasks against transformers: the memorization test counts the
//! documents a trained model reproduces (and not the fresh ones) as
//! transformers' greedy decoding does; choice scores equal transformers'
//! summed log-probabilities; shard sampling and input errors.

use std::path::{Path, PathBuf};

use hlo::DType;
use train::config::{MeshSection, RuntimeConfig};
use train::generate::{Devices, Generator};
use train::tasks::{
    MemorizationOptions, memorization, read_choice_items, sample_indices, sample_shard_docs,
    score_choices,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> serde_json::Value {
    let p = root().join("crates/train/tests/golden/generate/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn generator(model: &str, devices: usize, mesh: (i64, i64, i64)) -> Generator {
    let ck = gemma::hf::load(&root().join(model)).unwrap();
    let runtime = RuntimeConfig {
        device_count: devices,
        ..RuntimeConfig::default()
    };
    let mesh = MeshSection {
        data: mesh.0,
        fsdp: mesh.1,
        tensor: mesh.2,
        ..MeshSection::default()
    };
    let dev = Devices::new(&ck.config, &runtime, &mesh, DType::F32).unwrap();
    Generator::new(dev, &ck, DType::F32).unwrap()
}

#[test]
fn memorization_counts_what_transformers_reproduces() {
    let g = golden();
    let m = &g["memorization"];
    let mut docs: Vec<(usize, Vec<u32>)> = m["docs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, d)| (i, ids(d)))
        .collect();
    docs.push((16, ids(&m["docs"][0])[..99].to_vec())); // one token short
    let want: Vec<usize> = m["memorized"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(
        want,
        (0..8).collect::<Vec<_>>(),
        "the 8 trained documents, not the 8 fresh ones"
    );
    let mut engine = generator(m["model"].as_str().unwrap(), 1, (1, 1, 1));
    let opts = MemorizationOptions {
        max_batch: 8,
        ..MemorizationOptions::default()
    };
    let r = memorization(&mut engine, &docs, &opts).unwrap();
    assert_eq!(r.memorized_indices, want);
    assert_eq!((r.docs, r.memorized, r.skipped), (16, 8, 1));
    assert!((r.rate - 0.5).abs() < 1e-12);
}

#[test]
fn choice_scores_equal_transformers_log_probabilities() {
    let g = golden();
    let c = &g["choices"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = c["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            serde_json::json!({"context": it["context"], "choices": it["choices"], "answer": it["answer"]})
                .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let items = read_choice_items(&path, None).unwrap();
    for mesh in [(1usize, (1, 1, 1)), (8, (1, 2, 4))] {
        let mut engine = generator(c["model"].as_str().unwrap(), mesh.0, mesh.1);
        let r = score_choices(&mut engine, &items, 8).unwrap();
        let mut right = 0;
        for (d, it) in r.details.iter().zip(c["items"].as_array().unwrap()) {
            let want: Vec<f64> = it["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            for (a, b) in d.logprobs.iter().zip(&want) {
                assert!(
                    (a - b).abs() < 2e-4 * b.abs().max(1.0),
                    "{a} vs {b} on {mesh:?}"
                );
            }
            let best = (0..want.len()).fold(0, |k, i| if want[i] > want[k] { i } else { k });
            assert_eq!(d.pred, best);
            right += (best == d.answer) as usize;
        }
        assert_eq!(r.items, 5);
        assert!((r.accuracy - right as f64 / 5.0).abs() < 1e-12);
    }
}

#[test]
fn text_items_split_tokens_like_lm_evaluation_harness() {
    let tok =
        data::Tokenizer::from_file(&root().join("configs/data/shakespeare-bpe8k.json")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(
        &path,
        r#"{"context": "Who art thou? I am", "choices": [" Romeo", " the king"], "answer": 0}"#,
    )
    .unwrap();
    let items = read_choice_items(&path, Some(&tok)).unwrap();
    let it = &items[0];
    assert_eq!(it.context[0], tok.bos_id());
    for (choice, text) in it.choices.iter().zip([" Romeo", " the king"]) {
        let mut whole = vec![tok.bos_id()];
        whole.extend(tok.encode(&format!("Who art thou? I am{text}")).unwrap());
        let joined: Vec<u32> = it.context.iter().chain(choice).copied().collect();
        assert_eq!(joined, whole);
    }
    assert_eq!(it.lengths, vec![6, 9]);
}

#[test]
fn bad_items_name_the_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasks.jsonl");
    std::fs::write(
        &path,
        "{\"context\": [2, 5], \"choices\": [[3], [4]], \"answer\": 0}\n{\"context\": [2], \"choices\": [[3], [4]], \"answer\": 2}\n",
    )
    .unwrap();
    let e = read_choice_items(&path, None).unwrap_err().to_string();
    assert!(e.contains("line 2: answer") && e.contains("0..2"), "{e}");
    std::fs::write(
        &path,
        "{\"context\": \"text\", \"choices\": [\"a\", \"b\"], \"answer\": 0}\n",
    )
    .unwrap();
    let e = read_choice_items(&path, None).unwrap_err().to_string();
    assert!(e.contains("--tokenizer"), "{e}");
}

#[test]
fn shard_documents_are_sampled_by_seed() {
    let a = sample_indices(1000, 10, 5);
    assert_eq!(a, sample_indices(1000, 10, 5));
    assert_ne!(a, sample_indices(1000, 10, 6));
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]) && a[9] < 1000);
    assert_eq!(sample_indices(5, 10, 1), vec![0, 1, 2, 3, 4]);

    let dir = tempfile::tempdir().unwrap();
    let mut infos = Vec::new();
    let mut next = 0u32;
    for s in 0..3 {
        let mut w =
            data::shard::ShardWriter::create(&dir.path().join(data::shard::shard_file_name(s)))
                .unwrap();
        for d in 0..4 {
            let doc: Vec<u32> = (0..(3 + d))
                .map(|_| {
                    next += 1;
                    next
                })
                .collect();
            w.push(&doc).unwrap();
        }
        infos.push(w.finish().unwrap());
    }
    let manifest = data::shard::Manifest {
        format: "meshtrain-shards".into(),
        version: 1,
        tokenizer: "test".into(),
        vocab_size: 100,
        bos_id: 2,
        eos_id: 1,
        pad_id: 0,
        documents: 12,
        tokens: next as u64,
        shards: infos,
        loss_mask: false,
    };
    manifest.write(dir.path()).unwrap();
    let docs = sample_shard_docs(dir.path(), 5, 9).unwrap();
    let picks = sample_indices(12, 5, 9);
    assert_eq!(docs.iter().map(|d| d.0).collect::<Vec<_>>(), picks);
    for (i, doc) in &docs {
        // Document i is the (i % 4)-th of shard i / 4: 3 + i % 4 tokens after <bos>.
        assert_eq!(doc[0], 2);
        assert_eq!(doc.len(), 1 + 3 + i % 4);
        let first: u32 = (0..*i).map(|j| 3 + (j % 4) as u32).sum::<u32>() + 1;
        assert_eq!(doc[1], first);
    }
}

/// Memorized continuations are scanned by the data pipeline's detector:
/// one with an email (personal), one with a card number (sensitive), one
/// clean, and one with an SSN that was not memorized (not counted).
#[test]
fn memorized_continuations_with_personal_or_sensitive_data_are_counted() {
    let words = [
        "the",
        "quick",
        "write to",
        "jane.doe@example.org",
        "card number",
        "4111 1111 1111 1111",
        "brown",
        "fox",
        "ssn",
        "078-05-1120",
    ];
    let decode = |ids: &[u32]| -> train::Result<String> {
        Ok(ids
            .iter()
            .map(|&i| words[i as usize])
            .collect::<Vec<_>>()
            .join(" "))
    };
    let docs = vec![
        (0, vec![0, 1, 2, 3]),
        (1, vec![0, 1, 4, 5]),
        (2, vec![0, 1, 6, 7]),
        (3, vec![0, 1, 8, 9]),
        (4, vec![0, 1, 2]), // too short
    ];
    let opts = train::tasks::MemorizationOptions {
        prompt_len: 2,
        continuation_len: 2,
        ..Default::default()
    };
    let result = train::tasks::MemorizationResult {
        docs: 4,
        memorized: 3,
        rate: 0.75,
        memorized_indices: vec![0, 1, 2],
        skipped: 1,
    };
    let pii = train::tasks::memorized_pii(&docs, &result, &opts, decode).unwrap();
    assert_eq!((pii.personal, pii.sensitive), (1, 1), "{pii:?}");
    assert_eq!(
        pii.findings.into_iter().collect::<Vec<_>>(),
        [("credit_card".to_string(), 1), ("email".to_string(), 1)]
    );
}
