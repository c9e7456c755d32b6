//! RLHF from the command line: `meshtrain reward` on the transformers
//! reward-model golden (rows of different lengths, with padding).

mod common;

use common::{meshtrain, meshtrain_ok};

fn golden() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gemma/tests/golden/reward")
}

#[test]
fn reward_scores_rows_of_any_length_as_transformers_does() {
    let bytes = std::fs::read(golden().join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let i32s = |n: &str| -> Vec<i32> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (ids, lengths) = (i32s("input_ids"), i32s("lengths"));
    let want: Vec<f32> = st
        .tensor("rewards")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let t = ids.len() / lengths.len();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("rows.jsonl");
    let text: String = lengths
        .iter()
        .enumerate()
        .map(|(i, &n)| format!("{}\n", serde_json::json!(&ids[i * t..i * t + n as usize])))
        .collect();
    std::fs::write(&tokens, text).unwrap();
    let model = golden().join("model");
    let out = meshtrain_ok(&[
        "reward",
        "--checkpoint",
        model.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
        "--json",
        "--batch-size",
        "3",
    ]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: Vec<f64> = doc["rewards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert!(
            (g - *w as f64).abs() < 1e-5,
            "{got:?} vs transformers {want:?}"
        );
    }
}

#[test]
fn reward_of_a_causal_lm_is_a_clear_error() {
    let lm = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../gemma/tests/golden/multi_head/model");
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("rows.jsonl");
    std::fs::write(&tokens, "[5, 6, 7]\n").unwrap();
    let out = meshtrain(&[
        "reward",
        "--checkpoint",
        lm.to_str().unwrap(),
        "--tokens",
        tokens.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("causal LM") && err.contains("reward model"),
        "{err}"
    );
}
