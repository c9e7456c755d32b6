//! Real StableHLO on the real CPU plugin (installed on first use).

use pjrt::{CompileOptions, ElementType, Error, MemoryStats, bf16, f16};

fn client(n: usize) -> pjrt::Client {
    pjrt::cpu_client(n).expect("CPU plugin client")
}

const MATMUL: &str = r#"
module @matmul {
  func.func public @main(%a: tensor<3x4xf32>, %b: tensor<4x5xf32>) -> tensor<3x5xf32> {
    %0 = stablehlo.dot_general %a, %b, contracting_dims = [1] x [0] : (tensor<3x4xf32>, tensor<4x5xf32>) -> tensor<3x5xf32>
    return %0 : tensor<3x5xf32>
  }
}"#;

#[test]
fn matmul_matches_host_computation() {
    let c = client(1);
    assert_eq!(c.platform_name(), "cpu");
    let exe = c.compile(MATMUL, &CompileOptions::single()).unwrap();
    let a: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 2.0).collect();
    let b: Vec<f32> = (0..20).map(|i| (i as f32).sin()).collect();
    let out = exe
        .execute(&[vec![
            &c.buffer_from_host(&a, &[3, 4], 0).unwrap(),
            &c.buffer_from_host(&b, &[4, 5], 0).unwrap(),
        ]])
        .unwrap();
    assert_eq!(out[0][0].dims().unwrap(), [3, 5]);
    let got = out[0][0].to_host::<f32>().unwrap();
    for i in 0..3 {
        for j in 0..5 {
            let want: f32 = (0..4).map(|k| a[i * 4 + k] * b[k * 5 + j]).sum();
            assert!(
                (got[i * 5 + j] - want).abs() < 1e-5,
                "({i},{j}): {} vs {want}",
                got[i * 5 + j]
            );
        }
    }
}

#[test]
fn every_element_type_round_trips() {
    let c = client(1);
    macro_rules! round_trip {
        ($t:ty, $ty:expr, $vals:expr) => {{
            let v: Vec<$t> = $vals;
            let b = c.buffer_from_host(&v, &[v.len() as i64], 0).unwrap();
            assert_eq!(b.element_type().unwrap(), $ty);
            assert_eq!(b.to_host::<$t>().unwrap(), v);
        }};
    }
    round_trip!(f32, ElementType::F32, vec![1.5, -2.25, f32::MAX]);
    round_trip!(f64, ElementType::F64, vec![1e-300, -3.0]);
    round_trip!(
        bf16,
        ElementType::BF16,
        vec![bf16::from_f32(1.5), bf16::from_f32(-7.0)]
    );
    round_trip!(
        f16,
        ElementType::F16,
        vec![f16::from_f32(0.5), f16::from_f32(-1.0)]
    );
    round_trip!(i32, ElementType::S32, vec![i32::MIN, 0, 7]);
    round_trip!(u32, ElementType::U32, vec![u32::MAX, 1]);
    round_trip!(i64, ElementType::S64, vec![i64::MIN, 42]);
    round_trip!(bool, ElementType::Pred, vec![true, false, true]);
}

const SHARDED: &str = r#"
module @sharded attributes {mhlo.num_partitions = 8 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=4, "model"=2]>
  func.func public @main(
      %x: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>},
      %w: tensor<4x6xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>})
      -> (tensor<8x6xf32> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>},
          tensor<f32> {sdy.sharding = #sdy.sharding<@mesh, []>}) {
    %0 = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<8x4xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
    %z = stablehlo.constant dense<0.0> : tensor<f32>
    %1 = stablehlo.reduce(%0 init: %z) applies stablehlo.add across dimensions = [0, 1] : (tensor<8x6xf32>, tensor<f32>) -> tensor<f32>
    return %0, %1 : tensor<8x6xf32>, tensor<f32>
  }
}"#;

#[test]
fn shardy_program_on_8_devices_is_right_shard_by_shard() {
    let c = client(8);
    assert_eq!(c.devices().len(), 8);
    let exe = c.compile(SHARDED, &CompileOptions::spmd(8)).unwrap();
    assert_eq!(exe.num_devices(), 8);
    let x: Vec<f32> = (0..32).map(|i| i as f32 - 10.0).collect();
    let w: Vec<f32> = (0..24).map(|i| (i % 7) as f32 * 0.25).collect();
    // Mesh device d = data index * 2 + model index.
    let mut bufs = Vec::new();
    for d in 0..8 {
        let (di, mi) = (d / 2, d % 2);
        let xs: Vec<f32> = x[di * 8..di * 8 + 8].to_vec(); // rows 2di..2di+2
        let ws: Vec<f32> = (0..4)
            .flat_map(|k| w[k * 6 + mi * 3..k * 6 + mi * 3 + 3].to_vec())
            .collect();
        bufs.push((
            c.buffer_from_host(&xs, &[2, 4], d).unwrap(),
            c.buffer_from_host(&ws, &[4, 3], d).unwrap(),
        ));
    }
    let args: Vec<Vec<&pjrt::Buffer>> = bufs.iter().map(|(a, b)| vec![a, b]).collect();
    let out = exe.execute(&args).unwrap();
    let full: Vec<f32> = (0..8)
        .flat_map(|i| (0..6).map(move |j| (i, j)))
        .map(|(i, j)| (0..4).map(|k| x[i * 4 + k] * w[k * 6 + j]).sum())
        .collect();
    for (d, outs) in out.iter().enumerate() {
        let (di, mi) = (d / 2, d % 2);
        let shard = outs[0].to_host::<f32>().unwrap();
        assert_eq!(outs[0].dims().unwrap(), [2, 3], "device {d}");
        for r in 0..2 {
            for col in 0..3 {
                let want = full[(di * 2 + r) * 6 + mi * 3 + col];
                assert!(
                    (shard[r * 3 + col] - want).abs() < 1e-4,
                    "device {d} ({r},{col})"
                );
            }
        }
        let total = outs[1].to_host::<f32>().unwrap()[0];
        assert!(
            (total - full.iter().sum::<f32>()).abs() < 1e-2,
            "device {d}: replicated sum {total}"
        );
    }
}

const DONATED: &str = r#"
module @step {
  func.func public @main(%w: tensor<1024xf32> {tf.aliasing_output = 0 : i32}, %g: tensor<1024xf32>) -> tensor<1024xf32> {
    %lr = stablehlo.constant dense<0.5> : tensor<1024xf32>
    %u = stablehlo.multiply %g, %lr : tensor<1024xf32>
    %w2 = stablehlo.subtract %w, %u : tensor<1024xf32>
    return %w2 : tensor<1024xf32>
  }
}"#;

#[test]
fn donated_update_reuses_the_argument_and_deletes_it() {
    let c = client(1);
    let exe = c.compile(DONATED, &CompileOptions::single()).unwrap();
    let stats: MemoryStats = exe.executable().memory_stats().unwrap();
    assert_eq!(stats.alias_bytes, 4096, "{stats:?}");
    assert_eq!(stats.argument_bytes, 8192, "{stats:?}");
    let mut w = c.buffer_from_host(&vec![1.0f32; 1024], &[1024], 0).unwrap();
    let g = c.buffer_from_host(&vec![0.5f32; 1024], &[1024], 0).unwrap();
    for _ in 0..3 {
        let mut out = exe.execute(&[vec![&w, &g]]).unwrap();
        assert!(w.is_deleted().unwrap(), "donated input must be deleted");
        let err = w.to_host::<f32>().unwrap_err();
        assert!(matches!(err, Error::Pjrt { .. }), "{err}");
        w = out[0].pop().unwrap();
    }
    assert!(!g.is_deleted().unwrap());
    assert_eq!(w.to_host::<f32>().unwrap(), vec![1.0 - 3.0 * 0.25; 1024]);
}

#[test]
fn memory_stats_and_optimized_hlo_are_reported() {
    let c = client(1);
    let exe = c.compile(MATMUL, &CompileOptions::single()).unwrap();
    let stats = exe.executable().memory_stats().unwrap();
    assert_eq!(stats.argument_bytes, (12 + 20) * 4);
    assert_eq!(stats.output_bytes, 15 * 4);
    let (format, bytes) = exe.executable().optimized_program().unwrap();
    assert!(!format.is_empty());
    assert!(
        bytes.windows(3).any(|w| w == b"dot"),
        "optimized HLO mentions the dot ({format})"
    );
    assert_eq!(exe.executable().num_outputs().unwrap(), 1);
}

#[test]
fn portable_executable_runs_on_any_device() {
    let c = client(4);
    let exe = c
        .compile(
            DONATED
                .replace(" {tf.aliasing_output = 0 : i32}", "")
                .as_str(),
            &CompileOptions::portable(),
        )
        .unwrap();
    for d in [3, 1] {
        let w = c.buffer_from_host(&vec![2.0f32; 1024], &[1024], d).unwrap();
        let g = c.buffer_from_host(&vec![2.0f32; 1024], &[1024], d).unwrap();
        let out = exe.execute_on(&[&w, &g], d).unwrap();
        assert_eq!(out[0].to_host::<f32>().unwrap()[0], 1.0);
    }
}

/// A store that counts what the plugin asks of it.
#[derive(Default)]
struct CountingStore(std::sync::atomic::AtomicUsize);

impl pjrt::KeyValueStore for CountingStore {
    fn get(&self, key: &str, _: std::time::Duration) -> Result<Vec<u8>, String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(format!("no {key}"))
    }
    fn try_get(&self, _: &str) -> Result<Option<Vec<u8>>, String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(None)
    }
    fn put(&self, _: &str, _: &[u8]) -> Result<(), String> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn a_client_with_a_key_value_store_runs_and_outlives_nothing() {
    // The CPU plugin ignores the callbacks (it has no multi-process mode);
    // this checks the create call with them filled in, and that the store
    // lives as long as the client.
    let plugin =
        pjrt::Plugin::load(pjrt::install::resolve(pjrt::install::Backend::Cpu, None).unwrap())
            .unwrap();
    let store = std::sync::Arc::new(CountingStore::default());
    let c = pjrt::Client::with_key_value_store(
        &plugin,
        &[("cpu_device_count", pjrt::OptionValue::Int(2))],
        store.clone(),
    )
    .unwrap();
    assert_eq!(c.devices().len(), 2);
    let exe = c.compile(MATMUL, &CompileOptions::single()).unwrap();
    let a = c.buffer_from_host(&[1f32; 12], &[3, 4], 0).unwrap();
    let b = c.buffer_from_host(&[2f32; 20], &[4, 5], 0).unwrap();
    let out = exe.execute(&[vec![&a, &b]]).unwrap();
    assert_eq!(out[0][0].to_host::<f32>().unwrap(), vec![8f32; 15]);
    assert_eq!(
        std::sync::Arc::strong_count(&store),
        2,
        "the client holds the store"
    );
    drop((out, a, b, exe, c));
    assert_eq!(
        std::sync::Arc::strong_count(&store),
        1,
        "released with the client"
    );
}

/// Two nested counted loops, 7 outer by 3 inner iterations, each with a
/// matmul: the optimized module says how often each one runs.
const NESTED_LOOPS: &str = r#"
module @loops {
  func.func public @main(%x: tensor<8x8xf32>, %w: tensor<8x8xf32>) -> tensor<8x8xf32> {
    %c0 = stablehlo.constant dense<0> : tensor<i32>
    %r:2 = stablehlo.while(%i = %c0, %a = %x) : tensor<i32>, tensor<8x8xf32>
     cond {
      %n = stablehlo.constant dense<7> : tensor<i32>
      %p = stablehlo.compare LT, %i, %n : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %p : tensor<i1>
    } do {
      %one = stablehlo.constant dense<1> : tensor<i32>
      %j = stablehlo.add %i, %one : tensor<i32>
      %b = stablehlo.dot_general %a, %w, contracting_dims = [1] x [0] : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
      %t = stablehlo.tanh %b : tensor<8x8xf32>
      %z = stablehlo.constant dense<0> : tensor<i32>
      %s:2 = stablehlo.while(%k = %z, %c = %t) : tensor<i32>, tensor<8x8xf32>
       cond {
        %m = stablehlo.constant dense<3> : tensor<i32>
        %q = stablehlo.compare LT, %k, %m : (tensor<i32>, tensor<i32>) -> tensor<i1>
        stablehlo.return %q : tensor<i1>
      } do {
        %one2 = stablehlo.constant dense<1> : tensor<i32>
        %k2 = stablehlo.add %k, %one2 : tensor<i32>
        %d = stablehlo.dot_general %w, %c, contracting_dims = [1] x [0] : (tensor<8x8xf32>, tensor<8x8xf32>) -> tensor<8x8xf32>
        %e = stablehlo.tanh %d : tensor<8x8xf32>
        stablehlo.return %k2, %e : tensor<i32>, tensor<8x8xf32>
      }
      stablehlo.return %j, %s#1 : tensor<i32>, tensor<8x8xf32>
    }
    return %r#1 : tensor<8x8xf32>
  }
}"#;

fn loop_counts(hlo: &pjrt::hlo::HloSummary) -> (Vec<Option<u64>>, Vec<u64>) {
    let mut trips: Vec<_> = hlo
        .instructions
        .iter()
        .filter(|i| i.opcode == "while")
        .map(|i| i.trip_count)
        .collect();
    trips.sort();
    let mut dots: Vec<_> = hlo
        .instructions
        .iter()
        .filter(|i| i.opcode == "dot")
        .map(|i| i.executions)
        .collect();
    dots.sort();
    assert!(hlo.instructions.iter().all(|i| !i.executions_lower_bound));
    (trips, dots)
}

#[test]
fn optimized_hlo_counts_loop_iterations() {
    let c = client(1);
    let exe = c.compile(NESTED_LOOPS, &CompileOptions::single()).unwrap();
    let hlo = exe.executable().optimized_hlo().unwrap();
    // The outer matmul runs 7 times, the inner one 7 x 3.
    assert_eq!(
        loop_counts(&hlo),
        (vec![Some(3), Some(7)], vec![7, 21]),
        "{:#?}",
        hlo.instructions
    );
    let entry = hlo
        .instructions
        .iter()
        .find(|i| i.opcode == "while" && i.trip_count == Some(7));
    assert_eq!(entry.unwrap().executions, 1);
    // Without XLA's trip count annotation, the same counts come from the
    // loops' conditions (compare against a constant), initial values and
    // increments. Overwriting the key keeps every length, so the proto stays
    // valid.
    let (format, mut bytes) = exe.executable().optimized_program().unwrap();
    let key = b"known_trip_count";
    let mut erased = 0;
    for k in 0..bytes.len().saturating_sub(key.len()) {
        if &bytes[k..k + key.len()] == key {
            bytes[k..k + key.len()].copy_from_slice(b"xxxxx_xxxx_xxxxx");
            erased += 1;
        }
    }
    assert_eq!(erased, 2);
    let derived = pjrt::hlo::parse_module(&bytes, format == "hlo_with_config").unwrap();
    assert_eq!(loop_counts(&derived), (vec![Some(3), Some(7)], vec![7, 21]));
}

#[test]
fn a_copy_on_the_device_keeps_the_values_a_later_program_donates() {
    // DONATED over 4 MiB arrays, so a step takes long enough that copies
    // and donations meet while it runs.
    const N: usize = 1 << 20;
    let c = client(2);
    let exe = c
        .compile(
            &DONATED.replace("1024x", &format!("{N}x")),
            &CompileOptions::single(),
        )
        .unwrap();
    let g = c
        .buffer_from_host(&vec![0.5f32; N], &[N as i64], 0)
        .unwrap();
    let mut w = c
        .buffer_from_host(&vec![1.0f32; N], &[N as i64], 0)
        .unwrap();
    let (mut copies, mut runs) = (Vec::new(), Vec::new());
    // Each copy is taken of a step's output still being computed, and the
    // next step donates (overwrites) that output at once: no step is
    // waited for until the end.
    for _ in 0..16 {
        let (mut out, running) = exe.execute_async(&[vec![&w, &g]]).unwrap();
        w = out[0].pop().unwrap();
        copies.push(w.copy_on_device().unwrap());
        runs.push(running);
    }
    let last = exe.execute(&[vec![&w, &g]]).unwrap();
    for running in runs {
        running.wait().unwrap();
    }
    assert!(
        w.is_deleted().unwrap(),
        "the next step donated the original"
    );
    for (i, copy) in copies.iter().enumerate() {
        assert_eq!(copy.dims().unwrap(), [N as i64]);
        assert!(!copy.is_deleted().unwrap());
        let want = 1.0 - (i + 1) as f32 * 0.25;
        let got = copy.to_host::<f32>().unwrap();
        assert!(got.iter().all(|&x| x == want), "step {i}: want {want}");
    }
    let got = last[0][0].to_host::<f32>().unwrap();
    assert!(got.iter().all(|&x| x == 1.0 - 17.0 * 0.25));
}
