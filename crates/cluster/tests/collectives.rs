//! All-reduce, key-value store, checkpoint agreement and metrics.

mod common;

use std::time::Duration;

use cluster::{Error, Event, WorkerClient};
use common::*;

/// Worker `p`'s gradient: values of mixed magnitude, so that the
/// summation order shows in the low bits.
fn gradient(p: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let x = ((i * 2_654_435_761 + p * 40_503) % 1_000_003) as f32;
            (x - 500_000.0) * 10f32.powi((i % 7) as i32 - 3) / (p as f32 + 1.0)
        })
        .collect()
}

/// Runs an all-reduce of `len` floats on every worker, worker `p` starting
/// after `delay(p)`; checks the result is the process-id-ordered sum,
/// bit for bit, on every worker.
fn check_all_reduce(
    workers: &[WorkerClient],
    step: u64,
    len: usize,
    delay: impl Fn(usize) -> u64 + Sync,
) {
    let inputs: Vec<Vec<f32>> = (0..workers.len()).map(|p| gradient(p, len)).collect();
    let mut want = inputs[0].clone();
    for input in &inputs[1..] {
        for (w, x) in want.iter_mut().zip(input) {
            *w += x;
        }
    }
    let outputs: Vec<Vec<f32>> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter()
            .zip(inputs)
            .enumerate()
            .map(|(p, (w, mut data))| {
                let d = delay(p);
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(d));
                    w.all_reduce_sum(step, &mut data).unwrap();
                    data
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for out in &outputs {
        assert_eq!(out.len(), len);
        let same = out
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "a worker's sum differs from the ordered sum");
    }
}

#[test]
fn all_reduce_large_and_small_is_the_ordered_sum_everywhere() {
    let coord = coordinator(3);
    let workers = connect_n(&coord, 3);
    check_all_reduce(&workers, 0, 3, |_| 0);
    check_all_reduce(&workers, 1, 20_000_000, |_| 0);
    // Arrival order does not matter: the last process arrives first.
    check_all_reduce(&workers, 2, 1_000_003, |p| (2 - p as u64) * 100);
    check_all_reduce(&workers, 3, 0, |_| 0);
}

#[test]
fn all_reduce_f64_for_scalars() {
    let coord = coordinator(3);
    let workers = connect_n(&coord, 3);
    let sums: Vec<[f64; 2]> = std::thread::scope(|s| {
        let hs: Vec<_> = workers
            .iter()
            .map(|w| {
                s.spawn(move || {
                    let p = w.process_id() as f64;
                    let mut v = [0.1 * (p + 1.0), 1000.0 + p];
                    w.all_reduce_f64(7, &mut v).unwrap();
                    v
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let want: [f64; 2] = [(0.1 + 0.2) + 0.1 * 3.0, 3003.0];
    for s in sums {
        assert_eq!(s[0].to_bits(), want[0].to_bits());
        assert_eq!(s[1], want[1]);
    }
}

#[test]
fn all_reduce_length_mismatch_fails_everyone() {
    let coord = coordinator(2);
    let workers = connect_n(&coord, 2);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = workers
            .iter()
            .enumerate()
            .map(|(p, w)| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(100 * p as u64));
                    w.all_reduce_sum(0, &mut vec![1.0; 10 + p])
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r.unwrap_err().code(), Some(tonic::Code::InvalidArgument));
    }
}

#[test]
fn kv_get_blocks_until_another_worker_puts() {
    let coord = coordinator(2);
    let workers = connect_n(&coord, 2);
    assert_eq!(workers[0].kv_try_get("nccl_id").unwrap(), None);
    let got = std::thread::scope(|s| {
        let get = s.spawn(|| workers[0].kv_get("nccl_id", Duration::from_secs(10)));
        std::thread::sleep(Duration::from_millis(200));
        workers[1]
            .kv_put("nccl_id", b"\x00\x01bytes", false)
            .unwrap();
        get.join().unwrap()
    });
    assert_eq!(got.unwrap(), b"\x00\x01bytes");
    assert_eq!(
        workers[0].kv_try_get("nccl_id").unwrap().unwrap(),
        b"\x00\x01bytes"
    );

    // Put once: the same value again is fine, a different one is refused
    // unless overwriting.
    workers[0]
        .kv_put("nccl_id", b"\x00\x01bytes", false)
        .unwrap();
    let err = workers[0].kv_put("nccl_id", b"other", false).unwrap_err();
    assert_eq!(err.code(), Some(tonic::Code::AlreadyExists), "{err}");
    workers[0].kv_put("nccl_id", b"other", true).unwrap();
    assert_eq!(
        workers[1].kv_get("nccl_id", Duration::ZERO).unwrap(),
        b"other"
    );

    assert!(workers[1].kv_delete("nccl_id").unwrap());
    assert!(!workers[1].kv_delete("nccl_id").unwrap());
    match workers[0].kv_get("nccl_id", Duration::from_millis(200)) {
        Err(Error::Timeout(msg)) => assert!(msg.contains("nccl_id"), "{msg}"),
        r => panic!("expected a timeout, got {r:?}"),
    }
}

fn commit_all(
    workers: &[WorkerClient],
    step: u64,
    failing: Option<u32>,
) -> Vec<cluster::CheckpointVerdict> {
    std::thread::scope(|s| {
        let hs: Vec<_> = workers
            .iter()
            .map(|w| {
                s.spawn(move || {
                    let ok = Some(w.process_id()) != failing;
                    let error = if ok { "" } else { "disk full" };
                    w.commit_checkpoint(step, ok, error, Duration::from_secs(10))
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn checkpoint_commits_only_when_every_worker_wrote() {
    let coord = coordinator_fast_loss(3);
    let workers = connect_n(&coord, 3);
    for v in commit_all(&workers, 100, None) {
        assert!(v.commit, "{}", v.reason);
    }
    assert_eq!(coord.last_committed_step(), Some(100));
    assert_eq!(
        wait_event(&coord, Duration::from_secs(1), |e| matches!(
            e,
            Event::CheckpointCommitted { .. }
        )),
        Some(Event::CheckpointCommitted { step: 100 })
    );

    for v in commit_all(&workers, 200, Some(1)) {
        assert!(!v.commit);
        assert!(v.reason.contains("process 1: disk full"), "{}", v.reason);
    }
    assert_eq!(coord.last_committed_step(), Some(100));

    // A worker registering later is told where to resume.
    drop(workers);
    let coord2 = coord; // same coordinator, slots freed by heartbeat loss
    assert!(eventually(Duration::from_secs(4), || coord2
        .live_workers()
        .is_empty()));
    let late = connect(&coord2);
    assert_eq!(late.registration().resume_hint, Some(100));
}

#[test]
fn metrics_are_delivered_once_every_worker_reported() {
    let coord = coordinator(2);
    let workers = connect_n(&coord, 2);
    workers[1].report_metrics(5, r#"{"loss":2.5}"#).unwrap();
    workers[0].report_metrics(5, r#"{"loss":2.0}"#).unwrap();
    assert_eq!(
        wait_event(&coord, Duration::from_secs(2), |e| matches!(
            e,
            Event::Metrics { .. }
        )),
        Some(Event::Metrics {
            step: 5,
            reports: vec![(0, r#"{"loss":2.0}"#.into()), (1, r#"{"loss":2.5}"#.into())],
        })
    );
}

#[test]
fn metrics_of_a_step_complete_when_the_missing_worker_is_lost() {
    let coord = coordinator_fast_loss(3);
    let mut workers = connect_n(&coord, 3);
    let silent = workers.pop().unwrap();
    drop(silent);
    workers[0].report_metrics(9, "{}").unwrap();
    workers[1].report_metrics(9, "{}").unwrap();
    match wait_event(&coord, Duration::from_secs(4), |e| {
        matches!(e, Event::Metrics { .. })
    }) {
        Some(Event::Metrics { step: 9, reports }) => assert_eq!(reports.len(), 2),
        e => panic!("expected metrics of step 9, got {e:?}"),
    }
}
