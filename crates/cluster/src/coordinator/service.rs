//! The gRPC service: membership, heartbeats, barriers, the key-value
//! store, metrics and checkpoint agreement. The all-reduce lives in
//! `reduce.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::Instant as Deadline;
use tonic::{Request, Response, Status, Streaming};

use super::Event;
use super::state::{BarrierState, Shared, Slot, Worker};
use crate::error::stopped_status;
use crate::limits::{self, check_count, check_len};
use crate::proto::cluster_server::Cluster;
use crate::proto::heartbeat_response::Command as Cmd;
use crate::proto::*;

/// Protocol revision of v1 this coordinator speaks.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

pub(crate) struct Service {
    pub shared: Arc<Shared>,
}

fn deadline(timeout_ms: u64) -> Deadline {
    // Capped so that `u64::MAX` does not overflow the clock.
    Deadline::now() + Duration::from_millis(timeout_ms).min(limits::MAX_WAIT)
}

#[tonic::async_trait]
impl Cluster for Service {
    async fn register(
        &self,
        req: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let r = req.into_inner();
        let cfg = &self.shared.config;
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker protocol revision {} != coordinator {PROTOCOL_VERSION}",
                r.protocol_version
            )));
        }
        if r.software_version != cfg.software_version {
            return Err(Status::failed_precondition(format!(
                "worker software version {} != coordinator {}",
                r.software_version, cfg.software_version
            )));
        }
        // An empty digest: the worker has no config of its own and takes the job's.
        if !r.config_digest.is_empty() && r.config_digest != cfg.config_digest {
            return Err(Status::failed_precondition(format!(
                "worker config digest {} != coordinator {} \
                 (the worker was started with a different job config)",
                r.config_digest, cfg.config_digest
            )));
        }
        check_len("the host name", r.host.len(), limits::MAX_HOST_BYTES)?;
        let mut st = self.shared.lock();
        if let Some(reason) = &st.stop {
            return Err(stopped_status(reason));
        }
        let Some(pid) = st.slots.iter().position(|s| matches!(s, Slot::Free)) else {
            return Err(Status::resource_exhausted(format!(
                "job is full: all {} process ids are taken or finished",
                cfg.world_size
            )));
        };
        let pid = pid as u32;
        st.next_incarnation += 1;
        let incarnation = st.next_incarnation;
        st.slots[pid as usize] = Slot::Live(Worker {
            host: r.host.clone(),
            incarnation,
            last_seen: Instant::now(),
            told_stop: false,
        });
        let replacement = !st.ever_taken.insert(pid);
        let response = RegisterResponse {
            member: Some(Member {
                process_id: pid,
                incarnation,
            }),
            world_size: cfg.world_size,
            job_config: cfg.job_config.clone(),
            restart_generation: st.generation,
            resume_hint: st.last_committed,
            heartbeat_interval_ms: cfg.heartbeat_interval.as_millis() as u64,
        };
        drop(st);
        tracing::info!(
            process_id = pid,
            host = %r.host,
            devices = r.devices,
            backend = %r.backend,
            replacement,
            "worker registered"
        );
        self.shared.emit(Event::Registered {
            process_id: pid,
            host: r.host,
            replacement,
        });
        self.shared.notify();
        Ok(Response::new(response))
    }

    async fn heartbeat(
        &self,
        req: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let r = req.into_inner();
        let mut st = self.shared.lock();
        let command = match st.member(r.member.as_ref()) {
            Err(status) => Cmd::Stop(Stop {
                reason: status.message().to_string(),
                not_member: true,
            }),
            Ok(pid) => match st.stop.clone() {
                Some(reason) => {
                    if let Slot::Live(w) = &mut st.slots[pid as usize] {
                        w.told_stop = true;
                    }
                    Cmd::Stop(Stop {
                        reason,
                        not_member: false,
                    })
                }
                None if r.generation < st.generation => Cmd::Restart(Restart {
                    generation: st.generation,
                    resume_hint: st.last_committed,
                }),
                None => Cmd::Continue(Continue {}),
            },
        };
        Ok(Response::new(HeartbeatResponse {
            command: Some(command),
        }))
    }

    async fn barrier(
        &self,
        req: Request<BarrierRequest>,
    ) -> Result<Response<BarrierResponse>, Status> {
        let r = req.into_inner();
        let n = self.shared.config.world_size as usize;
        let (pid, my_round) = {
            let mut st = self.shared.lock();
            st.check_stopped()?;
            let pid = st.member(r.member.as_ref())?;
            st.check_generation(r.generation)?;
            check_len("the barrier name", r.name.len(), limits::MAX_KEY_BYTES)?;
            if !st.barriers.contains_key(&r.name) {
                check_count("barrier names", st.barriers.len(), limits::MAX_BARRIERS)?;
            }
            let b = st
                .barriers
                .entry(r.name.clone())
                .or_insert_with(|| BarrierState {
                    generation: r.generation,
                    round: 0,
                    arrived: Default::default(),
                });
            if b.generation != r.generation {
                b.generation = r.generation;
                b.arrived.clear();
            }
            if !b.arrived.insert(pid) {
                return Err(Status::already_exists(format!(
                    "process {pid} is already waiting at barrier '{}'",
                    r.name
                )));
            }
            let round = b.round;
            if b.arrived.len() == n {
                b.round += 1;
                b.arrived.clear();
            }
            (pid, round)
        };
        self.shared.notify();
        let name = r.name.as_str();
        let generation = r.generation;
        self.shared
            .wait(
                deadline(r.timeout_ms),
                |st| {
                    if let Some(s) = st.moved_on(generation) {
                        return Some(Err(s));
                    }
                    let b = st.barriers.get(name)?;
                    (b.round > my_round).then_some(Ok(()))
                },
                |st| {
                    let missing: Vec<u32> = match st.barriers.get_mut(name) {
                        Some(b) => {
                            b.arrived.remove(&pid);
                            (0..n as u32)
                                .filter(|i| *i != pid && !b.arrived.contains(i))
                                .collect()
                        }
                        None => vec![],
                    };
                    Err(Status::deadline_exceeded(format!(
                        "barrier '{name}' timed out after {}ms waiting for process ids {missing:?}",
                        r.timeout_ms
                    )))
                },
            )
            .await?;
        Ok(Response::new(BarrierResponse {}))
    }

    async fn kv_put(&self, req: Request<KvPutRequest>) -> Result<Response<KvPutResponse>, Status> {
        let r = req.into_inner();
        check_len("the key", r.key.len(), limits::MAX_KEY_BYTES)?;
        check_len(
            &format!("the value of key {:?}", r.key),
            r.value.len(),
            limits::MAX_VALUE_BYTES,
        )?;
        let mut st = self.shared.lock();
        let old_len = st.kv.get(&r.key).map(|v| v.len());
        if old_len.is_none() {
            check_count("key-value keys", st.kv.len(), limits::MAX_KV_KEYS)?;
        }
        let held = st.kv_bytes - old_len.unwrap_or(0);
        if held + r.value.len() > limits::MAX_KV_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the value of key {:?} ({} bytes) would bring the key-value store to {} bytes, \
                 more than the coordinator's limit of {}",
                r.key,
                r.value.len(),
                held + r.value.len(),
                limits::MAX_KV_BYTES
            )));
        }
        match st.kv.get(&r.key) {
            Some(old) if !r.allow_overwrite && *old != r.value => {
                return Err(Status::already_exists(format!(
                    "key '{}' already holds a different value",
                    r.key
                )));
            }
            _ => {
                st.kv_bytes = held + r.value.len();
                st.kv.insert(r.key, r.value);
            }
        }
        drop(st);
        self.shared.notify();
        Ok(Response::new(KvPutResponse {}))
    }

    async fn kv_get(&self, req: Request<KvGetRequest>) -> Result<Response<KvGetResponse>, Status> {
        let r = req.into_inner();
        let key = r.key.as_str();
        let value = self
            .shared
            .wait(
                deadline(r.timeout_ms),
                |st| st.kv.get(key).map(|v| Ok(v.clone())),
                |_| {
                    Err(Status::deadline_exceeded(format!(
                        "key '{key}' not set within {}ms",
                        r.timeout_ms
                    )))
                },
            )
            .await?;
        Ok(Response::new(KvGetResponse { found: true, value }))
    }

    async fn kv_try_get(
        &self,
        req: Request<KvTryGetRequest>,
    ) -> Result<Response<KvGetResponse>, Status> {
        let key = req.into_inner().key;
        let st = self.shared.lock();
        let value = st.kv.get(&key).cloned();
        Ok(Response::new(KvGetResponse {
            found: value.is_some(),
            value: value.unwrap_or_default(),
        }))
    }

    async fn kv_delete(
        &self,
        req: Request<KvDeleteRequest>,
    ) -> Result<Response<KvDeleteResponse>, Status> {
        let key = req.into_inner().key;
        let mut st = self.shared.lock();
        let removed = st.kv.remove(&key);
        st.kv_bytes -= removed.as_ref().map_or(0, |v| v.len());
        let existed = removed.is_some();
        drop(st);
        Ok(Response::new(KvDeleteResponse { existed }))
    }

    type AllReduceStream = tokio_stream::wrappers::ReceiverStream<Result<AllReduceChunk, Status>>;

    async fn all_reduce(
        &self,
        req: Request<Streaming<AllReduceChunk>>,
    ) -> Result<Response<Self::AllReduceStream>, Status> {
        let stream = super::reduce::serve(self.shared.clone(), req.into_inner());
        Ok(Response::new(stream))
    }

    async fn report_metrics(
        &self,
        req: Request<ReportMetricsRequest>,
    ) -> Result<Response<ReportMetricsResponse>, Status> {
        let r = req.into_inner();
        check_len("the metrics JSON", r.json.len(), limits::MAX_REPORT_BYTES)?;
        let mut st = self.shared.lock();
        let pid = st.member(r.member.as_ref())?;
        if !st.metrics.contains_key(&r.step) {
            check_count(
                "steps waiting for metrics",
                st.metrics.len(),
                limits::MAX_PENDING_METRIC_STEPS,
            )?;
        }
        st.metrics.entry(r.step).or_default().insert(pid, r.json);
        self.shared.flush_metrics(&mut st);
        Ok(Response::new(ReportMetricsResponse {}))
    }

    async fn commit_checkpoint(
        &self,
        req: Request<CommitCheckpointRequest>,
    ) -> Result<Response<CommitCheckpointResponse>, Status> {
        let r = req.into_inner();
        let n = self.shared.config.world_size as usize;
        let key = (r.generation, r.step);
        {
            let mut st = self.shared.lock();
            st.check_stopped()?;
            let pid = st.member(r.member.as_ref())?;
            if let Some(s) = st.moved_on(r.generation) {
                let reason = format!("checkpoint {} not committed: {}", r.step, s.message());
                return Ok(Response::new(CommitCheckpointResponse {
                    commit: false,
                    reason,
                }));
            }
            check_len(
                "the checkpoint error",
                r.error.len(),
                limits::MAX_REPORT_BYTES,
            )?;
            if !st.checkpoints.contains_key(&key) {
                check_count(
                    "checkpoint agreements under way",
                    st.checkpoints.len(),
                    limits::MAX_PENDING_CHECKPOINTS,
                )?;
            }
            let c = st.checkpoints.entry(key).or_default();
            c.reports.insert(pid, (r.ok, r.error));
            if c.verdict.is_none() && c.reports.len() == n {
                let failures: Vec<String> = c
                    .reports
                    .iter()
                    .filter(|(_, (ok, _))| !ok)
                    .map(|(p, (_, e))| format!("process {p}: {e}"))
                    .collect();
                c.verdict = Some((failures.is_empty(), failures.join("; ")));
                self.shared.emit(if failures.is_empty() {
                    Event::CheckpointCommitted { step: r.step }
                } else {
                    Event::CheckpointAborted {
                        step: r.step,
                        reason: failures.join("; "),
                    }
                });
                if failures.is_empty() {
                    st.last_committed = st.last_committed.max(Some(r.step));
                }
            }
        }
        self.shared.notify();
        let (commit, reason) = self
            .shared
            .wait(
                deadline(r.timeout_ms),
                |st| {
                    let c = st.checkpoints.get_mut(&key)?;
                    let verdict = c.verdict.clone()?;
                    c.taken += 1;
                    if c.taken == n {
                        st.checkpoints.remove(&key);
                    }
                    Some(Ok(verdict))
                },
                |st| {
                    // Decide for everyone, so that no worker commits alone.
                    let c = st.checkpoints.entry(key).or_default();
                    let missing: Vec<u32> = (0..n as u32)
                        .filter(|p| !c.reports.contains_key(p))
                        .collect();
                    let reason = format!("timed out waiting for process ids {missing:?}");
                    c.verdict = Some((false, reason.clone()));
                    c.taken += 1;
                    Ok((false, reason))
                },
            )
            .await?;
        Ok(Response::new(CommitCheckpointResponse { commit, reason }))
    }

    async fn leave(&self, req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let r = req.into_inner();
        let mut st = self.shared.lock();
        let pid = st.member(r.member.as_ref())?;
        st.slots[pid as usize] = Slot::Left;
        self.shared.emit(Event::Left { process_id: pid });
        if st.slots.iter().all(|s| matches!(s, Slot::Left)) && !st.finished {
            st.finished = true;
            self.shared.emit(Event::Finished);
        }
        drop(st);
        tracing::info!(process_id = pid, "worker left");
        self.shared.notify();
        Ok(Response::new(LeaveResponse {}))
    }
}
