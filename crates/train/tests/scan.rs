//! The decoder layers as one loop (`model.scan_layers`, the default on TPU
//! and GPU): the
//! scanned step trains as the unrolled one does (losses and parameters), on
//! one device and sharded over 8, its program holds one loop for the layers,
//! the stacked `layers` axis is sharded only when a rule asks, and a
//! checkpoint written before the loop existed restores into a scanned run.

use std::path::{Path, PathBuf};

use gemma::{GemmaConfig, param_specs, stacked_layer_specs};
use train::TrainConfig;
use train::step::{Plan, StepShape, build_step};

mod common;

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn scanned_training_equals_unrolled() {
    for (kv_heads, remat) in [(1, "none"), (4, "full")] {
        let remat = format!("model.remat=\"{remat}\"");
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (lu, pu, _) =
            common::train_exported(a.path(), kv_heads, &["model.scan_layers=false", &remat]);
        let (ls, ps, _) =
            common::train_exported(b.path(), kv_heads, &["model.scan_layers=true", &remat]);
        common::assert_losses_close(&format!("kv_heads {kv_heads} {remat}"), &lu, &ls, 1e-5);
        let d = max_diff(&ps, &pu);
        assert!(
            d < 1e-5,
            "kv_heads {kv_heads} {remat}: parameters differ by {d:e}"
        );
    }
}

#[test]
fn scanned_on_8_devices_equals_unrolled_on_one() {
    let base = tempfile::tempdir().unwrap();
    let (lu, pu, _) = common::train_exported(base.path(), 4, &["model.scan_layers=false"]);
    for mesh in [
        &["mesh.fsdp=4", "mesh.tensor=2"][..],
        // The stacked layer axis sharded over fsdp because a rule asks.
        &[
            "mesh.fsdp=2",
            "mesh.data=2",
            "mesh.tensor=2",
            "mesh.rules.layers=[\"fsdp\"]",
        ][..],
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut sets = vec!["runtime.device_count=8", "model.scan_layers=true"];
        sets.extend(mesh);
        let (ls, ps, _) = common::train_exported(dir.path(), 4, &sets);
        common::assert_losses_close(&format!("{mesh:?}"), &lu, &ls, 1e-5);
        let d = max_diff(&ps, &pu);
        assert!(d < 1e-5, "{mesh:?}: parameters differ by {d:e}");
    }
}

fn mesh(data: i64, fsdp: i64, tensor: i64) -> mesh::Mesh {
    mesh::MeshConfig { data, fsdp, tensor }
        .resolve(data * fsdp * tensor)
        .unwrap()
}

#[test]
fn the_layers_axis_is_sharded_only_when_a_rule_asks() {
    let mut cfg = GemmaConfig::tiny();
    cfg.layers = 4;
    let layer0 = &param_specs(&cfg)[1..];
    let plan = Plan::new(&cfg, mesh(2, 2, 2), mesh::Rules::default());
    for (s, l) in stacked_layer_specs(&cfg).iter().zip(layer0) {
        let axes = plan.param_axes(s);
        assert!(axes[0].is_empty(), "{}: {axes:?}", s.name);
        // The rest is the per-layer tensor's sharding.
        assert_eq!(axes[1..], plan.param_axes(l), "{}", s.name);
        assert_eq!(s.name.replace('*', "0"), l.name);
    }
    let rules =
        std::collections::BTreeMap::from([("layers".to_string(), vec!["data".to_string()])]);
    let plan = Plan::new(
        &cfg,
        mesh(2, 2, 2),
        mesh::Rules::with_overrides(&rules).unwrap(),
    );
    for s in stacked_layer_specs(&cfg) {
        assert_eq!(plan.param_axes(&s)[0], ["data"], "{}", s.name);
    }
}

#[test]
fn the_step_program_holds_one_loop_for_the_layers() {
    // Scanned by default on TPU and GPU, unrolled on the CPU plugin.
    let dir = tempfile::tempdir().unwrap();
    let text = common::config(dir.path(), Path::new("unused.json"), 1, "");
    let scan = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
        cfg.compute_options().unwrap().scan_layers
    };
    assert!(!scan(&[]));
    assert!(scan(&["runtime.backend=\"tpu\""]));
    assert!(scan(&["runtime.backend=\"gpu\""]));
    assert!(scan(&["model.scan_layers=true"]));
    assert!(!scan(&[
        "model.scan_layers=false",
        "runtime.backend=\"tpu\""
    ]));

    let opt = train::config::OptimizerConfig::default();
    let shape = StepShape {
        accumulation: 2,
        micro_batch: 2,
        seq_len: 8,
        total_steps: 10,
    };
    let stored = |layers: usize, scan_layers: bool, layout: gemma::Layout| {
        let mut cfg = GemmaConfig::tiny();
        cfg.layers = layers;
        let plan = Plan::new(&cfg, mesh(1, 4, 2), mesh::Rules::default()).with_layout(layout);
        let compute = gemma::ComputeOptions {
            scan_layers,
            ..Default::default()
        };
        build_step(&cfg, &opt, compute, shape, &plan)
            .unwrap()
            .program
            .to_mlir()
    };
    let text = |layers, scan_layers| stored(layers, scan_layers, gemma::Layout::PerLayer);
    let dots = |s: &str| s.matches("stablehlo.dot_general").count();
    let (s2, s8) = (text(2, true), text(8, true));
    // One loop over the micro-batches; inside it one for the layers and
    // one for their gradient.
    assert_eq!(s8.matches("stablehlo.while").count(), 3);
    assert_eq!(dots(&s2), dots(&s8));
    let (u2, u8) = (text(2, false), text(8, false));
    // Only the micro-batch loop; one copy of each layer inside it.
    assert_eq!(u8.matches("stablehlo.while").count(), 1);
    assert!(dots(&u8) > dots(&u2) + 6 * 7);
    // Stored stacked, nothing grows with depth: not the stacking, its
    // gradient, nor the optimizer update.
    let ops = |s: &str| s.matches(" = stablehlo.").count();
    let stacked = |layers| stored(layers, true, gemma::Layout::Stacked);
    // (Constants aside: a layer count may coincide with another constant.)
    let constants = |s: &str| s.matches(" = stablehlo.constant").count();
    let (t2, t8) = (stacked(2), stacked(8));
    assert_eq!(ops(&t2) - constants(&t2), ops(&t8) - constants(&t8));
    assert!(
        ops(&s8) > ops(&stacked(8)) + 6 * 9 * 8,
        "{} vs {}",
        ops(&s8),
        ops(&stacked(8))
    );
}

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/checkpoint_v2")
}

/// Resumes the fixture's step-2 checkpoint (written by meshtrain before
/// `model.scan_layers`, see scripts/gen_old_checkpoint.sh) for steps 2 and 3.
fn resume_old(dir: &Path, scan_layers: bool) -> Vec<(u64, f32)> {
    let data = common::tokens_file(dir, 64, 16, 64);
    let text = common::config(dir, &data, 1, "");
    let ck = fixture().join("step_00000002");
    let sets = [
        "data.shuffle=true".to_string(),
        "train.steps=4".into(),
        format!("model.scan_layers={scan_layers}"),
        format!("train.resume={:?}", ck.display().to_string()),
    ];
    let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
    train::train(&cfg, false).unwrap().losses
}

#[test]
fn a_checkpoint_written_before_scan_layers_restores() {
    let text = std::fs::read_to_string(fixture().join("losses.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let old: Vec<(u64, f32)> = v["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r[0].as_u64().unwrap(), r[1].as_f64().unwrap() as f32))
        .collect();
    assert_eq!(old.len(), 4);
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Unrolled, the step is the one that wrote the checkpoint: the run
    // continues exactly as it did.
    let unrolled = resume_old(a.path(), false);
    assert_eq!(unrolled, old[2..], "unrolled resume");
    // Scanned, it continues the same run up to rounding.
    let scanned = resume_old(b.path(), true);
    common::assert_losses_close("scanned resume", &old[2..], &scanned, 1e-5);
}

/// A scanned run stores its parameters and moments stacked over the layers
/// (`params/model.layers.*.<tensor>`, `[layers, ...]`), in format 3. Its
/// checkpoint resumes into a scanned run exactly, and into an unrolled run
/// (which stores them per layer) up to rounding; the unrolled run's own
/// checkpoint then holds per-layer tensors again.
#[test]
fn a_scanned_run_stores_stacked_state_that_resumes_either_way() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tokens_file(dir.path(), 64, 16, 64);
    let text = common::config(dir.path(), &data, 1, "");
    let train = |run_dir: &Path, scan: bool, resume: &str, more: &[&str]| {
        let mut sets = vec![
            "train.steps=4".to_string(),
            "train.checkpoint_every=2".into(),
            "runtime.device_count=8".into(),
            "mesh.fsdp=4".into(),
            "mesh.tensor=2".into(),
            format!("model.scan_layers={scan}"),
            format!("train.run_dir={:?}", run_dir.display().to_string()),
            format!("train.resume={resume:?}"),
        ];
        sets.extend(more.iter().map(|s| s.to_string()));
        let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
        train::train(&cfg, false)
    };
    let run = |run_dir: &Path, scan: bool, resume: &str| {
        train(run_dir, scan, resume, &[]).unwrap().losses
    };
    let first = dir.path().join("scanned");
    let losses = run(&first, true, "none");
    let ck = first.join("checkpoints/step_00000002");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["format"], "meshtrain-checkpoint/3");
    let tensors = manifest["tensors"].as_array().unwrap();
    let cfg = GemmaConfig {
        vocab_size: 64,
        d_model: 32,
        layers: 2,
        heads: 4,
        kv_heads: 1,
        head_dim: 8,
        mlp_dim: 64,
        ..GemmaConfig::tiny()
    };
    let stored = gemma::param_specs_in(&cfg, gemma::Layout::Stacked);
    assert_eq!(tensors.len(), 3 * stored.len());
    for s in &stored {
        for group in ["params", "m", "v"] {
            let t = tensors
                .iter()
                .find(|t| t["name"] == format!("{group}/{}", s.name))
                .unwrap_or_else(|| panic!("no {group}/{}", s.name));
            assert_eq!(t["shape"], serde_json::json!(s.shape), "{}", s.name);
        }
    }
    // Read as a model (export, eval, generation), it speaks per-layer
    // Hugging Face names: layer 1's tensor is slice 1 of the stacked one.
    let opened = train::checkpoint::Checkpoint::open(&ck).unwrap();
    let model = opened.model().unwrap();
    assert_eq!(model.params.len(), param_specs(&cfg).len());
    let stacked = opened
        .tensor("params/model.layers.*.self_attn.q_proj.weight")
        .unwrap();
    let q1 = param_specs(&cfg)
        .iter()
        .position(|s| s.name == "model.layers.1.self_attn.q_proj.weight")
        .unwrap();
    assert_eq!(model.params[q1].data, stacked[stacked.len() / 2..]);
    let resume = ck.display().to_string();
    let again = run(&dir.path().join("scanned_again"), true, &resume);
    assert_eq!(again, losses[2..], "scanned resume");
    let unrolled_dir = dir.path().join("unrolled");
    let unrolled = run(&unrolled_dir, false, &resume);
    common::assert_losses_close("unrolled resume", &losses[2..], &unrolled, 1e-5);
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(unrolled_dir.join("checkpoints/step_00000004/manifest.json")).unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = manifest["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"v/model.layers.1.mlp.down_proj.weight"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.contains('*')), "{names:?}");
    // A model of another depth is refused in either layout, naming both
    // shapes.
    for (scan, other) in [(true, 3), (false, 3), (false, 1)] {
        let set = format!("model.layers={other}");
        let to = dir.path().join(format!("deeper_{scan}_{other}"));
        let e = train(&to, scan, &resume, &[&set])
            .err()
            .unwrap()
            .to_string();
        let want = format!("layers: {other},");
        assert!(
            e.contains("another model shape") && e.contains(&want),
            "{e}"
        );
    }
}
