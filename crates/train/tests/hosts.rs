//! The per-host path of a pod job, on emulated hosts (`runtime.emulate_hosts`):
//! each host loads only its rows, holds only its buffers, writes only its
//! checkpoint part and reads only the checkpoint boxes it needs; the job
//! still follows the single-process trajectory and its checkpoints
//! restore onto any number of hosts.

use std::path::Path;

use train::TrainConfig;

mod common;

const MESH: [&str; 3] = ["runtime.device_count=8", "mesh.data=2", "mesh.fsdp=4"];

fn cfg(dir: &Path, data: &Path, sets: &[&str]) -> TrainConfig {
    cfg_on(dir, data, &MESH, sets)
}

fn cfg_on(dir: &Path, data: &Path, mesh: &[&str], sets: &[&str]) -> TrainConfig {
    let text = common::config(dir, data, 4, "");
    let all: Vec<String> = mesh.iter().chain(sets).map(|s| s.to_string()).collect();
    TrainConfig::from_toml(&text, "test", &all).unwrap()
}

#[test]
fn four_emulated_hosts_follow_the_single_process_trajectory() {
    let d = tempfile::tempdir().unwrap();
    let data = common::tokens_file(d.path(), 64, 16, 64);
    let one = train::train(&cfg(&d.path().join("one"), &data, &[]), false).unwrap();
    let four = train::train(
        &cfg(&d.path().join("four"), &data, &["runtime.emulate_hosts=4"]),
        false,
    )
    .unwrap();
    common::assert_losses_close("4 hosts x 2 devices", &one.losses, &four.losses, 2e-5);
    // Each host loads only the rows its devices hold: with data=2, fsdp=4
    // each partition holds one row of the 8, each host two.
    assert_eq!(four.rows_per_host.len(), 4);
    for (host, rows) in &four.rows_per_host {
        assert_eq!(rows, &vec![2 * host, 2 * host + 1], "host {host}");
    }
}

#[test]
fn a_checkpoint_of_four_hosts_has_a_part_each_and_restores_onto_one_and_two() {
    let d = tempfile::tempdir().unwrap();
    let data = common::tokens_file(d.path(), 64, 16, 64);
    let run4 = d.path().join("four");
    let straight = train::train(
        &cfg(
            &run4,
            &data,
            &[
                "runtime.emulate_hosts=4",
                "train.steps=6",
                "train.checkpoint_every=3",
            ],
        ),
        false,
    )
    .unwrap();
    let step3 = run4.join("run/checkpoints/step_00000003");
    let parts: Vec<String> = std::fs::read_dir(&step3)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    assert_eq!(parts.len(), 4, "one part per host: {parts:?}");
    let resume = format!("train.resume={:?}", step3.display().to_string());
    for hosts in [1, 2] {
        let dir = d.path().join(format!("onto{hosts}"));
        let emulate = format!("runtime.emulate_hosts={hosts}");
        let resumed = train::train(
            &cfg(&dir, &data, &[&emulate, "train.steps=6", &resume]),
            false,
        )
        .unwrap();
        common::assert_losses_close(
            &format!("restored onto {hosts} host(s)"),
            &straight.losses[3..],
            &resumed.losses,
            2e-5,
        );
    }
}

/// Scanned, the four hosts write their boxes of the stacked state; that
/// checkpoint restores onto two hosts scanned, and onto one unrolled (per
/// layer, each host reading its layers' slices).
#[test]
fn a_stacked_checkpoint_of_four_hosts_restores_onto_other_hosts_and_layouts() {
    let d = tempfile::tempdir().unwrap();
    let data = common::tokens_file(d.path(), 64, 16, 64);
    let run4 = d.path().join("four");
    let sets = [
        "runtime.emulate_hosts=4",
        "train.steps=6",
        "train.checkpoint_every=3",
        "model.scan_layers=true",
    ];
    let straight = train::train(&cfg(&run4, &data, &sets), false).unwrap();
    let step3 = run4.join("run/checkpoints/step_00000003");
    let resume = format!("train.resume={:?}", step3.display().to_string());
    for (hosts, scan) in [(2, true), (1, false)] {
        let dir = d.path().join(format!("onto{hosts}"));
        let emulate = format!("runtime.emulate_hosts={hosts}");
        let layers = format!("model.scan_layers={scan}");
        let sets = [emulate.as_str(), "train.steps=6", &resume, &layers];
        let resumed = train::train(&cfg(&dir, &data, &sets), false).unwrap();
        common::assert_losses_close(
            &format!("restored onto {hosts} host(s), scan_layers = {scan}"),
            &straight.losses[3..],
            &resumed.losses,
            2e-5,
        );
    }
}

#[test]
fn each_emulated_host_reads_about_its_share_of_a_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let data = common::tokens_file(d.path(), 64, 16, 64);
    let run = d.path().join("run8");
    // FSDP over 8 devices, one per host on restore: every box is a host's own.
    let fsdp8 = ["runtime.device_count=8", "mesh.fsdp=8"];
    let sets = ["train.checkpoint_every=2", "train.steps=2"];
    train::train(&cfg_on(&run, &data, &fsdp8, &sets), false).unwrap();
    let step2 = run.join("run/checkpoints/step_00000002");
    let total: u64 = train::checkpoint::Checkpoint::open(&step2)
        .unwrap()
        .manifest
        .files
        .iter()
        .filter(|f| f.path.starts_with("shards/"))
        .map(|f| f.bytes)
        .sum();
    let resume = format!("train.resume={:?}", step2.display().to_string());
    let resumed = train::train(
        &cfg_on(
            &d.path().join("resumed"),
            &data,
            &fsdp8,
            &["runtime.emulate_hosts=8", "train.steps=3", &resume],
        ),
        false,
    )
    .unwrap();
    let read = &resumed.restore_bytes_per_host;
    assert_eq!(read.len(), 8);
    let share = total / 8;
    for (h, &b) in read.iter().enumerate() {
        // Its own device's file, plus the small file of whole (replicated)
        // tensors: the norms.
        assert!(
            b >= share * 3 / 4 && b <= share + share / 4,
            "host {h} read {b} of {total} bytes (share {share}): {read:?}"
        );
    }
}

#[test]
fn emulated_hosts_must_divide_the_devices_and_run_on_cpu() {
    let d = tempfile::tempdir().unwrap();
    let data = common::tokens_file(d.path(), 16, 16, 64);
    let text = common::config(d.path(), &data, 4, "");
    let sets =
        |s: &[&str]| -> Vec<String> { MESH.iter().chain(s).map(|x| x.to_string()).collect() };
    let e = TrainConfig::from_toml(&text, "test", &sets(&["runtime.emulate_hosts=3"]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runtime.emulate_hosts") && e.contains("divisor of runtime.device_count = 8"),
        "{e}"
    );
}
