//! TPU and GPU jobs: one process per host, each bringing up the plugin's
//! multi-process client through the coordinator's key-value store, then
//! all running one SPMD program over the global mesh
//! ([`train::train_on_pod`]). The coordinator here only admits the hosts,
//! serves the store, agrees on checkpoints, writes the job's metrics and
//! watches for lost hosts; XLA's collectives move every tensor.

use std::sync::Arc;
use std::time::Duration;

use cluster::WorkerClient;

use crate::group::LostFlag;

/// The coordinator's key-value store as a PJRT plugin's distributed
/// runtime uses it (`kv_get`/`kv_try_get`/`kv_put` callbacks of
/// `PJRT_Client_Create`). Keys are prefixed with the job generation, so a
/// job restarted after a lost host never reads the topology its previous
/// clients exchanged.
pub struct CoordinatorStore {
    client: Arc<WorkerClient>,
    prefix: String,
    lost: LostFlag,
}

impl CoordinatorStore {
    /// The store of `client`'s current generation.
    pub fn new(client: Arc<WorkerClient>) -> CoordinatorStore {
        Self::watched(client, LostFlag::default())
    }

    /// The store, recording in `lost` a call that found the coordinator gone.
    pub(crate) fn watched(client: Arc<WorkerClient>, lost: LostFlag) -> CoordinatorStore {
        let prefix = format!("pjrt/gen-{}/", client.generation());
        CoordinatorStore {
            client,
            prefix,
            lost,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl pjrt::KeyValueStore for CoordinatorStore {
    fn get(&self, key: &str, timeout: Duration) -> Result<Vec<u8>, String> {
        self.client
            .kv_get(&self.key(key), timeout)
            .map_err(|e| self.lost.note(e))
            .map_err(|e| format!("key-value get {key:?} through the coordinator: {e}"))
    }

    fn try_get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.client
            .kv_try_get(&self.key(key))
            .map_err(|e| self.lost.note(e))
            .map_err(|e| format!("key-value try-get {key:?} through the coordinator: {e}"))
    }

    fn put(&self, key: &str, value: &[u8]) -> Result<(), String> {
        self.client
            .kv_put(&self.key(key), value, true)
            .map_err(|e| self.lost.note(e))
            .map_err(|e| format!("key-value put {key:?} through the coordinator: {e}"))
    }
}
