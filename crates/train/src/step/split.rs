//! The step as two programs, for data parallelism across processes that
//! cannot share one program (CPU workers): each process runs the gradient
//! program on its rows of the global batch, the processes sum gradients
//! and losses, and each applies the same sum with the update program.
//!
//! Gradient program inputs: `params[P]`, the process's batch slots, and
//! `count` (f32: tokens predicted in the *global* batch, at least 1), so
//! that the gradients summed over processes are those of the global mean
//! loss. Outputs: `grads[P]`, `loss` (this process's share of the mean).
//!
//! Update program inputs: `params[P]`, `m[P]`, `v[P]`, `step`,
//! `grads[P]` (the sum); outputs `params'[P]`, `m'[P]`, `v'[P]`,
//! `step + 1`, `grad_norm`, `learning_rate`, with the state donated.

use gemma::GemmaConfig;
use hlo::{Builder, DType, TensorType};

use super::{
    Plan, Slot, State, StepShape, batch_slots, declare_all, loss_and_grads, param_slots,
    shard_outputs, update,
};
use crate::Result;
use crate::config::OptimizerConfig;

/// The gradient program and its input layout.
pub struct GradProgram {
    /// The program.
    pub program: hlo::Program,
    /// Parameter slots (also the layout of the gradients).
    pub params: Vec<Slot>,
    /// This process's batch slots.
    pub batch: Vec<Slot>,
}

/// The update program.
pub struct ApplyProgram {
    /// The program.
    pub program: hlo::Program,
    /// Names of the scalar outputs after the state.
    pub scalars: Vec<&'static str>,
}

/// Builds both programs; `shape.micro_batch` is this process's rows.
pub fn build_split(
    cfg: &GemmaConfig,
    opt: &OptimizerConfig,
    compute: gemma::ComputeOptions,
    shape: StepShape,
    plan: &Plan,
) -> Result<(GradProgram, ApplyProgram)> {
    let params = param_slots(cfg, plan);
    let batch = batch_slots(plan, shape);
    let mesh = |b: &mut Builder| -> hlo::Result<()> {
        if plan.sharded() {
            b.set_mesh(plan.hlo_mesh()?);
        }
        Ok(())
    };

    let mut b = Builder::new("train_grads");
    mesh(&mut b)?;
    let p = declare_all(&mut b, plan, &params, "")?;
    let inputs = declare_all(&mut b, plan, &batch, "")?;
    let count = b.parameter("count", TensorType::new(DType::F32, Vec::<i64>::new()));
    let (loss, grads) = loss_and_grads(&mut b, cfg, compute, plan, &p, &inputs, count, shape)?;
    let mut outputs = grads;
    outputs.push(loss);
    let mut grad_program = b.build(&outputs)?;
    shard_outputs(&mut grad_program, plan, &params, 1)?;

    let mut b = Builder::new("train_update");
    mesh(&mut b)?;
    let state = State::declare(&mut b, plan, &params)?;
    let grads = declare_all(&mut b, plan, &params, "grad.")?;
    let u = update::adamw(
        &mut b,
        opt,
        cfg,
        plan.layout(),
        &state,
        grads,
        shape.total_steps,
    )?;
    let mut outputs = u.state();
    outputs.extend([u.grad_norm, u.lr]);
    let mut apply = b.build(&outputs)?;
    shard_outputs(&mut apply, plan, &params, 3)?;
    state.donate(&mut apply)?;

    Ok((
        GradProgram {
            program: grad_program,
            params,
            batch,
        },
        ApplyProgram {
            program: apply,
            scalars: vec!["grad_norm", "learning_rate"],
        },
    ))
}
