//! Entry points for the fuzz targets (`fuzz/`) and their regression corpus
//! (`crates/fuzz-targets`): every coordinator message decoded, and every
//! unary call handled by a coordinator's service without a network. Not
//! part of the API.

use std::sync::{Arc, mpsc};

use prost::Message;
use tonic::Request;

use crate::coordinator::fuzz_service;
use crate::payload::decode_into;
use crate::proto::cluster_server::Cluster;
use crate::proto::*;

/// Decodes `data` as every message of the protocol, and as an all-reduce
/// payload of each element type.
pub fn decode_messages(data: &[u8]) {
    macro_rules! each {
        ($($t:ty),*) => { $( let _ = <$t>::decode(data); )* };
    }
    each!(
        RegisterRequest,
        RegisterResponse,
        HeartbeatRequest,
        HeartbeatResponse,
        BarrierRequest,
        KvPutRequest,
        KvGetRequest,
        KvTryGetRequest,
        KvGetResponse,
        KvDeleteRequest,
        AllReduceChunk,
        ReportMetricsRequest,
        CommitCheckpointRequest,
        CommitCheckpointResponse,
        LeaveRequest
    );
    if data.len() <= 1 << 16 {
        let mut f = vec![0f32; data.len() / 4];
        let _ = decode_into(data, &mut f);
        let mut d = vec![0f64; data.len() / 8 + 1];
        let _ = decode_into(data, &mut d);
    }
}

/// Handles a sequence of calls on a fresh coordinator for 2 workers: each
/// call is one byte choosing the method, two bytes of length, then the
/// request's bytes. Process 0 (incarnation 1) is registered first, so
/// member checks pass when a request names it. Every wait is cut to at
/// most 1 ms. Returns whether every call decoded and was answered `Ok`.
pub fn handle_calls(data: &[u8]) -> bool {
    let (tx, _rx) = mpsc::channel();
    let svc = fuzz_service(2, tx);
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    else {
        return false;
    };
    rt.block_on(async {
        let honest = RegisterRequest {
            protocol_version: 1,
            host: "fuzz".into(),
            devices: 0,
            backend: "cpu".into(),
            software_version: FUZZ_VERSION.into(),
            config_digest: String::new(),
        };
        let _ = svc.register(Request::new(honest)).await;
        let mut rest = data;
        let mut ok = rest.len() >= 3;
        while rest.len() >= 3 {
            let method = rest[0];
            let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            let body = &rest[3..(3 + len).min(rest.len())];
            rest = &rest[(3 + len).min(rest.len())..];
            ok &= call(&svc, method, body).await;
        }
        ok
    })
}

/// The software version of [`handle_calls`]'s coordinator.
pub const FUZZ_VERSION: &str = "fuzz";

/// One call; whether it decoded and was answered `Ok`.
async fn call(svc: &Arc<impl Cluster>, method: u8, body: &[u8]) -> bool {
    macro_rules! unary {
        ($t:ty, $m:ident) => {{
            match <$t>::decode(body) {
                Ok(r) => svc.$m(Request::new(r)).await.is_ok(),
                Err(_) => false,
            }
        }};
        ($t:ty, $m:ident, wait) => {{
            match <$t>::decode(body) {
                Ok(mut r) => {
                    r.timeout_ms = r.timeout_ms.min(1);
                    svc.$m(Request::new(r)).await.is_ok()
                }
                Err(_) => false,
            }
        }};
    }
    match method % 11 {
        0 => unary!(RegisterRequest, register),
        1 => unary!(HeartbeatRequest, heartbeat),
        2 => unary!(BarrierRequest, barrier, wait),
        3 => unary!(KvPutRequest, kv_put),
        4 => unary!(KvGetRequest, kv_get, wait),
        5 => unary!(KvTryGetRequest, kv_try_get),
        6 => unary!(KvDeleteRequest, kv_delete),
        7 => unary!(ReportMetricsRequest, report_metrics),
        8 => unary!(CommitCheckpointRequest, commit_checkpoint, wait),
        9 => unary!(LeaveRequest, leave),
        _ => AllReduceChunk::decode(body).is_ok(),
    }
}
