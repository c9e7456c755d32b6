//! The star all-reduce: each worker streams its payload in, the
//! coordinator sums all contributions of (generation, step, dtype) in
//! process-id order once the last arrives, and streams the same bytes back
//! to every worker.

use std::sync::Arc;
use std::time::Duration;

use prost::bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant as Deadline;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::state::{ReduceKey, ReduceState, Shared};
use crate::payload::{CHUNK_BYTES, Element, Payload, chunk_elems, decode_into, ordered_sum};
use crate::proto::{AllReduceChunk, AllReduceHeader, DType};

type Out = mpsc::Sender<Result<AllReduceChunk, Status>>;

/// Starts serving one worker's all-reduce call; the returned stream yields
/// the sum (or one error). Every stage has a way out: the header must come
/// within the heartbeat timeout, the whole call must finish within the
/// header's `timeout_ms`, and a stop or shutdown ends it at once.
pub(crate) fn serve(
    shared: Arc<Shared>,
    input: Streaming<AllReduceChunk>,
) -> ReceiverStream<Result<AllReduceChunk, Status>> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Err(status) = run(&shared, input, &tx).await {
            // The worker may be gone already, or no longer reading: tell it
            // if it listens, without waiting on it for ever.
            let grace = shared.config.heartbeat_timeout;
            let _ = tokio::time::timeout(grace, tx.send(Err(status))).await;
        }
    });
    ReceiverStream::new(rx)
}

async fn run(
    shared: &Shared,
    mut input: Streaming<AllReduceChunk>,
    tx: &Out,
) -> Result<(), Status> {
    let wait = shared.config.heartbeat_timeout;
    let header = shared
        .interruptible(
            Deadline::now() + wait,
            async { input.next().await.transpose() },
            || {
                Status::deadline_exceeded(format!(
                    "all-reduce stream sent no header within {wait:?}"
                ))
            },
        )
        .await?
        .and_then(|c| c.header)
        .ok_or_else(|| Status::invalid_argument("all-reduce stream must start with a header"))?;
    let timeout = Duration::from_millis(header.timeout_ms).min(crate::limits::MAX_WAIT);
    let deadline = Deadline::now() + timeout;
    let (pid, key) = {
        let mut st = shared.lock();
        st.check_stopped()?;
        let pid = st.member(header.member.as_ref())?;
        st.check_generation(header.generation)?;
        (pid, (header.generation, header.step, header.dtype))
    };
    let receive = async {
        match DType::try_from(header.dtype) {
            Ok(DType::DtypeF32) => receive::<f32>(&mut input, &header).await,
            Ok(DType::DtypeF64) => receive::<f64>(&mut input, &header).await,
            _ => Err(Status::invalid_argument(format!(
                "unknown dtype {}",
                header.dtype
            ))),
        }
    };
    let payload = shared
        .interruptible(deadline, receive, || {
            Status::deadline_exceeded(format!(
                "all-reduce of step {}: process {pid} did not send its {} elements within {timeout:?}",
                key.1, header.len
            ))
        })
        .await?;
    contribute(shared, key, pid, header.len, payload).await?;
    let sum = wait_for_sum(shared, key, deadline, timeout).await?;
    let send = async {
        for start in (0..sum.len()).step_by(CHUNK_BYTES) {
            let end = (start + CHUNK_BYTES).min(sum.len());
            let chunk = AllReduceChunk {
                header: None,
                data: sum.slice(start..end),
            };
            if tx.send(Ok(chunk)).await.is_err() {
                break; // the worker hung up
            }
        }
        Ok(())
    };
    shared
        .interruptible(deadline, send, || {
            Status::deadline_exceeded(format!(
                "all-reduce of step {}: process {pid} did not read the sum within {timeout:?}",
                key.1
            ))
        })
        .await
}

/// Reads the data chunks after the header into one decoded vector. Memory
/// grows with the data that arrives, never with what the header declares.
async fn receive<E: Element>(
    input: &mut Streaming<AllReduceChunk>,
    header: &AllReduceHeader,
) -> Result<Payload, Status> {
    let len =
        usize::try_from(header.len).map_err(|_| Status::invalid_argument("payload too long"))?;
    let mut values: Vec<E> = Vec::with_capacity(len.min(chunk_elems::<E>()));
    while let Some(chunk) = input.next().await.transpose()? {
        let (filled, n) = (values.len(), chunk.data.len() / E::SIZE);
        if chunk.data.len() % E::SIZE != 0 || n > len - filled {
            return Err(Status::invalid_argument(format!(
                "chunk of {} bytes does not fit a payload of {len} elements at {filled}",
                chunk.data.len()
            )));
        }
        values.resize(filled + n, E::default());
        decode_into(&chunk.data, &mut values[filled..]).map_err(Status::invalid_argument)?;
    }
    if values.len() != len {
        return Err(Status::invalid_argument(format!(
            "payload ended after {} of {len} elements",
            values.len()
        )));
    }
    Ok(E::wrap(values))
}

/// Adds `pid`'s payload; the last contributor computes the sum.
async fn contribute(
    shared: &Shared,
    key: ReduceKey,
    pid: u32,
    len: u64,
    payload: Payload,
) -> Result<(), Status> {
    let n = shared.config.world_size as usize;
    let ready = {
        let mut st = shared.lock();
        st.check_stopped()?;
        st.check_generation(key.0)?;
        if st.reduced.contains(&key) {
            return Err(Status::already_exists(format!(
                "process {pid} contributed to step {} again: that all-reduce is done",
                key.1
            )));
        }
        if !st.reduces.contains_key(&key) {
            crate::limits::check_count(
                "all-reduces under way",
                st.reduces.len(),
                crate::limits::MAX_PENDING_REDUCES,
            )?;
        }
        let r = st.reduces.entry(key).or_insert_with(|| ReduceState {
            len,
            contribs: (0..n).map(|_| None).collect(),
            arrived: 0,
            result: None,
            failed: None,
            taken: 0,
        });
        if r.len != len {
            let msg = format!(
                "step {}: process {pid} sent {len} elements, others {}",
                key.1, r.len
            );
            r.failed = Some(msg.clone());
            drop(st);
            shared.notify();
            return Err(Status::invalid_argument(msg));
        }
        let slot = &mut r.contribs[pid as usize];
        if slot.is_some() {
            return Err(Status::already_exists(format!(
                "process {pid} already contributed to step {}",
                key.1
            )));
        }
        *slot = Some(payload);
        r.arrived += 1;
        (r.arrived == n).then(|| {
            r.contribs
                .iter_mut()
                // invariant: every contribution is Some once `arrived == n` (each arrival fills one slot once).
                .map(|c| c.take().expect("all arrived"))
                .collect()
        })
    };
    if let Some(contribs) = ready {
        let contribs: Vec<Payload> = contribs;
        let sum = tokio::task::spawn_blocking(move || ordered_sum(contribs))
            .await
            .map_err(|e| Status::internal(format!("summation failed: {e}")))?;
        if let Some(r) = shared.lock().reduces.get_mut(&key) {
            r.result = Some(sum);
        }
        shared.notify();
    }
    Ok(())
}

async fn wait_for_sum(
    shared: &Shared,
    key: ReduceKey,
    deadline: Deadline,
    timeout: Duration,
) -> Result<Bytes, Status> {
    let n = shared.config.world_size as usize;
    shared
        .wait(
            deadline,
            |st| {
                if let Some(s) = st.moved_on(key.0) {
                    return Some(Err(s));
                }
                let r = st.reduces.get_mut(&key)?;
                if let Some(msg) = &r.failed {
                    return Some(Err(Status::invalid_argument(msg.clone())));
                }
                let sum = r.result.clone()?;
                r.taken += 1;
                if r.taken == n {
                    st.reduces.remove(&key);
                    if st.reduced.iter().next().is_some_and(|k| k.0 != key.0) {
                        st.reduced.clear(); // a new generation
                    }
                    st.reduced.insert(key);
                }
                Some(Ok(sum))
            },
            |st| {
                let missing: Vec<usize> = st
                    .reduces
                    .get(&key)
                    .map(|r| (0..n).filter(|&p| r.contribs[p].is_none() && r.result.is_none()).collect())
                    .unwrap_or_default();
                Err(Status::deadline_exceeded(format!(
                    "all-reduce of step {} timed out after {timeout:?} waiting for process ids {missing:?}",
                    key.1
                )))
            },
        )
        .await
}
