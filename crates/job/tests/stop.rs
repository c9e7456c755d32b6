//! A job the coordinator stops (too many lost workers) ends within a
//! bounded time, whatever the surviving workers are doing: waiting in a
//! call, or busy and never calling. The workers are bare cluster clients,
//! so no training runs.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use cluster::{ClientOptions, Command, Error, WorkerClient};
use train::TrainConfig;

const TOKEN: &str = "stop-test-token";

/// A coordinator for 2 workers that stops the job at the first loss
/// (declared after 1 s of silence), on its own thread.
struct Job {
    addr: String,
    outcome: mpsc::Receiver<job::Result<job::coordinator::Summary>>,
    _dir: tempfile::TempDir,
}

fn start_job() -> Job {
    let dir = tempfile::tempdir().unwrap();
    let sets = [
        "coordinator.max_restarts=0".to_string(),
        "coordinator.heartbeat_timeout_s=1".into(),
        "coordinator.heartbeat_interval_s=0.1".into(),
        format!("train.run_dir={:?}", dir.path().display().to_string()),
    ];
    let config = TrainConfig::load(None, &sets).unwrap();
    let (addr_tx, addr_rx) = mpsc::channel();
    let (tx, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let r = job::coordinator::run(job::coordinator::Options {
            config,
            listen: "127.0.0.1:0".parse().unwrap(),
            workers: 2,
            token: TOKEN.into(),
            show_progress: false,
            on_listen: Some(Box::new(move |a| addr_tx.send(a).unwrap())),
        });
        let _ = tx.send(r);
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    Job {
        addr: addr.to_string(),
        outcome,
        _dir: dir,
    }
}

fn worker(job: &Job) -> WorkerClient {
    let mut o = ClientOptions::new(job.addr.clone(), TOKEN, job::SOFTWARE_VERSION, "");
    o.heartbeat_interval = Duration::from_millis(100);
    o.coordinator_timeout = Duration::from_secs(10);
    WorkerClient::connect(o).unwrap()
}

/// The coordinator returns the stop within `secs` of `since`.
fn coordinator_stops(job: &Job, since: Instant, secs: u64) -> String {
    let r = job
        .outcome
        .recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| {
            panic!(
                "the coordinator still runs {:?} after the last worker was lost",
                since.elapsed()
            )
        });
    match r {
        Err(job::Error::Stopped(reason)) => {
            assert!(reason.contains("coordinator.max_restarts = 0"), "{reason}");
            reason
        }
        r => panic!("expected the job to be stopped, got {r:?}"),
    }
}

#[test]
fn a_stopped_job_releases_a_worker_in_a_long_poll_and_ends() {
    let job = start_job();
    let held = Arc::new(worker(&job));
    let lost = worker(&job);
    let (tx, poll) = mpsc::channel();
    let w = held.clone();
    std::thread::spawn(move || {
        let _ = tx.send(w.kv_get("never-put", Duration::from_secs(600)));
    });
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    drop(lost); // silent: declared lost after 1 s, which stops the job
    let reason = coordinator_stops(&job, t, 15);
    match poll.recv_timeout(Duration::from_secs(5)) {
        Ok(Err(Error::Stopped { reason: why })) => assert_eq!(why, reason),
        r => panic!("the long poll should end with the stop, got {r:?}"),
    }
}

#[test]
fn a_worker_that_heartbeats_but_never_exits_does_not_keep_a_stopped_job_alive() {
    let job = start_job();
    let busy = worker(&job); // heartbeats, makes no call, never leaves
    let lost = worker(&job);
    let t = Instant::now();
    drop(lost);
    let reason = coordinator_stops(&job, t, 15);
    assert_eq!(busy.command(), Command::Stop { reason });
}
