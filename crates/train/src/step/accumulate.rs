//! Gradient accumulation as a loop: what one micro-batch contributes (its
//! loss, metrics and gradients) is computed by one loop body run over the
//! leading `accumulation` axis of the batch inputs, and summed in the
//! loop's carry. The program holds one copy of the forward and backward
//! passes however many micro-batches a step has, so its size and compile
//! time do not grow with `optimizer.accumulation_steps` (MaxText's
//! `gradient_accumulation_steps` scan). One micro-batch runs without a loop.

use hlo::{Builder, Value};

use super::StepShape;
use crate::Result;

/// One micro-batch's inputs, each `[micro_batch, seq_len]`.
pub(super) type Micro = super::Batch;

/// Sums `micro(b, inputs, consts)` over the micro-batches of `inputs`
/// (the batch slots, `[accumulation, micro_batch, seq_len]` each): every
/// value the body reads from the step (parameters, frozen parameters, the
/// token count) goes in `consts`, which the body sees as its own values.
/// `zeros` are the additive identities of what `micro` returns, in order.
pub(super) fn accumulate<F>(
    b: &mut Builder,
    shape: StepShape,
    inputs: &[Value],
    consts: &[Value],
    zeros: &[Value],
    micro: F,
) -> Result<Vec<Value>>
where
    F: Fn(&mut Builder, Micro, &[Value]) -> Result<Vec<Value>>,
{
    let (mb, t) = (shape.micro_batch as i64, shape.seq_len as i64);
    if shape.accumulation == 1 {
        let slices = inputs
            .iter()
            .map(|&x| b.reshape(x, &[mb, t]))
            .collect::<hlo::Result<Vec<_>>>()?;
        return b.scope("micro_batch.0", |b| micro(b, Micro::bind(&slices), consts));
    }
    let mut failed = None;
    let (sums, _) = b
        .scan(
            shape.accumulation as i64,
            zeros,
            inputs,
            consts,
            |b, carry, xs, consts| {
                let outs = match b.scope("micro_batch", |b| micro(b, Micro::bind(xs), consts)) {
                    Ok(o) => o,
                    Err(e) => {
                        // The body's own error, kept whole for the caller.
                        failed = Some(e);
                        return Err(hlo::Error::Invalid {
                            op: "accumulate",
                            message: "the micro-batch body failed".into(),
                        });
                    }
                };
                let next = carry
                    .iter()
                    .zip(&outs)
                    .map(|(c, o)| b.add(*c, *o))
                    .collect::<hlo::Result<Vec<_>>>()?;
                Ok((next, vec![]))
            },
        )
        .map_err(|e| failed.take().unwrap_or_else(|| e.into()))?;
    Ok(sums)
}
