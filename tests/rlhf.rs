//! RLHF from the command line: `meshtrain reward` on the transformers
//! reward-model golden (rows of different lengths, with padding), and the
//! reward-model smoke config learning its synthetic preference.

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

/// Held-out pairs of the smoke preference (scripts/gen_pref_smoke.py's rule,
/// another generator): chosen rows contain 42, rejected rows do not.
fn held_out_pairs(n: usize) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let mut state = 99u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let id = |next: &mut dyn FnMut(u64) -> u64| loop {
        let x = 3 + next(253) as u32;
        if x != 42 {
            return x;
        }
    };
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let mut prompt = vec![2u32];
        let len = 3 + next(6);
        prompt.extend((0..len).map(|_| id(&mut next)));
        let mut good: Vec<u32> = (0..4 + next(9)).map(|_| id(&mut next)).collect();
        let at = next(good.len() as u64) as usize;
        good[at] = 42;
        let bad: Vec<u32> = (0..4 + next(9)).map(|_| id(&mut next)).collect();
        chosen.push([prompt.clone(), good].concat());
        rejected.push([prompt, bad].concat());
    }
    (chosen, rejected)
}

#[test]
fn the_reward_smoke_config_learns_its_preference_on_held_out_pairs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    meshtrain_ok(&[
        "train",
        "--config",
        root.join("configs/reward-smoke.toml").to_str().unwrap(),
        "--set",
        &format!(
            "data.path={:?}",
            root.join("configs/data/prefs-smoke.json")
                .display()
                .to_string()
        ),
        "--set",
        &format!("train.run_dir={:?}", run.display().to_string()),
        "--set",
        "train.steps=60",
    ]);
    assert!(run.join("reward.svg").is_file());
    let (chosen, rejected) = held_out_pairs(128);
    let mut rewards = Vec::new();
    for (name, rows) in [("chosen", &chosen), ("rejected", &rejected)] {
        let file = dir.path().join(format!("{name}.jsonl"));
        let text: String = rows
            .iter()
            .map(|r| format!("{}\n", serde_json::json!(r)))
            .collect();
        std::fs::write(&file, text).unwrap();
        let out = meshtrain_ok(&[
            "reward",
            "--checkpoint",
            run.join("final").to_str().unwrap(),
            "--tokens",
            file.to_str().unwrap(),
            "--json",
            "--batch-size",
            "64",
        ]);
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let r: Vec<f64> = doc["rewards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        rewards.push(r);
    }
    let right = rewards[0]
        .iter()
        .zip(&rewards[1])
        .filter(|(c, r)| c > r)
        .count();
    assert!(right >= 115, "{right} of 128 held-out pairs ranked right");
}
