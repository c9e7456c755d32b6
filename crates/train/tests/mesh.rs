//! The same model, data and seed give the same loss trajectory on one
//! device and on 8 CPU devices under data, FSDP, tensor and mixed meshes,
//! for multi-query and multi-head attention; sharding shrinks per-device
//! parameter and optimizer bytes as it says.

use std::path::Path;

use train::TrainConfig;

mod common;

fn run(dir: &Path, kv_heads: usize, sets: &[&str]) -> train::RunSummary {
    let data = common::tokens_file(dir, 64, 16, 64);
    let text = common::config(dir, &data, kv_heads, "");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
    train::train(&cfg, false).unwrap()
}

const MESHES: [&[&str]; 4] = [
    &["runtime.device_count=8", "mesh.data=8", "mesh.fsdp=1"],
    &["runtime.device_count=8", "mesh.fsdp=8"],
    &["runtime.device_count=8", "mesh.tensor=2", "mesh.fsdp=4"],
    &[
        "runtime.device_count=8",
        "mesh.data=2",
        "mesh.fsdp=2",
        "mesh.tensor=2",
    ],
];

fn same_trajectory(kv_heads: usize) {
    let base_dir = tempfile::tempdir().unwrap();
    let base = run(base_dir.path(), kv_heads, &[]);
    for mesh in MESHES {
        let dir = tempfile::tempdir().unwrap();
        let got = run(dir.path(), kv_heads, mesh);
        assert_eq!(got.losses.len(), 5);
        for (a, b) in base.losses.iter().zip(&got.losses) {
            let rel = ((a.1 - b.1) / a.1).abs();
            assert!(
                rel < 1e-5,
                "kv_heads {kv_heads} {mesh:?} step {}: {} vs {} (rel {rel:e})",
                a.0,
                a.1,
                b.1
            );
        }
    }
}

#[test]
fn multi_query_losses_match_one_device_on_every_mesh() {
    same_trajectory(1);
}

#[test]
fn multi_head_losses_match_one_device_on_every_mesh() {
    same_trajectory(4);
}

#[test]
fn sharding_shrinks_per_device_state_and_reports_collectives() {
    let (d1, d8, dd) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let one = run(d1.path(), 4, &["train.steps=1"]);
    let fsdp = run(
        d8.path(),
        4,
        &["train.steps=1", "runtime.device_count=8", "mesh.fsdp=8"],
    );
    let dp = run(
        dd.path(),
        4,
        &[
            "train.steps=1",
            "runtime.device_count=8",
            "mesh.data=8",
            "mesh.fsdp=1",
        ],
    );
    let (b1, b8) = (
        one.report.param_bytes_per_device,
        fsdp.report.param_bytes_per_device,
    );
    // Everything but the norm vectors (replicated) splits 8 ways.
    assert!(
        b8 * 8 >= b1 && (b8 as f64) < b1 as f64 / 8.0 * 1.05,
        "fsdp=8: {b8} bytes vs {b1} on one device"
    );
    assert_eq!(fsdp.report.optimizer_bytes_per_device, 2 * b8);
    assert_eq!(
        dp.report.param_bytes_per_device, b1,
        "pure data parallel replicates parameters"
    );
    // The compiler's own plan agrees: arguments shrink too.
    assert!(fsdp.report.memory.argument_bytes * 6 < one.report.memory.argument_bytes);
    let count = |r: &train::RunSummary, k: &str| {
        r.report
            .collectives
            .iter()
            .find(|c| c.kind == k)
            .unwrap()
            .count
    };
    assert_eq!(
        count(&one, "all-gather") + count(&one, "all-reduce"),
        0,
        "one device has no collectives"
    );
    assert!(
        count(&fsdp, "all-gather") > 0,
        "FSDP gathers weights for compute"
    );
    assert!(
        count(&dp, "all-reduce") > 0,
        "data parallel all-reduces gradients"
    );
    let text = std::fs::read_to_string(d8.path().join("run/sharding.txt")).unwrap();
    assert!(
        text.contains("mesh data=1 x fsdp=8 x tensor=1") && text.contains("[-, fsdp]"),
        "{text}"
    );
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(d8.path().join("run/sharding.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["param_bytes_per_device"], b8);
}
