//! A checkpoint's parameters as a model: for `meshtrain eval` and for the
//! Hugging Face export.

use std::path::Path;

use gemma::hf::{HostTensor, SaveDtype};

use super::Checkpoint;
use crate::{Error, Result};

impl Checkpoint {
    /// The model shape and its parameters (no optimizer state), in
    /// [`gemma::param_specs`] order.
    pub fn model(&self) -> Result<gemma::hf::Checkpoint> {
        let config = self.config()?.model.resolve()?;
        let params = gemma::param_specs(&config)
            .iter()
            .map(|s| {
                let name = format!("params/{}", s.name);
                let record = self.record(&name)?;
                if record.shape != s.shape {
                    return Err(self.bad(format!(
                        "tensor {name} has shape {:?}, its config's model has {:?}",
                        record.shape, s.shape
                    )));
                }
                Ok(HostTensor {
                    shape: s.shape.clone(),
                    data: self.tensor(&name)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(gemma::hf::Checkpoint { config, params })
    }

    /// Writes the parameters as a Hugging Face directory `out` (config.json
    /// and safetensors in `dtype`). Built under a temporary name and renamed,
    /// so `out` never exists half-written; an existing `out` is refused.
    pub fn export_hf(&self, out: &Path, dtype: SaveDtype) -> Result<()> {
        if out.exists() {
            return Err(Error::Checkpoint {
                path: out.to_owned(),
                message: "already exists; export writes a new directory".into(),
            });
        }
        let model = self.model()?;
        let name = out
            .file_name()
            .map_or_else(|| "export".into(), |n| n.to_string_lossy().into_owned());
        let tmp = out.with_file_name(format!(".{name}.partial"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io("removing", &tmp, e))?;
        }
        let result = gemma::hf::save(&tmp, &model.config, &model.params, dtype)
            .map_err(Error::from)
            .and_then(|()| {
                std::fs::rename(&tmp, out).map_err(|e| Error::io("renaming into", out, e))
            });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }
}

/// Whether `dir` is a meshtrain checkpoint (has a manifest).
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(super::MANIFEST).is_file()
}
