//! What a run optimises (`train.objective`): the language-model loss
//! (pretraining, SFT), a Bradley-Terry reward model on preference pairs, or
//! DPO against the frozen policy at `model.init` (`[dpo]`), or REINFORCE
//! with a KL penalty against a frozen reward model (`[rl]`, [`crate::rl`]).

use serde::{Deserialize, Serialize};

use crate::{Error, Result, TrainConfig};

/// `train.objective`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Mean next-token cross-entropy over the step's target tokens.
    #[default]
    Lm,
    /// Reward modelling: mean over pairs of −log σ(r(chosen) − r(rejected)),
    /// with a `score` head (`model.score_head`, set by this objective).
    Reward,
    /// Direct preference optimisation against the reference policy at
    /// `model.init`: mean over pairs of −log σ(β[(log π(c) − log π_ref(c))
    /// − (log π(r) − log π_ref(r))]), log-probabilities summed over the
    /// response tokens (the chat loss masks).
    Dpo,
    /// REINFORCE with a KL penalty towards the policy at `model.init`: each
    /// step samples `rl.samples_per_prompt` responses per prompt, scores
    /// them with the frozen reward model `rl.reward_model`, and minimises
    /// −mean_i (R_i − b_i) · Σ_t log π(y_it), with R = r − kl_coef · KL and
    /// b the leave-one-out mean R of the prompt's other samples.
    Rl,
}

impl Objective {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Lm => "lm",
            Objective::Reward => "reward",
            Objective::Dpo => "dpo",
            Objective::Rl => "rl",
        }
    }

    /// Whether its data are preference pairs (one pair per row).
    pub fn on_pairs(self) -> bool {
        matches!(self, Objective::Reward | Objective::Dpo)
    }

    /// The scalars its step reports besides the loss, in output order.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Objective::Lm => &[],
            Objective::Reward | Objective::Dpo => &["accuracy", "margin"],
            Objective::Rl => &["reward_mean", "kl", "response_len"],
        }
    }
}

/// `[dpo]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpoSection {
    /// β: how far the policy may move from the reference (larger: less).
    pub beta: f64,
}

impl Default for DpoSection {
    fn default() -> Self {
        DpoSection { beta: 0.1 }
    }
}

/// Sets `model.score_head = true` for `train.objective = "reward"` unless
/// the config sets it (before deserializing, so the saved config has it).
pub(crate) fn fill_score_head(table: &mut toml::Table) {
    let reward = table
        .get("train")
        .and_then(|t| t.get("objective"))
        .and_then(|o| o.as_str())
        == Some("reward");
    if reward
        && let Some(model) = table.get_mut("model").and_then(|m| m.as_table_mut())
        && !model.contains_key("score_head")
    {
        model.insert("score_head".into(), toml::Value::Boolean(true));
    }
}

/// The objective's requirements on the rest of the config.
/// `model` is the resolved shape (a classifier at `model.init` has a head).
pub(crate) fn check(cfg: &TrainConfig, model: &gemma::GemmaConfig, source: &str) -> Result<()> {
    let bad = |key: &str, msg: String| Err(Error::config(source, key, msg));
    let obj = cfg.train.objective;
    let head = model.score_head;
    let pairs = cfg.data.format == data::DataFormat::Preferences && cfg.data.sources.is_empty();
    if obj == Objective::Reward && !head {
        return bad(
            "model.score_head",
            "false: train.objective = \"reward\" trains a score head (true, or leave it out)"
                .into(),
        );
    }
    if obj != Objective::Reward && head {
        return bad(
            "model.score_head",
            format!(
                "true (set, or a reward model at model.init): only train.objective = \"reward\" \
                 trains a reward model (the objective is {:?})",
                obj.name()
            ),
        );
    }
    if obj.on_pairs() != pairs {
        let msg = if obj.on_pairs() {
            format!(
                "{:?}: train.objective = {:?} trains on preference pairs: data.format = \"preferences\" expected",
                format!("{:?}", cfg.data.format).to_lowercase(),
                obj.name()
            )
        } else {
            format!(
                "\"preferences\": preference pairs train train.objective = \"reward\" or \"dpo\", not {:?}",
                obj.name()
            )
        };
        return bad("data.format", msg);
    }
    crate::rl::check(cfg, source)?;
    match (&cfg.dpo, obj) {
        (Some(_), o) if o != Objective::Dpo => bad(
            "dpo",
            format!(
                "[dpo] is given but train.objective = {:?}: set train.objective = \"dpo\" or leave [dpo] out",
                o.name()
            ),
        ),
        (Some(d), _) if !(d.beta > 0.0 && d.beta.is_finite()) => bad(
            "dpo.beta",
            format!("{}: a positive number expected (e.g. 0.1)", d.beta),
        ),
        _ => Ok(()),
    }
}
