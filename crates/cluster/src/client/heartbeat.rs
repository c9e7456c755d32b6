//! The background heartbeat and the state it shares with the client:
//! the latest command, the worker's generation, and whether the
//! coordinator is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tonic::Request;

use super::{Command, Rpc, error_chain};
use crate::proto::heartbeat_response::Command as Cmd;
use crate::proto::{HeartbeatRequest, Member};

/// State shared with the heartbeat task.
pub(super) struct Shared {
    pub addr: String,
    pub member: Member,
    pub generation: AtomicU64,
    pub command: Mutex<Command>,
    /// Set once the coordinator is declared lost.
    pub lost: watch::Sender<Option<String>>,
    /// Set once the coordinator stopped the job (or this worker's
    /// membership): the reason.
    pub stopped: watch::Sender<Option<String>>,
}

impl Shared {
    pub fn command(&self) -> std::sync::MutexGuard<'_, Command> {
        self.command.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a newer command; a `Stop` is final.
    pub fn set_command(&self, new: Command) {
        let mut cmd = self.command();
        let newer = match (&*cmd, &new) {
            (Command::Stop { .. }, _) => false,
            (Command::Restart { generation: a, .. }, Command::Restart { generation: b, .. }) => {
                b > a
            }
            (Command::Restart { .. }, Command::Continue) => false,
            _ => true,
        };
        if newer {
            *cmd = new;
        }
    }

    /// Records the coordinator's stop: every call in flight or to come
    /// fails with it (set first, so that a caller who sees the `Stop`
    /// command finds its calls failing), and the command.
    pub fn set_stopped(&self, reason: &str) {
        self.stopped.send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(reason.to_string());
            }
            first
        });
        self.set_command(Command::Stop {
            reason: reason.to_string(),
        });
    }
}

/// Heartbeats every `interval`; records the coordinator's command, and
/// declares the coordinator lost after `timeout` without an answer.
pub(super) async fn heartbeat(
    mut rpc: Rpc,
    shared: Arc<Shared>,
    interval: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_ok = Instant::now();
    loop {
        tick.tick().await;
        let mut req = Request::new(HeartbeatRequest {
            member: Some(shared.member),
            generation: shared.generation.load(Ordering::SeqCst),
        });
        req.set_timeout(timeout);
        let failure = match tokio::time::timeout(timeout, rpc.heartbeat(req)).await {
            Ok(Ok(r)) => {
                last_ok = Instant::now();
                match r.into_inner().command {
                    Some(Cmd::Stop(s)) if s.not_member => {
                        // A restarted coordinator, or one that declared this
                        // worker lost: this membership is over, the job may
                        // not be (the worker may register again).
                        let message = format!("it no longer knows this worker: {}", s.reason);
                        tracing::warn!(addr = %shared.addr, "{message}");
                        shared.set_command(Command::Stop {
                            reason: format!("the coordinator at {} {message}", shared.addr),
                        });
                        shared.lost.send_replace(Some(message));
                        return;
                    }
                    Some(Cmd::Stop(s)) => shared.set_stopped(&s.reason),
                    Some(Cmd::Restart(r)) => shared.set_command(Command::Restart {
                        generation: r.generation,
                        resume_hint: r.resume_hint,
                    }),
                    Some(Cmd::Continue(_)) | None => shared.set_command(Command::Continue),
                }
                continue;
            }
            Ok(Err(status)) => error_chain(&status),
            Err(_) => format!("no heartbeat answer within {timeout:?}"),
        };
        if last_ok.elapsed() >= timeout {
            let message = format!("no heartbeat answered for {timeout:?}; last error: {failure}");
            tracing::warn!(addr = %shared.addr, "lost the coordinator: {message}");
            shared.set_command(Command::Stop {
                reason: format!("lost the coordinator at {}: {message}", shared.addr),
            });
            shared.lost.send_replace(Some(message));
            return;
        }
    }
}
