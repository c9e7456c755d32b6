//! Device flags shared by `generate` and `eval`: backend, devices, mesh and dtype,
//! defaulting to the checkpoint's training config.

use std::path::PathBuf;

use anyhow::{Result, bail};
use hlo::DType;
use train::config::{MeshSection, RuntimeConfig};
use train::generate::{Devices, source::Model};

/// Where and how a model runs.
#[derive(clap::Args)]
pub struct RuntimeArgs {
    /// `cpu`, `cuda`, `cuda12`, `cuda13` or `tpu` (default: the checkpoint's, else cpu).
    #[arg(long)]
    backend: Option<String>,
    /// A PJRT plugin `.so` instead of the pinned one.
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Devices to use (default: the checkpoint's runtime.device_count, else 1).
    #[arg(long)]
    device_count: Option<usize>,
    /// Mesh axes, e.g. `tensor=8` or `data=2,fsdp=4`; unnamed axes are
    /// data=1, tensor=1 and fsdp=the rest (default: the checkpoint's mesh).
    #[arg(long)]
    mesh: Option<String>,
    /// `f32` or `bf16`: how weights are stored and computed (default: the
    /// checkpoint's model.dtype, else f32).
    #[arg(long)]
    dtype: Option<String>,
}

impl RuntimeArgs {
    /// The devices and compute dtype for `model`.
    pub fn devices(&self, model: &Model) -> Result<(Devices, DType)> {
        let (mut runtime, mut mesh, mut dtype) = match &model.train_config {
            Some(c) => (c.runtime.clone(), c.mesh.clone(), c.model.dtype.clone()),
            None => (
                RuntimeConfig::default(),
                MeshSection::default(),
                "f32".to_string(),
            ),
        };
        if let Some(b) = &self.backend {
            runtime.backend = b.clone();
        }
        if let Some(p) = &self.plugin {
            runtime.plugin = Some(p.clone());
        }
        if let Some(n) = self.device_count {
            runtime.device_count = n;
        }
        if let Some(spec) = &self.mesh {
            mesh.data = 1;
            mesh.fsdp = -1;
            mesh.tensor = 1;
            for part in spec.split(',').filter(|p| !p.trim().is_empty()) {
                let Some((axis, size)) = part.split_once('=') else {
                    bail!(
                        "--mesh {spec}: expected axis=size pairs, e.g. tensor=8 or data=2,fsdp=4"
                    );
                };
                let Ok(size) = size.trim().parse::<i64>() else {
                    bail!("--mesh {spec}: {size:?} is not an integer (-1: the rest)");
                };
                match axis.trim() {
                    "data" => mesh.data = size,
                    "fsdp" => mesh.fsdp = size,
                    "tensor" => mesh.tensor = size,
                    other => bail!(
                        "--mesh {spec}: unknown axis {other:?}; expected data, fsdp or tensor"
                    ),
                }
            }
        }
        if let Some(d) = &self.dtype {
            dtype = d.clone();
        }
        let dtype = match dtype.as_str() {
            "f32" => DType::F32,
            "bf16" => DType::BF16,
            other => bail!("--dtype {other}: expected f32 or bf16"),
        };
        let devices = Devices::new(&model.checkpoint.config, &runtime, &mesh, dtype)?;
        Ok((devices, dtype))
    }
}
