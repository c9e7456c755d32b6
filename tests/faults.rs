//! Crashes and storage faults around checkpoints, on the real binary:
//! `kill -9` during a checkpoint write and at random instants, a full disk,
//! a read-only checkpoint directory. Each time the run resumes from the
//! last complete checkpoint and ends bit-identical to an uninterrupted one,
//! and no incomplete checkpoint is ever picked up.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use train::checkpoint::{self, Checkpoint};

mod common;
use common::{Proc, losses, meshtrain_ok, tiny_config};

const BIN: &str = env!("CARGO_BIN_EXE_meshtrain");

/// `train` arguments for the tiny config with shuffled data, 8 steps
/// unless `extra` says otherwise.
fn train_args(cfg: &Path, run: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["train", "--quiet", "--config"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(cfg.display().to_string());
    let steps = if extra.iter().any(|s| s.starts_with("train.steps=")) {
        None
    } else {
        Some("train.steps=8".to_string())
    };
    for set in [
        "data.shuffle=true".to_string(),
        format!("train.run_dir={:?}", run.display().to_string()),
    ]
    .iter()
    .chain(&steps)
    .map(String::as_str)
    .chain(extra.iter().copied())
    {
        args.push("--set".into());
        args.push(set.into());
    }
    args
}

/// What a run ends with: final parameters and per-step losses.
type Outcome = (Vec<u8>, Vec<(u64, f64)>);

fn outcome(run: &Path) -> Outcome {
    let model = std::fs::read(run.join("final/model.safetensors")).unwrap();
    (model, losses(run))
}

fn straight(dir: &Path, cfg: &Path) -> Outcome {
    let run = dir.join("straight");
    let args = train_args(cfg, &run, &["train.log_every=1"]);
    meshtrain_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    outcome(&run)
}

/// Every step_N directory that is there must verify.
fn assert_no_bad_committed(run: &Path) {
    for (step, dir) in checkpoint::list(&run.join("checkpoints")).unwrap() {
        if dir.join("COMMITTED").exists() {
            Checkpoint::open(&dir).unwrap_or_else(|e| panic!("step {step}: {e}"));
        }
    }
}

#[test]
fn kill_9_during_a_checkpoint_write_then_resume_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let want = straight(dir.path(), &cfg);

    let run = dir.path().join("victim");
    let args = train_args(
        &cfg,
        &run,
        &["train.log_every=1", "train.checkpoint_every=2"],
    );
    let victim = Proc::spawn(&args, &[("MESHTRAIN_FAULT_CHECKPOINT_STALL", "4:120")]);
    victim.wait_for("checkpoint step 4: shards written", 120);
    drop(victim); // SIGKILL
    let root = run.join("checkpoints");
    assert!(
        root.join("step_00000004.partial/shards").is_dir(),
        "killed mid-write"
    );
    let newest = checkpoint::latest(&root, true)
        .unwrap()
        .expect("step 2 was committed");
    assert_eq!(
        newest.step(),
        2,
        "the half-written step 4 is never picked up"
    );

    let resumed = Command::new(BIN).args(&args).output().unwrap();
    let err = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{err}");
    assert!(err.contains("removing step_00000004.partial"), "{err}");
    assert!(
        err.contains("resuming from") && err.contains("(step 2,"),
        "{err}"
    );
    assert_eq!(
        outcome(&run),
        want,
        "same parameters and losses as without the crash"
    );
}

#[test]
fn killed_at_random_instants_always_resumes_to_the_same_result() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let want = straight(dir.path(), &cfg);
    let run = dir.path().join("victim");
    let args = train_args(
        &cfg,
        &run,
        &["train.log_every=1", "train.checkpoint_every=1"],
    );
    // Pseudo-random instants, different on every test run.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        | 1;
    for _ in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let at = Duration::from_millis(500 + seed % 2500);
        let mut victim = Proc::spawn(&args, &[]);
        let t = Instant::now();
        while t.elapsed() < at && victim.running() {
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(victim); // SIGKILL
        assert_no_bad_committed(&run);
    }
    let resumed = Command::new(BIN).args(&args).output().unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert_eq!(outcome(&run), want);
}

/// Runs `script` as root of a new user + mount namespace (so it can mount
/// a small tmpfs or a read-only bind without privileges); `None` where the
/// machine forbids user namespaces.
fn in_namespace(script: &str) -> Option<std::process::Output> {
    let probe = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        if std::env::var_os("CI").is_some() {
            panic!("unshare --user --mount is not permitted, and CI must run this check");
        }
        eprintln!("SKIPPED: unshare --user --mount is not permitted on this machine");
        return None;
    }
    Some(
        Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
            .output()
            .unwrap(),
    )
}

fn quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("'{}'", a.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_bytes(&e.path())
            } else {
                e.metadata().unwrap().len()
            }
        })
        .sum()
}

#[test]
fn disk_full_is_reported_and_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    // How big one checkpoint is: a tmpfs with room for one and a half.
    let probe = dir.path().join("probe");
    let args = train_args(&cfg, &probe, &["train.steps=2", "train.checkpoint_every=2"]);
    meshtrain_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let one = dir_bytes(&probe.join("checkpoints/step_00000002"));
    let size_kib = (one + one / 2) / 1024 + 96;

    let (mnt, out) = (dir.path().join("mnt"), dir.path().join("out"));
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    let run = mnt.join("run");
    let args = train_args(
        &cfg,
        &run,
        &[
            "train.checkpoint_every=2",
            "train.keep_checkpoints=1",
            "train.export_final=false",
        ],
    );
    let script = format!(
        "mount -t tmpfs -o size={size_kib}k tmpfs '{mnt}' || exit 97\n\
         '{BIN}' {args} 2> '{out}/stderr'; echo $? > '{out}/rc'\n\
         ls -a '{run}/checkpoints' > '{out}/ls'; cp -a '{run}/checkpoints' '{out}/checkpoints'",
        mnt = mnt.display(),
        args = quoted(&args),
        out = out.display(),
        run = run.display(),
    );
    let Some(o) = in_namespace(&script) else {
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rc = std::fs::read_to_string(out.join("rc")).unwrap();
    let err = std::fs::read_to_string(out.join("stderr")).unwrap();
    assert_ne!(rc.trim(), "0", "a failed save stops the run: {err}");
    assert!(
        err.contains(
            "saving the checkpoint of step 4 failed (the newest checkpoint is still step 2)"
        ) && err.contains("No space left on device")
            && !err.contains("panicked"),
        "{err}"
    );
    let listing = std::fs::read_to_string(out.join("ls")).unwrap();
    assert!(
        !listing.contains("partial"),
        "partial files removed: {listing}"
    );
    let kept = Checkpoint::open(&out.join("checkpoints/step_00000002")).unwrap();
    assert_eq!(kept.step(), 2);
}

#[test]
fn read_only_checkpoint_directory_is_reported_and_keeps_the_previous() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(dir.path());
    let run = dir.path().join("run");
    let first = train_args(&cfg, &run, &["train.steps=2", "train.checkpoint_every=2"]);
    meshtrain_ok(&first.iter().map(String::as_str).collect::<Vec<_>>());
    let ckpts: PathBuf = run.join("checkpoints");
    let args = train_args(&cfg, &run, &["train.checkpoint_every=2"]);
    let script = format!(
        "mount --bind '{c}' '{c}' && mount -o remount,bind,ro '{c}' || exit 97\n'{BIN}' {args}",
        c = ckpts.display(),
        args = quoted(&args),
    );
    let Some(o) = in_namespace(&script) else {
        return;
    };
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && o.status.code() != Some(97), "{err}");
    assert!(
        err.contains("resuming from")
            && err.contains(
                "saving the checkpoint of step 4 failed (the newest checkpoint is still step 2)"
            )
            && err.contains("Read-only file system")
            && err.contains("step_00000004.partial"),
        "{err}"
    );
    assert_eq!(checkpoint::latest(&ckpts, true).unwrap().unwrap().step(), 2);
}
