//! The config is strict: unknown keys, wrong types and impossible values
//! fail before any compile, naming the key and what is allowed.

use train::TrainConfig;

mod common;

fn load(text: &str, sets: &[&str]) -> Result<TrainConfig, String> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml(text, "test.toml", &sets).map_err(|e| e.to_string())
}

fn base() -> String {
    let dir = std::env::temp_dir();
    common::config(&dir, &dir.join("tokens.json"), 1, "")
}

#[test]
fn a_valid_config_loads_and_overrides_apply() {
    let c = load(
        &base(),
        &[
            "optimizer.lr=0.5",
            "train.steps=7",
            "model.remat=\"full\"",
            "model.dtype=bf16",
        ],
    )
    .unwrap();
    assert_eq!(c.optimizer.lr, 0.5);
    assert_eq!(c.train.steps, 7);
    assert_eq!(c.model.remat, "full");
    assert_eq!(c.model.dtype, "bf16");
    let again = load(&c.to_toml(), &[]).unwrap();
    assert_eq!(again, c, "the saved resolved config reloads identically");
}

#[test]
fn unknown_keys_are_named() {
    let e = load(&base(), &["optimizer.lrr=1"]).unwrap_err();
    assert!(
        e.contains("optimizer.lrr") && e.contains("unknown field"),
        "{e}"
    );
    let e = load(&format!("{}\n[extra]\nx = 1\n", base()), &[]).unwrap_err();
    assert!(e.contains("test.toml") && e.contains("extra"), "{e}");
}

#[test]
fn wrong_types_are_named() {
    let e = load(&base(), &["train.steps=\"many\""]).unwrap_err();
    assert!(e.contains("train.steps") && e.contains("--set"), "{e}");
}

#[test]
fn impossible_values_are_named_before_compiling() {
    let e = load(&base(), &["model.kv_heads=3"]).unwrap_err();
    assert!(
        e.contains("model.kv_heads = 3: must divide heads = 4"),
        "{e}"
    );
    let e = load(&base(), &["optimizer.beta2=1.5"]).unwrap_err();
    assert!(e.contains("optimizer.beta2"), "{e}");
    let e = load(&base(), &["optimizer.accumulation_steps=3"]).unwrap_err();
    assert!(
        e.contains("optimizer.accumulation_steps") && e.contains("data.batch_size = 8"),
        "{e}"
    );
    let e = load(&base(), &["optimizer.schedule=\"exp\""]).unwrap_err();
    assert!(e.contains("\"constant\", \"linear\" or \"cosine\""), "{e}");
    let e = load(&base(), &["data.seq_len=128"]).unwrap_err();
    assert!(
        e.contains("data.seq_len") && e.contains("max_seq_len = 64"),
        "{e}"
    );
    let e = load(&base(), &["model.preset=\"gemma-3b\""]).unwrap_err();
    assert!(e.contains("gemma-3b"), "{e}");
}

#[test]
fn mesh_errors_name_the_numbers() {
    let e = load(&base(), &["runtime.device_count=8", "mesh.fsdp=3"]).unwrap_err();
    assert!(e.contains("fsdp=3") && e.contains("8 devices"), "{e}");
    let e = load(
        &base(),
        &["runtime.device_count=8", "mesh.tensor=8", "mesh.fsdp=1"],
    )
    .unwrap_err();
    assert!(
        e.contains("model.heads = 4 does not divide over tensor = 8"),
        "{e}"
    );
    let e = load(
        &base(),
        &[
            "runtime.device_count=8",
            "mesh.data=8",
            "mesh.fsdp=1",
            "data.batch_size=4",
        ],
    )
    .unwrap_err();
    assert!(e.contains("does not divide over data*fsdp = 8"), "{e}");
}

#[test]
fn setting_a_key_twice_is_refused() {
    let e = load(&base(), &["train.steps=1", "train.steps=2"]).unwrap_err();
    assert!(e.contains("train.steps") && e.contains("set twice"), "{e}");
}

#[test]
fn the_embedded_smoke_config_is_valid() {
    let c = TrainConfig::load(None, &[]).unwrap();
    assert_eq!(c.model.resolve().unwrap().vocab_size, 8192);
    assert!(
        std::path::Path::new(&c.data.path).is_file(),
        "smoke corpus unpacked into the cache"
    );
}

#[test]
fn xla_options_reach_the_compiler_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::tokens_file(dir.path(), 16, 16, 64);
    let text = common::config(dir.path(), &data, 1, "");
    let e = load(&text, &["runtime.xla_options.xla_cpu_enable_fast_math=[1]"]).unwrap_err();
    assert!(
        e.contains("runtime.xla_options.xla_cpu_enable_fast_math"),
        "{e}"
    );
    let sets = vec![
        "runtime.xla_options.xla_cpu_experimental_ynn_fusion_type=\"NOT_A_FUSION\"".to_string(),
    ];
    let cfg = TrainConfig::from_toml(&text, "test", &sets).unwrap();
    let e = train::train(&cfg, false).unwrap_err().to_string();
    assert!(
        e.contains("xla_cpu_experimental_ynn_fusion_type") && e.contains("NOT_A_FUSION"),
        "{e}"
    );
}
