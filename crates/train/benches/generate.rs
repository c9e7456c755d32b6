//! Decode speed on the DESIGN bench model (vocab 32000, d_model 512, 8
//! layers, 8 heads, 1 kv head, head_dim 64, MLP 2048; random weights, one
//! CPU device): greedy generation of a 16-token prompt per row at batch 1
//! and 8, f32 and bf16, 64 and 512 new tokens. Prints tokens/s of whole
//! `generate` calls (prefill included, compile excluded) and the cost per
//! decode step; runs `scripts/bench_hf_generate.py` (transformers'
//! `generate`, PyTorch, KV cache) with the Python in
//! `MESHTRAIN_BENCH_PYTHON` (default `python3`) for the same cases in the
//! same run, and says so when torch is missing. The `XLA dots` column is
//! meshtrain with its decode kernels off (`MESHTRAIN_DECODE_KERNELS=0`:
//! weight matmuls as XLA dots, bf16 weights stored as f32).
//!
//! `cargo bench -p meshtrain-train --bench generate`
//! `MESHTRAIN_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p meshtrain-train --bench generate`
//! `MESHTRAIN_BENCH_CASES=f32:1:64,bf16:8:64` picks cases, `MESHTRAIN_BENCH_REPEATS=3` timed runs per case,
//! `MESHTRAIN_BENCH_XLA_DOTS=0` leaves the `XLA dots` column out (e.g. to profile the kernels alone).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use gemma::GemmaConfig;
use hlo::DType;
use train::config::{MeshSection, RuntimeConfig};
use train::generate::{Devices, GenerateOptions, Generator};

const PROMPT: usize = 16;

fn model() -> gemma::hf::Checkpoint {
    let config = GemmaConfig {
        vocab_size: 32000,
        d_model: 512,
        layers: 8,
        heads: 8,
        kv_heads: 1,
        head_dim: 64,
        mlp_dim: 2048,
        max_seq_len: 1024,
        ..GemmaConfig::tiny()
    };
    let params = train::init_params(&config, "random", 0).unwrap();
    let specs = gemma::param_specs(&config);
    gemma::hf::Checkpoint {
        params: specs
            .iter()
            .zip(params)
            .map(|(s, data)| gemma::hf::HostTensor {
                shape: s.shape.clone(),
                data,
            })
            .collect(),
        config,
    }
}

struct Ours {
    tokens_per_s: f64,
    step_ms: f64,
    compile_s: f64,
}

fn repeats() -> usize {
    std::env::var("MESHTRAIN_BENCH_REPEATS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn ours(ck: &gemma::hf::Checkpoint, dtype: DType, batch: usize, new: usize, kernels: bool) -> Ours {
    let repeats = repeats();
    let mut dev = Devices::new(
        &ck.config,
        &RuntimeConfig::default(),
        &MeshSection::default(),
        dtype,
    )
    .unwrap();
    if !kernels {
        dev.disable_decode_kernels();
    }
    let mut g = Generator::new(dev, ck, dtype).unwrap();
    let mut s = 1u64;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|_| {
            (0..PROMPT)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    3 + ((s >> 33) % 31997) as u32
                })
                .collect()
        })
        .collect();
    let opts = GenerateOptions {
        max_new_tokens: new,
        stop_ids: vec![],
        max_batch: batch,
        ..GenerateOptions::default()
    };
    // Compile (and warm up) with the same buckets.
    g.generate(&prompts, &opts, &mut |_| {}).unwrap();
    let compile_s = g.stats.compile_seconds;
    let mut times = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..repeats {
        g.stats = Default::default();
        let t0 = Instant::now();
        let out = g.generate(&prompts, &opts, &mut |_| {}).unwrap();
        times.push(t0.elapsed().as_secs_f64());
        assert!(out.iter().all(|o| o.samples[0].len() == new));
        steps.push(g.stats.decode_seconds / g.stats.decode_steps.max(1) as f64);
    }
    times.sort_by(f64::total_cmp);
    steps.sort_by(f64::total_cmp);
    Ours {
        tokens_per_s: (batch * new) as f64 / times[repeats / 2],
        step_ms: 1e3 * steps[repeats / 2],
        compile_s,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let cases: Vec<(String, usize, usize)> = std::env::var("MESHTRAIN_BENCH_CASES")
        .unwrap_or_else(|_| {
            "f32:1:64,f32:8:64,bf16:1:64,bf16:8:64,f32:1:512,f32:8:512,bf16:1:512,bf16:8:512".into()
        })
        .split(',')
        .map(|c| {
            let p: Vec<&str> = c.split(':').collect();
            (
                p[0].to_string(),
                p[1].parse().unwrap(),
                p[2].parse().unwrap(),
            )
        })
        .collect();
    let python = std::env::var("MESHTRAIN_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/bench_hf_generate.py"
    );
    let spec: Vec<String> = cases
        .iter()
        .map(|(d, b, n)| format!("{d}:{b}:{n}"))
        .collect();

    // transformers first, then meshtrain: the same machine, one run.
    let mut hf: BTreeMap<(String, usize, usize), f64> = BTreeMap::new();
    let mut hf_note = String::new();
    match Command::new(&python)
        .args([
            script,
            "--cases",
            &spec.join(","),
            "--repeats",
            &repeats().to_string(),
        ])
        .output()
    {
        Ok(out) => {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                if let Some(e) = v["error"].as_str() {
                    hf_note = format!("transformers rows NOT MEASURED: {e}");
                    continue;
                }
                if hf_note.is_empty() {
                    hf_note = format!(
                        "transformers: torch {} on {} threads",
                        v["torch"].as_str().unwrap_or("?"),
                        v["threads"]
                    );
                }
                hf.insert(
                    (
                        v["dtype"].as_str().unwrap().to_string(),
                        v["batch"].as_u64().unwrap() as usize,
                        v["new_tokens"].as_u64().unwrap() as usize,
                    ),
                    v["tokens_per_s"].as_f64().unwrap(),
                );
            }
            if hf.is_empty() && hf_note.is_empty() {
                hf_note = format!(
                    "transformers rows NOT MEASURED: {script} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
            }
        }
        Err(e) => hf_note = format!("transformers rows NOT MEASURED: cannot run {python}: {e}"),
    }

    let ck = model();
    println!(
        "decode bench: DESIGN model ({} params), prompt {PROMPT} tokens/row, greedy, median of {}",
        ck.config.num_params(),
        repeats()
    );
    println!(
        "| dtype | batch | new tokens | meshtrain tokens/s | ms per decode step | XLA dots tokens/s | XLA dots ms per step | transformers tokens/s | speed-up | compile s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (d, b, n) in &cases {
        let dtype = if d == "bf16" { DType::BF16 } else { DType::F32 };
        let o = ours(&ck, dtype, *b, *n, true);
        let x = match std::env::var("MESHTRAIN_BENCH_XLA_DOTS").as_deref() {
            Ok("0") => None,
            _ => Some(ours(&ck, dtype, *b, *n, false)),
        };
        let theirs = hf.get(&(d.clone(), *b, *n)).copied();
        println!(
            "| {d} | {b} | {n} | {:.1} | {:.2} | {} | {} | {} | {} | {:.1} |",
            o.tokens_per_s,
            o.step_ms,
            x.as_ref()
                .map_or("-".into(), |x| format!("{:.1}", x.tokens_per_s)),
            x.as_ref()
                .map_or("-".into(), |x| format!("{:.2}", x.step_ms)),
            theirs.map_or("-".into(), |t| format!("{t:.1}")),
            theirs.map_or("-".into(), |t| format!("{:.2}x", o.tokens_per_s / t)),
            o.compile_s
        );
    }
    println!("{hf_note}");
}
