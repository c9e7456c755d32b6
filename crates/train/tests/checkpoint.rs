//! Checkpoints: exact resume (losses, parameters, moments, data order),
//! restore under other meshes, refusal of corrupt or incomplete
//! checkpoints with fallback to the previous one, retention.

use std::path::{Path, PathBuf};

use train::TrainConfig;
use train::checkpoint::{self, Checkpoint};

mod common;

/// Trains the tiny model in `dir/run` (shuffled data, so the data order
/// is part of what must resume) with extra `--set`s.
fn run(dir: &Path, kv_heads: usize, sets: &[&str]) -> train::Result<train::RunSummary> {
    let data = common::tokens_file(dir, 64, 16, 64);
    let text = common::config(dir, &data, kv_heads, "");
    let mut all = vec!["data.shuffle=true".to_string()];
    all.extend(sets.iter().map(|s| s.to_string()));
    let cfg = TrainConfig::from_toml(&text, "test", &all).unwrap();
    train::train(&cfg, false)
}

fn ckpt(dir: &Path, step: u64) -> PathBuf {
    dir.join("run/checkpoints").join(checkpoint::dir_name(step))
}

/// sha256 of every shard file of a checkpoint (the config differs between
/// runs that stop at different steps; the tensors must not).
fn shard_hashes(dir: &Path) -> Vec<(String, String)> {
    Checkpoint::open(dir)
        .unwrap()
        .manifest
        .files
        .into_iter()
        .filter(|f| f.path.starts_with("shards/"))
        .map(|f| (f.path, f.sha256))
        .collect()
}

fn bits(losses: &[(u64, f32)]) -> Vec<(u64, u32)> {
    losses.iter().map(|(s, l)| (*s, l.to_bits())).collect()
}

#[test]
fn stop_and_resume_is_bit_identical_to_a_straight_run() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let every = ["train.checkpoint_every=5", "train.export_final=true"];
    let straight = run(a.path(), 1, &[&["train.steps=10"], &every[..]].concat()).unwrap();
    let first = run(
        b.path(),
        1,
        &[
            &["train.steps=5", "optimizer.schedule_steps=10"],
            &every[..],
        ]
        .concat(),
    )
    .unwrap();
    let second = run(b.path(), 1, &[&["train.steps=10"], &every[..]].concat()).unwrap();

    assert_eq!(bits(&straight.losses[..5]), bits(&first.losses));
    assert_eq!(bits(&straight.losses[5..]), bits(&second.losses));
    // Parameters, both moments and the loader state, bit for bit.
    assert_eq!(
        shard_hashes(&ckpt(a.path(), 10)),
        shard_hashes(&ckpt(b.path(), 10))
    );
    let (ca, cb) = (
        Checkpoint::open(&ckpt(a.path(), 10)).unwrap(),
        Checkpoint::open(&ckpt(b.path(), 10)).unwrap(),
    );
    assert_eq!(ca.manifest.loader_rows, cb.manifest.loader_rows);
    assert_eq!(ca.manifest.loader_rows.len(), 8);
    assert!(ca.manifest.loader_rows.iter().all(|r| r.batches == 10));
    let model = |d: &Path| std::fs::read(d.join("run/final/model.safetensors")).unwrap();
    assert_eq!(model(a.path()), model(b.path()));
    // The resumed run's loss plot covers the whole run.
    let svg = |d: &Path| std::fs::read_to_string(d.join("run/loss.svg")).unwrap();
    assert_eq!(svg(a.path()), svg(b.path()));
    // metrics.jsonl of the resumed run holds each step once.
    let steps = |d: &Path| -> Vec<(u64, f64)> {
        std::fs::read_to_string(d.join("run/metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
            })
            .collect()
    };
    assert_eq!(steps(a.path()), steps(b.path()));
    assert_eq!(steps(b.path()).len(), 10);
}

/// `train.checkpoint_copy = "device"` (the state copied on each device,
/// the next step launched at once, the copy read on the checkpoint
/// thread) saves exactly what the host copy saves, on emulated hosts
/// (each its own part): every shard file and data position; and a run
/// resumed from it continues exactly as the straight run.
#[test]
fn copying_the_checkpoint_on_the_devices_saves_what_the_host_copy_saves() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let common = [
        "runtime.device_count=8",
        "runtime.emulate_hosts=2",
        "mesh.fsdp=8",
        "train.checkpoint_every=3",
        "train.keep_checkpoints=0",
        "optimizer.schedule_steps=10",
        "train.export_final=true",
        "train.profile_steps=[5, 5]",
    ];
    let with = |copy: &'static str, steps: &'static str| {
        let mut sets = common.to_vec();
        sets.extend([copy, steps]);
        sets
    };
    let device = "train.checkpoint_copy=\"device\"";
    let host = run(
        b.path(),
        4,
        &with("train.checkpoint_copy=\"host\"", "train.steps=10"),
    )
    .unwrap();
    let first = run(a.path(), 4, &with(device, "train.steps=7")).unwrap();
    let resumed = run(a.path(), 4, &with(device, "train.steps=10")).unwrap();
    assert_eq!(
        bits(&[first.losses, resumed.losses].concat()),
        bits(&host.losses)
    );
    for step in [3, 6, 9, 10] {
        let (ca, cb) = (ckpt(a.path(), step), ckpt(b.path(), step));
        let hashes = shard_hashes(&ca);
        assert!(
            hashes.iter().any(|(p, _)| p.starts_with("shards/p00001")),
            "{step}: both hosts wrote a part: {hashes:?}"
        );
        assert_eq!(hashes, shard_hashes(&cb), "step {step}");
        let (ma, mb) = (
            Checkpoint::open(&ca).unwrap().manifest,
            Checkpoint::open(&cb).unwrap().manifest,
        );
        assert_eq!(ma.step, step);
        assert_eq!(ma.loader_rows, mb.loader_rows, "step {step}");
        assert_eq!(ma.tensors, mb.tensors, "step {step}");
    }
    // Each run copied the state its own way (the host trace of step 5,
    // before the checkpoint after it).
    let spans = |d: &Path| -> Vec<String> {
        let path = d.join("run/profile/host_trace.0.json");
        let trace: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        trace["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["ph"] == "X" && e["args"]["step"] == 5)
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let (sa, sb) = (spans(a.path()), spans(b.path()));
    assert!(
        sa.iter().any(|n| n == "checkpoint copy on the devices"),
        "{sa:?}"
    );
    assert!(!sa.iter().any(|n| n == "checkpoint copy to host"), "{sa:?}");
    assert!(sb.iter().any(|n| n == "checkpoint copy to host"), "{sb:?}");
    // Step 7 (the first run's last) was saved and is what the resumed run
    // continued from.
    assert!(Checkpoint::open(&ckpt(a.path(), 7)).is_ok());
    let model = |d: &Path| std::fs::read(d.join("run/final/model.safetensors")).unwrap();
    assert_eq!(model(a.path()), model(b.path()));
}

#[test]
fn restores_under_other_meshes() {
    let (base, d) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = run(base.path(), 4, &["train.steps=6"]).unwrap();
    let common = ["optimizer.schedule_steps=6", "train.checkpoint_every=2"];
    let fsdp8 = ["runtime.device_count=8", "mesh.fsdp=8", "train.steps=2"];
    let mixed = [
        "runtime.device_count=4",
        "mesh.fsdp=2",
        "mesh.tensor=2",
        "train.steps=4",
    ];
    let single = ["runtime.device_count=1", "mesh.fsdp=1", "train.steps=6"];
    let mut losses = Vec::new();
    for mesh in [&fsdp8[..], &mixed, &single] {
        losses.extend(
            run(d.path(), 4, &[mesh, &common[..]].concat())
                .unwrap()
                .losses,
        );
    }
    assert_eq!(losses.len(), 6);
    for (x, y) in one.losses.iter().zip(&losses) {
        let rel = ((x.1 - y.1) / x.1).abs();
        assert!(
            rel < 1e-5,
            "step {}: one device {} vs resharded {} ({rel:e})",
            x.0,
            x.1,
            y.1
        );
    }
    // The fsdp=8 checkpoint wrote each parameter box once per device, and
    // the unsharded tensors (norms) once, in a file of their own.
    let c2 = Checkpoint::open(&ckpt(d.path(), 2)).unwrap();
    assert_eq!(c2.manifest.mesh.fsdp, 8);
    let mut shards: Vec<&str> = c2
        .manifest
        .files
        .iter()
        .filter_map(|f| f.path.strip_prefix("shards/"))
        .collect();
    shards.sort();
    let mut expected: Vec<String> = (0..8)
        .map(|d| format!("p00000-d{d:05}-{:03}.safetensors", d + 1))
        .collect();
    expected.push("p00000-whole-000.safetensors".into());
    assert_eq!(shards, expected);
    // Restore is exact: a finished run restored under another mesh exports
    // exactly the checkpoint's parameters.
    let c6 = Checkpoint::open(&ckpt(d.path(), 6)).unwrap();
    let restored = run(
        d.path(),
        4,
        &[&fsdp8[..2], &["train.steps=6", "train.export_final=true"]].concat(),
    )
    .unwrap();
    assert!(restored.losses.is_empty());
    let exported = gemma::hf::load(&d.path().join("run/final")).unwrap();
    let saved = c6.model().unwrap();
    assert_eq!(exported.params, saved.params);
}

#[test]
fn corrupt_or_incomplete_checkpoints_are_refused_and_auto_falls_back() {
    let d = tempfile::tempdir().unwrap();
    let sets = [
        "train.steps=6",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=0",
    ];
    let straight = run(d.path(), 1, &sets).unwrap();
    let shard = |step| ckpt(d.path(), step).join("shards/p00000-d00000-000.safetensors");

    // A flipped byte in step 6: refused, naming the file and the checksum.
    let mut bytes = std::fs::read(shard(6)).unwrap();
    let i = bytes.len() - 3;
    bytes[i] ^= 0x40;
    std::fs::write(shard(6), &bytes).unwrap();
    let err = Checkpoint::open(&ckpt(d.path(), 6))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("p00000-d00000-000.safetensors") && err.contains("sha256"),
        "{err}"
    );
    // A truncated file in step 4.
    let bytes = std::fs::read(shard(4)).unwrap();
    std::fs::write(shard(4), &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::open(&ckpt(d.path(), 4))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("truncated"), "{err}");
    // A checkpoint whose marker never got written.
    std::fs::remove_file(ckpt(d.path(), 2).join("COMMITTED")).unwrap();
    let err = Checkpoint::open(&ckpt(d.path(), 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("incomplete"), "{err}");
    // None of them is picked up: auto starts over, and trains the same.
    assert!(
        checkpoint::latest(&d.path().join("run/checkpoints"), true)
            .unwrap()
            .is_none()
    );

    // With step 2 restored, auto falls back past 6 and 4 to it.
    let fresh = tempfile::tempdir().unwrap();
    run(
        fresh.path(),
        1,
        &[
            "train.steps=2",
            "optimizer.schedule_steps=6",
            "train.checkpoint_every=2",
        ],
    )
    .unwrap();
    std::fs::remove_dir_all(ckpt(d.path(), 2)).unwrap();
    copy_dir(&ckpt(fresh.path(), 2), &ckpt(d.path(), 2));
    let resumed = run(d.path(), 1, &["train.steps=6", "train.checkpoint_every=0"]).unwrap();
    assert_eq!(bits(&straight.losses[2..]), bits(&resumed.losses));

    // Naming a missing directory or a non-checkpoint says so.
    let err = Checkpoint::open(&d.path().join("nope"))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("does not exist"), "{err}");
    let err = Checkpoint::open(d.path()).err().unwrap().to_string();
    assert!(err.contains("not a meshtrain checkpoint"), "{err}");

    // Naming a corrupt checkpoint explicitly is an error, not a fallback.
    let resume = format!("train.resume={:?}", ckpt(d.path(), 6).display().to_string());
    let err = run(d.path(), 1, &["train.steps=8", &resume])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("sha256"), "{err}");
}

#[test]
fn keeps_the_newest_checkpoints_and_refuses_to_clobber_or_mismatch() {
    let d = tempfile::tempdir().unwrap();
    run(
        d.path(),
        1,
        &[
            "train.steps=5",
            "train.checkpoint_every=1",
            "train.keep_checkpoints=2",
        ],
    )
    .unwrap();
    let root = d.path().join("run/checkpoints");
    let steps: Vec<u64> = checkpoint::list(&root)
        .unwrap()
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, vec![4, 5]);
    assert!(
        std::fs::read_dir(&root).unwrap().count() == 2,
        "no partial directories left"
    );

    let err = run(d.path(), 1, &["train.steps=6", "train.resume=\"none\""])
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("train.resume") && err.contains("step 5"),
        "{err}"
    );
    let err = run(d.path(), 1, &["train.steps=6", "model.mlp_dim=32"])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("another model shape"), "{err}");
    // Exported parameters equal the checkpoint's; an existing target is refused.
    let c = Checkpoint::open(&root.join(checkpoint::dir_name(5))).unwrap();
    let out = d.path().join("hf");
    c.export_hf(&out, gemma::hf::SaveDtype::F32).unwrap();
    assert_eq!(
        gemma::hf::load(&out).unwrap().params,
        c.model().unwrap().params
    );
    assert!(c.export_hf(&out, gemma::hf::SaveDtype::F32).is_err());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}
