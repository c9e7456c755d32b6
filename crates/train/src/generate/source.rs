//! Where a generation's model, tokenizer and prompts come from.

use std::path::Path;

use crate::checkpoint::{Checkpoint, is_checkpoint};
use crate::{Error, Result, TrainConfig};

/// A model read from a directory.
pub struct Model {
    /// The shape and the parameters (f32, [`gemma::param_specs`] order).
    pub checkpoint: gemma::hf::Checkpoint,
    /// The training config, for a meshtrain checkpoint or a run's `final/`.
    pub train_config: Option<TrainConfig>,
    /// The tokenizer that goes with it, if known: `tokenizer.json` in the
    /// directory, else the training config's `data.tokenizer`.
    pub tokenizer: Option<String>,
}

/// Reads a Hugging Face model directory (e.g. a run's `final/`) or a
/// meshtrain checkpoint (`run_dir/checkpoints/step_N`).
pub fn load_model(dir: &Path) -> Result<Model> {
    if is_checkpoint(dir) {
        let ck = Checkpoint::open(dir)?;
        let cfg = ck.config()?;
        return Ok(Model {
            checkpoint: ck.model()?,
            tokenizer: cfg.data.tokenizer.clone(),
            train_config: Some(cfg),
        });
    }
    if !gemma::hf::is_hf_dir(dir) {
        return Err(Error::Checkpoint {
            path: dir.to_owned(),
            message: "is neither a Hugging Face model directory (config.json + *.safetensors) \
                      nor a meshtrain checkpoint (manifest.json)"
                .into(),
        });
    }
    let checkpoint = gemma::hf::load(dir)?;
    // A run's final/ sits in its run directory, next to the run's config.toml.
    let run_config = dir.parent().map(|p| p.join("config.toml"));
    let train_config = match run_config {
        Some(p) if p.is_file() && dir.file_name().is_some_and(|n| n == "final") => {
            Some(TrainConfig::load(Some(&p), &[])?)
        }
        _ => None,
    };
    let own = dir.join("tokenizer.json");
    let tokenizer = if own.is_file() {
        Some(own.display().to_string())
    } else {
        train_config.as_ref().and_then(|c| c.data.tokenizer.clone())
    };
    Ok(Model {
        checkpoint,
        train_config,
        tokenizer,
    })
}

/// The `"prompt"` of each line of a JSONL file.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let where_ = format!("line {}", i + 1);
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::config(
                path.display().to_string(),
                &where_,
                format!("not JSON: {e}"),
            )
        })?;
        match v.get("prompt").and_then(|p| p.as_str()) {
            Some(p) => out.push(p.to_string()),
            None => {
                return Err(Error::config(
                    path.display().to_string(),
                    format!("{where_}: \"prompt\""),
                    "missing or not a string; expected {\"prompt\": \"...\"}",
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(Error::config(
            path.display().to_string(),
            "(file)",
            "holds no prompts",
        ));
    }
    Ok(out)
}

/// Token rows of a file, `{"input_ids": [[...], ...]}` or one
/// `{"input_ids": [...]}` per line; rows may have different lengths.
pub fn read_token_rows(path: &Path) -> Result<Vec<Vec<u32>>> {
    Ok(data::read_token_rows(path, usize::MAX)?)
}

/// The tokens that end a sample: `<eos>` (1) and the tokenizer's
/// `<end_of_turn>` (without a tokenizer: Gemma's id 107 when the model has
/// Gemma's vocabulary).
pub fn stop_ids(tokenizer: Option<&data::Tokenizer>, vocab_size: usize) -> Vec<u32> {
    let mut ids = vec![data::tokenizer::EOS_ID];
    let eot = match tokenizer {
        Some(t) => t.piece_to_id("<end_of_turn>"),
        None => (vocab_size == data::tokenizer::GEMMA_VOCAB_SIZE).then_some(107),
    };
    ids.extend(eot.filter(|&id| id != data::tokenizer::EOS_ID));
    ids
}

/// Loads the tokenizer `spec` (`gemma` or a `tokenizer.json` path).
pub fn load_tokenizer(spec: &str) -> Result<data::Tokenizer> {
    Ok(data::Tokenizer::load(spec, &data::cache_dir())?)
}
