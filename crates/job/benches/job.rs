//! Multi-worker overhead: the smoke config's step time as one process
//! (with and without the asynchronous host, `train.async_steps`) and as a
//! job of 2 and 4 workers on loopback (coordinator and workers in this
//! process, each worker with its own PJRT client and thread, gradients
//! through the coordinator's gRPC all-reduce). Median and mean step time
//! over the steps after the first, from each run's metrics.jsonl.
//! Workers share this machine's cores with each other, so the job cannot
//! be faster than one process here: the table shows what the exchange and
//! the split step cost, not a speed-up.
//!
//! `cargo bench -p meshtrain-job --bench job`

use std::path::Path;

use train::TrainConfig;

const STEPS: u64 = 20;

fn config(run: &Path) -> TrainConfig {
    config_with(run, &[])
}

fn config_with(run: &Path, extra: &[&str]) -> TrainConfig {
    let mut sets = vec![
        format!("train.steps={STEPS}"),
        "train.log_every=1".into(),
        "train.checkpoint_every=0".into(),
        "train.export_final=false".into(),
        "train.peak_flops_per_device=1e11".into(),
        format!("train.run_dir={:?}", run.display().to_string()),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    TrainConfig::load(None, &sets).unwrap()
}

fn step_times(run: &Path) -> (f64, f64) {
    let (median, mean, _) = train::step_time_stats(run).unwrap();
    (median, mean)
}

fn job(run: &Path, workers: u32) {
    let cfg = config(run);
    let (tx, rx) = std::sync::mpsc::channel();
    let coordinator = {
        let cfg = cfg.clone();
        std::thread::spawn(move || {
            job::coordinator::run(job::coordinator::Options {
                config: cfg,
                listen: "127.0.0.1:0".parse().unwrap(),
                workers,
                token: "bench".into(),
                show_progress: false,
                on_listen: Some(Box::new(move |a| tx.send(a).unwrap())),
            })
            .unwrap()
        })
    };
    let addr = rx.recv().unwrap().to_string();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                job::worker::run(job::worker::Options {
                    coordinator: addr,
                    token: "bench".into(),
                    tls: None,
                    config: None,
                    backend: "cpu".into(),
                    devices: 1,
                    show_progress: false,
                })
                .unwrap()
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    coordinator.join().unwrap();
}

fn main() {
    pjrt::tune_host_allocator();
    let dir = tempfile::tempdir().unwrap();
    println!("| smoke config, {STEPS} steps, batch 16 x 128 | median step s | mean step s |");
    println!("|---|---|---|");
    // The host's work (loading, transferring, logging) overlapping the
    // device's (train.async_steps), and one step at a time.
    for (name, sets) in [
        ("1 process (fused step)", &[][..]),
        (
            "1 process, one step at a time (train.async_steps = false)",
            &["train.async_steps=false"][..],
        ),
    ] {
        let one = dir.path().join(name.replace(' ', "_"));
        train::train(&config_with(&one, sets), false).unwrap();
        let (m, a) = step_times(&one);
        println!("| {name} | {m:.4} | {a:.4} |");
    }
    // 16 rows split over 2 and 4 workers.
    for workers in [2, 4] {
        let run = dir.path().join(format!("job{workers}"));
        job(&run, workers);
        let (m, a) = step_times(&run);
        println!("| {workers} workers on loopback | {m:.4} | {a:.4} |");
    }
}
