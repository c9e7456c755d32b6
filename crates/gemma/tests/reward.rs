//! The reward model against transformers' `GemmaForSequenceClassification`
//! (`num_labels = 1`, float32) on right-padded rows of different lengths,
//! and its Hugging Face round trip. Golden files come from
//! `scripts/gen_reward_golden.py`.

use std::path::PathBuf;

use gemma::{ComputeOptions, Gemma, Tokens, Unconstrained, param_specs};
use hlo::{Builder, TensorType};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/reward")
}

fn tensor<T: Copy>(st: &safetensors::SafeTensors, name: &str, f: fn([u8; 4]) -> T) -> Vec<T> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f(c.try_into().unwrap()))
        .collect()
}

/// Rewards of `ck` on right-padded `ids [B, T]` with the given row lengths.
fn rewards(ck: &gemma::hf::Checkpoint, ids: &[i32], lengths: &[i32]) -> Vec<f32> {
    let cfg = &ck.config;
    let (bsz, t) = (lengths.len() as i64, (ids.len() / lengths.len()) as i64);
    let mut b = Builder::new("reward");
    let params = gemma::declare_parameters(&mut b, cfg);
    let tokens = Tokens {
        ids: b.parameter("ids", TensorType::i32([bsz, t])),
        positions: b.parameter("positions", TensorType::i32([bsz, t])),
        segment_ids: b.parameter("segment_ids", TensorType::i32([bsz, t])),
    };
    let model = Gemma::new(cfg, &params, ComputeOptions::default()).unwrap();
    let r = model.score(&mut b, &tokens, &Unconstrained).unwrap();
    let program = b.build(&[r]).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, p) in param_specs(cfg).iter().zip(&ck.params) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(&p.data, &dims, 0).unwrap());
    }
    let pos: Vec<i32> = (0..bsz * t).map(|i| (i % t) as i32).collect();
    let seg: Vec<i32> = (0..bsz * t)
        .map(|i| i32::from((i % t) < lengths[(i / t) as usize] as i64))
        .collect();
    for v in [ids, &pos, &seg] {
        bufs.push(client.buffer_from_host(v, &[bsz, t], 0).unwrap());
    }
    let out = exe.execute(&[bufs.iter().collect()]).unwrap();
    out[0][0].to_host::<f32>().unwrap()
}

#[test]
fn rewards_match_transformers_on_rows_of_different_lengths() {
    let dir = golden_dir();
    let ck = gemma::hf::load(&dir.join("model")).unwrap();
    assert!(
        ck.config.score_head,
        "config.json says GemmaForSequenceClassification"
    );
    assert_eq!(param_specs(&ck.config).last().unwrap().name, "score.weight");
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids = tensor(&st, "input_ids", i32::from_le_bytes);
    let lengths = tensor(&st, "lengths", i32::from_le_bytes);
    let want = tensor(&st, "rewards", f32::from_le_bytes);
    let got = rewards(&ck, &ids, &lengths);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() < 1e-5,
            "row {i} (length {}): reward {g} vs transformers {w}",
            lengths[i]
        );
    }
    // Padding after the last real token changes nothing.
    let junk: Vec<i32> = ids.iter().map(|&x| if x == 0 { 7 } else { x }).collect();
    let again = rewards(&ck, &junk, &lengths);
    for (g, a) in got.iter().zip(&again) {
        assert!((g - a).abs() < 1e-6, "{g} vs {a} with other padding ids");
    }
}

#[test]
fn reward_models_export_as_sequence_classifiers_and_load_back() {
    let ck = gemma::hf::load(&golden_dir().join("model")).unwrap();
    let out = tempfile::tempdir().unwrap();
    gemma::hf::save(
        out.path(),
        &ck.config,
        &ck.params,
        gemma::hf::SaveDtype::F32,
    )
    .unwrap();
    let text = std::fs::read_to_string(out.path().join("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["architectures"][0], "GemmaForSequenceClassification");
    assert_eq!(json["id2label"].as_object().unwrap().len(), 1);
    let back = gemma::hf::load(out.path()).unwrap();
    assert_eq!(back.config, ck.config);
    assert_eq!(back.params, ck.params);
}

#[test]
fn a_classifier_with_two_labels_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = golden_dir().join("model/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src).unwrap()).unwrap();
    json["id2label"] = serde_json::json!({"0": "A", "1": "B"});
    let path = dir.path().join("config.json");
    std::fs::write(&path, json.to_string()).unwrap();
    let e = gemma::hf::load_config(dir.path()).unwrap_err().to_string();
    assert!(e.contains("config.json") && e.contains("2 labels"), "{e}");
}

#[test]
fn scoring_with_a_language_model_is_an_error() {
    let cfg = gemma::GemmaConfig::tiny();
    let mut b = Builder::new("no_head");
    let params = gemma::declare_parameters(&mut b, &cfg);
    let tokens = Tokens {
        ids: b.parameter("ids", TensorType::i32([1, 4])),
        positions: b.parameter("positions", TensorType::i32([1, 4])),
        segment_ids: b.parameter("segment_ids", TensorType::i32([1, 4])),
    };
    let model = Gemma::new(&cfg, &params, ComputeOptions::default()).unwrap();
    let e = model.score(&mut b, &tokens, &Unconstrained).unwrap_err();
    assert!(e.to_string().contains("score_head"), "{e}");
}
