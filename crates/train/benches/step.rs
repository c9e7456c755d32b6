//! The training-step bench of the project's DESIGN: vocab 32000, d_model 512,
//! 8 layers, 8 heads, 1 kv head, head_dim 64, MLP 2048, batch 4 x 256, one
//! CPU device; f32 and bf16 compute, the layers scanned (the default) and
//! unrolled (`model.scan_layers = false`). Prints compile time, median step time
//! and tokens/s, and, when a Python with JAX is given in
//! `MESHTRAIN_BENCH_PYTHON`, runs `scripts/bench_jax_step.py` (JAX's jit,
//! and JAX's exported program through meshtrain's plugin) and, with torch,
//! `scripts/bench_torch_step.py` (PyTorch eager f32 and bf16 autocast) on
//! the same machine for a side-by-side table.
//!
//! `cargo bench -p meshtrain-train --bench step`
//! `MESHTRAIN_BENCH_PYTHON=/path/to/venv/bin/python cargo bench -p meshtrain-train --bench step`

use std::process::Command;

const STEPS: u64 = 12;

fn config(dir: &std::path::Path, dtype: &str, devices: usize, mesh: &str) -> String {
    let mut state = 1u64;
    let rows: Vec<Vec<u32>> = (0..64)
        .map(|_| {
            (0..256)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 33) % 32000) as u32
                })
                .collect()
        })
        .collect();
    let tokens = dir.join("tokens.json");
    std::fs::write(
        &tokens,
        serde_json::json!({ "input_ids": rows }).to_string(),
    )
    .unwrap();
    format!(
        r#"[model]
preset = "tiny"
vocab_size = 32000
d_model = 512
layers = 8
heads = 8
kv_heads = 1
head_dim = 64
mlp_dim = 2048
max_seq_len = 256
dtype = "{dtype}"
[data]
format = "tokens"
path = {tokens:?}
seq_len = 256
batch_size = 4
[train]
steps = {STEPS}
run_dir = {run:?}
log_every = 100
peak_flops_per_device = 1e11
export_final = false
[runtime]
device_count = {devices}
[mesh]
{mesh}
"#,
        tokens = tokens.display().to_string(),
        run = dir.join("run").display().to_string(),
    )
}

/// Runs a Python bench script for `dtype`; its stdout is "COMPILE_S STEP_S".
fn python_row(python: &str, script: &std::path::Path, dtype: &str) -> Option<(f64, f64)> {
    let out = Command::new(python)
        .arg(script)
        .args(["--dtype", dtype, "--steps", &STEPS.to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let v: Vec<f64> = text
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            (v.len() == 2).then(|| (v[0], v[1]))
        }
        Ok(o) => {
            let name = script.file_name().unwrap_or_default().to_string_lossy();
            eprintln!("{name} failed: {}", String::from_utf8_lossy(&o.stderr));
            None
        }
        Err(e) => {
            eprintln!("cannot run {python}: {e}");
            None
        }
    }
}

fn main() {
    // As the meshtrain binary does at start.
    pjrt::tune_host_allocator();
    let only_ours = std::env::args().any(|a| a == "--ours");
    let mut rows = Vec::new();
    for (dtype, scan) in [
        ("f32", true),
        ("bf16", true),
        ("f32", false),
        ("bf16", false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let sets = [format!("model.scan_layers={scan}")];
        let text = config(dir.path(), dtype, 1, "fsdp = 1");
        let cfg = train::TrainConfig::from_toml(&text, "bench", &sets).unwrap();
        let s = train::train(&cfg, false).unwrap();
        let layers = if scan { "" } else { ", unrolled" };
        rows.push((
            format!("meshtrain ({dtype}{layers})"),
            s.compile_seconds,
            s.median_step_seconds,
        ));
    }
    if let (Ok(python), false) = (std::env::var("MESHTRAIN_BENCH_PYTHON"), only_ours) {
        let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts");
        let jax = scripts.join("bench_jax_step.py");
        for dtype in ["f32", "bf16"] {
            if let Some((c, s)) = python_row(&python, &jax, dtype) {
                rows.push((format!("JAX jit ({dtype})"), c, s));
            }
            // JAX's own StableHLO of the same step, through meshtrain's plugin.
            let file = std::env::temp_dir().join(format!("jax_step_{dtype}.mlir"));
            let exported = Command::new(&python)
                .arg(&jax)
                .args(["--dtype", dtype, "--export"])
                .arg(&file)
                .status();
            if exported.is_ok_and(|s| s.success()) {
                let mlir = std::fs::read_to_string(&file).unwrap();
                let client = pjrt::cpu_client(1).unwrap();
                let (compile, step) = pjrt::time_module(&client, &mlir, STEPS as usize).unwrap();
                rows.push((format!("JAX export, our plugin ({dtype})"), compile, step));
            }
        }
        let torch = scripts.join("bench_torch_step.py");
        for (dtype, name) in [
            ("f32", "PyTorch eager (f32)"),
            ("bf16", "PyTorch eager (bf16 autocast)"),
        ] {
            if let Some((c, s)) = python_row(&python, &torch, dtype) {
                rows.push((name.to_string(), c, s));
            }
        }
    }
    // The same step over 1, 2 and 8 virtual CPU devices: they share the
    // host's cores, so time does not fall; per-device memory does.
    let mut mesh_rows = Vec::new();
    if !only_ours {
        for (devices, mesh) in [
            (1, "fsdp = 1"),
            (2, "data = 2\nfsdp = 1"),
            (2, "fsdp = 2"),
            (8, "data = 4\nfsdp = 1\ntensor = 2"),
            (8, "fsdp = 4\ntensor = 2"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = train::TrainConfig::from_toml(
                &config(dir.path(), "f32", devices, mesh),
                "bench",
                &[],
            )
            .unwrap();
            let s = train::train(&cfg, false).unwrap();
            let r = &s.report;
            let state = r.param_bytes_per_device + r.optimizer_bytes_per_device;
            mesh_rows.push((
                devices,
                mesh.replace('\n', " "),
                s.median_step_seconds,
                state,
                r.memory.temp_bytes,
            ));
        }
    }
    println!(
        "train step: vocab 32000, d_model 512, 8 layers, 8 heads / 1 kv head, head_dim 64, MLP 2048, batch 4 x 256, 1 CPU device"
    );
    println!(
        "{:<34} {:>10} {:>12} {:>10}",
        "", "compile s", "median s", "tokens/s"
    );
    for (name, compile, step) in rows {
        println!(
            "{name:<34} {compile:>10.2} {step:>12.3} {:>10.0}",
            1024.0 / step
        );
    }
    if !mesh_rows.is_empty() {
        println!("\nthe same step in f32 on virtual CPU devices sharing 2 cores");
        println!(
            "{:>7} {:<32} {:>10} {:>24} {:>16}",
            "devices", "mesh", "median s", "params+AdamW MiB/dev", "temp MiB/dev"
        );
        for (d, m, t, b, temp) in mesh_rows {
            println!(
                "{d:>7} {m:<32} {t:>10.3} {:>24.1} {:>16.1}",
                b as f64 / 1048576.0,
                temp as f64 / 1048576.0
            );
        }
    }
}
