//! The losses of preference pairs, one pair per row (chosen = segment 1,
//! rejected = segment 2): Bradley-Terry reward modelling and DPO. Both are
//! means over the step's pairs (`accumulation x micro_batch`, a constant),
//! so micro-batches add up like the LM loss.

use gemma::{Gemma, GemmaConfig};
use hlo::{Builder, DType, Value};

use super::accumulate::accumulate;
use super::{Plan, StepShape};
use crate::Result;
use crate::objective::Objective;

/// The objective's loss, its gradient with respect to `p`, and its extra
/// metrics ([`Objective::metrics`] order), summed over micro-batches.
/// DPO reads the reference policy from `reference` (never differentiated).
#[allow(clippy::too_many_arguments)]
pub(super) fn loss_and_grads(
    b: &mut Builder,
    cfg: &GemmaConfig,
    compute: gemma::ComputeOptions,
    plan: &Plan,
    p: &[Value],
    reference: Option<&[Value]>,
    inputs: &[Value],
    shape: StepShape,
    objective: Objective,
    beta: f64,
) -> Result<(Value, Vec<Value>, Vec<Value>)> {
    let pairs = (shape.accumulation * shape.micro_batch) as f64;
    let n = p.len();
    let mut consts = p.to_vec();
    consts.extend(reference.unwrap_or_default());
    let zeros = super::zeros_for(b, 3, p);
    let sums = accumulate(b, shape, inputs, &consts, &zeros, |b, x, c| {
        let params = &c[..n];
        let model = Gemma::with_layout(cfg, params, plan.layout(), compute)?;
        let tokens = x.model_tokens();
        let (targets, mask) = (x.targets, x.loss_mask);
        // The per-pair margin whose −log σ is the loss.
        let margin = match objective {
            Objective::Reward => {
                let (c, r) = model.score_pairs(b, &tokens, plan)?;
                b.sub(c, r)?
            }
            Objective::Dpo => {
                let frozen = Gemma::with_layout(cfg, &c[n..], plan.layout(), compute)?;
                let logits = model.forward(b, &tokens, plan)?;
                let (c, r) = pair_log_probs(b, logits, targets, mask, tokens.segment_ids)?;
                let ref_logits = b.scope("reference", |b| frozen.forward(b, &tokens, plan))?;
                let (rc, rr) = pair_log_probs(b, ref_logits, targets, mask, tokens.segment_ids)?;
                let (rc, rr) = (b.stop_gradient(rc)?, b.stop_gradient(rr)?);
                let dc = b.sub(c, rc)?;
                let dr = b.sub(r, rr)?;
                let d = b.sub(dc, dr)?;
                b.mul_scalar(d, beta)?
            }
            Objective::Lm | Objective::Rl => {
                unreachable!("the LM and RL losses are built elsewhere")
            }
        };
        let (loss, metrics) = b.scope("pair_loss", |b| -> hlo::Result<(Value, Vec<Value>)> {
            let l = neg_log_sigmoid(b, margin)?;
            let loss = mean_over(b, l, pairs)?;
            let zero = b.zeros_like(margin);
            let right = b.gt(margin, zero)?;
            let right = b.convert(right, DType::F32)?;
            Ok((
                loss,
                vec![mean_over(b, right, pairs)?, mean_over(b, margin, pairs)?],
            ))
        })?;
        let mut out = vec![loss];
        out.extend(metrics);
        out.extend(b.grad(loss, params)?);
        Ok(out)
    })?;
    Ok((sums[0], sums[3..].to_vec(), sums[1..3].to_vec()))
}

/// `−log σ(x) = softplus(−x) = max(−x, 0) + log1p(exp(−|x|))`, stable for any x.
fn neg_log_sigmoid(b: &mut Builder, x: Value) -> hlo::Result<Value> {
    let neg = b.neg(x)?;
    let zero = b.zeros_like(x);
    let relu = b.max(neg, zero)?;
    let a = b.abs(x)?;
    let na = b.neg(a)?;
    let e = b.exp(na)?;
    let l = b.log1p(e)?;
    b.add(relu, l)
}

/// `sum(x) / n` for `x [B]`.
pub(super) fn mean_over(b: &mut Builder, x: Value, n: f64) -> hlo::Result<Value> {
    let s = b.sum(x, &[0])?;
    b.mul_scalar(s, 1.0 / n)
}

/// Summed log-probabilities of the targets where `mask` is 1, per row, in
/// segment 1 (chosen) and segment 2 (rejected): `([B], [B])` f32.
fn pair_log_probs(
    b: &mut Builder,
    logits: Value,
    targets: Value,
    mask: Value,
    segment_ids: Value,
) -> hlo::Result<(Value, Value)> {
    b.scope("log_probs", |b| {
        let lp = gemma::token_log_probs(b, logits, targets)?;
        let lp = b.mul(lp, mask)?;
        let seg = b.convert(segment_ids, DType::F32)?;
        let mut per = Vec::new();
        for k in [1.0, 2.0] {
            let kk = b.full_like(seg, k);
            let inside = b.eq(seg, kk)?;
            let inside = b.convert(inside, DType::F32)?;
            let x = b.mul(lp, inside)?;
            per.push(b.sum(x, &[1])?);
        }
        Ok((per[0], per[1]))
    })
}
