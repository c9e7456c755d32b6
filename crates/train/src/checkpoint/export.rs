//! A checkpoint's parameters as a model: for `meshtrain eval` and for the
//! Hugging Face export.

use std::path::{Path, PathBuf};

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
                let shape = self.shape(&name)?;
                if shape != s.shape {
                    return Err(self.bad(format!(
                        "tensor {name} has shape {shape:?}, its config's model has {:?}",
                        s.shape
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

/// Whether `dir` is a meshtrain checkpoint (has a manifest or a commit
/// marker).
pub fn is_checkpoint(dir: &Path) -> bool {
    dir.join(super::MANIFEST).is_file() || dir.join(super::MARKER).is_file()
}

/// What a directory that is not itself a model holds: a run directory
/// (its exported `final/`, its checkpoints) or a run's `checkpoints/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inside {
    /// `dir` is a run directory (it has `checkpoints/` or `final/`).
    pub run_dir: bool,
    /// The run's exported Hugging Face model, `dir/final`.
    pub exported: Option<PathBuf>,
    /// The newest committed-looking checkpoint in `dir` or `dir/checkpoints`.
    pub newest: Option<PathBuf>,
}

/// Where the models are when `dir` holds some without being one; `None`
/// when it holds none.
pub fn models_inside(dir: &Path) -> Option<Inside> {
    let newest = |root: &Path| {
        super::list(root)
            .ok()
            .and_then(|mut l| l.pop())
            .map(|s| s.1)
    };
    if let Some(step) = newest(dir) {
        return Some(Inside {
            run_dir: false,
            exported: None,
            newest: Some(step),
        });
    }
    let inside = Inside {
        run_dir: true,
        exported: Some(dir.join("final")).filter(|f| f.join("config.json").is_file()),
        newest: newest(&dir.join("checkpoints")),
    };
    (inside.exported.is_some() || inside.newest.is_some()).then_some(inside)
}

impl Inside {
    /// What to give instead, in words; `models` counts Hugging Face
    /// directories (for `eval`), not only checkpoints (for `export`).
    pub fn advice(&self, models: bool) -> String {
        let what = if self.run_dir {
            "a run directory"
        } else {
            "a directory of checkpoints"
        };
        let mut give = Vec::new();
        if let Some(f) = self.exported.as_ref().filter(|_| models) {
            give.push(format!("its exported model {}", f.display()));
        }
        if let Some(c) = &self.newest {
            give.push(format!("a checkpoint (newest: {})", c.display()));
        }
        if give.is_empty() {
            return format!("{what} with no checkpoint");
        }
        format!("{what}: give {}", give.join(" or "))
    }
}
