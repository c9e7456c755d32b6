//! Deviceless compile for a TPU slice with libtpu: no TPU, no client.
//! libtpu is installed into the cache on first use; if it cannot be fetched
//! the test says so loudly and returns, except under CI (`CI` set), where
//! that is a failure.

use pjrt::{CompileOptions, OptionValue, Plugin, Topology};

fn libtpu() -> Option<std::sync::Arc<Plugin>> {
    match pjrt::install::resolve(pjrt::install::Backend::Tpu, None) {
        Ok(path) => Some(Plugin::load(path).expect("libtpu loads")),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("libtpu could not be installed, and CI must run this check: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: libtpu could not be installed: {e}");
            None
        }
    }
}

fn v5e(plugin: &std::sync::Arc<Plugin>, shape: &str) -> Topology {
    Topology::new(
        plugin,
        &format!("v5e:{shape}"),
        &[
            ("chip_config_name", OptionValue::Str("default".into())),
            ("chips_per_host_bounds", OptionValue::Ints(vec![2, 2, 1])),
            ("num_slices", OptionValue::Int(1)),
            ("wrap", OptionValue::Ints(vec![1, 1, 0])),
        ],
    )
    .unwrap()
}

const STEP: &str = r#"
module @step attributes {mhlo.num_partitions = 16 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["data"=4, "model"=4]>
  func.func public @main(
      %x: tensor<1024x512xbf16> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {}]>},
      %w: tensor<512x2048xbf16> {sdy.sharding = #sdy.sharding<@mesh, [{}, {"model"}]>})
      -> (tensor<1024x2048xbf16> {sdy.sharding = #sdy.sharding<@mesh, [{"data"}, {"model"}]>}) {
    %0 = stablehlo.dot_general %x, %w, contracting_dims = [1] x [0] : (tensor<1024x512xbf16>, tensor<512x2048xbf16>) -> tensor<1024x2048xbf16>
    return %0 : tensor<1024x2048xbf16>
  }
}"#;

#[test]
fn v5e_4x4_topology_compiles_without_a_tpu() {
    let Some(plugin) = libtpu() else { return };
    let topo = v5e(&plugin, "4x4");
    assert_eq!(topo.platform_name().unwrap(), "tpu");
    let devices = topo.devices().unwrap();
    assert_eq!(devices.len(), 16);
    let coords: Vec<Vec<i64>> = devices
        .iter()
        .map(|d| d.ints("coords").unwrap().to_vec())
        .collect();
    assert!(
        coords.iter().all(|c| c.len() == 3 && c[0] < 4 && c[1] < 4),
        "{coords:?}"
    );
    let hosts: std::collections::BTreeSet<i32> =
        devices.iter().map(|d| d.info.process_index).collect();
    assert_eq!(hosts.len(), 4, "4 hosts of 2x2 chips");
    let exe = topo.compile(STEP, &CompileOptions::spmd(16)).unwrap();
    let stats = exe.memory_stats().unwrap();
    // Per chip: a 256x512 shard of x and a 512x512 shard of w in bf16.
    assert_eq!(
        stats.argument_bytes,
        (256 * 512 + 512 * 512) * 2,
        "{stats:?}"
    );
    assert_eq!(stats.output_bytes, 256 * 512 * 2, "{stats:?}");
}

#[test]
fn oversized_program_is_a_compile_error_naming_hbm() {
    let Some(plugin) = libtpu() else { return };
    let topo = v5e(&plugin, "2x2");
    // 4 x 8 GiB of replicated f32: far beyond 15.75 GiB per chip.
    let big = r#"
module @big attributes {mhlo.num_partitions = 4 : i32, mhlo.num_replicas = 1 : i32} {
  sdy.mesh @mesh = <["d"=4]>
  func.func public @main(%x: tensor<65536x32768xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>})
      -> (tensor<65536x32768xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>}) {
    %0 = stablehlo.exponential %x : tensor<65536x32768xf32>
    %1 = stablehlo.add %0, %x : tensor<65536x32768xf32>
    return %1 : tensor<65536x32768xf32>
  }
}"#;
    let err = topo
        .compile(big, &CompileOptions::spmd(4))
        .unwrap_err()
        .to_string();
    assert!(err.contains("HBM") || err.contains("memory"), "{err}");
}
