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
