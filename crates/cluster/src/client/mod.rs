//! The worker side: a blocking client for a synchronous training loop. It
//! owns a small tokio runtime, heartbeats in the background, and turns
//! every call into a `block_on` that gives up as soon as the coordinator
//! is known to be gone or has stopped the job, and in any case at a
//! deadline: no call can wait for ever.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use crate::auth::AddToken;
use crate::error::{RESUME_KEY, metadata_u64};
use crate::payload::{Element, MAX_MESSAGE_BYTES, chunk_elems, decode_into, encode};
use crate::proto::cluster_client::ClusterClient;
use crate::proto::*;
use crate::{Error, Result};

mod heartbeat;
mod options;

use heartbeat::{Shared, heartbeat};
pub use options::{CheckpointVerdict, ClientOptions, Command, Registration};

type Rpc = ClusterClient<InterceptedService<Channel, AddToken>>;

/// A registered worker: blocking calls to the coordinator, plus a
/// background heartbeat. Dropping it stops the heartbeat without leaving
/// (the coordinator then declares the worker lost); call
/// [`WorkerClient::leave`] on a clean exit. Do not drop it inside an async
/// context (it owns a runtime).
pub struct WorkerClient {
    /// Always `Some` until dropped.
    rt: Option<tokio::runtime::Runtime>,
    rpc: Rpc,
    shared: Arc<Shared>,
    registration: Registration,
    rpc_timeout: Duration,
    collective_timeout: Duration,
    heartbeat_interval: Duration,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl WorkerClient {
    /// Connects, registers, and starts heartbeating.
    pub fn connect(opts: ClientOptions) -> Result<Self> {
        let transport = |e: &(dyn std::error::Error + 'static)| Error::Transport {
            addr: opts.coordinator.clone(),
            message: error_chain(e),
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cluster-worker")
            .enable_all()
            .build()
            .map_err(|e| transport(&e))?;
        let endpoint = endpoint(&opts)?;
        let token = AddToken::new(&opts.token)?;
        // Two connections: heartbeats never queue behind a large all-reduce.
        // `connect_timeout` covers the TCP connect, the TLS config the
        // handshake; this bounds the whole, name lookup included.
        let connect = async { tokio::try_join!(endpoint.connect(), endpoint.connect()) };
        let (data, control) = rt
            .block_on(async { tokio::time::timeout(opts.rpc_timeout, connect).await })
            .map_err(|_| Error::Transport {
                addr: opts.coordinator.clone(),
                message: format!("no connection within {:?}", opts.rpc_timeout),
            })?
            .map_err(|e| transport(&e))?;
        let rpc = ClusterClient::with_interceptor(data, token.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let control = ClusterClient::with_interceptor(control, token);

        let mut req = Request::new(RegisterRequest {
            protocol_version: 1,
            host: opts.host.clone(),
            devices: opts.devices,
            backend: opts.backend.clone(),
            software_version: opts.software_version.clone(),
            config_digest: opts.config_digest.clone(),
        });
        req.set_timeout(opts.rpc_timeout);
        let r = rt
            .block_on(rpc.clone().register(req))
            .map_err(|s| Error::from_status(s, &opts.coordinator))?
            .into_inner();
        let r_interval = r.heartbeat_interval_ms;
        let member = r.member.ok_or_else(|| Error::Rpc {
            code: tonic::Code::Internal,
            message: "registration without a member id".into(),
        })?;
        let registration = Registration {
            process_id: member.process_id,
            world_size: r.world_size,
            job_config: r.job_config,
            generation: r.restart_generation,
            resume_hint: r.resume_hint,
        };
        let shared = Arc::new(Shared {
            addr: opts.coordinator.clone(),
            member,
            generation: AtomicU64::new(r.restart_generation),
            command: Mutex::new(Command::Continue),
            lost: watch::Sender::new(None),
            stopped: watch::Sender::new(None),
        });
        // The job's interval, when the coordinator says it.
        let interval = match r_interval {
            0 => opts.heartbeat_interval,
            ms => Duration::from_millis(ms),
        };
        let heartbeat = rt.spawn(heartbeat(
            control,
            shared.clone(),
            interval,
            opts.coordinator_timeout,
        ));
        Ok(Self {
            rt: Some(rt),
            rpc,
            shared,
            registration,
            rpc_timeout: opts.rpc_timeout,
            collective_timeout: opts.collective_timeout,
            heartbeat_interval: interval,
            heartbeat,
        })
    }

    /// How often this worker heartbeats: the job's interval when the
    /// coordinator gave one at registration, else the client's own.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// What the coordinator handed out at registration.
    pub fn registration(&self) -> &Registration {
        &self.registration
    }

    /// This worker's process id.
    pub fn process_id(&self) -> u32 {
        self.registration.process_id
    }

    /// Number of worker processes.
    pub fn world_size(&self) -> u32 {
        self.registration.world_size
    }

    /// The generation this worker's collective calls are made in.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Why the coordinator was declared lost (no heartbeat answered for
    /// the coordinator timeout), if it was.
    pub fn coordinator_lost(&self) -> Option<String> {
        self.shared.lost.borrow().clone()
    }

    /// The latest command seen (poll between steps).
    pub fn command(&self) -> Command {
        self.shared.command().clone()
    }

    /// After restoring for a [`Command::Restart`] (or an [`Error::Restart`]),
    /// moves this worker into the new generation. Returns it.
    pub fn acknowledge_restart(&self) -> u64 {
        let mut cmd = self.shared.command();
        if let Command::Restart { generation, .. } = *cmd {
            self.shared
                .generation
                .fetch_max(generation, Ordering::SeqCst);
            *cmd = Command::Continue;
        }
        self.generation()
    }

    /// Waits until every worker reached barrier `name`. Fails with
    /// [`Error::Restart`] if a worker is lost meanwhile, [`Error::Timeout`]
    /// after `timeout`.
    pub fn barrier(&self, name: &str, timeout: Duration) -> Result<()> {
        let req = BarrierRequest {
            member: Some(self.shared.member),
            generation: self.generation(),
            name: name.into(),
            timeout_ms: millis(timeout),
        };
        let mut rpc = self.rpc.clone();
        self.block(timeout, async move { rpc.barrier(req).await.map(drop) })
    }

    /// Stores `value` under `key`. Without `overwrite` a key is put once:
    /// a different value for an existing key is refused (`AlreadyExists`).
    pub fn kv_put(&self, key: &str, value: &[u8], overwrite: bool) -> Result<()> {
        let mut req = Request::new(KvPutRequest {
            key: key.into(),
            value: Bytes::copy_from_slice(value),
            allow_overwrite: overwrite,
        });
        req.set_timeout(self.rpc_timeout);
        let mut rpc = self.rpc.clone();
        self.block(
            Duration::ZERO,
            async move { rpc.kv_put(req).await.map(drop) },
        )
    }

    /// The value of `key`, waiting up to `timeout` for it to be put.
    pub fn kv_get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>> {
        let req = KvGetRequest {
            key: key.into(),
            timeout_ms: millis(timeout),
        };
        let mut rpc = self.rpc.clone();
        self.block(timeout, async move {
            Ok(rpc.kv_get(req).await?.into_inner().value.to_vec())
        })
    }

    /// The value of `key` if it is set.
    pub fn kv_try_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut req = Request::new(KvTryGetRequest { key: key.into() });
        req.set_timeout(self.rpc_timeout);
        let mut rpc = self.rpc.clone();
        self.block(Duration::ZERO, async move {
            let r = rpc.kv_try_get(req).await?.into_inner();
            Ok(r.found.then(|| r.value.to_vec()))
        })
    }

    /// Removes `key`; returns whether it was set.
    pub fn kv_delete(&self, key: &str) -> Result<bool> {
        let mut req = Request::new(KvDeleteRequest { key: key.into() });
        req.set_timeout(self.rpc_timeout);
        let mut rpc = self.rpc.clone();
        self.block(Duration::ZERO, async move {
            Ok(rpc.kv_delete(req).await?.into_inner().existed)
        })
    }

    /// Replaces `data` with the element-wise sum over all workers, added in
    /// process-id order: every worker gets bit-identical results. One
    /// all-reduce per `(step, element type)`.
    pub fn all_reduce_sum(&self, step: u64, data: &mut [f32]) -> Result<()> {
        self.all_reduce(step, data)
    }

    /// [`Self::all_reduce_sum`] for `f64` (loss sums, token counts).
    pub fn all_reduce_f64(&self, step: u64, data: &mut [f64]) -> Result<()> {
        self.all_reduce(step, data)
    }

    fn all_reduce<E: Element>(&self, step: u64, data: &mut [E]) -> Result<()> {
        let header = AllReduceHeader {
            member: Some(self.shared.member),
            generation: self.generation(),
            step,
            dtype: E::DTYPE as i32,
            len: data.len() as u64,
            timeout_ms: millis(self.collective_timeout),
        };
        let mut rpc = self.rpc.clone();
        self.block(self.collective_timeout, async move {
            let (tx, rx) = mpsc::channel(4);
            let send = async {
                let first = AllReduceChunk {
                    header: Some(header),
                    data: Bytes::new(),
                };
                if tx.send(first).await.is_err() {
                    return;
                }
                for chunk in data.chunks(chunk_elems::<E>()) {
                    let msg = AllReduceChunk {
                        header: None,
                        data: encode(chunk),
                    };
                    if tx.send(msg).await.is_err() {
                        return; // the call failed; its error tells why
                    }
                }
                drop(tx);
            };
            let (response, ()) = tokio::join!(rpc.all_reduce(ReceiverStream::new(rx)), send);
            let mut stream = response?.into_inner();
            let mut filled = 0;
            while let Some(chunk) = stream.message().await? {
                let n = chunk.data.len() / E::SIZE;
                let Some(out) = data.get_mut(filled..filled + n) else {
                    return Err(Status::internal("all-reduce answered more data than sent"));
                };
                decode_into(&chunk.data, out).map_err(|m| {
                    Status::internal(format!("the all-reduce sum at element {filled}: {m}"))
                })?;
                filled += n;
            }
            if filled != data.len() {
                return Err(Status::internal(format!(
                    "all-reduce answered {filled} of {} elements",
                    data.len()
                )));
            }
            Ok(())
        })
    }

    /// Hands this worker's metrics for `step` (one JSON object) to the
    /// coordinator.
    pub fn report_metrics(&self, step: u64, json: &str) -> Result<()> {
        let mut req = Request::new(ReportMetricsRequest {
            member: Some(self.shared.member),
            step,
            json: json.into(),
        });
        req.set_timeout(self.rpc_timeout);
        let mut rpc = self.rpc.clone();
        self.block(Duration::ZERO, async move {
            rpc.report_metrics(req).await.map(drop)
        })
    }

    /// Reports whether this worker wrote its part of checkpoint `step`
    /// (`ok`, else `error` says why) and waits, up to `timeout`, for the
    /// verdict shared by all workers: commit only if every worker wrote.
    pub fn commit_checkpoint(
        &self,
        step: u64,
        ok: bool,
        error: &str,
        timeout: Duration,
    ) -> Result<CheckpointVerdict> {
        let req = CommitCheckpointRequest {
            member: Some(self.shared.member),
            generation: self.generation(),
            step,
            ok,
            error: error.into(),
            timeout_ms: millis(timeout),
        };
        let mut rpc = self.rpc.clone();
        self.block(timeout, async move {
            let r = rpc.commit_checkpoint(req).await?.into_inner();
            Ok(CheckpointVerdict {
                commit: r.commit,
                reason: r.reason,
            })
        })
    }

    /// Leaves the job cleanly.
    pub fn leave(self) -> Result<()> {
        // A heartbeat after leaving would be answered "not a member".
        self.heartbeat.abort();
        let mut req = Request::new(LeaveRequest {
            member: Some(self.shared.member),
        });
        req.set_timeout(self.rpc_timeout);
        let mut rpc = self.rpc.clone();
        self.block(
            Duration::ZERO,
            async move { rpc.leave(req).await.map(drop) },
        )
    }

    /// Runs one call that may wait up to `wait` for other workers. It gives
    /// up when the job is stopped ([`Error::Stopped`], also when the
    /// heartbeat brought the stop first), when the coordinator is declared
    /// lost, and `rpc_timeout` after `wait` without an answer.
    fn block<T>(&self, wait: Duration, call: impl Future<Output = Result<T, Status>>) -> Result<T> {
        let limit = wait.saturating_add(self.rpc_timeout);
        let mut stopped = self.shared.stopped.subscribe();
        if let Some(reason) = stopped.borrow_and_update().clone() {
            return Err(Error::Stopped { reason });
        }
        let mut lost = self.shared.lost.subscribe();
        // invariant: the runtime is taken only in Drop.
        let rt = self.rt.as_ref().expect("runtime lives until drop");
        let result = rt.block_on(async {
            tokio::select! {
                // An answer that has come is the answer.
                biased;
                r = tokio::time::timeout(limit, call) => match r {
                    Ok(r) => r.map_err(|s| (Error::from_status(s.clone(), &self.shared.addr), Some(s))),
                    Err(_) => Err((Error::Timeout(format!(
                        "no answer from the coordinator at {} within {limit:?}",
                        self.shared.addr
                    )), None)),
                },
                Ok(r) = stopped.wait_for(Option::is_some) => {
                    Err((Error::Stopped { reason: r.clone().unwrap_or_default() }, None))
                }
                Ok(m) = lost.wait_for(Option::is_some) => {
                    let message = m.clone().unwrap_or_default();
                    Err((Error::CoordinatorLost { addr: self.shared.addr.clone(), message }, None))
                }
            }
        });
        result.map_err(|(e, status)| {
            match (&e, status) {
                (Error::Restart { generation }, Some(s)) => {
                    self.shared.set_command(Command::Restart {
                        generation: *generation,
                        resume_hint: metadata_u64(&s, RESUME_KEY),
                    })
                }
                (Error::Stopped { reason }, Some(_)) => self.shared.set_stopped(reason),
                // The coordinator may close right after telling this worker
                // to stop: the reason is the better answer.
                (Error::CoordinatorLost { .. }, _) => {
                    if let Some(reason) = self.shared.stopped.borrow().clone() {
                        return Error::Stopped { reason };
                    }
                }
                _ => {}
            }
            e
        })
    }
}

impl Drop for WorkerClient {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // Do not wait for blocking work (a name lookup of a reconnect that
        // hangs): dropping a runtime would, without a limit.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn endpoint(opts: &ClientOptions) -> Result<Endpoint> {
    let scheme = if opts.tls.is_some() { "https" } else { "http" };
    let uri = format!("{scheme}://{}", opts.coordinator);
    let bad = |e: tonic::transport::Error| Error::Transport {
        addr: opts.coordinator.clone(),
        message: error_chain(&e),
    };
    let mut ep = Endpoint::from_shared(uri)
        .map_err(bad)?
        .connect_timeout(opts.rpc_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(opts.heartbeat_interval.max(Duration::from_secs(1)))
        .keep_alive_timeout(opts.coordinator_timeout)
        .keep_alive_while_idle(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20);
    if let Some(tls) = &opts.tls {
        ep = ep.tls_config(tls.config(opts.rpc_timeout)?).map_err(bad)?;
    }
    Ok(ep)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// An error followed by its causes.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
