//! REINFORCE with a KL penalty (`train.objective = "rl"`, `[rl]`), as in the
//! Gemma report's RLHF: each step samples responses to the step's prompts
//! from the current policy (the training parameters themselves, on the
//! devices: [`Generator::generate_with`](crate::generate::Generator)), and
//! one program scores them with the frozen reward model, computes each
//! sequence's KL estimate against the frozen reference at `model.init`,
//! shapes the reward, takes the leave-one-out baseline and applies AdamW to
//! −mean_i (R_i − b_i) · Σ_t log π(y_it) ([`crate::step`]'s `rl` loss).

mod rollout;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::objective::Objective;
use crate::{Error, Result, TrainConfig};

pub(crate) use rollout::Rollout;
pub use rollout::layout;

/// `[rl]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RlSection {
    /// The frozen reward model: a Hugging Face `GemmaForSequenceClassification`
    /// directory (`num_labels = 1`, e.g. the `final/` of a `train.objective =
    /// "reward"` run) or a meshtrain checkpoint of one. Required.
    pub reward_model: PathBuf,
    /// Responses sampled per prompt (at least 2: the baseline of a sample
    /// is the mean shaped reward of the prompt's other samples).
    pub samples_per_prompt: usize,
    /// New tokens per response at most (a response also ends at `<eos>`,
    /// or `<end_of_turn>` with the Gemma tokenizer).
    pub max_new_tokens: usize,
    /// Sampling temperature (> 0).
    pub temperature: f64,
    /// Weight of the KL penalty: R = r − kl_coef · KL.
    pub kl_coef: f64,
}

impl Default for RlSection {
    fn default() -> Self {
        RlSection {
            reward_model: PathBuf::new(),
            samples_per_prompt: 4,
            max_new_tokens: 16,
            temperature: 1.0,
            kl_coef: 0.05,
        }
    }
}

/// Rows of the step program: the prompts of a step times their samples.
pub(crate) fn step_rows(cfg: &TrainConfig) -> usize {
    match (&cfg.rl, cfg.train.objective) {
        (Some(rl), Objective::Rl) => cfg.data.batch_size * rl.samples_per_prompt,
        _ => cfg.data.batch_size,
    }
}

/// `[rl]`'s requirements on itself and on the rest of the config.
pub(crate) fn check(cfg: &TrainConfig, source: &str) -> Result<()> {
    let bad = |key: &str, msg: String| Err(Error::config(source, key, msg));
    let obj = cfg.train.objective;
    let rl = match (&cfg.rl, obj) {
        (None, Objective::Rl) => {
            return bad(
                "rl.reward_model",
                "missing: train.objective = \"rl\" needs an [rl] section with reward_model = DIR \
                 (a reward model, e.g. the final/ of a train.objective = \"reward\" run)"
                    .into(),
            );
        }
        (None, _) => return Ok(()),
        (Some(_), o) if o != Objective::Rl => {
            return bad(
                "rl",
                format!(
                    "[rl] is given but train.objective = {:?}: set train.objective = \"rl\" or leave [rl] out",
                    o.name()
                ),
            );
        }
        (Some(rl), _) => rl,
    };
    if rl.reward_model.as_os_str().is_empty() {
        return bad(
            "rl.reward_model",
            "missing: the directory of the frozen reward model expected".into(),
        );
    }
    if rl.samples_per_prompt < 2 {
        return bad(
            "rl.samples_per_prompt",
            format!(
                "{}: at least 2 expected (a sample's baseline is the mean reward of the prompt's other samples)",
                rl.samples_per_prompt
            ),
        );
    }
    if rl.max_new_tokens == 0 || rl.max_new_tokens >= cfg.data.seq_len {
        return bad(
            "rl.max_new_tokens",
            format!(
                "{}: expected 1 to data.seq_len - 1 = {} (a row holds the prompt and its response)",
                rl.max_new_tokens,
                cfg.data.seq_len.saturating_sub(1)
            ),
        );
    }
    if !(rl.temperature > 0.0 && rl.temperature.is_finite()) {
        return bad(
            "rl.temperature",
            format!("{}: a positive number expected (e.g. 1.0)", rl.temperature),
        );
    }
    if !(rl.kl_coef >= 0.0 && rl.kl_coef.is_finite()) {
        return bad(
            "rl.kl_coef",
            format!("{}: a number >= 0 expected (e.g. 0.05)", rl.kl_coef),
        );
    }
    let prompts = matches!(
        cfg.data.format,
        data::DataFormat::Tokens | data::DataFormat::Chat
    );
    let packed = cfg.data.format == data::DataFormat::Chat && cfg.data.packing;
    if !prompts || !cfg.data.sources.is_empty() || packed {
        return bad(
            "data.format",
            format!(
                "{:?}{}: train.objective = \"rl\" reads one prompt per row: token rows \
                 (data.format = \"tokens\") or conversations ending with a user message \
                 (data.format = \"chat\", data.packing = false)",
                format!("{:?}", cfg.data.format).to_lowercase(),
                if packed {
                    " with data.packing = true"
                } else {
                    ""
                }
            ),
        );
    }
    let a = cfg.optimizer.accumulation_steps.max(1);
    if !cfg.data.batch_size.is_multiple_of(a) {
        return bad(
            "data.batch_size",
            format!(
                "{} prompts do not split into optimizer.accumulation_steps = {a} micro-batches \
                 (a prompt's samples stay in one micro-batch)",
                cfg.data.batch_size
            ),
        );
    }
    if cfg.runtime.emulate_hosts > 1 {
        return bad(
            "runtime.emulate_hosts",
            format!(
                "{}: train.objective = \"rl\" runs on one host (any number of devices)",
                cfg.runtime.emulate_hosts
            ),
        );
    }
    Ok(())
}

/// The shape of `[rl]`'s reward model, checked against the policy
/// (`policy`) and the rows.
pub(crate) fn reward_config(
    cfg: &TrainConfig,
    policy: &gemma::GemmaConfig,
) -> Result<gemma::GemmaConfig> {
    let dir = reward_dir(cfg);
    let bad = |msg: String| {
        Err(Error::config(
            "[rl]",
            "rl.reward_model",
            format!("{}: {msg}", dir.display()),
        ))
    };
    let c = if crate::checkpoint::is_checkpoint(dir) {
        crate::checkpoint::Checkpoint::open(dir)?
            .config()?
            .model
            .resolve()?
    } else if gemma::hf::is_hf_dir(dir) {
        gemma::hf::load_config(dir)?
    } else {
        return bad(
            "is neither a Hugging Face model directory (config.json + *.safetensors) nor a \
             meshtrain checkpoint (train a reward model first, e.g. meshtrain train --config \
             configs/reward-smoke.toml)"
                .into(),
        );
    };
    if !c.score_head {
        return bad(
            "is a causal LM; a reward model expected (GemmaForSequenceClassification, num_labels = 1)"
                .into(),
        );
    }
    if c.vocab_size != policy.vocab_size {
        return bad(format!(
            "has a vocabulary of {} ids, the policy {}: both must read the same token ids",
            c.vocab_size, policy.vocab_size
        ));
    }
    if c.max_seq_len < cfg.data.seq_len {
        return bad(format!(
            "reads at most {} tokens (max_seq_len), the rows hold data.seq_len = {}",
            c.max_seq_len, cfg.data.seq_len
        ));
    }
    Ok(c)
}

/// The reward model's parameters (f32, [`gemma::param_specs`] order).
pub(crate) fn reward_params(cfg: &TrainConfig) -> Result<Vec<Vec<f32>>> {
    let model = crate::generate::source::load_model(reward_dir(cfg))?.checkpoint;
    Ok(model.params.into_iter().map(|t| t.data).collect())
}

fn reward_dir(cfg: &TrainConfig) -> &std::path::Path {
    // invariant: `check` refuses train.objective = "rl" without [rl].
    &cfg.rl.as_ref().expect("[rl] is checked").reward_model
}
