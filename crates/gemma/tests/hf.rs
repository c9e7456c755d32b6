//! Hugging Face directory import/export: names, shapes, dtypes, errors.

use gemma::hf::{self, HostTensor, SaveDtype};
use gemma::{GemmaConfig, param_specs};

fn small() -> GemmaConfig {
    GemmaConfig {
        vocab_size: 64,
        d_model: 16,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 6,
        mlp_dim: 24,
        max_seq_len: 32,
        ..GemmaConfig::tiny()
    }
}

fn random_params(c: &GemmaConfig) -> Vec<HostTensor> {
    let mut state = 12345u64;
    param_specs(c)
        .iter()
        .map(|s| HostTensor {
            shape: s.shape.clone(),
            data: (0..s.numel())
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect(),
        })
        .collect()
}

#[test]
fn f32_export_imports_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let c = small();
    let p = random_params(&c);
    hf::save(dir.path(), &c, &p, SaveDtype::F32).unwrap();
    assert!(hf::is_hf_dir(dir.path()));
    let ck = hf::load(dir.path()).unwrap();
    assert_eq!(ck.config, c);
    assert_eq!(ck.params, p);
}

#[test]
fn bf16_export_rounds_to_bf16() {
    let dir = tempfile::tempdir().unwrap();
    let c = small();
    let p = random_params(&c);
    hf::save(dir.path(), &c, &p, SaveDtype::Bf16).unwrap();
    let ck = hf::load(dir.path()).unwrap();
    for (a, b) in ck.params.iter().zip(&p) {
        for (x, y) in a.data.iter().zip(&b.data) {
            assert_eq!(*x, half::bf16::from_f32(*y).to_f32());
        }
    }
}

#[test]
fn missing_extra_and_misshaped_tensors_are_named() {
    let c = small();
    let p = random_params(&c);
    let dir = tempfile::tempdir().unwrap();
    hf::save(dir.path(), &c, &p, SaveDtype::F32).unwrap();
    // Change the config so that the saved tensors no longer fit.
    let mut bigger = c.clone();
    bigger.mlp_dim = 32;
    std::fs::write(
        dir.path().join("config.json"),
        bigger.to_hf_json("float32").to_string(),
    )
    .unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.mlp.gate_proj.weight")
            && e.contains("[24, 16]")
            && e.contains("[32, 16]"),
        "{e}"
    );
    let mut more_layers = c.clone();
    more_layers.layers = 3;
    std::fs::write(
        dir.path().join("config.json"),
        more_layers.to_hf_json("float32").to_string(),
    )
    .unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("no tensor `model.layers.2.input_layernorm.weight`"),
        "{e}"
    );
    let mut fewer = c.clone();
    fewer.layers = 1;
    std::fs::write(
        dir.path().join("config.json"),
        fewer.to_hf_json("float32").to_string(),
    )
    .unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.1.") && e.contains("not a parameter"),
        "{e}"
    );
}

#[test]
fn sharded_checkpoint_with_index_loads() {
    let c = small();
    let p = random_params(&c);
    let whole = tempfile::tempdir().unwrap();
    hf::save(whole.path(), &c, &p, SaveDtype::F32).unwrap();
    // Split into two files the way HF does, with an index.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        whole.path().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let specs = param_specs(&c);
    let (first, second) = specs.split_at(specs.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (k, part) in [first, second].iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", k + 1);
        let blobs: Vec<(String, Vec<usize>, Vec<u8>)> = part
            .iter()
            .map(|s| {
                let t = &p[specs.iter().position(|x| x.name == s.name).unwrap()];
                (
                    s.name.clone(),
                    s.shape.clone(),
                    t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views: Vec<_> = blobs
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        std::fs::write(
            dir.path().join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
        for s in part.iter() {
            weight_map.insert(s.name.clone(), file.clone().into());
        }
    }
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    assert_eq!(hf::load(dir.path()).unwrap().params, p);
}

#[test]
fn broken_files_are_reported_with_their_path() {
    let dir = tempfile::tempdir().unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(e.contains("config.json"), "{e}");
    std::fs::write(
        dir.path().join("config.json"),
        small().to_hf_json("float32").to_string(),
    )
    .unwrap();
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let e = hf::load(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
}
