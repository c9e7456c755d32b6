//! DPO (`train.objective = "dpo"`) on chat preference pairs: the loss,
//! accuracy and margin of each step equal a host computation from plain
//! forward passes of the policy and of the frozen reference at
//! `model.init` (log-softmax, response-token masks and segments on the
//! host); the same run on 8 CPU devices equals the single-device run.

use std::path::{Path, PathBuf};

use train::TrainConfig;

mod common;

fn tokenizer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/data/shakespeare-bpe8k.json")
}

fn prefs_file(dir: &Path) -> PathBuf {
    let mut text = String::new();
    for i in 0..12 {
        let q = format!("What is {i} plus {}?", i % 5);
        let line = serde_json::json!({
            "prompt": [{"role": "user", "content": q}],
            "chosen": format!("It is {}.", i + i % 5),
            "rejected": format!("Perhaps {} or thereabouts, my lord", i * 3),
        });
        text.push_str(&format!("{line}\n"));
    }
    let path = dir.join("prefs.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn config(dir: &Path, sets: &[&str]) -> TrainConfig {
    let data = prefs_file(dir);
    let vocab = data::Tokenizer::load(tokenizer().to_str().unwrap(), &data::cache_dir())
        .unwrap()
        .vocab_size();
    let text = common::config(dir, &data, 1, "objective = \"dpo\"\n\n[dpo]\nbeta = 0.5");
    let mut all = vec![
        "data.format=\"preferences\"".to_string(),
        format!("data.tokenizer={:?}", tokenizer().display().to_string()),
        format!("model.vocab_size={vocab}"),
        "data.seq_len=80".into(),
        "model.max_seq_len=96".into(),
        "data.batch_size=4".into(),
        "train.steps=2".into(),
        "train.checkpoint_every=1".into(),
        "train.keep_checkpoints=0".into(),
        "train.export_final=true".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    TrainConfig::from_toml(&text, "test", &all).unwrap()
}

/// Per row, the summed log-probabilities of the masked targets of segment
/// 1 (chosen) and segment 2 (rejected), in f64 on the host.
fn pair_log_probs(batch: &data::Batch, logits: &[f32], vocab: usize) -> Vec<[f64; 2]> {
    let t = batch.seq_len;
    (0..batch.batch)
        .map(|r| {
            let mut out = [0f64; 2];
            for i in r * t..(r + 1) * t {
                let seg = batch.segment_ids[i];
                if batch.loss_mask[i] == 0.0 || !(1..=2).contains(&seg) {
                    continue;
                }
                let row = &logits[i * vocab..(i + 1) * vocab];
                out[seg as usize - 1] += common::log_prob(row, batch.targets[i] as usize);
            }
            out
        })
        .collect()
}

#[test]
fn dpo_loss_equals_the_host_computation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &[]);
    train::train(&cfg, false).unwrap();
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(cfg.train.run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let model_cfg = cfg.model.resolve().unwrap();
    let reference = train::init_params(&model_cfg, "random", cfg.model.seed).unwrap();
    let after_one =
        train::checkpoint::Checkpoint::open(&cfg.train.run_dir.join("checkpoints/step_00000001"))
            .unwrap()
            .model()
            .unwrap();
    let policies = [
        reference.clone(),
        after_one.params.into_iter().map(|t| t.data).collect(),
    ];
    let mut loader = data::Loader::new(&cfg.data, 0, 1, None).unwrap();
    let beta = 0.5;
    let v = model_cfg.vocab_size;
    for (step, policy) in policies.iter().enumerate() {
        let batch = loader.next_batch().unwrap();
        // Response tokens only: the mask is a strict subset of the predictions.
        let targets = batch.loss_mask.iter().sum::<f32>() as usize;
        assert!(
            targets > 0 && targets + 10 * batch.batch < batch.real_tokens(),
            "{targets}"
        );
        let pi = pair_log_probs(&batch, &common::logits(&model_cfg, policy, &batch), v);
        let rf = pair_log_probs(&batch, &common::logits(&model_cfg, &reference, &batch), v);
        let z: Vec<f64> = pi
            .iter()
            .zip(&rf)
            .map(|(p, r)| beta * ((p[0] - r[0]) - (p[1] - r[1])))
            .collect();
        let n = z.len() as f64;
        let loss = z.iter().map(|z| (1.0 + (-z).exp()).ln()).sum::<f64>() / n;
        let accuracy = z.iter().filter(|&&z| z > 0.0).count() as f64 / n;
        let margin = z.iter().sum::<f64>() / n;
        let got = |k: &str| lines[step][k].as_f64().unwrap();
        if step == 0 {
            assert!(
                (loss - 2f64.ln()).abs() < 1e-12,
                "the policy starts at the reference"
            );
        } else {
            assert!(
                margin.abs() > 1e-4,
                "step 1 must move the policy (margin {margin})"
            );
        }
        assert!(
            (got("loss") - loss).abs() < 1e-5,
            "step {step}: loss {} vs host {loss}",
            got("loss")
        );
        assert_eq!(got("accuracy"), accuracy, "step {step}");
        assert!(
            (got("margin") - margin).abs() < 1e-5,
            "step {step}: margin {} vs host {margin}",
            got("margin")
        );
    }
}

#[test]
fn dpo_on_8_devices_equals_one_device() {
    let one = tempfile::tempdir().unwrap();
    let eight = tempfile::tempdir().unwrap();
    let a = train::train(&config(one.path(), &[]), false).unwrap();
    let sharded = ["runtime.device_count=8", "mesh.fsdp=4", "mesh.tensor=2"];
    let b = train::train(&config(eight.path(), &sharded), false).unwrap();
    for ((s, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-5, "step {s}: {x} on 1 device, {y} on 8");
    }
    let worst = common::final_params_max_diff(one.path(), eight.path());
    assert!(worst < 1e-5, "largest parameter difference {worst:e}");
}

/// A scanned run stores the policy and its frozen reference stacked over
/// the layers: on 8 devices it trains as the unrolled one-device run does.
#[test]
fn dpo_scanned_over_stacked_state_equals_unrolled() {
    let one = tempfile::tempdir().unwrap();
    let eight = tempfile::tempdir().unwrap();
    let a = train::train(&config(one.path(), &[]), false).unwrap();
    let scanned = [
        "runtime.device_count=8",
        "mesh.fsdp=4",
        "mesh.tensor=2",
        "model.scan_layers=true",
    ];
    let b = train::train(&config(eight.path(), &scanned), false).unwrap();
    for ((s, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-5, "step {s}: {x} unrolled, {y} scanned");
    }
    let worst = common::final_params_max_diff(one.path(), eight.path());
    assert!(worst < 1e-5, "largest parameter difference {worst:e}");
}
