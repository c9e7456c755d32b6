//! Checkpoint bench: write and restore throughput (MB/s) for the smoke
//! model and a 1B-parameter random model (parameters + both AdamW moments,
//! f32), and the smoke run's step time with an async save every few steps
//! versus none, the state copied to the host between two steps
//! (`train.checkpoint_copy = "host"`) or on the devices (`"device"`).
//! Restore is measured with a cold page cache when the bench may drop it
//! (root), else it says "warm".
//!
//! `cargo bench -p meshtrain-train --bench checkpoint`
//! (`MESHTRAIN_BENCH_CKPT_BIG=0` skips the 1B model: it needs ~13 GB of RAM and 2x that of disk.)

use std::time::Instant;

use train::TrainConfig;
use train::checkpoint::{self, Checkpoint, MeshRecord, Piece, Snapshot, SnapshotTensor};

const BIG: &str = r#"
[model]
preset = "tiny"
vocab_size = 32000
d_model = 2048
layers = 16
heads = 8
kv_heads = 1
head_dim = 256
mlp_dim = 8192
max_seq_len = 512
[data]
format = "tokens"
path = "unused"
seq_len = 512
batch_size = 8
[train]
steps = 1
run_dir = "unused"
"#;

fn random_snapshot(cfg: &TrainConfig) -> (Snapshot, u64) {
    let model = cfg.model.resolve().unwrap();
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut bytes = 0;
    let mut tensors = Vec::new();
    for group in ["params", "m", "v"] {
        for spec in gemma::param_specs(&model) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = (0..n)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .collect();
            bytes += 4 * n as u64;
            tensors.push(SnapshotTensor {
                name: format!("{group}/{}", spec.name),
                shape: spec.shape.clone(),
                pieces: vec![Piece {
                    device: 0,
                    start: vec![0; spec.shape.len()],
                    shape: spec.shape.clone(),
                    data,
                }],
            });
        }
    }
    let snap = Snapshot {
        step: 1,
        mesh: MeshRecord {
            data: 1,
            fsdp: 1,
            tensor: 1,
        },
        loader_rows: vec![(
            0,
            data::LoaderState {
                epoch: 0,
                document: 0,
                offset: 0,
                batches: 1,
                fingerprint: 0,
                sources: Vec::new(),
            },
        )],
        seed: 0,
        config_toml: cfg.to_toml(),
        tensors,
    };
    (snap, bytes)
}

fn drop_page_cache() -> &'static str {
    let ok = std::process::Command::new("sync").status().is_ok()
        && std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok();
    if ok { "cold" } else { "warm" }
}

fn io_row(name: &str, cfg: &TrainConfig) {
    let dir = tempfile::tempdir_in(".").unwrap();
    let (snap, bytes) = random_snapshot(cfg);
    let params = bytes / 12;
    let t = Instant::now();
    let saved = checkpoint::save(dir.path(), std::slice::from_ref(&snap), 0).unwrap();
    let write = t.elapsed().as_secs_f64();
    drop(snap);
    let cache = drop_page_cache();
    let t = Instant::now();
    let c = Checkpoint::open(&saved).unwrap();
    let mut sum = 0f64;
    for rec in &c.manifest.tensors {
        sum += c.tensor(&rec.name).unwrap()[0] as f64;
    }
    let read = t.elapsed().as_secs_f64();
    std::hint::black_box(sum);
    let mb = bytes as f64 / 1e6;
    println!(
        "| {name} | {:.1} M | {mb:.0} | {:.0} ({write:.2} s) | {:.0} ({read:.2} s, {cache}) |",
        params as f64 / 1e6,
        mb / write,
        mb / read
    );
}

/// Smoke config, 30 steps, saving every `every` steps (0: never) with
/// `train.checkpoint_copy = copy`: (median, mean, max) step seconds from
/// metrics.jsonl, and the mean over each save's step and the step after
/// it (whichever of the two carries the copy off the devices: a step's
/// time runs from the previous step's end to its own).
fn smoke_steps(every: u64, copy: &str) -> (f64, f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "train.steps=30".to_string(),
        "train.log_every=1".into(),
        "train.export_final=false".into(),
        "train.peak_flops_per_device=1e11".into(),
        format!("train.checkpoint_every={every}"),
        format!("train.checkpoint_copy={copy:?}"),
        format!(
            "train.run_dir={:?}",
            dir.path().join("run").display().to_string()
        ),
    ];
    let cfg = TrainConfig::load(None, &sets).unwrap();
    train::train(&cfg, false).unwrap();
    let run = dir.path().join("run");
    let (median, mean, max) = train::step_time_stats(&run).unwrap();
    let around: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| {
            let s = v["step"].as_u64().unwrap();
            // The first step holds the compile; the last has no next.
            every > 0 && s > 0 && s < 29 && ((s + 1) % every == 0 || s % every == 0)
        })
        .map(|v| v["step_time_s"].as_f64().unwrap())
        .collect();
    let around = around.iter().sum::<f64>() / around.len().max(1) as f64;
    (median, mean, max, around)
}

fn main() {
    pjrt::tune_host_allocator();
    println!("| model | parameters | checkpoint MB | write MB/s | restore + verify MB/s |");
    println!("|---|---|---|---|---|");
    io_row("smoke", &TrainConfig::load(None, &[]).unwrap());
    if std::env::var("MESHTRAIN_BENCH_CKPT_BIG").as_deref() != Ok("0") {
        io_row(
            "1B random",
            &TrainConfig::from_toml(BIG, "bench", &[]).unwrap(),
        );
    }
    println!();
    println!(
        "| smoke run, 30 steps | median step s | mean step s | max step s | save's step + next, mean s | excess over the median s |"
    );
    println!("|---|---|---|---|---|---|");
    // Host and device copies alternate, twice, so a slow spell of a shared
    // machine does not land on one of them only.
    let host = "async save every 3 steps, copy to host (train.checkpoint_copy = \"host\")";
    let device = "async save every 3 steps, copy on the devices (\"device\", default)";
    for (name, every, copy) in [
        ("no checkpoints", 0, "device"),
        (host, 3, "host"),
        (device, 3, "device"),
        (host, 3, "host"),
        (device, 3, "device"),
    ] {
        let (median, mean, max, around) = smoke_steps(every, copy);
        let (around, excess) = if every > 0 {
            (format!("{around:.4}"), format!("{:+.4}", around - median))
        } else {
            ("-".into(), "-".into())
        };
        println!("| {name} | {median:.4} | {mean:.4} | {max:.4} | {around} | {excess} |");
    }
}
