//! Stopping a job releases every worker, whatever it waits in, with the
//! reason; shutting the coordinator down takes a bounded time whatever its
//! peers hold open.

mod common;

use common::raw::RawPeer;

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use cluster::{Command, Error, WorkerClient};
use common::*;

/// Long enough that a call still waiting when the test looks was not
/// released by its own timeout.
const HELD: Duration = Duration::from_secs(120);

/// A coordinator that waits 30 s before declaring a silent peer lost: the
/// raw peers below do not heartbeat, and must outlive a loaded machine.
fn patient_options(n: u32) -> cluster::CoordinatorOptions {
    let mut o = options(n);
    o.heartbeat_timeout = Duration::from_secs(30);
    o
}

/// Runs `f` on its own thread; its result arrives on the receiver. A call
/// that never returns leaves the thread behind instead of hanging the test.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx
}

/// The result of a held call, which must come within `limit`.
fn released<T>(what: &str, rx: &mpsc::Receiver<T>, limit: Duration) -> T {
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("{what}: still blocked {limit:?} after the job was stopped"))
}

fn assert_stopped<T: std::fmt::Debug>(what: &str, r: cluster::Result<T>, why: &str) {
    match r {
        Err(Error::Stopped { reason }) => assert_eq!(reason, why, "{what}"),
        r => panic!("{what}: expected the job's stop, got {r:?}"),
    }
}

#[test]
fn stop_releases_workers_held_in_every_kind_of_wait() {
    let coord = cluster::Coordinator::start(patient_options(3)).unwrap();
    let workers: Vec<Arc<WorkerClient>> = connect_n(&coord, 2).into_iter().map(Arc::new).collect();
    // Process 2 holds the coordinator inside the upload of an all-reduce.
    let raw = RawPeer::register(&coord.addr().to_string());
    let (upload, _keep_open) = raw.hold_all_reduce(7, 1000, HELD);

    // Process 0 waits in each collective for the others; process 1 is idle.
    let w = workers[0].clone();
    let barrier = spawn(move || w.barrier("held", HELD));
    let w = workers[0].clone();
    let reduce = spawn(move || w.all_reduce_sum(3, &mut [1.0; 1000]));
    let w = workers[0].clone();
    let agree = spawn(move || w.commit_checkpoint(4, true, "", HELD));
    let w = workers[0].clone();
    let poll = spawn(move || w.kv_get("never-put", HELD));
    std::thread::sleep(Duration::from_millis(500));
    assert!(barrier.try_recv().is_err() && reduce.try_recv().is_err());
    assert!(agree.try_recv().is_err() && poll.try_recv().is_err());
    assert!(upload.try_recv().is_err());

    let stopped = Instant::now();
    coord.stop("operator asked");
    let limit = Duration::from_secs(5);
    assert_stopped(
        "barrier",
        released("barrier", &barrier, limit),
        "operator asked",
    );
    assert_stopped(
        "all-reduce",
        released("all-reduce", &reduce, limit),
        "operator asked",
    );
    assert_stopped(
        "checkpoint agreement",
        released("checkpoint agreement", &agree, limit),
        "operator asked",
    );
    assert_stopped("kv get", released("kv get", &poll, limit), "operator asked");
    let status = released("all-reduce upload", &upload, limit).unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert_eq!(status.message(), "the job was stopped: operator asked");
    assert!(stopped.elapsed() < limit, "{:?}", stopped.elapsed());
    // The first reason is the one that counts.
    coord.stop("a later reason");
    assert_stopped(
        "barrier after the stop",
        workers[1].barrier("late", HELD),
        "operator asked",
    );
}

#[test]
fn a_stopped_job_refuses_new_calls_and_registrations() {
    let coord = coordinator(2);
    let w = connect(&coord);
    coord.stop("operator asked");
    assert_stopped("barrier", w.barrier("late", HELD), "operator asked");
    assert_stopped(
        "all-reduce",
        w.all_reduce_sum(0, &mut [1.0; 10]),
        "operator asked",
    );
    assert_stopped(
        "registration",
        WorkerClient::connect(client_options(&coord)).map(drop),
        "operator asked",
    );
    assert_eq!(
        w.command(),
        Command::Stop {
            reason: "operator asked".into()
        }
    );
}

#[test]
fn a_worker_told_to_stop_by_its_heartbeat_fails_every_call() {
    let coord = coordinator(1);
    let w = connect(&coord);
    coord.stop("operator asked");
    assert!(eventually(Duration::from_secs(5), || matches!(
        w.command(),
        Command::Stop { .. }
    )));
    assert!(coord.untold_workers().is_empty());
    // The coordinator would answer this one; the worker knows better.
    assert_stopped("kv try-get", w.kv_try_get("k"), "operator asked");
    assert_stopped("leave", w.leave(), "operator asked");
}

#[test]
fn untold_workers_are_those_still_to_hear_the_stop() {
    let coord = coordinator_fast_loss(2);
    let workers = connect_n(&coord, 2);
    assert_eq!(coord.untold_workers(), vec![0, 1]);
    let [w0, w1]: [WorkerClient; 2] = workers.try_into().ok().unwrap();
    drop(w1); // no heartbeat any more: declared lost within a second
    coord.stop("operator asked");
    assert!(eventually(Duration::from_secs(5), || coord
        .untold_workers()
        .is_empty()));
    assert_eq!(coord.live_workers(), vec![0]);
    assert!(eventually(Duration::from_secs(5), || matches!(
        w0.command(),
        Command::Stop { .. }
    )));
}

/// Shutting down while a worker waits at a barrier, a peer holds an
/// all-reduce upload open, and a TCP peer never speaks: bounded.
fn shutdown_is_bounded(tls: bool) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = patient_options(3);
    let mut copts = None;
    if tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        opts.tls = Some(cluster::TlsServer {
            cert_pem_path: cert_path.clone(),
            key_pem_path: key_path,
        });
        copts = Some(cluster::TlsClient {
            ca_pem_path: cert_path,
            domain: "localhost".into(),
        });
    }
    let coord = cluster::Coordinator::start(opts).unwrap();
    let addr = coord.addr().to_string();
    let mut o = client_options(&coord);
    o.tls = copts;
    let w = Arc::new(WorkerClient::connect(o).unwrap());
    let _silent = std::net::TcpStream::connect(&addr).unwrap();
    let held = if tls {
        None
    } else {
        Some(RawPeer::register(&addr).hold_all_reduce(1, 1000, HELD))
    };
    let w2 = w.clone();
    let barrier = spawn(move || w2.barrier("held", HELD));
    std::thread::sleep(Duration::from_millis(300));

    let t = Instant::now();
    coord.shutdown();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let r = released("barrier", &barrier, Duration::from_secs(10));
    assert!(matches!(r, Err(Error::CoordinatorLost { .. })), "{r:?}");
    drop(held);
}

#[test]
fn shutdown_is_bounded_whatever_peers_hold_open() {
    shutdown_is_bounded(false);
}

#[test]
fn tls_shutdown_is_bounded_whatever_peers_hold_open() {
    shutdown_is_bounded(true);
}

/// The sequence of the multi-host hang: a worker is lost, the survivor's
/// collective fails with a restart, the survivor moves to the new
/// generation and waits at its start barrier for a replacement; then the
/// job is stopped instead. The barrier must end with the stop.
#[test]
fn a_survivor_waiting_for_a_replacement_is_released_by_the_stop() {
    let coord = coordinator_fast_loss(2);
    let [w0, w1]: [WorkerClient; 2] = connect_n(&coord, 2).try_into().ok().unwrap();
    let w0 = Arc::new(w0);
    let w = w0.clone();
    let reduce = spawn(move || w.all_reduce_sum(5, &mut [1.0; 100]));
    std::thread::sleep(Duration::from_millis(200));
    drop(w1);
    let r = released("all-reduce", &reduce, Duration::from_secs(10));
    assert!(matches!(r, Err(Error::Restart { generation: 1 })), "{r:?}");
    assert_eq!(w0.acknowledge_restart(), 1);
    let w = w0.clone();
    let barrier = spawn(move || w.barrier("start-1", HELD));
    std::thread::sleep(Duration::from_millis(300));
    assert!(barrier.try_recv().is_err());
    coord.stop("worker 1 lost; 1 losses exceed coordinator.max_restarts = 0");
    let r = released("start barrier", &barrier, Duration::from_secs(5));
    assert_stopped(
        "start barrier",
        r,
        "worker 1 lost; 1 losses exceed coordinator.max_restarts = 0",
    );
}
