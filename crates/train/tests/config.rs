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
    let e = load(&base(), &["train.checkpoint_copy=\"gpu\""]).unwrap_err();
    assert!(
        e.contains("train.checkpoint_copy")
            && e.contains("\"gpu\": expected \"device\" or \"host\""),
        "{e}"
    );
    let e = load(&base(), &["train.checkpoint_copy=true"]).unwrap_err();
    assert!(e.contains("train.checkpoint_copy"), "{e}");
    for copy in ["device", "host"] {
        let c = load(&base(), &[&format!("train.checkpoint_copy=\"{copy}\"")]).unwrap();
        assert_eq!(c.train.checkpoint_copy, copy);
    }
    assert_eq!(load(&base(), &[]).unwrap().train.checkpoint_copy, "device");
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

#[test]
fn a_bad_value_is_blamed_on_where_it_came_from_in_one_line() {
    // A wrong type: the key once, no second line repeating it.
    let e = load(&base(), &["train.steps=-1"]).unwrap_err();
    assert_eq!(
        e,
        "--set: train.steps: invalid value: integer `-1`, expected a whole number >= 0"
    );
    // An impossible value from --set names --set, from the file the file.
    let e = load(&base(), &["optimizer.beta2=1.5"]).unwrap_err();
    assert_eq!(e, "--set: optimizer.beta2: 1.5 must be in [0, 1)");
    let e = load(
        &format!(
            "{}\n[runtime]\nbackend = \"cpu\"\nemulate_hosts = 0\n",
            base()
        ),
        &[],
    )
    .unwrap_err();
    assert_eq!(
        e,
        "test.toml: runtime.emulate_hosts: 0: expected a positive divisor of runtime.device_count"
    );
    let e = load(&base(), &["model.dtype=f16"]).unwrap_err();
    assert_eq!(
        e,
        "--set: model.dtype: \"f16\": expected \"f32\" or \"bf16\""
    );
    // An init directory that is no model says so, not "reading .../config.json".
    let no_preset = base().replace("preset = \"tiny\"\n", "");
    let e = load(&no_preset, &["model.init=\"hf:/no/such/model\""]).unwrap_err();
    assert_eq!(
        e,
        "--set: model.init: \"hf:/no/such/model\": /no/such/model is not a Hugging Face model \
         directory (no config.json); expected one with config.json and *.safetensors, e.g. a \
         run's final/"
    );
}

#[test]
fn an_unset_device_count_is_taken_from_the_machine() {
    // Unset (the default): what can be checked without it is.
    let c = load(&base(), &[]).unwrap();
    assert_eq!(c.runtime.device_count, 0);
    let e = load(&base(), &["mesh.tensor=8"]).unwrap_err();
    assert!(
        e.contains("model.heads = 4 does not divide over tensor = 8"),
        "{e}"
    );
    // Known once the plugin is open: every device, and the mesh checked against it.
    let four = c.with_device_count(4, "the test plugin", "t").unwrap();
    assert_eq!(four.runtime.device_count, 4);
    assert_eq!(four.resolved_mesh().unwrap().fsdp, 4);
    let fixed = load(&base(), &["mesh.fsdp=2", "mesh.tensor=2"]).unwrap();
    let e = fixed
        .with_device_count(8, "the test plugin", "t")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t: mesh: data=1 x fsdp=2 x tensor=2 = 4 does not equal the 8 devices of the test plugin \
         (runtime.device_count is unset: every device); set one axis to -1 to take the devices the \
         others leave"
    );
    // A count that is set is kept, and must exist.
    let two = load(&base(), &["runtime.device_count=2"]).unwrap();
    assert_eq!(
        two.with_device_count(8, "x", "t")
            .unwrap()
            .runtime
            .device_count,
        2
    );
    let e = load(&base(), &["runtime.device_count=16", "mesh.tensor=2"])
        .unwrap()
        .with_device_count(8, "the test plugin", "t")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "t: runtime.device_count: 16 devices asked, the test plugin has 8"
    );
    assert!(c.resolved_mesh().unwrap_err().to_string().contains("unset"));
}

fn shipped(name: &str) -> TrainConfig {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../configs")
        .join(name);
    TrainConfig::load(Some(&path), &[]).unwrap()
}

#[test]
fn slices_go_on_the_data_axis_with_the_batch_scaled_or_kept() {
    // A one-slice config: the slices become the data axis.
    let mut scaled = shipped("gemma-2b.toml");
    scaled.place_slices(2, true).unwrap();
    assert_eq!((scaled.mesh.data, scaled.data.batch_size), (2, 512));
    let scaled = scaled.with_device_count(512, "2 slices", "t").unwrap();
    let m = scaled.resolved_mesh().unwrap();
    assert_eq!((m.data, m.fsdp, m.tensor), (2, 256, 1));
    let mut kept = shipped("gemma-7b.toml");
    kept.place_slices(2, false).unwrap();
    assert_eq!((kept.mesh.data, kept.data.batch_size), (2, 64));
    kept.with_device_count(512, "2 slices", "t").unwrap();
    // A config that places its slices is taken as it is.
    let mut own = shipped("gemma-2b-2pods.toml");
    let before = own.clone();
    own.place_slices(2, true).unwrap();
    assert_eq!(own, before);
    let e = shipped("gemma-2b.toml").place_slices(0, true).unwrap_err();
    assert!(e.to_string().contains("--slices"), "{e}");
}

/// The report's multi-slice setups: each config's mesh and batch resolve on
/// its pods' chips with no override (their fit is measured by `meshtrain
/// plan`, see each config's first lines; too slow for a test).
#[test]
fn the_shipped_multi_slice_configs_resolve_on_their_pods() {
    for (name, chips, mesh, per_replica) in [
        ("gemma-2b-2pods.toml", 512, (2, 256, 1), 1),
        ("gemma-7b-16pods.toml", 4096, (16, 16, 16), 4),
    ] {
        let cfg = shipped(name)
            .with_device_count(chips, "the pods", name)
            .unwrap();
        let m = cfg.resolved_mesh().unwrap();
        assert_eq!((m.data, m.fsdp, m.tensor), mesh, "{name}");
        assert_eq!(
            cfg.data.batch_size,
            (m.data * m.fsdp) as usize * per_replica,
            "{name}"
        );
        // One pod's chips are not enough, and that is one clear message.
        let e = shipped(name)
            .with_device_count(256, "one pod", name)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("does not equal the 256 devices of one pod"),
            "{e}"
        );
    }
}
