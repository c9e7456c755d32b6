//! The REINFORCE loss with a KL penalty (`train.objective = "rl"`), on rows
//! that each hold a prompt and one sampled response (segment 1, right
//! padded), `samples` consecutive rows per prompt. The loss mask marks the
//! predictions of response tokens. Per row i:
//!
//! - r_i: the frozen reward model's score at the row's last real token;
//! - KL_i = Σ_t [log π(y_t) − log π_ref(y_t)] over the response tokens;
//! - R_i = r_i − kl_coef · KL_i, and b_i the mean R of the prompt's other
//!   samples (leave-one-out);
//! - loss = −mean_i (R_i − b_i) · Σ_t log π(y_it), R and b held constant.
//!
//! Means run over the step's rows (`accumulation x micro_batch`, a
//! constant), so micro-batches add up. Metrics: `reward_mean` (mean r),
//! `kl` (mean KL_i) and `response_len` (mean response tokens).

use gemma::{Gemma, GemmaConfig};
use hlo::{Builder, Value};

use super::accumulate::accumulate;
use super::pairs::mean_over;
use super::{Plan, StepShape};
use crate::Result;

/// What the RL loss needs besides the policy.
#[derive(Clone, Debug)]
pub struct RlLoss {
    /// The weight of the KL penalty.
    pub kl_coef: f64,
    /// Consecutive rows per prompt.
    pub samples: usize,
    /// The reward model's shape.
    pub reward: GemmaConfig,
}

/// The loss, its gradient with respect to `p`, and the metrics
/// (`reward_mean`, `kl`, `response_len`), summed over micro-batches.
#[allow(clippy::too_many_arguments)]
pub(super) fn loss_and_grads(
    b: &mut Builder,
    cfg: &GemmaConfig,
    compute: gemma::ComputeOptions,
    plan: &Plan,
    p: &[Value],
    reference: &[Value],
    reward: &[Value],
    inputs: &[Value],
    shape: StepShape,
    rl: &RlLoss,
) -> Result<(Value, Vec<Value>, Vec<Value>)> {
    let mb = shape.micro_batch;
    let k = rl.samples;
    let rows = (shape.accumulation * mb) as f64;
    let (n, r) = (p.len(), reference.len());
    let consts: Vec<Value> = [p, reference, reward].concat();
    let zeros = super::zeros_for(b, 4, p);
    let sums = accumulate(b, shape, inputs, &consts, &zeros, |b, x, c| {
        let params = &c[..n];
        let model = Gemma::with_layout(cfg, params, plan.layout(), compute)?;
        let frozen = Gemma::with_layout(cfg, &c[n..n + r], plan.layout(), compute)?;
        let scorer = Gemma::new(&rl.reward, &c[n + r..], compute)?;
        let tokens = x.model_tokens();
        let (targets, mask) = (x.targets, x.loss_mask);
        let logits = model.forward(b, &tokens, plan)?;
        let log_pi = response_log_prob(b, logits, targets, mask)?;
        let ref_logits = b.scope("reference", |b| frozen.forward(b, &tokens, plan))?;
        let log_ref = response_log_prob(b, ref_logits, targets, mask)?;
        let score = b.scope("reward_model", |b| scorer.score(b, &tokens, plan))?;
        let score = b.stop_gradient(score)?;
        let kl = b.sub(log_pi, log_ref)?;
        let kl = b.stop_gradient(kl)?;
        let (advantage, metrics) = b.scope("advantage", |b| -> hlo::Result<_> {
            let penalty = b.mul_scalar(kl, rl.kl_coef)?;
            let shaped = b.sub(score, penalty)?;
            let baseline = leave_one_out(b, shaped, mb, k)?;
            let advantage = b.sub(shaped, baseline)?;
            let len = b.sum(mask, &[1])?;
            let metrics = vec![
                mean_over(b, score, rows)?,
                mean_over(b, kl, rows)?,
                mean_over(b, len, rows)?,
            ];
            Ok((b.stop_gradient(advantage)?, metrics))
        })?;
        let loss = b.scope("rl_loss", |b| -> hlo::Result<Value> {
            let weighted = b.mul(advantage, log_pi)?;
            let mean = mean_over(b, weighted, rows)?;
            b.neg(mean)
        })?;
        let mut out = vec![loss];
        out.extend(metrics);
        out.extend(b.grad(loss, params)?);
        Ok(out)
    })?;
    Ok((sums[0], sums[4..].to_vec(), sums[1..4].to_vec()))
}

/// Σ_t of the targets' log-probabilities where `mask` is 1: `[B]` f32.
fn response_log_prob(
    b: &mut Builder,
    logits: Value,
    targets: Value,
    mask: Value,
) -> hlo::Result<Value> {
    b.scope("log_probs", |b| {
        let lp = gemma::token_log_probs(b, logits, targets)?;
        let lp = b.mul(lp, mask)?;
        b.sum(lp, &[1])
    })
}

/// For `x [B]` in groups of `k` consecutive rows: each row's mean over the
/// other `k − 1` rows of its group.
fn leave_one_out(b: &mut Builder, x: Value, rows: usize, k: usize) -> hlo::Result<Value> {
    let groups = (rows / k) as i64;
    let g = b.reshape(x, &[groups, k as i64])?;
    let total = b.sum(g, &[1])?;
    let total = b.broadcast_in_dim(total, &[groups, k as i64], &[0])?;
    let others = b.sub(total, g)?;
    let mean = b.mul_scalar(others, 1.0 / (k as f64 - 1.0))?;
    b.reshape(mean, &[rows as i64])
}
