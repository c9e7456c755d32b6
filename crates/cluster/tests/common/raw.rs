//! A raw gRPC peer of the coordinator, without the client library: it can
//! hold a stream half-sent, or send what an honest worker never would.

use std::sync::mpsc;
use std::time::Duration;

use cluster::config_digest;
use cluster::proto::cluster_client::ClusterClient;
use cluster::proto::{AllReduceChunk, AllReduceHeader, DType, Member, RegisterRequest};
use tokio_stream::wrappers::ReceiverStream;

use super::{CONFIG, TOKEN, VERSION};

/// A raw gRPC peer: registered, but no heartbeat and no client library,
/// so that it can hold a stream half-sent.
pub struct RawPeer {
    pub rt: tokio::runtime::Runtime,
    pub rpc: ClusterClient<tonic::transport::Channel>,
    pub member: Member,
}

impl RawPeer {
    pub fn register(addr: &str) -> RawPeer {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let channel = rt
            .block_on(
                tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect(),
            )
            .unwrap();
        let mut rpc = ClusterClient::new(channel);
        let req = authorized(RegisterRequest {
            protocol_version: 1,
            host: "raw".into(),
            devices: 0,
            backend: "cpu".into(),
            software_version: VERSION.into(),
            config_digest: config_digest(CONFIG),
        });
        let r = rt.block_on(rpc.register(req)).unwrap().into_inner();
        RawPeer {
            rt,
            rpc,
            member: r.member.unwrap(),
        }
    }

    /// Opens an all-reduce of `len` floats for `step` (timeout `held`),
    /// sends the header and nothing else; the coordinator is left reading the payload. Returns
    /// the receiver of the call's outcome and the sender keeping the
    /// upload open.
    pub fn hold_all_reduce(
        &self,
        step: u64,
        len: u64,
        held: Duration,
    ) -> (
        mpsc::Receiver<Result<(), tonic::Status>>,
        tokio::sync::mpsc::Sender<AllReduceChunk>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let header = AllReduceHeader {
            member: Some(self.member),
            generation: 0,
            step,
            dtype: DType::DtypeF32 as i32,
            len,
            timeout_ms: held.as_millis() as u64,
        };
        self.rt
            .block_on(tx.send(AllReduceChunk {
                header: Some(header),
                data: Default::default(),
            }))
            .unwrap();
        let mut rpc = self.rpc.clone();
        let (done_tx, done) = mpsc::channel();
        self.rt.spawn(async move {
            let r = async {
                let mut answer = rpc
                    .all_reduce(authorized(ReceiverStream::new(rx)))
                    .await?
                    .into_inner();
                while answer.message().await?.is_some() {}
                Ok(())
            };
            let _ = done_tx.send(r.await);
        });
        (done, tx)
    }
}

pub fn authorized<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    req
}

impl RawPeer {
    /// Sends `chunks` as one all-reduce call and closes the upload; the
    /// answer's chunks, or the call's error.
    pub fn all_reduce(
        &self,
        chunks: Vec<AllReduceChunk>,
    ) -> Result<Vec<AllReduceChunk>, tonic::Status> {
        let mut rpc = self.rpc.clone();
        self.rt.block_on(async move {
            let upload = tokio_stream::iter(chunks);
            let mut answer = rpc.all_reduce(authorized(upload)).await?.into_inner();
            let mut out = Vec::new();
            while let Some(c) = answer.message().await? {
                out.push(c);
            }
            Ok(out)
        })
    }

    /// An all-reduce header from this peer.
    pub fn header(&self, generation: u64, step: u64, len: u64) -> AllReduceChunk {
        AllReduceChunk {
            header: Some(AllReduceHeader {
                member: Some(self.member),
                generation,
                step,
                dtype: DType::DtypeF32 as i32,
                len,
                timeout_ms: 30_000,
            }),
            data: Default::default(),
        }
    }
}

/// A data chunk of raw bytes.
pub fn data(bytes: Vec<u8>) -> AllReduceChunk {
    AllReduceChunk {
        header: None,
        data: bytes.into(),
    }
}
