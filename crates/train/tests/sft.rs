//! Supervised fine-tuning numerics: the loss is the mean over the step's target tokens,
//! counted globally. A masked 5-step AdamW run equals a host AdamW on reference gradients
//! and a host-computed masked mean loss; the masked loss with accumulation and on 8 devices
//! equals the single-batch loss; two conversations packed into one row give the loss and
//! gradients of the two run as separate rows.

use std::path::Path;

use data::Batch;
use gemma::{ComputeOptions, Gemma, GemmaConfig, Tokens, Unconstrained, param_specs, token_loss};
use hlo::{Builder, TensorType};
use train::TrainConfig;

mod common;

/// `rows` rows of `len` ids with a `loss_mask` whose target counts differ from row to row;
/// row 5 has no target at all.
fn masked_tokens_file(dir: &Path, rows: usize, len: usize, vocab: u32) -> std::path::PathBuf {
    let plain = common::tokens_file(dir, rows, len, vocab);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plain).unwrap()).unwrap();
    let masks: Vec<Vec<u8>> = (0..rows)
        .map(|r| {
            (0..len)
                .map(|t| (r % 8 != 5 && t >= r % 5 && (t + r) % 3 != 0) as u8)
                .collect()
        })
        .collect();
    let path = dir.join("masked.json");
    std::fs::write(
        &path,
        serde_json::json!({ "input_ids": v["input_ids"], "loss_mask": masks }).to_string(),
    )
    .unwrap();
    path
}

fn run(dir: &Path, sets: &[&str]) -> (Vec<(u64, f32)>, Vec<Vec<f32>>, TrainConfig) {
    let data = masked_tokens_file(dir, 64, 16, 64);
    let text = common::config(dir, &data, 1, "");
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push("train.export_final=true".into());
    let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
    let summary = train::train(&cfg, false).unwrap();
    let ck = gemma::hf::load(&cfg.train.run_dir.join("final")).unwrap();
    (
        summary.losses,
        ck.params.into_iter().map(|t| t.data).collect(),
        cfg,
    )
}

/// The masked mean loss of `batch`, its gradients and the logits, from a plain program
/// over the whole batch at once.
fn reference(
    model_cfg: &GemmaConfig,
    params: &[Vec<f32>],
    batch: &Batch,
) -> (f32, Vec<Vec<f32>>, Vec<f32>) {
    let (bs, t) = (batch.batch as i64, batch.seq_len as i64);
    let specs = param_specs(model_cfg);
    let mut b = Builder::new("grads");
    let p = gemma::declare_parameters(&mut b, model_cfg);
    let [ids, targets, segment_ids, positions] =
        ["ids", "targets", "seg", "pos"].map(|n| b.parameter(n, TensorType::i32([bs, t])));
    let mask = b.parameter("mask", TensorType::f32([bs, t]));
    let model = Gemma::new(model_cfg, &p, ComputeOptions::default()).unwrap();
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
    let one = b.scalar(1.0, hlo::DType::F32);
    let count = b.max(count, one).unwrap();
    let loss = b.div(sum, count).unwrap();
    let grads = b.grad(loss, &p).unwrap();
    let mut outs = vec![loss, logits];
    outs.extend(grads);
    let program = b.build(&outs).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, v) in specs.iter().zip(params) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(v, &dims, 0).unwrap());
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
    let logits = out[0][1].to_host::<f32>().unwrap();
    let grads = out[0][2..]
        .iter()
        .map(|b| b.to_host::<f32>().unwrap())
        .collect();
    (loss, grads, logits)
}

/// The masked mean next-token loss computed on the host (f64) from logits.
fn host_masked_mean(batch: &Batch, logits: &[f32], vocab: usize) -> f64 {
    let (mut sum, mut count) = (0f64, 0f64);
    for (i, &m) in batch.loss_mask.iter().enumerate() {
        if m == 0.0 {
            continue;
        }
        let row = &logits[i * vocab..(i + 1) * vocab];
        sum -= common::log_prob(row, batch.targets[i] as usize);
        count += 1.0;
    }
    sum / count.max(1.0)
}

#[test]
fn five_masked_adamw_steps_equal_the_host_reference() {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "train.steps=5",
        "optimizer.warmup_steps=1",
        "optimizer.clip_grad_norm=0.05",
        "optimizer.weight_decay=0.5",
        // Micro-batches with different target counts: each must be divided by the step's.
        "optimizer.accumulation_steps=2",
    ];
    let (losses, after, cfg) = run(dir.path(), &sets);
    assert_eq!(losses.len(), 5);
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
    let mut loader = data::Loader::new(&cfg.data, 0, 1, None).unwrap();
    for (step, &(_, step_loss)) in losses.iter().enumerate() {
        let batch = loader.next_batch().unwrap();
        // The mask of the file: fewer targets than real predictions.
        let plain = (0..batch.batch * batch.seq_len)
            .filter(|i| (i + 1) % batch.seq_len != 0)
            .count();
        assert!(
            batch.predictions() < plain * 3 / 4,
            "{}",
            batch.predictions()
        );
        let p32: Vec<Vec<f32>> = p
            .iter()
            .map(|v| v.iter().map(|&x| x as f32).collect())
            .collect();
        let (loss, grads, logits) = reference(&model_cfg, &p32, &batch);
        let host = host_masked_mean(&batch, &logits, model_cfg.vocab_size);
        assert!(
            (loss as f64 - host).abs() < 1e-5 * host,
            "step {step}: reference program {loss} vs host masked mean {host}"
        );
        assert!(
            (step_loss as f64 - host).abs() < 2e-5 * host,
            "step {step}: training loss {step_loss} vs host masked mean {host}"
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
    assert!(worst < 5e-5, "largest parameter difference {worst:e}");
}

#[test]
fn masked_loss_is_the_same_with_accumulation_and_on_8_devices() {
    let base_dir = tempfile::tempdir().unwrap();
    let b16 = "data.batch_size=16";
    let (base, p_base, _) = run(base_dir.path(), &["train.steps=3", b16]);
    for sets in [
        &["train.steps=3", b16, "optimizer.accumulation_steps=4"][..],
        &[
            "train.steps=3",
            b16,
            "runtime.device_count=8",
            "mesh.fsdp=8",
        ][..],
        &[
            "train.steps=3",
            b16,
            "runtime.device_count=8",
            "mesh.data=2",
            "mesh.fsdp=4",
            "optimizer.accumulation_steps=2",
        ][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (losses, params, _) = run(dir.path(), sets);
        for (a, b) in base.iter().zip(&losses) {
            assert!(
                (a.1 - b.1).abs() < 2e-5 * a.1.abs(),
                "{sets:?} step {}: {} vs single batch {}",
                a.0,
                b.1,
                a.1
            );
        }
        let worst = p_base
            .iter()
            .flatten()
            .zip(params.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-4, "{sets:?}: parameters differ by {worst}");
    }
}

#[test]
fn packing_two_conversations_equals_running_them_separately() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("two.jsonl");
    std::fs::write(
        &f,
        concat!(
            r#"{"messages": [{"role": "user", "content": "What is 12 plus 7?"}, {"role": "model", "content": "19"}]}"#,
            "\n",
            r#"{"messages": [{"role": "user", "content": "Name a colour."}, {"role": "model", "content": "Blue, like the sea."}, {"role": "user", "content": "Another?"}, {"role": "model", "content": "Red."}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let tokenizer = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../configs/data/shakespeare-bpe8k.json"
    );
    // A row that holds exactly the two conversations.
    let tok = data::Tokenizer::from_file(Path::new(tokenizer)).unwrap();
    let seq_len: usize = std::fs::read_to_string(&f)
        .unwrap()
        .lines()
        .map(|l| {
            let msgs = data::chat::parse_line(l).unwrap();
            data::chat::encode_chat(&tok, &msgs)
                .unwrap()
                .input_ids
                .len()
        })
        .sum();
    assert!(seq_len <= 128, "{seq_len}");
    let load = |packing: bool, batch: usize| {
        let mut cfg =
            data::DataConfig::new(data::DataFormat::Chat, f.to_str().unwrap(), seq_len, batch);
        cfg.tokenizer = Some(tokenizer.into());
        cfg.shuffle = false;
        cfg.packing = packing;
        data::RowLoader::new(&cfg, &(0..batch).collect::<Vec<_>>(), |_| None)
            .unwrap()
            .next_batch()
            .unwrap()
    };
    let packed = load(true, 1);
    let separate = load(false, 2);
    assert!(
        packed.segment_ids.contains(&2) && !packed.segment_ids.contains(&0),
        "both conversations fill the row: {:?}",
        packed.segment_ids
    );
    assert_eq!(packed.predictions(), separate.predictions());
    assert!(packed.predictions() > 4);

    let text = common::config(dir.path(), &f, 1, "");
    let sets = [
        "model.vocab_size=8192".into(),
        "model.max_seq_len=128".into(),
    ];
    let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
    let model_cfg = cfg.model.resolve().unwrap();
    let params = train::init_params(&model_cfg, "random", 3).unwrap();
    let (l1, g1, _) = reference(&model_cfg, &params, &packed);
    let (l2, g2, _) = reference(&model_cfg, &params, &separate);
    assert!(
        (l1 - l2).abs() < 1e-6 * l1.abs(),
        "loss {l1} packed vs {l2} separate"
    );
    let scale = g2.iter().flatten().fold(0f32, |a, &b| a.max(b.abs()));
    let worst = g1
        .iter()
        .flatten()
        .zip(g2.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        worst < 1e-5 * scale,
        "gradients differ by {worst} (largest {scale})"
    );
}
