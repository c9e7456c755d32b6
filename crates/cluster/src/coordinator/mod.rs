//! The coordinator: a gRPC server on its own runtime thread, and the
//! handle through which the program embedding it watches the job.

mod reduce;
mod service;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::auth::CheckToken;
use crate::limits::{self, MAX_MESSAGE_BYTES};
use crate::proto::cluster_server::ClusterServer;
use crate::{Error, Result, TlsServer, config_digest};
use state::{Config, Shared};

/// How to run a coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorOptions {
    /// Address to listen on. Port 0 picks a free port (see
    /// [`CoordinatorHandle::addr`]). The CLI defaults to `127.0.0.1`; listen
    /// on another interface only together with TLS or a trusted network.
    pub listen: SocketAddr,
    /// Number of worker processes (process ids `0..world_size`).
    pub world_size: u32,
    /// Shared secret every call must carry (see [`crate::load_token`]).
    pub token: String,
    /// Workers with another software version are refused.
    pub software_version: String,
    /// Resolved job config (TOML), handed to every worker. Workers whose
    /// [`config_digest`] of their own config differs are refused.
    pub job_config: String,
    /// A worker silent for longer than this is declared lost.
    pub heartbeat_timeout: Duration,
    /// How often workers heartbeat (told at registration; zero: each
    /// worker keeps its own [`crate::ClientOptions::heartbeat_interval`]).
    pub heartbeat_interval: Duration,
    /// Serve over TLS.
    pub tls: Option<TlsServer>,
    /// The generation to start in: a coordinator restarted for a job
    /// already under way starts past every generation its predecessor used.
    pub start_generation: u64,
    /// The last checkpoint step the workers agreed on before a restart
    /// (handed to registering workers as their resume hint).
    pub last_committed: Option<u64>,
}

impl CoordinatorOptions {
    /// Options with a 10 s heartbeat timeout and no TLS.
    pub fn new(
        listen: SocketAddr,
        world_size: u32,
        token: impl Into<String>,
        software_version: impl Into<String>,
        job_config: impl Into<String>,
    ) -> Self {
        Self {
            listen,
            world_size,
            token: token.into(),
            software_version: software_version.into(),
            job_config: job_config.into(),
            heartbeat_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::ZERO,
            tls: None,
            start_generation: 0,
            last_committed: None,
        }
    }

    /// sha256 hex of [`Self::job_config`], what workers must present.
    pub fn config_digest(&self) -> String {
        config_digest(&self.job_config)
    }
}

/// Something the embedding program may want to know about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A worker registered; `replacement` when it took a lost worker's slot.
    Registered {
        /// Its process id.
        process_id: u32,
        /// Its host name.
        host: String,
        /// Whether the slot had been held before.
        replacement: bool,
    },
    /// A worker missed its heartbeats; the job moved to `generation`.
    Lost {
        /// Its process id (now free).
        process_id: u32,
        /// Its host name.
        host: String,
        /// The new generation.
        generation: u64,
    },
    /// A worker left cleanly.
    Left {
        /// Its process id.
        process_id: u32,
    },
    /// Every live worker reported metrics for `step`.
    Metrics {
        /// The step.
        step: u64,
        /// `(process id, JSON)` in process-id order.
        reports: Vec<(u32, String)>,
    },
    /// Every worker wrote its part of checkpoint `step`.
    CheckpointCommitted {
        /// The step.
        step: u64,
    },
    /// Checkpoint `step` is not to be committed.
    CheckpointAborted {
        /// The step.
        step: u64,
        /// Which workers failed, and why.
        reason: String,
    },
    /// Every worker left: the job is over.
    Finished,
}

/// How long a graceful shutdown waits for the answers to calls it failed
/// to go out and for connections to close. Connections still open then
/// (a worker in the middle of a stream, a peer that never completes a
/// handshake, a keep-alive connection) are dropped: tonic's graceful
/// shutdown alone waits for every connection to close, without a limit.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The service of a coordinator for `world_size` workers that serves no
/// network, for the fuzz targets.
pub(crate) fn fuzz_service(world_size: u32, events: mpsc::Sender<Event>) -> Arc<service::Service> {
    let shared = Arc::new(Shared::new(
        Config {
            world_size,
            software_version: crate::fuzz::FUZZ_VERSION.into(),
            config_digest: String::new(),
            job_config: String::new(),
            heartbeat_timeout: Duration::from_secs(1),
            heartbeat_interval: Duration::ZERO,
            incarnation_epoch: 0,
        },
        0,
        None,
        events,
    ));
    Arc::new(service::Service { shared })
}

/// Starts coordinators.
pub struct Coordinator;

impl Coordinator {
    /// Binds `opts.listen` and serves on a new runtime thread.
    pub fn start(opts: CoordinatorOptions) -> Result<CoordinatorHandle> {
        let transport = |e: &dyn std::fmt::Display| Error::Transport {
            addr: opts.listen.to_string(),
            message: e.to_string(),
        };
        let mut server = Server::builder()
            .tcp_nodelay(true)
            .initial_stream_window_size(8 << 20)
            .initial_connection_window_size(32 << 20)
            .max_frame_size(1 << 20)
            .max_concurrent_streams(Some(limits::MAX_STREAMS_PER_CONNECTION))
            // A peer that stops answering pings (a dead host, a half-open
            // connection) is dropped, and its calls with it.
            .http2_keepalive_interval(Some(opts.heartbeat_timeout))
            .http2_keepalive_timeout(Some(opts.heartbeat_timeout));
        if let Some(tls) = &opts.tls {
            server = server
                .tls_config(tls.config(opts.heartbeat_timeout)?)
                .map_err(|e| transport(&e))?;
        }
        let (events_tx, events) = mpsc::channel();
        let shared = Arc::new(Shared::new(
            Config {
                world_size: opts.world_size,
                software_version: opts.software_version.clone(),
                config_digest: opts.config_digest(),
                job_config: opts.job_config.clone(),
                heartbeat_timeout: opts.heartbeat_timeout,
                heartbeat_interval: opts.heartbeat_interval,
                incarnation_epoch: state::incarnation_epoch(),
            },
            opts.start_generation,
            opts.last_committed,
            events_tx,
        ));
        let svc = ClusterServer::new(service::Service {
            shared: shared.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let svc =
            tonic::service::interceptor::InterceptedService::new(svc, CheckToken::new(&opts.token));

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("cluster-coordinator")
            .enable_all()
            .build()
            .map_err(|e| transport(&e))?;
        let incoming = rt
            .block_on(async { TcpIncoming::bind(opts.listen) })
            .map_err(|e| transport(&e))?;
        let addr = incoming.local_addr().map_err(|e| transport(&e))?;
        let incoming = incoming.with_nodelay(Some(true));
        // `true`: stop gracefully; `false` (or the handle vanishing): drop
        // every connection at once, as a crash would.
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<bool>();

        let reaper = shared.clone();
        let period = (opts.heartbeat_timeout / 4).max(Duration::from_millis(10));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                reaper.reap();
            }
        });
        let thread = std::thread::Builder::new()
            .name("cluster-coordinator".into())
            .spawn(move || {
                rt.block_on(async move {
                    let (grace_tx, grace_rx) = tokio::sync::oneshot::channel::<()>();
                    let serve =
                        server
                            .add_service(svc)
                            .serve_with_incoming_shutdown(incoming, async {
                                let _ = grace_rx.await;
                            });
                    let mut serve = std::pin::pin!(serve);
                    tokio::select! {
                        r = &mut serve => if let Err(e) = r {
                            tracing::error!("coordinator server failed: {e}");
                        },
                        graceful = stop_rx => if graceful == Ok(true) {
                            let _ = grace_tx.send(());
                            let _ = tokio::time::timeout(SHUTDOWN_GRACE, serve).await;
                        },
                    }
                });
                // Drops the connection tasks still running: their sockets close.
                rt.shutdown_background();
            })
            .map_err(|e| transport(&e))?;
        tracing::info!(%addr, world_size = opts.world_size, "coordinator listening");
        Ok(CoordinatorHandle {
            addr,
            shared,
            events: Mutex::new(events),
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }
}

/// A running coordinator. Dropping it shuts the coordinator down.
pub struct CoordinatorHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    events: Mutex<mpsc::Receiver<Event>>,
    stop: Option<tokio::sync::oneshot::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CoordinatorHandle {
    /// The address actually bound (the real port when listening on 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.lock().ok()?.recv_timeout(timeout).ok()
    }

    /// The next event if one is queued.
    pub fn try_event(&self) -> Option<Event> {
        self.events.lock().ok()?.try_recv().ok()
    }

    /// The current generation (incremented on every lost worker).
    pub fn generation(&self) -> u64 {
        self.shared.lock().generation
    }

    /// The last checkpoint step every worker agreed on.
    pub fn last_committed_step(&self) -> Option<u64> {
        self.shared.lock().last_committed
    }

    /// Process ids currently held by live workers.
    pub fn live_workers(&self) -> Vec<u32> {
        self.shared.lock().live()
    }

    /// Whether every worker has left.
    pub fn is_finished(&self) -> bool {
        self.shared.lock().finished
    }

    /// Stops the job: every call waiting on other workers (barrier,
    /// all-reduce, checkpoint agreement, key-value get) is released with
    /// [`Error::Stopped`] carrying `reason`, and so is every later one;
    /// registrations are refused; every worker's next heartbeat answers
    /// [`crate::Command::Stop`]. The first reason given is kept.
    pub fn stop(&self, reason: impl Into<String>) {
        self.shared.lock().stop.get_or_insert_with(|| reason.into());
        self.shared.notify();
    }

    /// After [`Self::stop`]: the live workers whose heartbeat has not yet
    /// answered them the stop. Once it is empty every worker still running
    /// knows why the job ended, and the coordinator may shut down. A worker
    /// that stops heartbeating leaves this list when it is declared lost,
    /// so it empties within about the heartbeat timeout.
    pub fn untold_workers(&self) -> Vec<u32> {
        self.shared.lock().untold()
    }

    /// Fails every waiting call with "coordinator shutting down", then stops
    /// serving (waiting at most a short grace period for connections to
    /// close) and joins the server thread.
    pub fn shutdown(mut self) {
        self.shutdown_inner(true);
    }

    /// Stops serving at once without answering waiting calls, as a crash
    /// would: for fault-injection tests.
    pub fn abort(mut self) {
        self.shutdown_inner(false);
    }

    fn shutdown_inner(&mut self, graceful: bool) {
        if graceful {
            self.shared.lock().shutting_down = true;
            self.shared.notify();
            // Let the failed calls' responses go out before closing.
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(graceful);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for CoordinatorHandle {
    fn drop(&mut self) {
        self.shutdown_inner(true);
    }
}
