//! Hugging Face checkpoints: a directory with `config.json` and one or many
//! `*.safetensors` files (with or without `model.safetensors.index.json`),
//! f32, bf16 or f16 on disk. Import checks every tensor's name and shape
//! against the model; export writes what `transformers` loads.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::params::param_specs;
use crate::{Error, GemmaConfig, Result};

/// A host tensor in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// A loaded checkpoint: its config and every parameter, in
/// [`param_specs`] order.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The model shape from `config.json`.
    pub config: GemmaConfig,
    /// Parameters, same order as [`param_specs`].
    pub params: Vec<HostTensor>,
}

/// Whether `dir` looks like a Hugging Face model directory.
pub fn is_hf_dir(dir: &Path) -> bool {
    dir.join("config.json").is_file()
}

/// Reads only the model shape of a Hugging Face checkpoint directory.
pub fn load_config(dir: &Path) -> Result<GemmaConfig> {
    let cfg_path = dir.join("config.json");
    let text = fs::read_to_string(&cfg_path).map_err(|e| Error::io("reading", &cfg_path, e))?;
    GemmaConfig::from_hf_json(&text, &cfg_path)
}

/// Loads a Hugging Face Gemma checkpoint directory.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let config = load_config(dir)?;
    let specs = param_specs(&config);
    let mut found: BTreeMap<String, HostTensor> = BTreeMap::new();
    for file in safetensor_files(dir)? {
        let bytes = map(&file)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(&file, format!("not a safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let data = to_f32(&file, &name, view.dtype(), view.data())?;
            found.insert(
                name,
                HostTensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
    }
    let wanted: BTreeSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    // A tied head saved explicitly is accepted only if it is the embedding.
    if let Some(head) = found.remove("lm_head.weight")
        && found.get("model.embed_tokens.weight") != Some(&head)
    {
        return Err(Error::ExtraTensor {
            dir: dir.to_owned(),
            name: "lm_head.weight".into(),
            shape: head.shape,
        });
    }
    if let Some((name, t)) = found.iter().find(|(n, _)| !wanted.contains(n.as_str())) {
        return Err(Error::ExtraTensor {
            dir: dir.to_owned(),
            name: name.clone(),
            shape: t.shape.clone(),
        });
    }
    let mut params = Vec::with_capacity(specs.len());
    for spec in &specs {
        let t = found
            .remove(&spec.name)
            .ok_or_else(|| Error::MissingTensor {
                dir: dir.to_owned(),
                name: spec.name.clone(),
                expected: spec.shape.clone(),
            })?;
        if t.shape != spec.shape {
            return Err(Error::TensorShape {
                dir: dir.to_owned(),
                name: spec.name.clone(),
                found: t.shape,
                expected: spec.shape.clone(),
            });
        }
        params.push(t);
    }
    Ok(Checkpoint { config, params })
}

/// On-disk dtype of an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveDtype {
    /// float32.
    F32,
    /// bfloat16 (round to nearest even).
    Bf16,
}

/// Writes `config.json` and `model.safetensors` into `out` (created), through
/// temporary names renamed into place once complete.
pub fn save(
    out: &Path,
    config: &GemmaConfig,
    params: &[HostTensor],
    dtype: SaveDtype,
) -> Result<()> {
    let specs = param_specs(config);
    if specs.len() != params.len() {
        return Err(Error::format(
            out,
            format!(
                "{} tensors given, the model has {}",
                params.len(),
                specs.len()
            ),
        ));
    }
    fs::create_dir_all(out).map_err(|e| Error::io("creating", out, e))?;
    let mut blobs = Vec::with_capacity(params.len());
    for (spec, t) in specs.iter().zip(params) {
        if spec.shape != t.shape {
            return Err(Error::TensorShape {
                dir: out.to_owned(),
                name: spec.name.clone(),
                found: t.shape.clone(),
                expected: spec.shape.clone(),
            });
        }
        let bytes: Vec<u8> = match dtype {
            SaveDtype::F32 => t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            SaveDtype::Bf16 => t
                .data
                .iter()
                .flat_map(|v| bf16::from_f32(*v).to_bits().to_le_bytes())
                .collect(),
        };
        blobs.push((spec.name.clone(), t.shape.clone(), bytes));
    }
    let st_dtype = match dtype {
        SaveDtype::F32 => Dtype::F32,
        SaveDtype::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = blobs
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                .map_err(|e| Error::format(out, format!("tensor {n}: {e}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let data =
        safetensors::serialize(views, Some(meta)).map_err(|e| Error::format(out, e.to_string()))?;
    let torch_dtype = if dtype == SaveDtype::F32 {
        "float32"
    } else {
        "bfloat16"
    };
    // invariant: a serde_json::Value always serializes.
    let config_text = serde_json::to_string_pretty(&config.to_hf_json(torch_dtype)).expect("JSON");
    write_atomic(&out.join("model.safetensors"), &data)?;
    write_atomic(&out.join("config.json"), config_text.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    let mut f = fs::File::create(&tmp).map_err(|e| Error::io("creating", &tmp, e))?;
    std::io::Write::write_all(&mut f, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    f.sync_all().map_err(|e| Error::io("syncing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}

fn safetensor_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let text = fs::read_to_string(&index).map_err(|e| Error::io("reading", &index, e))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::format(&index, format!("not JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| Error::io("listing", dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::format(dir, "no *.safetensors files"));
    }
    Ok(files)
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let f = fs::File::open(path).map_err(|e| Error::io("opening", path, e))?;
    // SAFETY: the file is only read; a concurrent writer would be a user error
    // that at worst yields wrong numbers, which the shape checks bound.
    unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io("mapping", path, e))
}

/// Copies tensor bytes to f32; the mapped data may be unaligned, so every
/// element goes through `from_le_bytes`.
fn to_f32(path: &Path, name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
            .collect(),
        other => {
            return Err(Error::TensorDtype {
                path: path.to_owned(),
                name: name.to_owned(),
                dtype: format!("{other:?}"),
            });
        }
    })
}
