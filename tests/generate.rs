//! `meshtrain generate` and `meshtrain eval --task memorization|choices`
//! through the binary, on the committed transformers goldens.

mod common;
use common::{meshtrain, meshtrain_ok};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> serde_json::Value {
    let p = root().join("crates/train/tests/golden/generate/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn last_json(out: &std::process::Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().expect("output")).expect("the last line is JSON")
}

#[test]
fn generate_tokens_json_equals_transformers_greedy() {
    let g = golden();
    let m = &g["greedy"][3]; // the trained model
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("prompts.json");
    let prompts: Vec<serde_json::Value> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["prompt"].clone())
        .collect();
    std::fs::write(
        &tokens,
        serde_json::json!({ "input_ids": prompts }).to_string(),
    )
    .unwrap();
    let model = root().join(m["model"].as_str().unwrap());
    let out = meshtrain_ok(&[
        "generate",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--max-new-tokens",
        "30",
        "--device-count",
        "2",
        "--mesh",
        "tensor=2",
        "--json",
    ]);
    let doc = last_json(&out);
    let gens = doc["generations"].as_array().unwrap();
    for (c, gen_) in m["cases"].as_array().unwrap().iter().zip(gens) {
        assert_eq!(gen_["prompt"], c["prompt"]);
        assert_eq!(gen_["samples"][0], c["new"]);
        assert!(gen_.get("texts").is_none(), "no tokenizer, no texts");
    }

    // Sampling: the same seed twice gives the same samples.
    let sample = |seed: &str| {
        last_json(&meshtrain_ok(&[
            "generate",
            "--checkpoint",
            model.to_str().unwrap(),
            "--tokens",
            tokens.to_str().unwrap(),
            "--max-new-tokens",
            "5",
            "--temperature",
            "2.0",
            "--top-k",
            "40",
            "--top-p",
            "0.9",
            "--num-samples",
            "2",
            "--seed",
            seed,
            "--json",
        ]))
    };
    let a = sample("11");
    assert_eq!(a, sample("11"));
    assert_eq!(a["generations"][0]["samples"].as_array().unwrap().len(), 2);
}

#[test]
fn generate_text_with_a_tokenizer_streams_and_reports_texts() {
    let g = golden();
    let model = root().join(g["choices"]["model"].as_str().unwrap()); // vocab 96: ids of a byte tokenizer fit
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("p.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"ab\"}\n{\"prompt\": \"hello\"}\n").unwrap();
    // A 96-piece byte-level tokenizer: the 6 specials, then 90 printable characters.
    let mut vocab = serde_json::Map::new();
    for (i, p) in [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
    ]
    .iter()
    .enumerate()
    {
        vocab.insert(p.to_string(), i.into());
    }
    for (k, c) in (33u8..123).enumerate() {
        vocab.insert((c as char).to_string(), (6 + k).into());
    }
    let added: Vec<serde_json::Value> = [
        "<pad>",
        "<eos>",
        "<bos>",
        "<unk>",
        "<start_of_turn>",
        "<end_of_turn>",
    ]
    .iter()
    .enumerate()
    .map(|(i, c)| {
        serde_json::json!({
            "id": i, "content": c, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        })
    })
    .collect();
    let tok = serde_json::json!({
        "version": "1.0",
        "added_tokens": added,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "."}, "behavior": "Isolated", "invert": false},
        "decoder": {"type": "Fuse"},
        "normalizer": null,
        "post_processor": null,
        "truncation": null,
        "padding": null,
    });
    let tok_path = dir.path().join("tokenizer.json");
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let base = [
        "generate",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokenizer",
        tok_path.to_str().unwrap(),
        "--max-new-tokens",
        "6",
    ];
    let mut args = base.to_vec();
    args.extend(["--prompts", prompts.to_str().unwrap(), "--json"]);
    let doc = last_json(&meshtrain_ok(&args));
    let gens = doc["generations"].as_array().unwrap();
    assert_eq!(gens.len(), 2);
    assert_eq!(gens[0]["prompt"].as_array().unwrap()[0], 2, "<bos> first");
    assert_eq!(gens[1]["prompt"].as_array().unwrap().len(), 6);
    let text = gens[0]["texts"][0].as_str().unwrap();
    assert!(!text.is_empty());

    let mut args = base.to_vec();
    args.extend(["--prompt", "ab"]);
    let out = meshtrain_ok(&args);
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.trim_end(), format!("ab{text}"));
}

#[test]
fn generate_errors_name_the_problem() {
    let g = golden();
    let model = root().join(g["greedy"][0]["model"].as_str().unwrap());
    let out = meshtrain(&[
        "generate",
        "--checkpoint",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--tokenizer"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("t.json");
    std::fs::write(&tokens, r#"{"input_ids": [[5, 999]]}"#).unwrap();
    let out = meshtrain(&[
        "generate",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("prompt 0") && err.contains("999"),
        "{err}"
    );
    let out = meshtrain(&[
        "generate",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--top-p",
        "1.5",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--top-p"), "{err}");
}

#[test]
fn eval_memorization_and_choices_report_json() {
    let g = golden();
    let m = &g["memorization"];
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs.json");
    std::fs::write(
        &docs,
        serde_json::json!({ "input_ids": m["docs"] }).to_string(),
    )
    .unwrap();
    let model = root().join(m["model"].as_str().unwrap());
    let doc = last_json(&meshtrain_ok(&[
        "eval",
        "--task",
        "memorization",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        docs.to_str().unwrap(),
        "--docs",
        "12",
        "--seed",
        "3",
        "--json",
    ]));
    assert_eq!(doc["task"], "memorization");
    assert_eq!(doc["docs"], 12);
    assert_eq!(doc["skipped"], 0);
    // Exactly the sampled trained documents (indices 0..8) are memorized.
    let picked = train::tasks::sample_indices(16, 12, 3);
    let want: Vec<usize> = picked.into_iter().filter(|&i| i < 8).collect();
    assert_eq!(doc["memorized_indices"], serde_json::json!(want));
    assert_eq!(doc["memorized"], want.len());
    // No tokenizer with this model: the memorized text is not scanned.
    assert!(doc["pii"].is_null(), "{doc}");

    let c = &g["choices"];
    let file = dir.path().join("tasks.jsonl");
    let lines: Vec<String> = c["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| {
            serde_json::json!({"context": it["context"], "choices": it["choices"], "answer": it["answer"]})
                .to_string()
        })
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let model = root().join(c["model"].as_str().unwrap());
    let doc = last_json(&meshtrain_ok(&[
        "eval",
        "--task",
        "choices",
        "--checkpoint",
        model.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(doc["task"], "choices");
    assert_eq!(doc["items"], 5);
    let details = doc["details"].as_array().unwrap();
    for (d, it) in details.iter().zip(c["items"].as_array().unwrap()) {
        for (a, b) in d["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .zip(it["logprobs"].as_array().unwrap())
        {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            assert!((a - b).abs() < 2e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
    assert!(doc["accuracy"].as_f64().is_some() && doc["accuracy_norm"].as_f64().is_some());
}
