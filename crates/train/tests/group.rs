//! Data parallelism across processes (here: threads with their own PJRT
//! clients, joined by an in-memory group): the same losses as one process
//! with the same global batch, checkpoints written in parts and committed
//! once, and restorable by a single process.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use train::{ProcessGroup, TrainConfig};

mod common;

/// An in-memory group: all-reduce sums contributions in rank order.
struct Local {
    rank: usize,
    shared: Arc<(Mutex<Round>, Condvar)>,
}

#[derive(Default)]
struct Round {
    size: usize,
    key: Option<(u64, usize)>,
    parts: Vec<Option<Vec<f32>>>,
    sum: Option<Vec<f32>>,
    taken: usize,
    generation: u64,
}

impl Local {
    fn group(size: usize) -> Vec<Local> {
        let shared = Arc::new((
            Mutex::new(Round {
                size,
                parts: vec![None; size],
                ..Round::default()
            }),
            Condvar::new(),
        ));
        (0..size)
            .map(|rank| Local {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Sums `data` over ranks, in rank order.
    fn reduce(&self, step: u64, len: usize, data: &mut [f32]) {
        let (lock, cv) = &*self.shared;
        let mut r = lock.lock().unwrap();
        // Wait until the previous round has been fully read.
        while r.sum.is_some() {
            r = cv.wait(r).unwrap();
        }
        assert!(
            r.key.is_none_or(|k| k == (step, len)),
            "ranks disagree on the round"
        );
        r.key = Some((step, len));
        r.parts[self.rank] = Some(data.to_vec());
        if r.parts.iter().all(Option::is_some) {
            let mut sum = vec![0f32; len];
            for p in r.parts.iter_mut() {
                for (s, x) in sum.iter_mut().zip(p.take().unwrap()) {
                    *s += x;
                }
            }
            r.sum = Some(sum);
            cv.notify_all();
        }
        let generation = r.generation;
        while r.sum.is_none() || r.generation != generation {
            r = cv.wait(r).unwrap();
        }
        data.copy_from_slice(r.sum.as_ref().unwrap());
        r.taken += 1;
        if r.taken == r.size {
            r.taken = 0;
            r.sum = None;
            r.key = None;
            r.generation += 1;
            cv.notify_all();
        }
    }
}

impl ProcessGroup for Local {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.0.lock().unwrap().size
    }
    fn all_reduce_sum(&self, step: u64, data: &mut [f32]) -> train::Result<()> {
        self.reduce(step, data.len(), data);
        Ok(())
    }
    fn agree_checkpoint(&self, step: u64, written: Result<(), String>) -> train::Result<bool> {
        let mut ok = [if written.is_ok() { 1.0 } else { 0.0 }];
        self.reduce(u64::MAX - step, 1, &mut ok);
        Ok(ok[0] as usize == self.size())
    }
    fn report(&self, _step: u64, _metrics: &serde_json::Value) -> train::Result<()> {
        Ok(())
    }
    fn check(&self) -> train::Result<()> {
        Ok(())
    }
}

fn config(dir: &Path, sets: &[&str]) -> TrainConfig {
    let data = common::tokens_file(dir, 64, 16, 64);
    let text = common::config(dir, &data, 1, "");
    let mut all = vec!["data.shuffle=true".to_string(), "data.batch_size=12".into()];
    all.extend(sets.iter().map(|s| s.to_string()));
    TrainConfig::from_toml(&text, "test", &all).unwrap()
}

fn in_group(cfg: &TrainConfig, size: usize) -> Vec<train::RunSummary> {
    std::thread::scope(|s| {
        let handles: Vec<_> = Local::group(size)
            .into_iter()
            .map(|g| s.spawn(move || train::train_in_group(cfg, false, &g).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn two_and_three_processes_train_like_one() {
    let one_dir = tempfile::tempdir().unwrap();
    let one = train::train(&config(one_dir.path(), &[]), false).unwrap();
    for size in [2, 3] {
        let dir = tempfile::tempdir().unwrap();
        let runs = in_group(&config(dir.path(), &[]), size);
        for r in &runs {
            // Every process applied the same update: identical losses.
            assert_eq!(r.losses, runs[0].losses);
        }
        common::assert_losses_close(
            &format!("{size} processes"),
            &one.losses,
            &runs[0].losses,
            1e-5,
        );
    }
}

/// Scanned, a group exchanges and applies the gradients of the stacked
/// state: two processes train like one unrolled process.
#[test]
fn a_scanned_group_over_stacked_state_trains_like_one_unrolled_process() {
    let one_dir = tempfile::tempdir().unwrap();
    let one = train::train(&config(one_dir.path(), &[]), false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs = in_group(&config(dir.path(), &["model.scan_layers=true"]), 2);
    assert_eq!(runs[0].losses, runs[1].losses);
    common::assert_losses_close("2 scanned processes", &one.losses, &runs[0].losses, 1e-5);
}

#[test]
fn group_checkpoints_commit_once_and_restore_in_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &["train.steps=4", "train.checkpoint_every=2"]);
    let runs = in_group(&cfg, 2);
    let root = dir.path().join("run/checkpoints");
    let c = train::checkpoint::Checkpoint::open(&root.join("step_00000002")).unwrap();
    assert_eq!(c.manifest.processes, 2);
    assert!(c.manifest.files.iter().any(|f| f.path == "part-00001.json"));
    // One process resumes the group's step-2 checkpoint and trains like it.
    std::fs::remove_dir_all(root.join("step_00000004")).unwrap();
    let single = train::train(&cfg, false).unwrap();
    common::assert_losses_close("resumed alone", &runs[0].losses[2..], &single.losses, 1e-5);
}
