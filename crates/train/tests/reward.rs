//! Reward modelling (`train.objective = "reward"`, Bradley-Terry on
//! preference pairs): a 5-step run equals a host AdamW reference whose
//! gradients come from a plain program scoring chosen and rejected rows
//! separately, with the loss, accuracy and margin computed on the host;
//! the same run on 8 CPU devices equals the single-device run.

use std::path::Path;

use gemma::{ComputeOptions, Gemma, GemmaConfig, Tokens, Unconstrained, param_specs};
use hlo::{Builder, TensorType};
use train::TrainConfig;

mod common;

/// `n` pairs of token rows of different lengths (each at most 10 tokens).
pub fn pairs_file(dir: &Path, n: usize, vocab: u32) -> std::path::PathBuf {
    let mut state = 11u64;
    let mut next = |m: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % m
    };
    let mut row = |len: u64| -> Vec<u32> {
        let mut r = vec![2u32];
        r.extend((0..len).map(|_| 3 + next(vocab as u64 - 3) as u32));
        r
    };
    let (mut chosen, mut rejected) = (Vec::new(), Vec::new());
    for i in 0..n {
        chosen.push(row(3 + (i as u64 % 7)));
        rejected.push(row(2 + (i as u64 * 5 % 8)));
    }
    let path = dir.join("pairs.json");
    let doc = serde_json::json!({ "chosen": chosen, "rejected": rejected });
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn config(dir: &Path, sets: &[&str]) -> TrainConfig {
    let data = pairs_file(dir, 24, 64);
    let text = common::config(dir, &data, 1, "objective = \"reward\"");
    let mut all = vec![
        "data.format=\"preferences\"".to_string(),
        "data.seq_len=24".into(),
        "train.export_final=true".into(),
    ];
    all.extend(sets.iter().map(|s| s.to_string()));
    if !sets.iter().any(|s| s.starts_with("data.batch_size=")) {
        all.push("data.batch_size=4".into());
    }
    TrainConfig::from_toml(&text, "test", &all).unwrap()
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Splits each pair row of `batch` into its chosen and rejected rows
/// (right padded to the row length), with their lengths.
fn split_pairs(batch: &data::Batch) -> [(Vec<i32>, Vec<i32>); 2] {
    let t = batch.seq_len;
    let mut out = [
        (vec![0; batch.batch * t], vec![0; batch.batch]),
        (vec![0; batch.batch * t], vec![0; batch.batch]),
    ];
    for r in 0..batch.batch {
        for (k, (ids, lens)) in out.iter_mut().enumerate() {
            let idx: Vec<usize> = (0..t)
                .filter(|&i| batch.segment_ids[r * t + i] == k as i32 + 1)
                .collect();
            for (j, &i) in idx.iter().enumerate() {
                ids[r * t + j] = batch.tokens[r * t + i];
            }
            lens[r] = idx.len() as i32;
        }
    }
    out
}

/// Rewards of chosen and rejected rows and the gradients of the mean
/// Bradley-Terry loss, from a program that scores the two sets of rows
/// separately with [`Gemma::score`].
fn reference(
    cfg: &GemmaConfig,
    params: &[Vec<f32>],
    batch: &data::Batch,
) -> (Vec<f32>, Vec<f32>, Vec<Vec<f32>>) {
    let (bs, t) = (batch.batch as i64, batch.seq_len as i64);
    let mut b = Builder::new("bt_reference");
    let p = gemma::declare_parameters(&mut b, cfg);
    let model = Gemma::new(cfg, &p, ComputeOptions::default()).unwrap();
    let mut rewards = Vec::new();
    for side in ["chosen", "rejected"] {
        let tokens = Tokens {
            ids: b.parameter(&format!("{side}.ids"), TensorType::i32([bs, t])),
            positions: b.parameter(&format!("{side}.pos"), TensorType::i32([bs, t])),
            segment_ids: b.parameter(&format!("{side}.seg"), TensorType::i32([bs, t])),
        };
        rewards.push(model.score(&mut b, &tokens, &Unconstrained).unwrap());
    }
    // mean softplus(-(c - r))
    let d = b.sub(rewards[0], rewards[1]).unwrap();
    let nd = b.neg(d).unwrap();
    let e = b.exp(nd).unwrap();
    let l = b.log1p(e).unwrap();
    let s = b.sum(l, &[0]).unwrap();
    let loss = b.mul_scalar(s, 1.0 / bs as f64).unwrap();
    let grads = b.grad(loss, &p).unwrap();
    let mut outs = vec![rewards[0], rewards[1]];
    outs.extend(grads);
    let program = b.build(&outs).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, v) in param_specs(cfg).iter().zip(params) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(v, &dims, 0).unwrap());
    }
    for (ids, lens) in split_pairs(batch) {
        let pos: Vec<i32> = (0..bs * t).map(|i| (i % t) as i32).collect();
        let seg: Vec<i32> = (0..bs * t)
            .map(|i| i32::from((i % t) < lens[(i / t) as usize] as i64))
            .collect();
        for v in [&ids, &pos, &seg] {
            bufs.push(client.buffer_from_host(v, &[bs, t], 0).unwrap());
        }
    }
    let out = exe.execute(&[bufs.iter().collect()]).unwrap();
    let host = |i: usize| out[0][i].to_host::<f32>().unwrap();
    (host(0), host(1), (2..out[0].len()).map(host).collect())
}

#[test]
fn five_bradley_terry_steps_equal_the_host_adamw_reference() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["optimizer.clip_grad_norm=0.5"]);
    let summary = train::train(&cfg, false).unwrap();
    assert_eq!(summary.losses.len(), 5);
    let lines = metrics(&cfg.train.run_dir);
    assert_eq!(lines.len(), 5, "train.log_every = 1");
    let model_cfg = cfg.model.resolve().unwrap();
    assert!(
        model_cfg.score_head,
        "objective = reward sets model.score_head"
    );
    let specs = param_specs(&model_cfg);
    let mut p: Vec<Vec<f64>> = train::init_params(&model_cfg, "random", cfg.model.seed)
        .unwrap()
        .into_iter()
        .map(|v| v.into_iter().map(f64::from).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut v = m.clone();
    let mut loader = data::Loader::new(&cfg.data, 0, 1, None).unwrap();
    for (step, line) in lines.iter().enumerate() {
        let batch = loader.next_batch().unwrap();
        let p32: Vec<Vec<f32>> = p
            .iter()
            .map(|v| v.iter().map(|&x| x as f32).collect())
            .collect();
        let (rc, rr, grads) = reference(&model_cfg, &p32, &batch);
        let n = rc.len() as f64;
        let margins: Vec<f64> = rc.iter().zip(&rr).map(|(c, r)| (c - r) as f64).collect();
        let loss = margins.iter().map(|d| (1.0 + (-d).exp()).ln()).sum::<f64>() / n;
        let accuracy = margins.iter().filter(|&&d| d > 0.0).count() as f64 / n;
        let margin = margins.iter().sum::<f64>() / n;
        let got = |k: &str| line[k].as_f64().unwrap();
        assert!(
            (got("loss") - loss).abs() < 2e-5,
            "step {step}: loss {} vs host {loss}",
            got("loss")
        );
        assert_eq!(got("accuracy"), accuracy, "step {step}");
        assert!((got("margin") - margin).abs() < 2e-5, "step {step}: margin");
        let norm = common::host_adamw_step(
            &cfg.optimizer,
            &specs,
            &grads,
            step,
            cfg.train.steps,
            &mut p,
            &mut m,
            &mut v,
        );
        assert!(
            (got("grad_norm") - norm).abs() < 1e-4 * norm,
            "step {step}: grad norm {} vs {norm}",
            got("grad_norm")
        );
    }
    let after = gemma::hf::load(&cfg.train.run_dir.join("final")).unwrap();
    assert!(after.config.score_head, "final/ is a reward model");
    let worst = common::max_param_diff(after.params.iter().flat_map(|t| &t.data), &p);
    assert!(worst < 5e-5, "largest parameter difference {worst:e}");
}

#[test]
fn reward_training_on_8_devices_equals_one_device() {
    let one = tempfile::tempdir().unwrap();
    let eight = tempfile::tempdir().unwrap();
    let steps = [
        "train.steps=3",
        "optimizer.accumulation_steps=2",
        "data.batch_size=8",
    ];
    let a = train::train(&config(one.path(), &steps), false).unwrap();
    let mut sharded = steps.to_vec();
    sharded.extend([
        "runtime.device_count=8",
        "mesh.data=2",
        "mesh.fsdp=2",
        "mesh.tensor=2",
    ]);
    let b = train::train(&config(eight.path(), &sharded), false).unwrap();
    for ((s, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-5, "step {s}: {x} on 1 device, {y} on 8");
    }
    let load = |d: &Path| gemma::hf::load(&d.join("run/final")).unwrap().params;
    let worst = load(one.path())
        .iter()
        .zip(load(eight.path()))
        .flat_map(|(x, y)| {
            x.data
                .iter()
                .zip(y.data.clone())
                .map(|(a, b)| (a - b).abs())
                .collect::<Vec<_>>()
        })
        .fold(0f32, f32::max);
    assert!(worst < 1e-5, "largest parameter difference {worst:e}");
}

#[test]
fn objective_mismatches_are_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = pairs_file(dir.path(), 4, 64);
    let text = common::config(dir.path(), &data, 1, "");
    let cases: [(&[&str], &str); 4] = [
        (&["train.objective=\"rm\""], "train.objective"),
        (&["train.objective=\"reward\""], "data.format"),
        (&["data.format=\"preferences\""], "data.format"),
        (
            &[
                "train.objective=\"reward\"",
                "data.format=\"preferences\"",
                "dpo.beta=0.1",
            ],
            "dpo",
        ),
    ];
    for (sets, key) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = TrainConfig::from_toml(&text, "test", &sets)
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{sets:?}: {e}");
    }
}

#[test]
fn a_reward_model_at_model_init_needs_the_reward_objective() {
    let dir = tempfile::tempdir().unwrap();
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gemma/tests/golden/reward/model");
    let data = common::tokens_file(dir.path(), 8, 16, 64);
    let text = format!(
        "[model]\ninit = {:?}\n\n[data]\nformat = \"tokens\"\npath = {:?}\nseq_len = 8\nbatch_size = 2\n\n\
         [train]\nsteps = 1\nrun_dir = {:?}\n",
        format!("hf:{}", golden.display()),
        data.display().to_string(),
        dir.path().join("run").display().to_string(),
    );
    let e = TrainConfig::from_toml(&text, "test", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("model.score_head") && e.contains("model.init"),
        "{e}"
    );
    let pairs = pairs_file(dir.path(), 4, 64);
    let sets = [
        "train.objective=\"reward\"".to_string(),
        "data.format=\"preferences\"".into(),
        format!("data.path={:?}", pairs.display().to_string()),
    ];
    let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
    assert!(cfg.model.resolve().unwrap().score_head);
}

/// A scanned reward model stores its layers stacked (the score head and
/// the final norm after them): it trains as the unrolled one does.
#[test]
fn reward_training_scanned_over_stacked_state_equals_unrolled() {
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let steps = ["train.steps=3", "data.batch_size=8"];
    let a = train::train(&config(one.path(), &steps), false).unwrap();
    let mut scanned = steps.to_vec();
    scanned.push("model.scan_layers=true");
    let b = train::train(&config(two.path(), &scanned), false).unwrap();
    for ((s, x), (_, y)) in a.losses.iter().zip(&b.losses) {
        assert!((x - y).abs() < 1e-5, "step {s}: {x} unrolled, {y} scanned");
    }
    let worst = common::final_params_max_diff(one.path(), two.path());
    assert!(worst < 1e-5, "largest parameter difference {worst:e}");
}
