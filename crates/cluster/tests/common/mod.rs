//! Shared helpers: a coordinator on 127.0.0.1:0 and workers connected to it.
#![allow(dead_code)]

pub mod raw;

use std::time::{Duration, Instant};

use cluster::{
    ClientOptions, CoordinatorHandle, CoordinatorOptions, Event, WorkerClient, config_digest,
};

pub const TOKEN: &str = "test-token-0123456789";
pub const VERSION: &str = "0.1.0";
pub const CONFIG: &str = "[model]\nsize = \"smoke\"\n";

/// Coordinator options for `n` workers with a 5 s heartbeat timeout
/// (generous: tests run in parallel on small machines).
pub fn options(n: u32) -> CoordinatorOptions {
    let mut o = CoordinatorOptions::new("127.0.0.1:0".parse().unwrap(), n, TOKEN, VERSION, CONFIG);
    o.heartbeat_timeout = Duration::from_secs(5);
    o
}

pub fn coordinator(n: u32) -> CoordinatorHandle {
    cluster::Coordinator::start(options(n)).expect("coordinator starts")
}

/// A coordinator that declares a worker lost after 1 s of silence, for
/// the tests about losing workers.
pub fn coordinator_fast_loss(n: u32) -> CoordinatorHandle {
    let mut o = options(n);
    o.heartbeat_timeout = Duration::from_secs(1);
    cluster::Coordinator::start(o).expect("coordinator starts")
}

/// Client options: 100 ms heartbeats, coordinator lost after 5 s.
pub fn client_options(coord: &CoordinatorHandle) -> ClientOptions {
    let mut o = ClientOptions::new(
        coord.addr().to_string(),
        TOKEN,
        VERSION,
        config_digest(CONFIG),
    );
    o.host = "test-host".into();
    o.heartbeat_interval = Duration::from_millis(100);
    o.coordinator_timeout = Duration::from_secs(5);
    o.rpc_timeout = Duration::from_secs(5);
    o.collective_timeout = Duration::from_secs(30);
    o
}

pub fn connect(coord: &CoordinatorHandle) -> WorkerClient {
    WorkerClient::connect(client_options(coord)).expect("worker registers")
}

/// `n` workers, registered one after another (process ids 0..n).
pub fn connect_n(coord: &CoordinatorHandle, n: u32) -> Vec<WorkerClient> {
    let workers: Vec<_> = (0..n).map(|_| connect(coord)).collect();
    for (i, w) in workers.iter().enumerate() {
        assert_eq!(w.process_id(), i as u32);
    }
    workers
}

/// The first event matching `pred` within `timeout` (others are skipped).
pub fn wait_event(
    coord: &CoordinatorHandle,
    timeout: Duration,
    pred: impl Fn(&Event) -> bool,
) -> Option<Event> {
    let end = Instant::now() + timeout;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match coord.next_event(left) {
            Some(e) if pred(&e) => return Some(e),
            Some(_) => continue,
            None => return None,
        }
    }
    None
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    cond()
}
