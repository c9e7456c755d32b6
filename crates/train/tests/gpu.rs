//! NVIDIA GPU defaults without a GPU: bf16 compute when a GPU config names
//! no dtype, the CUDA client's options, the XLA options of a GPU step (and
//! that the CUDA plugin knows each by name), deterministic reductions and
//! full-f32 matmuls behind switches, the shipped 8-GPU configs, and that
//! `matmul_precision = "highest"` compiles and trains (on the CPU plugin).

use train::TrainConfig;
use train::gpu;

mod common;

fn load(sets: &[&str]) -> Result<TrainConfig, String> {
    let dir = std::env::temp_dir();
    let text = common::config(&dir, &dir.join("tokens.json"), 1, "");
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml(&text, "test.toml", &sets).map_err(|e| e.to_string())
}

fn xla(cfg: &TrainConfig) -> Vec<(String, pjrt::XlaOption)> {
    let dtype = cfg.compute_options().unwrap().dtype;
    cfg.runtime.xla_options(dtype).unwrap()
}

#[test]
fn gpus_default_to_bf16_and_the_choice_is_saved() {
    let cpu = load(&[]).unwrap();
    assert_eq!(cpu.model.dtype, "f32");
    let gpu = load(&["runtime.backend=\"cuda\""]).unwrap();
    assert_eq!(gpu.model.dtype, "bf16");
    assert!(gpu.to_toml().contains("dtype = \"bf16\""));
    assert_eq!(
        TrainConfig::from_toml(&gpu.to_toml(), "saved", &[]).unwrap(),
        gpu
    );
    let f32_gpu = load(&["runtime.backend=\"cuda13\"", "model.dtype=\"f32\""]).unwrap();
    assert_eq!(f32_gpu.model.dtype, "f32");
}

#[test]
fn gpu_steps_get_the_training_options_and_the_config_wins() {
    let cpu = load(&[]).unwrap();
    assert!(xla(&cpu).iter().all(|(k, _)| !k.starts_with("xla_gpu")));
    let gpu = load(&["runtime.backend=\"cuda12\""]).unwrap();
    let opts = xla(&gpu);
    for (name, _) in gpu::GPU_TRAINING_XLA_OPTIONS {
        assert_eq!(opts.iter().filter(|(k, _)| k == name).count(), 1, "{name}");
    }
    assert!(opts.contains(&(
        "xla_gpu_enable_latency_hiding_scheduler".into(),
        pjrt::XlaOption::Bool(true)
    )));
    assert!(!opts.iter().any(|(k, _)| k == "xla_gpu_deterministic_ops"));
    let det = load(&[
        "runtime.backend=\"cuda12\"",
        "runtime.deterministic=true",
        "runtime.xla_options.xla_gpu_enable_latency_hiding_scheduler=false",
    ])
    .unwrap();
    let opts = xla(&det);
    assert!(opts.contains(&(
        "xla_gpu_deterministic_ops".into(),
        pjrt::XlaOption::Bool(true)
    )));
    let lhs: Vec<_> = opts
        .iter()
        .filter(|(k, _)| k == "xla_gpu_enable_latency_hiding_scheduler")
        .collect();
    assert_eq!(lhs.len(), 1);
    assert_eq!(
        lhs[0].1,
        pjrt::XlaOption::Bool(false),
        "the config's own value wins"
    );
}

#[test]
fn client_options_and_bad_gpu_values_are_named() {
    let gpu = load(&[
        "runtime.backend=\"cuda\"",
        "runtime.gpu_memory_fraction=0.75",
        "runtime.gpu_preallocate=false",
    ])
    .unwrap();
    let o = gpu::client_options(&gpu.runtime);
    assert!(o.contains(&("memory_fraction", pjrt::OptionValue::Float(0.75))));
    assert!(o.contains(&("preallocate", pjrt::OptionValue::Bool(false))));
    let d = load(&["runtime.backend=\"cuda\""]).unwrap();
    assert_eq!(d.runtime.gpu_memory_fraction, 0.9);
    assert!(d.runtime.gpu_preallocate && !d.runtime.deterministic);
    for bad in ["0", "1.5", "-0.1"] {
        let e = load(&[&format!("runtime.gpu_memory_fraction={bad}")]).unwrap_err();
        assert!(
            e.contains("runtime.gpu_memory_fraction") && e.contains("(0, 1]"),
            "{e}"
        );
    }
    let e = load(&["runtime.matmul_precision=\"tf32\""]).unwrap_err();
    assert!(
        e.contains("runtime.matmul_precision") && e.contains("\"tf32\"") && e.contains("highest"),
        "{e}"
    );
}

/// The shipped 8-GPU configs: one host, FSDP over 8, one sequence per GPU
/// per micro-batch, and the per-GPU f32 state their comments state.
#[test]
fn the_8_gpu_configs_load_and_their_state_estimates_hold() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for (file, state_gb) in [("gemma-2b-gpu8.toml", 5.0), ("gemma-7b-gpu8.toml", 17.1)] {
        let cfg = TrainConfig::load(Some(&root.join("configs").join(file)), &[]).unwrap();
        assert!(gpu::is_cuda(&cfg.runtime.backend), "{file}");
        assert_eq!(cfg.runtime.device_count, 8, "{file}");
        let mesh = cfg.resolved_mesh().unwrap();
        assert_eq!((mesh.data, mesh.fsdp, mesh.tensor), (1, 8, 1), "{file}");
        assert_eq!(
            cfg.rows_per_process(1).unwrap(),
            8,
            "{file}: one sequence per GPU"
        );
        assert_eq!(cfg.model.dtype, "bf16");
        let model = cfg.model.resolve().unwrap();
        let params: usize = gemma::param_specs(&model)
            .iter()
            .map(|s| s.shape.iter().product::<usize>())
            .sum();
        // f32 parameters, gradients and two AdamW moments, over 8 GPUs.
        let gb = params as f64 * 16.0 / 8.0 / 1e9;
        assert!(
            (gb - state_gb).abs() / state_gb < 0.02,
            "{file}: {gb:.2} GB"
        );
        let text = std::fs::read_to_string(root.join("configs").join(file)).unwrap();
        assert!(text.contains(&format!("= {state_gb:.1} GB")), "{file}");
    }
}

/// `matmul_precision = "highest"` reaches the step and compiles; on the
/// CPU plugin (full f32 either way) it trains exactly as the default.
#[test]
fn highest_matmul_precision_compiles_and_trains_as_f32() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tokens_file(dir.path(), 16, 16, 64);
    let text = common::config(dir.path(), &data, 1, "");
    let run = |precision: &str, name: &str| {
        let sets = vec![
            format!("runtime.matmul_precision=\"{precision}\""),
            format!(
                "train.run_dir={:?}",
                dir.path().join(name).display().to_string()
            ),
        ];
        let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
        train::train(&cfg, false).unwrap().losses
    };
    let default = run("default", "a");
    let highest = run("highest", "b");
    assert_eq!(default.len(), 5);
    assert_eq!(default, highest);
}

/// Every XLA option name the GPU defaults use, and the client options, are
/// in the CUDA plugin's own flag and option tables (an unknown XLA option
/// fails the compile). Reads the pinned CUDA 12 plugin, installed as
/// `meshtrain setup cuda` does; under CI a failed install is a failure.
#[test]
fn the_cuda_plugin_knows_every_default_option_by_name() {
    let path = match pjrt::install::resolve(pjrt::install::Backend::Cuda12, None) {
        Ok(p) => p,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("the CUDA 12 plugin could not be installed, and CI must run this check: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the CUDA 12 plugin could not be installed: {e}");
            return;
        }
    };
    let bytes = std::fs::read(&path).unwrap();
    let mut names: Vec<&str> = gpu::GPU_TRAINING_XLA_OPTIONS
        .iter()
        .chain(gpu::GPU_DETERMINISTIC_XLA_OPTIONS)
        .map(|(k, _)| *k)
        .collect();
    names.extend(["memory_fraction", "preallocate", "node_id", "num_nodes"]);
    let wanted: std::collections::BTreeSet<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
    let found: std::collections::BTreeSet<&[u8]> = bytes
        .split(|b| *b == 0)
        .filter(|s| wanted.contains(s))
        .collect();
    for n in names {
        assert!(
            found.contains(n.as_bytes()),
            "the CUDA plugin does not know `{n}`"
        );
    }
}
