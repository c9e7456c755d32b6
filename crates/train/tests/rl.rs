//! REINFORCE with a KL penalty (`train.objective = "rl"`):
//! - on fixed sampled responses, the step program's loss, metrics and
//!   gradient equal a host computation of the formula (rewards from the
//!   reward model's own scoring program, log-probabilities from plain
//!   forward passes, the leave-one-out baseline on the host; the gradient
//!   through finite differences of the host loss);
//! - the smoke configs (a reward model, then RL against it) raise the
//!   reward while the KL stays finite;
//! - a run on 8 CPU devices equals the single-device run;
//! - a bad `[rl]` is an error naming its key.

use std::path::Path;

use gemma::GemmaConfig;
use gemma::hf::{Checkpoint, HostTensor};
use train::TrainConfig;
use train::config::OptimizerConfig;
use train::step::{Loss, Plan, RlLoss, StepShape, build_step_with};

mod common;

fn policy_config() -> GemmaConfig {
    GemmaConfig {
        vocab_size: 64,
        d_model: 32,
        layers: 2,
        heads: 2,
        kv_heads: 1,
        head_dim: 16,
        mlp_dim: 64,
        max_seq_len: 32,
        ..GemmaConfig::tiny()
    }
}

fn reward_config() -> GemmaConfig {
    GemmaConfig {
        d_model: 16,
        heads: 1,
        head_dim: 8,
        mlp_dim: 32,
        score_head: true,
        ..policy_config()
    }
}

fn checkpoint(config: &GemmaConfig, params: &[Vec<f32>]) -> Checkpoint {
    Checkpoint {
        config: config.clone(),
        params: gemma::param_specs(config)
            .iter()
            .zip(params)
            .map(|(s, v)| HostTensor {
                shape: s.shape.clone(),
                data: v.clone(),
            })
            .collect(),
    }
}

/// Per row, Σ of the masked targets' log-probabilities (f64 on the host).
fn response_log_probs(batch: &data::Batch, logits: &[f32], vocab: usize) -> Vec<f64> {
    let t = batch.seq_len;
    (0..batch.batch)
        .map(|r| {
            (r * t..(r + 1) * t)
                .filter(|&i| batch.loss_mask[i] > 0.0)
                .map(|i| {
                    let row = &logits[i * vocab..(i + 1) * vocab];
                    common::log_prob(row, batch.targets[i] as usize)
                })
                .sum()
        })
        .collect()
}

/// The host's advantages `A_i = R_i − b_i`, with R = r − kl_coef · KL and
/// b the mean R of the other samples of the prompt (`k` rows per prompt).
fn advantages(r: &[f64], kl: &[f64], kl_coef: f64, k: usize) -> Vec<f64> {
    let shaped: Vec<f64> = r.iter().zip(kl).map(|(r, kl)| r - kl_coef * kl).collect();
    shaped
        .chunks(k)
        .flat_map(|g| {
            let total: f64 = g.iter().sum();
            g.iter()
                .map(move |x| x - (total - x) / (k as f64 - 1.0))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_rl_loss_and_gradient_equal_a_host_computation() {
    let cfg = policy_config();
    let rcfg = reward_config();
    let (k, kl_coef) = (3, 0.3);
    let policy = train::init_params(&cfg, "random", 1).unwrap();
    let reference = train::init_params(&cfg, "random", 2).unwrap();
    let reward = train::init_params(&rcfg, "random", 3).unwrap();
    // Two prompts, three fixed responses each (one stopped early).
    let prompts: [&[u32]; 2] = [&[2, 10, 11, 12], &[2, 20, 21, 22, 23, 24]];
    let responses: [&[u32]; 6] = [
        &[5, 6, 7, 8],
        &[9, 1],
        &[30, 31, 32, 33, 34, 35],
        &[40, 41, 42],
        &[43, 44, 45, 46, 47],
        &[48, 1],
    ];
    let rows: Vec<(&[u32], &[u32])> = responses
        .iter()
        .enumerate()
        .map(|(i, r)| (prompts[i / k], *r))
        .collect();
    let seq_len = 16;
    let batch = train::rl::layout(&rows, seq_len, 0);

    // The step program: one device, two micro-batches of one prompt each.
    // lr = eps = 1e3 without clipping or decay: the first AdamW step moves
    // each parameter by −lr·g/(|g| + eps), from which g comes back exactly.
    let opt = OptimizerConfig {
        lr: 1e3,
        eps: 1e3,
        weight_decay: 0.0,
        schedule: "constant".into(),
        clip_grad_norm: 0.0,
        accumulation_steps: 2,
        ..OptimizerConfig::default()
    };
    let shape = StepShape {
        accumulation: 2,
        micro_batch: k,
        seq_len,
        total_steps: 1,
    };
    let plan = Plan::new(&cfg, mesh::Mesh::single(), mesh::Rules::default());
    let loss = Loss {
        objective: train::objective::Objective::Rl,
        beta: 0.0,
        rl: Some(RlLoss {
            kl_coef,
            samples: k,
            reward: rcfg.clone(),
        }),
    };
    let step = build_step_with(
        &cfg,
        &opt,
        gemma::ComputeOptions::default(),
        shape,
        &plan,
        loss,
    )
    .unwrap();
    assert_eq!(
        step.scalars,
        [
            "loss",
            "grad_norm",
            "learning_rate",
            "reward_mean",
            "kl",
            "response_len"
        ]
    );
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&step.program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let put = |v: &[f32], shape: &[usize]| {
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        client.buffer_from_host(v, &dims, 0).unwrap()
    };
    let specs = gemma::param_specs(&cfg);
    let mut args = Vec::new();
    for group in [&policy, &vec![], &vec![]] {
        for (i, s) in specs.iter().enumerate() {
            let zeros = vec![0f32; s.shape.iter().product()];
            args.push(put(group.get(i).unwrap_or(&zeros), &s.shape));
        }
    }
    args.push(client.buffer_from_host(&[0i32], &[], 0).unwrap());
    for (s, v) in specs.iter().zip(&reference) {
        args.push(put(v, &s.shape));
    }
    for (s, v) in gemma::param_specs(&rcfg).iter().zip(&reward) {
        args.push(put(v, &s.shape));
    }
    let dims = [2i64, k as i64, seq_len as i64];
    for v in [&batch.tokens, &batch.targets] {
        args.push(client.buffer_from_host(v, &dims, 0).unwrap());
    }
    args.push(client.buffer_from_host(&batch.loss_mask, &dims, 0).unwrap());
    for v in [&batch.segment_ids, &batch.positions] {
        args.push(client.buffer_from_host(v, &dims, 0).unwrap());
    }
    let out = exe.execute(&[args.iter().collect()]).unwrap().remove(0);
    let p = specs.len();
    let scalar = |i: usize| out[i].to_host::<f32>().unwrap()[0] as f64;
    let (got_loss, got_reward, got_kl, got_len) = (
        scalar(3 * p + 1),
        scalar(3 * p + 4),
        scalar(3 * p + 5),
        scalar(3 * p + 6),
    );
    // g = −Δ·eps / (lr − |Δ|), Δ = p' − p.
    let grads: Vec<Vec<f64>> = (0..p)
        .map(|i| {
            let after = out[i].to_host::<f32>().unwrap();
            after
                .iter()
                .zip(&policy[i])
                .map(|(&a, &b)| {
                    let d = a as f64 - b as f64;
                    -d * opt.eps / (opt.lr - d.abs())
                })
                .collect()
        })
        .collect();

    // The host: rewards from the reward model's scoring program, KL and
    // log-probabilities from forward passes, the formula in f64.
    let v = cfg.vocab_size;
    let log_pi =
        |params: &[Vec<f32>]| response_log_probs(&batch, &common::logits(&cfg, params, &batch), v);
    let s_pi = log_pi(&policy);
    let s_ref = log_pi(&reference);
    let full: Vec<Vec<u32>> = rows.iter().map(|(p, r)| [*p, *r].concat()).collect();
    let r: Vec<f64> =
        train::reward::score_rows(&client, &checkpoint(&rcfg, &reward), &full, 6, "t")
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
    let kl: Vec<f64> = s_pi.iter().zip(&s_ref).map(|(a, b)| a - b).collect();
    let a = advantages(&r, &kl, kl_coef, k);
    let n = rows.len() as f64;
    let host_loss = |s: &[f64]| -a.iter().zip(s).map(|(a, s)| a * s).sum::<f64>() / n;
    let want = host_loss(&s_pi);
    let close = |what: &str, got: f64, want: f64| {
        assert!(
            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
            "{what}: program {got}, host {want}"
        );
    };
    close("loss", got_loss, want);
    close("reward_mean", got_reward, r.iter().sum::<f64>() / n);
    close("kl", got_kl, kl.iter().sum::<f64>() / n);
    let len: usize = responses.iter().map(|r| r.len()).sum();
    close("response_len", got_len, len as f64 / n);
    assert!(
        kl.iter().all(|x| x.abs() > 1e-3),
        "the reference differs: {kl:?}"
    );
    assert!(a.iter().all(|x| x.abs() > 1e-4), "{a:?}");

    // The gradient: along itself and along a fixed pseudo-random direction,
    // the directional derivative of the host loss (advantages held
    // constant) by central differences.
    let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
    assert!(norm > 1e-3, "gradient norm {norm}");
    let mut seed = 7u64;
    let random: Vec<Vec<f64>> = grads
        .iter()
        .map(|g| {
            g.iter()
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f64 / (1u64 << 31) as f64) - 0.5
                })
                .collect()
        })
        .collect();
    let along_g: Vec<Vec<f64>> = grads
        .iter()
        .map(|g| g.iter().map(|x| x / norm).collect())
        .collect();
    for (name, dir) in [("the gradient", along_g), ("a random direction", random)] {
        let dnorm = dir.iter().flatten().map(|x| x * x).sum::<f64>().sqrt();
        let eps = 1e-2 / dnorm;
        let moved = |sign: f64| -> Vec<Vec<f32>> {
            policy
                .iter()
                .zip(&dir)
                .map(|(p, d)| {
                    p.iter()
                        .zip(d)
                        .map(|(p, d)| (*p as f64 + sign * eps * d) as f32)
                        .collect()
                })
                .collect()
        };
        let fd = (host_loss(&log_pi(&moved(1.0))) - host_loss(&log_pi(&moved(-1.0)))) / (2.0 * eps);
        let dot: f64 = grads
            .iter()
            .flatten()
            .zip(dir.iter().flatten())
            .map(|(g, d)| g * d)
            .sum();
        assert!(
            (fd - dot).abs() <= 2e-3 * (dot.abs() + 1e-2 * norm * dnorm),
            "along {name}: program gradient {dot}, host finite difference {fd}"
        );
    }
}

/// A random reward model saved as a Hugging Face classifier directory.
fn reward_dir(dir: &Path, vocab: usize) -> std::path::PathBuf {
    let rcfg = GemmaConfig {
        vocab_size: vocab,
        ..reward_config()
    };
    let params = train::init_params(&rcfg, "random", 5).unwrap();
    let out = dir.join(format!("reward-model-{vocab}"));
    let ck = checkpoint(&rcfg, &params);
    gemma::hf::save(&out, &rcfg, &ck.params, gemma::hf::SaveDtype::F32).unwrap();
    out
}

fn rl_config(dir: &Path, sets: &[&str]) -> TrainConfig {
    let data = common::tokens_file(dir, 32, 6, 64);
    let text = common::config(
        dir,
        &data,
        1,
        &format!(
            "objective = \"rl\"\n\n[rl]\nreward_model = {:?}\nsamples_per_prompt = 2\nmax_new_tokens = 5",
            reward_dir(dir, 64).display().to_string()
        ),
    );
    let mut all: Vec<String> = [
        "model.vocab_size=64",
        "data.seq_len=16",
        "model.max_seq_len=32",
        "data.batch_size=4",
        "train.steps=3",
        "train.checkpoint_every=0",
        "train.export_final=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // A key in `sets` replaces the default above.
    let key = |s: &str| s.split('=').next().unwrap_or_default().to_string();
    all.retain(|a| !sets.iter().any(|s| key(s) == key(a)));
    all.extend(sets.iter().map(|s| s.to_string()));
    TrainConfig::from_toml(&text, "test", &all).unwrap()
}

#[test]
fn rl_on_8_devices_equals_one_device() {
    let one = tempfile::tempdir().unwrap();
    let eight = tempfile::tempdir().unwrap();
    let a = train::train(&rl_config(one.path(), &[]), false).unwrap();
    let sharded = ["runtime.device_count=8", "mesh.fsdp=4", "mesh.tensor=2"];
    train::train(&rl_config(eight.path(), &sharded), false).unwrap();
    assert_eq!(a.losses.len(), 3);
    let metrics = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    for (x, y) in metrics(one.path()).iter().zip(metrics(eight.path())) {
        for key in ["loss", "reward_mean", "kl", "response_len"] {
            let (x, y) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((x - y).abs() < 1e-4, "{key}: {x} on 1 device, {y} on 8");
        }
    }
    let worst = common::final_params_max_diff(one.path(), eight.path());
    assert!(worst < 1e-5, "parameters differ by {worst}");
    assert!(one.path().join("run/reward.svg").is_file());
}

#[test]
fn a_bad_rl_section_is_an_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tokens_file(dir.path(), 8, 6, 64);
    let rm = reward_dir(dir.path(), 64).display().to_string();
    let base = |rl: &str| {
        common::config(
            dir.path(),
            &data,
            1,
            &format!("objective = \"rl\"\n\n[rl]\nmax_new_tokens = 4\n{rl}"),
        )
    };
    let cases: [(String, &[&str], &str); 6] = [
        (base(""), &[], "rl.reward_model"),
        (
            base(&format!("reward_model = {rm:?}\nsamples_per_prompt = 1")),
            &[],
            "rl.samples_per_prompt",
        ),
        (
            base(&format!("reward_model = {rm:?}\ntemperature = 0")),
            &[],
            "rl.temperature",
        ),
        (
            base(&format!("reward_model = {rm:?}\nkl_coef = -1")),
            &[],
            "rl.kl_coef",
        ),
        (
            base(&format!("reward_model = {rm:?}")),
            &["data.format=\"text\""],
            "data.format",
        ),
        (
            base(&format!("reward_model = {rm:?}")),
            &["rl.max_new_tokens=99"],
            "rl.max_new_tokens",
        ),
    ];
    for (text, sets, key) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = TrainConfig::from_toml(&text, "test.toml", &sets)
            .err()
            .unwrap_or_else(|| panic!("{key}: accepted"));
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // A causal LM is not a reward model; a missing directory is named.
    let lm = dir.path().join("lm");
    let cfg = policy_config();
    let params = train::init_params(&cfg, "random", 0).unwrap();
    gemma::hf::save(
        &lm,
        &cfg,
        &checkpoint(&cfg, &params).params,
        gemma::hf::SaveDtype::F32,
    )
    .unwrap();
    for (model, says) in [(lm, "is a causal LM"), (dir.path().join("nope"), "neither")] {
        let cfg = rl_config(
            dir.path(),
            &[&format!(
                "rl.reward_model={:?}",
                model.display().to_string()
            )],
        );
        let Err(e) = train::train(&cfg, false) else {
            panic!("{says}: accepted")
        };
        let msg = e.to_string();
        assert!(
            msg.contains("rl.reward_model") && msg.contains(says),
            "{msg}"
        );
    }
}

/// The README's RLHF commands: a reward model on the synthetic preference
/// (responses holding token 42 are better), then REINFORCE against it.
#[test]
fn the_rlhf_smoke_run_raises_the_reward_with_a_finite_kl() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let at = |p: &str| format!("{:?}", root.join(p).display().to_string());
    let rm_run = dir.path().join("reward");
    let rm = TrainConfig::load(
        Some(&root.join("configs/reward-smoke.toml")),
        &[
            format!("train.run_dir={:?}", rm_run.display().to_string()),
            format!("data.path={}", at("configs/data/prefs-smoke.json")),
            "train.steps=60".into(),
        ],
    )
    .unwrap();
    train::train(&rm, false).unwrap();
    let run = dir.path().join("rl");
    let rl = TrainConfig::load(
        Some(&root.join("configs/rlhf-smoke.toml")),
        &[
            format!("train.run_dir={:?}", run.display().to_string()),
            format!("data.path={}", at("configs/data/prompts-smoke.json")),
            format!(
                "rl.reward_model={:?}",
                rm_run.join("final").display().to_string()
            ),
            "train.steps=40".into(),
        ],
    )
    .unwrap();
    train::train(&rl, false).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mean = |key: &str, r: std::ops::Range<usize>| {
        let n = r.len() as f64;
        lines[r]
            .iter()
            .map(|l| l[key].as_f64().unwrap())
            .sum::<f64>()
            / n
    };
    let (first, last) = (mean("reward_mean", 0..5), mean("reward_mean", 35..40));
    assert!(
        last > first + 1.0,
        "the reward did not rise: {first:.3} over the first 5 steps, {last:.3} over the last 5"
    );
    for l in &lines {
        let kl = l["kl"].as_f64().unwrap();
        assert!(
            kl.is_finite() && kl.abs() < 100.0,
            "kl {kl} at {}",
            l["step"]
        );
    }
    assert!(
        mean("kl", 35..40) > 0.01,
        "the policy moved away from the reference"
    );
    assert!(run.join("reward.svg").is_file());
}

/// Chat prompts: conversations ending with a user message, rendered with
/// the generation prompt, sampled and trained on.
#[test]
fn rl_reads_chat_prompts() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/data/shakespeare-bpe8k.json");
    let vocab = data::Tokenizer::load(tokenizer.to_str().unwrap(), &data::cache_dir())
        .unwrap()
        .vocab_size();
    let mut text = String::new();
    for i in 0..8 {
        let line = serde_json::json!({"messages": [
            {"role": "user", "content": format!("Say {i} twice, my lord.")}
        ]});
        text.push_str(&format!("{line}\n"));
    }
    let prompts = dir.path().join("prompts.jsonl");
    std::fs::write(&prompts, text).unwrap();
    let rm = reward_dir(dir.path(), vocab).display().to_string();
    let cfg = rl_config(
        dir.path(),
        &[
            "data.format=\"chat\"",
            "data.packing=false",
            &format!("data.path={:?}", prompts.display().to_string()),
            &format!("data.tokenizer={:?}", tokenizer.display().to_string()),
            &format!("model.vocab_size={vocab}"),
            &format!("rl.reward_model={rm:?}"),
            "data.seq_len=32",
            "train.steps=2",
        ],
    );
    let summary = train::train(&cfg, false).unwrap();
    assert_eq!(summary.losses.len(), 2);
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(dir.path().join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let len = line["response_len"].as_f64().unwrap();
    assert!((1.0..=5.0).contains(&len), "response_len {len}");
}
