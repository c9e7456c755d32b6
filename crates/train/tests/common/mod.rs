//! Shared helpers: a tiny model config over a generated tokens file.
#![allow(dead_code)] // each test binary uses a subset

use std::path::Path;

/// Writes `rows` rows of `len` token ids (a simple repeating pattern with
/// noise, so there is something to learn) as a `tokens` JSON file.
pub fn tokens_file(dir: &Path, rows: usize, len: usize, vocab: u32) -> std::path::PathBuf {
    let mut state = 7u64;
    let data: Vec<Vec<u32>> = (0..rows)
        .map(|r| {
            (0..len)
                .map(|i| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if (state >> 60) == 0 {
                        ((state >> 33) % vocab as u64) as u32
                    } else {
                        ((r + i * 3) % vocab as usize) as u32
                    }
                })
                .collect()
        })
        .collect();
    let path = dir.join("tokens.json");
    std::fs::write(&path, serde_json::json!({ "input_ids": data }).to_string()).unwrap();
    path
}

/// A tiny training config (multi-query unless `kv_heads` says otherwise).
pub fn config(dir: &Path, data: &Path, kv_heads: usize, extra: &str) -> String {
    format!(
        r#"
[model]
preset = "tiny"
vocab_size = 64
d_model = 32
layers = 2
heads = 4
kv_heads = {kv_heads}
head_dim = 8
mlp_dim = 64
max_seq_len = 64
seed = 3

[data]
format = "tokens"
path = {data:?}
seq_len = 16
batch_size = 8
shuffle = false

[optimizer]
lr = 1e-2
warmup_steps = 2
schedule = "cosine"
weight_decay = 0.1
clip_grad_norm = 1.0

[train]
steps = 5
run_dir = {run:?}
log_every = 1
peak_flops_per_device = 1e11
export_final = false
{extra}
"#,
        data = data.display().to_string(),
        run = dir.join("run").display().to_string(),
    )
}

/// One step of the host reference AdamW (torch.optim.AdamW with global norm
/// clipping and meshtrain's decay rules) in f64 on `p`, `m`, `v` from
/// `grads`, at 0-based `step` of `total_steps`; returns the gradient norm
/// before clipping.
#[allow(clippy::too_many_arguments)] // the optimizer's whole state, spelled out
pub fn host_adamw_step(
    o: &train::config::OptimizerConfig,
    specs: &[gemma::ParamSpec],
    grads: &[Vec<f32>],
    step: usize,
    total_steps: u64,
    p: &mut [Vec<f64>],
    m: &mut [Vec<f64>],
    v: &mut [Vec<f64>],
) -> f64 {
    let norm = grads
        .iter()
        .flatten()
        .map(|&g| (g as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    let scale = (o.clip_grad_norm / (norm + 1e-6)).min(1.0);
    let lr = train::schedule::learning_rate(o, step as u64, total_steps);
    let t = (step + 1) as i32;
    for (k, spec) in specs.iter().enumerate() {
        let decay = if spec.is_norm() && !o.decay_norms || spec.is_embedding() && !o.decay_embedding
        {
            0.0
        } else {
            o.weight_decay
        };
        for i in 0..p[k].len() {
            let g = grads[k][i] as f64 * scale;
            m[k][i] = o.beta1 * m[k][i] + (1.0 - o.beta1) * g;
            v[k][i] = o.beta2 * v[k][i] + (1.0 - o.beta2) * g * g;
            let (mhat, vhat) = (
                m[k][i] / (1.0 - o.beta1.powi(t)),
                v[k][i] / (1.0 - o.beta2.powi(t)),
            );
            p[k][i] = p[k][i] * (1.0 - lr * decay) - lr * mhat / (vhat.sqrt() + o.eps);
        }
    }
    norm
}

/// The largest absolute difference between trained parameters (f32, in
/// order) and the host reference's (f64).
pub fn max_param_diff<'a>(trained: impl IntoIterator<Item = &'a f32>, host: &[Vec<f64>]) -> f64 {
    trained
        .into_iter()
        .zip(host.iter().flatten())
        .map(|(a, b)| (*a as f64 - b).abs())
        .fold(0f64, f64::max)
}

/// Logits `[B, T, V]` of `params` on `batch`, from a plain forward program.
pub fn logits(cfg: &gemma::GemmaConfig, params: &[Vec<f32>], batch: &data::Batch) -> Vec<f32> {
    let (bs, t) = (batch.batch as i64, batch.seq_len as i64);
    let mut b = hlo::Builder::new("forward");
    let p = gemma::declare_parameters(&mut b, cfg);
    let [ids, positions, segment_ids] =
        ["ids", "pos", "seg"].map(|n| b.parameter(n, hlo::TensorType::i32([bs, t])));
    let model = gemma::Gemma::new(cfg, &p, gemma::ComputeOptions::default()).unwrap();
    let tokens = gemma::Tokens {
        ids,
        positions,
        segment_ids,
    };
    let out = model
        .forward(&mut b, &tokens, &gemma::Unconstrained)
        .unwrap();
    let program = b.build(&[out]).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, v) in gemma::param_specs(cfg).iter().zip(params) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(v, &dims, 0).unwrap());
    }
    for v in [&batch.tokens, &batch.positions, &batch.segment_ids] {
        bufs.push(client.buffer_from_host(v, &[bs, t], 0).unwrap());
    }
    let out = exe.execute(&[bufs.iter().collect()]).unwrap();
    out[0][0].to_host::<f32>().unwrap()
}

/// `log softmax(row)[target]` in f64.
pub fn log_prob(row: &[f32], target: usize) -> f64 {
    let max = row.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
    let lse = max
        + row
            .iter()
            .map(|&x| (x as f64 - max).exp())
            .sum::<f64>()
            .ln();
    row[target] as f64 - lse
}

/// The largest difference between the final parameters of two runs
/// (`<dir>/run/final`).
pub fn final_params_max_diff(a: &Path, b: &Path) -> f32 {
    let load = |d: &Path| gemma::hf::load(&d.join("run/final")).unwrap().params;
    let (pa, pb) = (load(a), load(b));
    pa.iter()
        .zip(&pb)
        .flat_map(|(x, y)| x.data.iter().zip(&y.data).map(|(a, b)| (a - b).abs()))
        .fold(0f32, f32::max)
}

/// Trains the tiny model (`kv_heads`, [`config`]) in `dir/run` with extra
/// `--set`s and the final export on; returns the losses, the exported
/// parameters and the config.
pub fn train_exported(
    dir: &Path,
    kv_heads: usize,
    sets: &[&str],
) -> (Vec<(u64, f32)>, Vec<Vec<f32>>, train::TrainConfig) {
    let data = tokens_file(dir, 64, 16, 64);
    let text = config(dir, &data, kv_heads, "");
    let mut sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    sets.push("train.export_final=true".into());
    let cfg = train::TrainConfig::from_toml(&text, "test", &sets).unwrap();
    let summary = train::train(&cfg, false).unwrap();
    let ck = gemma::hf::load(&cfg.train.run_dir.join("final")).unwrap();
    (
        summary.losses,
        ck.params.into_iter().map(|t| t.data).collect(),
        cfg,
    )
}

/// Asserts two loss curves have the same steps, and losses within `tol`
/// relative to `a`'s.
pub fn assert_losses_close(what: &str, a: &[(u64, f32)], b: &[(u64, f32)], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: {a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.0, y.0, "{what}");
        let rel = ((x.1 - y.1) / x.1).abs();
        assert!(
            rel < tol,
            "{what} step {}: {} vs {} (rel {rel:e})",
            x.0,
            x.1,
            y.1
        );
    }
}
