//! Helpers shared by the binary's end-to-end tests.
#![allow(dead_code)] // each test binary uses a subset

use std::process::Command;

/// Runs meshtrain; the test fails with its stderr unless it succeeded.
pub fn meshtrain_ok(args: &[&str]) -> std::process::Output {
    let out = meshtrain(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "meshtrain {args:?} failed: {err}");
    out
}

pub fn meshtrain(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshtrain"))
        .args(args)
        .output()
        .expect("run meshtrain")
}

/// A tiny model on 32 generated rows of 16 tokens, 6 steps, run dir `dir/run`.
pub fn tiny_config(dir: &std::path::Path) -> std::path::PathBuf {
    let rows: Vec<Vec<u32>> = (0..32)
        .map(|r| (0..16).map(|i| ((r * 7 + i * 3) % 60) as u32 + 1).collect())
        .collect();
    let tokens = dir.join("tokens.json");
    std::fs::write(
        &tokens,
        serde_json::json!({ "input_ids": rows }).to_string(),
    )
    .unwrap();
    let cfg = dir.join("tiny.toml");
    let text = format!(
        r#"[model]
preset = "tiny"
vocab_size = 64
d_model = 32
layers = 2
heads = 4
kv_heads = 2
head_dim = 8
mlp_dim = 64
max_seq_len = 32
[data]
format = "tokens"
path = {tokens:?}
seq_len = 16
batch_size = 4
[optimizer]
lr = 1e-2
[train]
steps = 6
log_every = 2
run_dir = {run:?}
peak_flops_per_device = 1e11
"#,
        tokens = tokens.display().to_string(),
        run = dir.join("run").display().to_string()
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}
