//! The compiled step against references: one AdamW step equals a host
//! AdamW (with clipping, schedule and decoupled decay) applied to the
//! gradients of the parity-tested forward; accumulation equals one big
//! batch; training lowers the loss.

use gemma::{ComputeOptions, Gemma, Tokens, Unconstrained, param_specs, token_loss};
use hlo::{Builder, TensorType};
use train::TrainConfig;

mod common;

/// Loss and gradients of batch `index`, from a plain grad program.
fn reference_grads(cfg: &TrainConfig, params: &[Vec<f32>], index: usize) -> (f32, Vec<Vec<f32>>) {
    let model_cfg = cfg.model.resolve().unwrap();
    let mut loader = data::Loader::new(&cfg.data, 0, 1, None).unwrap();
    let mut batch = loader.next_batch().unwrap();
    for _ in 0..index {
        batch = loader.next_batch().unwrap();
    }
    let (bs, t) = (batch.batch as i64, batch.seq_len as i64);
    let specs = param_specs(&model_cfg);
    let mut b = Builder::new("grads");
    let p = gemma::declare_parameters(&mut b, &model_cfg);
    let [ids, targets, segment_ids, positions] =
        ["ids", "targets", "seg", "pos"].map(|n| b.parameter(n, TensorType::i32([bs, t])));
    let mask = b.parameter("mask", TensorType::f32([bs, t]));
    let model = Gemma::new(&model_cfg, &p, ComputeOptions::default()).unwrap();
    let logits = model
        .forward(
            &mut b,
            &Tokens {
                ids,
                positions,
                segment_ids,
            },
            &Unconstrained,
        )
        .unwrap();
    let (sum, count) = token_loss(&mut b, logits, targets, mask).unwrap();
    let loss = b.div(sum, count).unwrap();
    let grads = b.grad(loss, &p).unwrap();
    let mut outs = vec![loss];
    outs.extend(grads);
    let program = b.build(&outs).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, v) in specs.iter().zip(params) {
        bufs.push(
            client
                .buffer_from_host(v, &s.shape.iter().map(|&d| d as i64).collect::<Vec<_>>(), 0)
                .unwrap(),
        );
    }
    for v in [
        &batch.tokens,
        &batch.targets,
        &batch.segment_ids,
        &batch.positions,
    ] {
        bufs.push(client.buffer_from_host(v, &[bs, t], 0).unwrap());
    }
    bufs.push(
        client
            .buffer_from_host(&batch.loss_mask, &[bs, t], 0)
            .unwrap(),
    );
    let out = exe.execute(&[bufs.iter().collect()]).unwrap();
    let loss = out[0][0].to_host::<f32>().unwrap()[0];
    (
        loss,
        out[0][1..]
            .iter()
            .map(|b| b.to_host::<f32>().unwrap())
            .collect(),
    )
}

#[test]
fn two_steps_equal_host_adamw_on_reference_gradients() {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "train.steps=2",
        "optimizer.warmup_steps=1",
        "optimizer.clip_grad_norm=0.05",
        "optimizer.weight_decay=0.5",
    ];
    let (losses, after, cfg) = common::train_exported(dir.path(), 1, &sets);
    let model_cfg = cfg.model.resolve().unwrap();
    let specs = param_specs(&model_cfg);
    let o = cfg.optimizer.clone();
    let mut p: Vec<Vec<f64>> = train::init_params(&model_cfg, "random", cfg.model.seed)
        .unwrap()
        .into_iter()
        .map(|v| v.into_iter().map(f64::from).collect())
        .collect();
    let mut m: Vec<Vec<f64>> = p.iter().map(|v| vec![0.0; v.len()]).collect();
    let mut v = m.clone();
    for (step, &(_, step_loss)) in losses.iter().enumerate() {
        let p32: Vec<Vec<f32>> = p
            .iter()
            .map(|v| v.iter().map(|&x| x as f32).collect())
            .collect();
        let (loss, grads) = reference_grads(&cfg, &p32, step);
        assert!(
            (step_loss - loss).abs() < 1e-5,
            "step {step} loss {step_loss} vs reference {loss}"
        );
        let norm = common::host_adamw_step(
            &o,
            &specs,
            &grads,
            step,
            cfg.train.steps,
            &mut p,
            &mut m,
            &mut v,
        );
        assert!(norm > 0.05, "the test must exercise clipping (norm {norm})");
    }
    let worst = common::max_param_diff(after.iter().flatten(), &p);
    // Each Adam step moves a weight by up to about lr = 1e-2; decay by lr * 0.5 * |p|.
    assert!(worst < 2e-5, "largest parameter difference {worst:e}");
}

#[test]
fn accumulation_equals_one_large_batch() {
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let (l1, p1, _) = common::train_exported(d1.path(), 2, &["train.steps=3"]);
    let (l2, p2, _) = common::train_exported(
        d2.path(),
        2,
        &["train.steps=3", "optimizer.accumulation_steps=4"],
    );
    for (a, b) in l1.iter().zip(&l2) {
        assert!(
            (a.1 - b.1).abs() < 2e-5 * a.1.abs(),
            "step {}: {} vs {}",
            a.0,
            a.1,
            b.1
        );
    }
    let worst = p1
        .iter()
        .flatten()
        .zip(p2.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "parameters differ by {worst}");
}

#[test]
fn training_lowers_the_loss_and_writes_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (losses, _, cfg) =
        common::train_exported(dir.path(), 1, &["train.steps=12", "model.remat=\"full\""]);
    let (first, last) = (losses[0].1, losses.last().unwrap().1);
    assert!(last < first - 0.5, "loss {first} -> {last}");
    let metrics = std::fs::read_to_string(cfg.train.run_dir.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 12);
    for key in [
        "step",
        "loss",
        "learning_rate",
        "grad_norm",
        "tokens_per_second",
        "step_time_s",
        "mfu",
    ] {
        assert!(
            lines[3][key].is_number(),
            "metrics lack {key}: {}",
            lines[3]
        );
    }
    // One source, `data`, whose rows are full: every position is a real token.
    let per_step = (cfg.data.batch_size * cfg.data.seq_len) as u64;
    assert_eq!(
        lines[3]["tokens_by_source"]["data"].as_u64(),
        Some(4 * per_step),
        "{}",
        lines[3]
    );
    assert!(
        (lines[1]["learning_rate"].as_f64().unwrap() - 1e-2).abs() < 1e-7,
        "warmup reaches lr at step 1"
    );
    assert!(cfg.train.run_dir.join("loss.svg").is_file());
    assert!(cfg.train.run_dir.join("config.toml").is_file());
}

/// The asynchronous host (each step launched before the previous one's
/// metrics are read; steps before a checkpoint one at a time) trains
/// exactly what one step at a time trains: losses, metrics lines (with
/// their data counts), checkpoints and the final parameters.
#[test]
fn launching_the_next_step_early_changes_nothing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sets = ["train.steps=7", "train.checkpoint_every=3"];
    let (la, pa, ca) = common::train_exported(a.path(), 1, &sets);
    let (lb, pb, cb) =
        common::train_exported(b.path(), 1, &[sets[0], sets[1], "train.async_steps=false"]);
    assert_eq!(la, lb);
    assert_eq!(pa, pb);
    let lines = |c: &TrainConfig| -> Vec<serde_json::Value> {
        std::fs::read_to_string(c.train.run_dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                for timing in ["tokens_per_second", "step_time_s", "mfu"] {
                    o.remove(timing);
                }
                v
            })
            .collect()
    };
    assert_eq!(lines(&ca).len(), 7);
    assert_eq!(lines(&ca), lines(&cb));
    for step in ["step_00000003", "step_00000006", "step_00000007"] {
        // The data position and the digest of every file of tensors (the
        // configs differ in train.async_steps).
        let saved = |c: &TrainConfig| {
            let path = c
                .train
                .run_dir
                .join("checkpoints")
                .join(step)
                .join("manifest.json");
            let m: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            let shards: Vec<String> = m["files"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["path"].as_str().unwrap().starts_with("shards/"))
                .map(|f| f["sha256"].to_string())
                .collect();
            (m["loader_rows"].to_string(), shards)
        };
        let (a, b) = (saved(&ca), saved(&cb));
        assert!(!a.1.is_empty(), "{step}");
        assert!(a == b, "{step}: {a:?} != {b:?}");
    }
}
