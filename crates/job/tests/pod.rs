//! A TPU or GPU job brings up its plugin clients through the coordinator:
//! the PJRT key-value callbacks, driven exactly as a plugin's distributed
//! runtime drives them, reach the coordinator's store over gRPC, so what
//! one host's plugin puts another's gets. And the CPU-only gradient
//! exchange is refused for those backends.

use std::sync::Arc;
use std::time::Duration;

use cluster::{ClientOptions, CoordinatorOptions, WorkerClient};
use job::pod::CoordinatorStore;
use pjrt::PluginSide;

const TOKEN: &str = "pod-test-token-0123456789";
const CONFIG: &str = "[model]\npreset = \"tiny\"\n";

fn worker(addr: &str) -> WorkerClient {
    let mut o = ClientOptions::new(
        addr.to_string(),
        TOKEN,
        job::SOFTWARE_VERSION,
        cluster::config_digest(CONFIG),
    );
    o.heartbeat_interval = Duration::from_millis(100);
    WorkerClient::connect(o).expect("registers")
}

#[test]
fn plugin_callbacks_exchange_topology_through_the_coordinator() {
    let coord = cluster::Coordinator::start(CoordinatorOptions::new(
        "127.0.0.1:0".parse().unwrap(),
        2,
        TOKEN,
        job::SOFTWARE_VERSION,
        CONFIG,
    ))
    .expect("coordinator starts");
    let addr = coord.addr().to_string();
    let (w0, w1) = (Arc::new(worker(&addr)), Arc::new(worker(&addr)));
    let host0 = PluginSide::new(Arc::new(CoordinatorStore::new(w0.clone())));
    let host1 = PluginSide::new(Arc::new(CoordinatorStore::new(w1.clone())));

    // Host 1's plugin waits for a key host 0's plugin has not put yet.
    let topology = b"\x08\x01\x12\x04node\xff\x00".to_vec();
    let waiting = std::thread::spawn(move || {
        host1
            .get("cuda:global_topology", 10_000)
            .map(|v| (v, host1))
    });
    std::thread::sleep(Duration::from_millis(300));
    host0.put("cuda:global_topology", &topology).unwrap();
    let (got, host1) = waiting.join().unwrap().unwrap();
    assert_eq!(got, topology);
    assert_eq!(host1.try_get("cuda:global_topology").unwrap(), topology);

    // A missing key: NOT_FOUND to try_get, DEADLINE_EXCEEDED-style error
    // naming the key to get.
    let (_, message) = host1.try_get("cuda:node_1").unwrap_err();
    assert!(message.contains("cuda:node_1"), "{message}");
    let (_, message) = host1.get("cuda:node_1", 200).unwrap_err();
    assert!(message.contains("cuda:node_1"), "{message}");

    // Keys live under the job generation: a restarted job's clients never
    // see the previous generation's topology.
    let generation = w0.generation();
    assert_eq!(
        w0.kv_try_get(&format!("pjrt/gen-{generation}/cuda:global_topology"))
            .unwrap(),
        Some(topology)
    );
    drop((host0, host1));
    for w in [w0, w1] {
        Arc::try_unwrap(w).ok().unwrap().leave().unwrap();
    }
}

#[test]
fn tpu_and_gpu_jobs_never_use_the_cpu_gradient_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[model]\npreset = \"tiny\"\n[data]\nformat = \"tokens\"\npath = \"x.json\"\nseq_len = 8\nbatch_size = 2\n\
         [train]\nsteps = 1\nrun_dir = {:?}\n[runtime]\nbackend = \"tpu\"\n",
        dir.path().join("run").display().to_string()
    );
    let cfg = train::TrainConfig::from_toml(&text, "test", &[]).unwrap();
    struct NoGroup;
    impl train::ProcessGroup for NoGroup {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, _: u64, _: &mut [f32]) -> train::Result<()> {
            panic!("a TPU job reached the CPU gradient exchange")
        }
        fn agree_checkpoint(&self, _: u64, _: Result<(), String>) -> train::Result<bool> {
            Ok(true)
        }
        fn report(&self, _: u64, _: &serde_json::Value) -> train::Result<()> {
            Ok(())
        }
        fn check(&self) -> train::Result<()> {
            Ok(())
        }
    }
    let e = train::train_in_group(&cfg, false, &NoGroup)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("runtime.backend") && e.contains("CPU processes only"),
        "{e}"
    );
    // And the CPU plugin cannot be a pod's client.
    let mut cpu = cfg.clone();
    cpu.runtime.backend = "cpu".into();
    struct Empty;
    impl pjrt::KeyValueStore for Empty {
        fn get(&self, k: &str, _: Duration) -> Result<Vec<u8>, String> {
            Err(k.into())
        }
        fn try_get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
            Ok(None)
        }
        fn put(&self, _: &str, _: &[u8]) -> Result<(), String> {
            Ok(())
        }
    }
    let e = train::make_pod_client(&cpu, Arc::new(Empty), 0, 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("cannot span processes"), "{e}");
}
