//! Hostile peers against a running coordinator: floods without the token,
//! chunks that lie about their size, stale members and generations,
//! replays, requests beyond the limits, and many workers at once. The
//! coordinator refuses each with a status that says why, allocates no more
//! than what was actually sent, and keeps serving the honest workers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cluster::proto::cluster_client::ClusterClient;
use cluster::proto::heartbeat_response::Command;
use cluster::proto::{HeartbeatRequest, Member, RegisterRequest};
use cluster::{WorkerClient, config_digest};
use common::raw::{RawPeer, authorized, data};
use common::*;
use tonic::Code;

fn floats(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, tonic::Status>, code: Code, says: &str) {
    match r {
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            assert!(s.message().contains(says), "{what}: {:?}", s.message());
        }
        Ok(v) => panic!("{what}: accepted ({v:?})"),
    }
}

#[test]
fn floods_without_the_token_are_refused_while_honest_workers_go_on() {
    let coord = coordinator(2);
    let workers: Vec<Arc<WorkerClient>> = connect_n(&coord, 2).into_iter().map(Arc::new).collect();
    let addr = coord.addr().to_string();
    // 4 attackers, 150 calls each, with no token or a wrong one.
    let attackers: Vec<_> = (0..4)
        .map(|a| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Runtime::new().unwrap();
                rt.block_on(async move {
                    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .unwrap()
                        .connect()
                        .await
                        .unwrap();
                    let mut rpc = ClusterClient::new(channel);
                    let mut refused = 0;
                    for i in 0..150 {
                        let msg = RegisterRequest {
                            protocol_version: 1,
                            host: format!("attacker-{a}"),
                            devices: 0,
                            backend: "cpu".into(),
                            software_version: VERSION.into(),
                            config_digest: config_digest(CONFIG),
                        };
                        let mut req = tonic::Request::new(msg);
                        if i % 2 == 0 {
                            req.metadata_mut()
                                .insert("authorization", "Bearer wrong-token".parse().unwrap());
                        }
                        let hb = HeartbeatRequest {
                            member: Some(Member {
                                process_id: 0,
                                incarnation: 1,
                            }),
                            generation: 0,
                        };
                        let r1 = rpc.register(req).await;
                        let r2 = rpc.heartbeat(tonic::Request::new(hb)).await;
                        for r in [r1.map(|_| ()), r2.map(|_| ())] {
                            match r {
                                Err(s) if s.code() == Code::Unauthenticated => refused += 1,
                                other => panic!("attacker call {i}: {other:?}"),
                            }
                        }
                    }
                    refused
                })
            })
        })
        .collect();
    // Meanwhile the honest workers sum 20 steps.
    let honest: Vec<_> = workers
        .iter()
        .map(|w| {
            let w = w.clone();
            std::thread::spawn(move || {
                for step in 0..20 {
                    let mut v = vec![w.process_id() as f32 + step as f32; 1000];
                    w.all_reduce_sum(step, &mut v).unwrap();
                    assert_eq!(v[999], 1.0 + 2.0 * step as f32, "step {step}");
                }
            })
        })
        .collect();
    for h in honest {
        h.join().unwrap();
    }
    let refused: usize = attackers.into_iter().map(|a| a.join().unwrap()).sum();
    assert_eq!(refused, 4 * 150 * 2);
    assert_eq!(
        coord.live_workers().len(),
        2,
        "no attacker took a process id"
    );
}

#[test]
fn chunks_that_lie_about_their_size_are_refused_and_allocate_nothing() {
    let coord = coordinator(1);
    let raw = RawPeer::register(&coord.addr().to_string());
    let four = floats(&[1.0, 2.0, 3.0, 4.0]);
    // A header declaring 2^40 floats (4 TiB) and 4 floats sent: refused for
    // what arrived; nothing of the declared size was allocated.
    refused(
        "huge declared length",
        raw.all_reduce(vec![raw.header(0, 1, 1 << 40), data(four.clone())]),
        Code::InvalidArgument,
        "payload ended after 4 of 1099511627776 elements",
    );
    refused(
        "a chunk that is not whole floats",
        raw.all_reduce(vec![raw.header(0, 2, 4), data(vec![0; 7])]),
        Code::InvalidArgument,
        "chunk of 7 bytes does not fit a payload of 4 elements at 0",
    );
    refused(
        "more data than declared",
        raw.all_reduce(vec![
            raw.header(0, 3, 4),
            data(four.clone()),
            data(floats(&[5.0])),
        ]),
        Code::InvalidArgument,
        "chunk of 4 bytes does not fit a payload of 4 elements at 4",
    );
    refused(
        "truncated",
        raw.all_reduce(vec![raw.header(0, 4, 4), data(floats(&[1.0]))]),
        Code::InvalidArgument,
        "payload ended after 1 of 4 elements",
    );
    refused(
        "no header",
        raw.all_reduce(vec![data(four.clone())]),
        Code::InvalidArgument,
        "must start with a header",
    );
    // A message over the transport's limit (16 MiB) is refused by the
    // transport before it is decoded.
    let r = raw.all_reduce(vec![raw.header(0, 5, 5 << 20), data(vec![0; 20 << 20])]);
    assert!(r.is_err(), "an oversized message was accepted");
    // The coordinator still serves: an honest sum from the same peer.
    let answer = raw
        .all_reduce(vec![raw.header(0, 6, 4), data(four.clone())])
        .unwrap();
    let bytes: Vec<u8> = answer.iter().flat_map(|c| c.data.to_vec()).collect();
    assert_eq!(bytes, four);
}

#[test]
fn stale_members_wrong_generations_and_replays_are_refused() {
    let coord = coordinator(1);
    let raw = RawPeer::register(&coord.addr().to_string());
    let mut rpc = raw.rpc.clone();
    // Another incarnation of the same process id (a replayed old identity).
    let stale = Member {
        process_id: raw.member.process_id,
        incarnation: raw.member.incarnation + 7,
    };
    let hb = |member: Member, generation: u64| {
        authorized(HeartbeatRequest {
            member: Some(member),
            generation,
        })
    };
    // A heartbeat from a non-member is answered with a stop that says why.
    let told_stop = |what: &str, member: Member, says: &str| {
        let r = raw
            .rt
            .block_on(rpc.clone().heartbeat(hb(member, 0)))
            .unwrap();
        match r.into_inner().command {
            Some(Command::Stop(s)) => assert!(s.reason.contains(says), "{what}: {}", s.reason),
            other => panic!("{what}: answered {other:?}"),
        }
    };
    told_stop("stale incarnation", stale, "is not a member of the job");
    let outside = Member {
        process_id: 99,
        incarnation: 1,
    };
    told_stop(
        "a process id outside the job",
        outside,
        "process 99 (incarnation 1) is not a member",
    );
    refused(
        "an all-reduce for a generation the job is not in",
        raw.all_reduce(vec![raw.header(5, 1, 1), data(floats(&[1.0]))]),
        Code::InvalidArgument,
        "generation 5 is ahead of the coordinator's 0",
    );
    // The same contribution twice (a replay): the first is summed, the
    // second refused. World size 1, so the first completes at once.
    raw.all_reduce(vec![raw.header(0, 9, 1), data(floats(&[2.0]))])
        .unwrap();
    refused(
        "replayed contribution",
        raw.all_reduce(vec![raw.header(0, 9, 1), data(floats(&[2.0]))]),
        Code::AlreadyExists,
        "contributed to step 9 again: that all-reduce is done",
    );
    // The honest identity is still a member, told to go on.
    let r = raw.rt.block_on(rpc.heartbeat(hb(raw.member, 0))).unwrap();
    assert!(
        matches!(r.into_inner().command, Some(Command::Continue(_))),
        "the honest member was not told to continue"
    );
}

#[test]
fn many_workers_register_heartbeat_and_meet_at_once() {
    const N: u32 = 128;
    let mut o = options(N);
    o.heartbeat_timeout = Duration::from_secs(30);
    let coord = cluster::Coordinator::start(o).unwrap();
    let joined: Vec<_> = (0..N)
        .map(|_| {
            let mut opts = client_options(&coord);
            opts.heartbeat_interval = Duration::from_millis(500);
            opts.coordinator_timeout = Duration::from_secs(60);
            opts.rpc_timeout = Duration::from_secs(60);
            std::thread::spawn(move || {
                let w = WorkerClient::connect(opts).expect("registers");
                w.barrier("all-here", Duration::from_secs(120)).unwrap();
                w
            })
        })
        .collect();
    let workers: Vec<WorkerClient> = joined.into_iter().map(|j| j.join().unwrap()).collect();
    let mut ids: Vec<u32> = workers.iter().map(|w| w.process_id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..N).collect::<Vec<_>>(), "every process id once");
    assert_eq!(coord.live_workers().len(), N as usize);
    // One more is refused: the job is full.
    let extra = WorkerClient::connect(client_options(&coord));
    let e = extra
        .err()
        .expect("a worker beyond the job's size was admitted");
    assert!(e.to_string().contains("job is full"), "{e}");
}

#[test]
fn requests_beyond_the_limits_are_refused_while_honest_workers_go_on() {
    use cluster::limits;
    use cluster::proto::{KvPutRequest, ReportMetricsRequest};
    let coord = coordinator(3);
    let workers: Vec<Arc<WorkerClient>> = connect_n(&coord, 2).into_iter().map(Arc::new).collect();
    let raw = RawPeer::register(&coord.addr().to_string());
    let mut rpc = raw.rpc.clone();
    let put = |key: String, len: usize| {
        let mut rpc = raw.rpc.clone();
        raw.rt.block_on(rpc.kv_put(authorized(KvPutRequest {
            key,
            value: vec![7u8; len].into(),
            allow_overwrite: true,
        })))
    };
    refused(
        "a key over the limit",
        put("k".repeat(limits::MAX_KEY_BYTES + 1), 1),
        Code::ResourceExhausted,
        &format!(
            "the key is 1025 bytes, more than the coordinator's limit of {}",
            limits::MAX_KEY_BYTES
        ),
    );
    refused(
        "a value over the limit",
        put("big".into(), limits::MAX_VALUE_BYTES + 1),
        Code::ResourceExhausted,
        "the value of key \"big\" is 8388609 bytes",
    );
    // A message over the transport's limit is refused before it is stored.
    let r = put("huge".into(), limits::MAX_MESSAGE_BYTES + 1);
    match r {
        Err(s) => assert!(
            s.code() == Code::OutOfRange && s.message().contains("too large"),
            "{s:?}"
        ),
        Ok(_) => panic!("a message over the transport limit was accepted"),
    }
    refused(
        "metrics over the limit",
        raw.rt
            .block_on(rpc.report_metrics(authorized(ReportMetricsRequest {
                member: Some(raw.member),
                step: 0,
                json: "x".repeat(limits::MAX_REPORT_BYTES + 1),
            }))),
        Code::ResourceExhausted,
        "the metrics JSON is 1048577 bytes",
    );
    let e = workers[0]
        .barrier(
            &"b".repeat(limits::MAX_KEY_BYTES + 1),
            Duration::from_secs(5),
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("the barrier name is 1025 bytes"),
        "{e}"
    );
    // Nothing refused was stored; values within the limits are.
    assert_eq!(workers[0].kv_try_get("big").unwrap(), None);
    assert_eq!(workers[0].kv_try_get("huge").unwrap(), None);
    put("fine".into(), 1000).unwrap();
    assert_eq!(
        workers[1].kv_try_get("fine").unwrap(),
        Some(vec![7u8; 1000])
    );
    // The honest workers (and the raw peer, a member too) still meet.
    let done: Vec<_> = workers
        .iter()
        .map(|w| {
            let w = w.clone();
            std::thread::spawn(move || {
                let mut v = vec![1.0f32; 3];
                w.all_reduce_sum(0, &mut v).map(|()| v)
            })
        })
        .collect();
    raw.all_reduce(vec![raw.header(0, 0, 3), data(floats(&[1.0, 1.0, 1.0]))])
        .unwrap();
    for d in done {
        assert_eq!(d.join().unwrap().unwrap(), vec![3.0; 3]);
    }
}
