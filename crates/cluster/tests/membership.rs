//! Registration, barriers, heartbeat loss and replacement, leaving, and
//! losing the coordinator.

mod common;

use std::time::{Duration, Instant};

use cluster::{Command, Error, Event};
use common::*;

#[test]
fn three_workers_register_and_pass_a_barrier() {
    let coord = coordinator(3);
    let workers = connect_n(&coord, 3);
    for w in &workers {
        let r = w.registration();
        assert_eq!(r.world_size, 3);
        assert_eq!(r.job_config, CONFIG);
        assert_eq!(r.generation, 0);
        assert_eq!(r.resume_hint, None);
    }
    std::thread::scope(|s| {
        for w in &workers {
            s.spawn(move || w.barrier("start", Duration::from_secs(10)).unwrap());
        }
    });
    // The same name can be used again for the next round.
    std::thread::scope(|s| {
        for w in &workers {
            s.spawn(move || w.barrier("start", Duration::from_secs(10)).unwrap());
        }
    });
    assert_eq!(coord.live_workers(), vec![0, 1, 2]);
    assert!(matches!(
        wait_event(&coord, Duration::from_secs(1), |e| matches!(
            e,
            Event::Registered { .. }
        )),
        Some(Event::Registered {
            process_id: 0,
            replacement: false,
            ..
        })
    ));
}

#[test]
fn barrier_times_out_naming_the_missing_workers() {
    let coord = coordinator(2);
    let workers = connect_n(&coord, 2);
    let err = workers[0]
        .barrier("lonely", Duration::from_millis(300))
        .unwrap_err();
    match err {
        Error::Timeout(msg) => assert!(msg.contains("[1]"), "{msg}"),
        e => panic!("expected a timeout, got {e}"),
    }
}

#[test]
fn full_job_refuses_another_worker() {
    let coord = coordinator(1);
    let _w = connect(&coord);
    let err = cluster::WorkerClient::connect(client_options(&coord))
        .err()
        .unwrap();
    assert_eq!(err.code(), Some(tonic::Code::ResourceExhausted), "{err}");
}

#[test]
fn lost_worker_fails_barrier_with_restart_and_is_replaced() {
    let coord = coordinator_fast_loss(3);
    let mut workers = connect_n(&coord, 3);
    let silent = workers.pop().unwrap();
    let started = Instant::now();
    std::thread::scope(|s| {
        let waits: Vec<_> = workers
            .iter()
            .map(|w| s.spawn(move || w.barrier("step", Duration::from_secs(20))))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(silent); // stops heartbeating without leaving
        for h in waits {
            match h.join().unwrap() {
                Err(Error::Restart { generation: 1 }) => {}
                r => panic!("expected a restart, got {r:?}"),
            }
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(coord.generation(), 1);
    assert!(matches!(
        wait_event(&coord, Duration::from_secs(1), |e| matches!(
            e,
            Event::Lost { .. }
        )),
        Some(Event::Lost {
            process_id: 2,
            generation: 1,
            ..
        })
    ));
    // Survivors hear about it on their heartbeat.
    for w in &workers {
        assert!(eventually(Duration::from_secs(2), || matches!(
            w.command(),
            Command::Restart { generation: 1, .. }
        )));
        // Until they acknowledge, collectives in the old generation fail.
        assert!(matches!(
            w.barrier("again", Duration::from_secs(1)),
            Err(Error::Restart { generation: 1 })
        ));
        assert_eq!(w.acknowledge_restart(), 1);
        assert_eq!(w.command(), Command::Continue);
    }

    // A new worker takes the freed slot in the new generation.
    let replacement = connect(&coord);
    assert_eq!(replacement.process_id(), 2);
    assert_eq!(replacement.registration().generation, 1);
    assert!(matches!(
        wait_event(&coord, Duration::from_secs(1), |e| matches!(
            e,
            Event::Registered { .. }
        )),
        Some(Event::Registered {
            process_id: 2,
            replacement: true,
            ..
        })
    ));
    workers.push(replacement);
    std::thread::scope(|s| {
        for w in &workers {
            s.spawn(move || w.barrier("resumed", Duration::from_secs(10)).unwrap());
        }
    });
}

#[test]
fn all_workers_leaving_finishes_the_job() {
    let coord = coordinator(2);
    let workers = connect_n(&coord, 2);
    for w in workers {
        w.leave().unwrap();
    }
    assert_eq!(
        wait_event(&coord, Duration::from_secs(2), |e| matches!(
            e,
            Event::Finished
        )),
        Some(Event::Finished)
    );
    assert!(coord.is_finished());
}

#[test]
fn stop_reaches_workers_through_heartbeats() {
    let coord = coordinator(1);
    let w = connect(&coord);
    coord.stop("operator asked");
    assert!(eventually(Duration::from_secs(2), || w.command()
        == Command::Stop {
            reason: "operator asked".into()
        }));
}

/// The coordinator shuts down (or crashes) while a worker waits at a
/// barrier: the worker fails within a few seconds, naming the address.
fn worker_fails_when_coordinator_goes(crash: bool) {
    let coord = coordinator(2);
    let addr = coord.addr().to_string();
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let mut o = client_options(&coord);
            o.coordinator_timeout = Duration::from_secs(2);
            cluster::WorkerClient::connect(o).unwrap()
        })
        .collect();
    let started = Instant::now();
    std::thread::scope(|s| {
        let wait = s.spawn(|| workers[0].barrier("never", Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(300));
        if crash {
            coord.abort();
        } else {
            coord.shutdown();
        }
        match wait.join().unwrap() {
            Err(e @ Error::CoordinatorLost { .. }) => {
                let msg = e.to_string();
                eprintln!("crash={crash}: {msg}");
                assert!(
                    msg.starts_with(&format!("lost the coordinator at {addr}")),
                    "{msg}"
                );
            }
            r => panic!("expected CoordinatorLost, got {r:?}"),
        }
    });
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Later calls fail too, and the heartbeat ends in a Stop.
    assert!(
        workers[1]
            .barrier("after", Duration::from_secs(60))
            .is_err()
    );
    assert!(eventually(Duration::from_secs(4), || matches!(
        workers[1].command(),
        Command::Stop { .. }
    )));
}

#[test]
fn coordinator_shutdown_fails_a_waiting_worker() {
    worker_fails_when_coordinator_goes(false);
}

#[test]
fn coordinator_crash_fails_a_waiting_worker() {
    worker_fails_when_coordinator_goes(true);
}

#[test]
fn lost_worker_fails_pending_all_reduce_and_checkpoint() {
    let coord = coordinator_fast_loss(3);
    let mut workers = connect_n(&coord, 3);
    let silent = workers.pop().unwrap();
    std::thread::scope(|s| {
        let waits: Vec<_> = workers
            .iter()
            .map(|w| s.spawn(move || w.all_reduce_sum(0, &mut vec![1.0; 1000])))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(silent);
        for h in waits {
            assert!(matches!(
                h.join().unwrap(),
                Err(Error::Restart { generation: 1 })
            ));
        }
    });
    for w in &workers {
        // The error alone is enough to move on, without waiting for a
        // heartbeat to bring the Restart command.
        assert_eq!(w.acknowledge_restart(), 1);
    }

    let silent = connect(&coord);
    std::thread::scope(|s| {
        let waits: Vec<_> = workers
            .iter()
            .map(|w| s.spawn(move || w.commit_checkpoint(10, true, "", Duration::from_secs(20))))
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(silent);
        for h in waits {
            let v = h.join().unwrap().unwrap();
            assert!(!v.commit);
            assert!(v.reason.contains("worker 2"), "{}", v.reason);
        }
    });
    assert_eq!(coord.last_committed_step(), None);
    assert_eq!(coord.generation(), 2);
}

/// A coordinator restarted at the same address: a worker that still holds
/// its membership from the first one (its channel reconnects to the new
/// one by itself) is not taken for the worker registered since under the
/// same process id. Both used to be incarnation 1 of process 0, and the
/// job then waited forever for a process id that two workers thought they
/// held.
#[test]
fn a_membership_from_an_earlier_coordinator_at_the_address_is_not_a_member() {
    use cluster::proto::HeartbeatRequest;
    use cluster::proto::heartbeat_response::Command as Cmd;
    use common::raw::{RawPeer, authorized};

    let first = coordinator(2);
    let addr = first.addr();
    let stale = RawPeer::register(&addr.to_string());
    first.abort();
    let mut o = options(2);
    o.listen = addr;
    o.start_generation = 1;
    let second = cluster::Coordinator::start(o).expect("a coordinator restarts on the address");
    let fresh = RawPeer::register(&addr.to_string());
    assert_eq!(fresh.member.process_id, stale.member.process_id);
    assert_ne!(fresh.member.incarnation, stale.member.incarnation);
    let heartbeat = |member| {
        let req = authorized(HeartbeatRequest {
            member: Some(member),
            generation: 1,
        });
        let r = fresh.rt.block_on(fresh.rpc.clone().heartbeat(req)).unwrap();
        r.into_inner().command
    };
    match heartbeat(stale.member) {
        Some(Cmd::Stop(s)) => {
            assert!(s.not_member, "{s:?}");
            assert!(s.reason.contains("is not a member of the job"), "{s:?}");
        }
        other => panic!("the stale membership was answered {other:?}"),
    }
    assert!(matches!(heartbeat(fresh.member), Some(Cmd::Continue(_))));
    drop(second);
}

/// The coordinator tells workers the job's heartbeat interval at
/// registration: a worker whose own interval (5 s) is longer than the
/// job's heartbeat timeout (1 s) beats at the job's (100 ms) and stays a
/// member.
#[test]
fn workers_heartbeat_at_the_interval_the_coordinator_gives() {
    let mut o = options(1);
    o.heartbeat_timeout = Duration::from_secs(1);
    o.heartbeat_interval = Duration::from_millis(100);
    let coord = cluster::Coordinator::start(o).unwrap();
    let mut c = client_options(&coord);
    c.heartbeat_interval = Duration::from_secs(5);
    let w = cluster::WorkerClient::connect(c).unwrap();
    assert_eq!(w.heartbeat_interval(), Duration::from_millis(100));
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(w.command(), Command::Continue);
    w.barrier("alive", Duration::from_secs(5)).unwrap();

    // Without an interval from the coordinator the worker keeps its own.
    let coord = coordinator(1);
    let mut c = client_options(&coord);
    c.heartbeat_interval = Duration::from_millis(300);
    let w = cluster::WorkerClient::connect(c).unwrap();
    assert_eq!(w.heartbeat_interval(), Duration::from_millis(300));
}
