//! The coordinator's job state: membership, generation, and the pending
//! collectives. Everything sits behind one mutex; every change bumps a
//! watch counter that waiting calls re-check their condition on.
//!
//! No call waits on other workers without a way out: every wait ends at
//! its deadline, when the job is stopped ([`State::stop`]: the caller is
//! told why) and when the coordinator shuts down.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use prost::bytes::Bytes;
use tokio::sync::watch;
use tonic::Status;

use super::Event;
use crate::error::{not_member_status, restart_status, stopped_status};
use crate::payload::Payload;
use crate::proto::Member;

/// What is fixed for the life of the coordinator.
pub(crate) struct Config {
    pub world_size: u32,
    pub software_version: String,
    pub job_config: String,
    pub config_digest: String,
    pub heartbeat_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// Where incarnations start ([`incarnation_epoch`]; 0 for the fuzz
    /// targets, whose inputs name incarnation 1).
    pub incarnation_epoch: u64,
}

/// State shared by the gRPC service, the reaper and the handle.
pub(crate) struct Shared {
    pub config: Config,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    events: mpsc::Sender<Event>,
}

/// One process-id slot.
#[derive(Debug)]
pub(crate) enum Slot {
    /// Never taken, or freed when its worker was lost.
    Free,
    /// Held by a registered worker.
    Live(Worker),
    /// Its worker left cleanly.
    Left,
}

#[derive(Debug)]
pub(crate) struct Worker {
    pub host: String,
    pub incarnation: u64,
    pub last_seen: Instant,
    /// A heartbeat answered it the job's stop.
    pub told_stop: bool,
}

#[derive(Default)]
pub(crate) struct State {
    pub slots: Vec<Slot>,
    pub generation: u64,
    /// The last incarnation handed out. Starts at a random epoch in the high
    /// half ([`incarnation_epoch`]).
    pub next_incarnation: u64,
    /// Why the generation last moved (for messages).
    pub last_loss: String,
    /// Set by the embedder: every worker is told to stop.
    pub stop: Option<String>,
    pub shutting_down: bool,
    pub finished: bool,
    pub last_committed: Option<u64>,
    /// Slots that have ever been taken (a later registrant replaces).
    pub ever_taken: BTreeSet<u32>,
    pub barriers: HashMap<String, BarrierState>,
    pub kv: HashMap<String, Bytes>,
    /// The values of `kv` together.
    pub kv_bytes: usize,
    pub reduces: HashMap<ReduceKey, ReduceState>,
    /// All-reduces every worker has taken the sum of: a contribution to one
    /// of them again is a replay. Only one generation's are kept (the
    /// newest that completed one).
    pub reduced: HashSet<ReduceKey>,
    pub checkpoints: HashMap<(u64, u64), CheckpointState>,
    pub metrics: BTreeMap<u64, BTreeMap<u32, String>>,
}

pub(crate) struct BarrierState {
    pub generation: u64,
    /// Completed rounds; a waiter is released when it moves past its own.
    pub round: u64,
    pub arrived: BTreeSet<u32>,
}

/// (generation, step, dtype as i32).
pub(crate) type ReduceKey = (u64, u64, i32);

pub(crate) struct ReduceState {
    pub len: u64,
    pub contribs: Vec<Option<Payload>>,
    pub arrived: usize,
    pub result: Option<Bytes>,
    pub failed: Option<String>,
    pub taken: usize,
}

#[derive(Default)]
pub(crate) struct CheckpointState {
    pub reports: BTreeMap<u32, (bool, String)>,
    pub verdict: Option<(bool, String)>,
    pub taken: usize,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        generation: u64,
        last_committed: Option<u64>,
        events: mpsc::Sender<Event>,
    ) -> Self {
        let state = State {
            slots: (0..config.world_size).map(|_| Slot::Free).collect(),
            generation,
            last_committed,
            next_incarnation: config.incarnation_epoch,
            ..State::default()
        };
        Self {
            config,
            state: Mutex::new(state),
            changed: watch::Sender::new(0),
            events,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent-enough state for
        // reporting; keep serving rather than cascading panics.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiting call to re-check its condition.
    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn emit(&self, event: Event) {
        // The embedder may have dropped its handle; events are then moot.
        let _ = self.events.send(event);
    }

    /// Waits until `check` yields a result, the deadline passes (then
    /// `on_timeout` decides), the job is stopped (an outcome already
    /// decided, such as a checkpoint verdict, still goes out; anything
    /// else fails with the stop's reason), or the coordinator shuts down.
    pub(crate) async fn wait<T>(
        &self,
        deadline: tokio::time::Instant,
        mut check: impl FnMut(&mut State) -> Option<Result<T, Status>>,
        on_timeout: impl FnOnce(&mut State) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let mut rx = self.changed.subscribe();
        loop {
            {
                let mut st = self.lock();
                // A stopped job says why, during its shutdown too.
                if let Some(reason) = st.stop.clone() {
                    return match check(&mut st) {
                        Some(Ok(v)) => Ok(v),
                        _ => Err(stopped_status(&reason)),
                    };
                }
                if st.shutting_down {
                    return Err(shutting_down());
                }
                if let Some(r) = check(&mut st) {
                    return r;
                }
            }
            tokio::select! {
                r = rx.changed() => if r.is_err() {
                    return Err(shutting_down());
                },
                () = tokio::time::sleep_until(deadline) => {
                    let mut st = self.lock();
                    if let Some(r) = check(&mut st) {
                        return r;
                    }
                    return on_timeout(&mut st);
                }
            }
        }
    }

    /// Runs `fut` (reading from or writing to a worker's stream) until it
    /// finishes, the deadline passes (`on_timeout` says why), the job is
    /// stopped, or the coordinator shuts down.
    pub(crate) async fn interruptible<T>(
        &self,
        deadline: tokio::time::Instant,
        fut: impl Future<Output = Result<T, Status>>,
        on_timeout: impl FnOnce() -> Status,
    ) -> Result<T, Status> {
        let mut rx = self.changed.subscribe();
        let mut fut = std::pin::pin!(fut);
        loop {
            self.lock().check_stopped()?;
            tokio::select! {
                r = &mut fut => return r,
                r = rx.changed() => if r.is_err() {
                    return Err(shutting_down());
                },
                () = tokio::time::sleep_until(deadline) => return Err(on_timeout()),
            }
        }
    }

    /// Declares every worker silent for longer than the heartbeat timeout
    /// lost. Returns whether any was.
    pub(crate) fn reap(&self) -> bool {
        let timeout = self.config.heartbeat_timeout;
        let mut st = self.lock();
        let silent: Vec<u32> = st
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Live(w) if w.last_seen.elapsed() > timeout => Some(i as u32),
                _ => None,
            })
            .collect();
        for &pid in &silent {
            let why = format!("no heartbeat for {timeout:?}");
            self.lose(&mut st, pid, &why);
        }
        drop(st);
        if !silent.is_empty() {
            self.notify();
        }
        !silent.is_empty()
    }

    /// Frees `pid`'s slot and moves the job to a new generation: collectives
    /// of the old one fail, survivors are told to restart.
    fn lose(&self, st: &mut State, pid: u32, why: &str) {
        let Slot::Live(w) = std::mem::replace(&mut st.slots[pid as usize], Slot::Free) else {
            return;
        };
        st.generation += 1;
        st.last_loss = format!("worker {pid} on {} was lost ({why})", w.host);
        tracing::warn!(generation = st.generation, "{}", st.last_loss);
        let generation = st.generation;
        st.reduces.retain(|k, _| k.0 >= generation);
        for ((g, _), c) in st.checkpoints.iter_mut() {
            if *g < generation && c.verdict.is_none() {
                c.verdict = Some((false, st.last_loss.clone()));
            }
        }
        self.emit(Event::Lost {
            process_id: pid,
            host: w.host,
            generation,
        });
        // Steps that only waited for the lost worker's metrics are complete.
        self.flush_metrics(st);
    }

    /// Emits the metrics of every step that all live workers reported.
    pub(crate) fn flush_metrics(&self, st: &mut State) {
        let live = st.live();
        let done: Vec<u64> = st
            .metrics
            .iter()
            .filter(|(_, reports)| live.iter().all(|p| reports.contains_key(p)))
            .map(|(step, _)| *step)
            .collect();
        for step in done {
            let reports = st.metrics.remove(&step).unwrap_or_default();
            self.emit(Event::Metrics {
                step,
                reports: reports.into_iter().collect(),
            });
        }
    }
}

/// Where this coordinator's incarnations start: a random 32-bit epoch in
/// the high half. A worker's channel silently reconnects to whatever
/// coordinator listens at the address, so a worker that still holds a
/// membership from an earlier coordinator (restarted on the same run
/// directory) reaches this one with it; starting every coordinator's count
/// at the same number would let that stale membership pass for the worker
/// registered since under the same process id (two processes as one, the
/// job waiting for the missing one forever).
pub(crate) fn incarnation_epoch() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // `RandomState` is seeded from the OS's randomness once per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    (h.finish() & 0xffff_ffff) << 32
}

fn shutting_down() -> Status {
    Status::unavailable("coordinator shutting down")
}

impl State {
    /// Refuses every call that would wait on others once the job is
    /// stopped (with its reason) or the coordinator is shutting down.
    pub(crate) fn check_stopped(&self) -> Result<(), Status> {
        match &self.stop {
            Some(reason) => Err(stopped_status(reason)),
            None if self.shutting_down => Err(shutting_down()),
            None => Ok(()),
        }
    }

    /// Live workers whose heartbeat has not yet answered them the stop.
    pub(crate) fn untold(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| matches!(&self.slots[i as usize], Slot::Live(w) if !w.told_stop))
            .collect()
    }

    /// The live worker `member` names, refreshing its liveness.
    pub(crate) fn member(&mut self, member: Option<&Member>) -> Result<u32, Status> {
        let m = member.ok_or_else(|| Status::invalid_argument("missing member"))?;
        match self.slots.get_mut(m.process_id as usize) {
            Some(Slot::Live(w)) if w.incarnation == m.incarnation => {
                w.last_seen = Instant::now();
                Ok(m.process_id)
            }
            _ => Err(not_member_status(format!(
                "process {} (incarnation {}) is not a member of the job \
                 (declared lost, left, or never registered)",
                m.process_id, m.incarnation
            ))),
        }
    }

    /// Refuses a collective call made in another generation.
    pub(crate) fn check_generation(&self, generation: u64) -> Result<(), Status> {
        if generation < self.generation {
            return Err(restart_status(
                self.generation,
                self.last_committed,
                &self.last_loss,
            ));
        }
        if generation > self.generation {
            return Err(Status::invalid_argument(format!(
                "generation {generation} is ahead of the coordinator's {}",
                self.generation
            )));
        }
        Ok(())
    }

    /// A restart status if the job left `generation` behind.
    pub(crate) fn moved_on(&self, generation: u64) -> Option<Status> {
        (self.generation != generation)
            .then(|| restart_status(self.generation, self.last_committed, &self.last_loss))
    }

    pub(crate) fn live(&self) -> Vec<u32> {
        (0..self.slots.len() as u32)
            .filter(|&i| matches!(self.slots[i as usize], Slot::Live(_)))
            .collect()
    }
}
