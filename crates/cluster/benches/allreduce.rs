//! All-reduce throughput on loopback: MB/s of gradient per worker for 2
//! and 3 workers, next to a single-process ordered sum of the same data.
//!
//! `cargo bench -p meshtrain-cluster --bench allreduce` (set
//! `ALLREDUCE_BENCH_SMALL=1` to skip the 100M-float payload).

use std::time::{Duration, Instant};

use cluster::{ClientOptions, Coordinator, CoordinatorOptions, WorkerClient, config_digest};

const TOKEN: &str = "bench-token";
const CONFIG: &str = "bench";

/// Payloads: the smoke model's and a 100M-parameter model's gradient.
const SIZES: [(&str, usize); 2] = [("smoke 5.9M", 5_900_000), ("100M", 100_000_000)];

fn main() {
    let small_only = std::env::var_os("ALLREDUCE_BENCH_SMALL").is_some();
    println!("| workers | payload      | floats      | time/iter | MB/s per worker |");
    println!("|---------|--------------|-------------|-----------|-----------------|");
    for (name, len) in SIZES {
        if small_only && len > 10_000_000 {
            continue;
        }
        let iters = if len > 10_000_000 { 3 } else { 10 };
        let t = baseline(3, len, iters);
        row("1 (sum)", name, len, t);
        for n in [2, 3] {
            row(&n.to_string(), name, len, cluster_run(n, len, iters));
        }
    }
}

fn row(workers: &str, name: &str, len: usize, per_iter: Duration) {
    let mb = (len * 4) as f64 / 1e6;
    println!(
        "| {workers:<7} | {name:<12} | {len:>11} | {:>7.1}ms | {:>15.0} |",
        per_iter.as_secs_f64() * 1e3,
        mb / per_iter.as_secs_f64()
    );
}

/// Single process: add `n` gradients into one, in order (what the
/// coordinator does, without the network and encoding).
fn baseline(n: usize, len: usize, iters: u32) -> Duration {
    let inputs: Vec<Vec<f32>> = (0..n).map(|p| vec![p as f32 + 0.5; len]).collect();
    let start = Instant::now();
    for _ in 0..iters {
        let mut acc = inputs[0].clone();
        for input in &inputs[1..] {
            for (a, x) in acc.iter_mut().zip(input) {
                *a += x;
            }
        }
        std::hint::black_box(&acc);
    }
    start.elapsed() / iters
}

/// `n` workers on loopback; the time of one all-reduce (after a warm-up).
fn cluster_run(n: u32, len: usize, iters: u32) -> Duration {
    let mut opts =
        CoordinatorOptions::new("127.0.0.1:0".parse().unwrap(), n, TOKEN, "bench", CONFIG);
    opts.heartbeat_timeout = Duration::from_secs(60);
    let coord = Coordinator::start(opts).expect("coordinator");
    let workers: Vec<WorkerClient> = (0..n)
        .map(|_| {
            let o = ClientOptions::new(
                coord.addr().to_string(),
                TOKEN,
                "bench",
                config_digest(CONFIG),
            );
            WorkerClient::connect(o).expect("worker")
        })
        .collect();
    let times: Vec<Duration> = std::thread::scope(|s| {
        let hs: Vec<_> = workers
            .iter()
            .map(|w| {
                s.spawn(move || {
                    let mut data = vec![w.process_id() as f32 + 0.5; len];
                    w.all_reduce_sum(0, &mut data).unwrap();
                    w.barrier("start", Duration::from_secs(60)).unwrap();
                    let start = Instant::now();
                    for step in 1..=u64::from(iters) {
                        w.all_reduce_sum(step, &mut data).unwrap();
                    }
                    start.elapsed() / iters
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for w in workers {
        w.leave().unwrap();
    }
    coord.shutdown();
    times.into_iter().max().unwrap()
}
