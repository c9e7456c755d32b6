//! The training step as one program: forward and loss per micro-batch,
//! backward, global gradient norm, clipping, AdamW with decoupled weight
//! decay, and the learning-rate schedule from the step counter. Parameters,
//! both moments and the step counter are donated to their updated outputs.
//!
//! Inputs: the state, `params[P]`, `m[P]`, `v[P]`, `step` (i32,
//! [`state_len`]), then the batch ([`StepProgram::batch`]: `tokens`,
//! `targets`, `loss_mask`, `segment_ids`, `positions`), each
//! `[accumulation, micro_batch, seq_len]`. Outputs: the updated state, then
//! the scalars [`StepProgram::scalars`] names (`loss`, `grad_norm`,
//! `learning_rate`, ...). The parameters are stored as the plan's
//! [`gemma::Layout`] says. The preference objectives (`train.objective =
//! "reward" | "dpo"`, see [`pairs`]) add their metrics after
//! `learning_rate`; DPO reads the frozen
//! reference parameters `ref[P]` between `step` and the batch: a second,
//! non-differentiated parameter set in the same program, so one dispatch
//! runs both forwards and XLA keeps no activations of the reference.

use gemma::{
    Axis, Constrain, Gemma, GemmaConfig, Layout, ParamSpec, Tokens, param_specs_in, token_loss,
};
use hlo::{Builder, DType, Sharding, TensorType, Value};
use mesh::{Mesh, Rules};

use crate::config::OptimizerConfig;
use crate::objective::Objective;
use crate::{Error, Result};
use accumulate::accumulate;

mod accumulate;
mod pairs;
mod rl;
mod split;
mod update;

pub use rl::RlLoss;
pub use split::{ApplyProgram, GradProgram, build_split};

/// One program input: shape, dtype and per-dimension mesh axes.
#[derive(Clone, Debug, PartialEq)]
pub struct Slot {
    /// Name (parameter name, `m.<name>`, `tokens`...).
    pub name: String,
    /// Global shape.
    pub shape: Vec<usize>,
    /// Element type.
    pub dtype: DType,
    /// Mesh axes of each dimension.
    pub axes: Vec<Vec<String>>,
}

/// Decides every sharding from the mesh and the logical-axis rules.
pub struct Plan {
    /// The mesh.
    pub mesh: Mesh,
    /// Logical -> mesh axis rules.
    pub rules: Rules,
    cfg: GemmaConfig,
    layout: Layout,
}

impl Plan {
    /// A plan for `cfg` on `mesh`, its state stored per layer.
    pub fn new(cfg: &GemmaConfig, mesh: Mesh, rules: Rules) -> Plan {
        Plan {
            mesh,
            rules,
            cfg: cfg.clone(),
            layout: Layout::PerLayer,
        }
    }

    /// The plan with the parameters and moments stored as `layout` says
    /// (the step's slots, the state on the devices, its checkpoints).
    pub fn with_layout(self, layout: Layout) -> Plan {
        Plan { layout, ..self }
    }

    /// How the parameters and moments are stored.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Mesh axes of each dimension of a parameter.
    pub fn param_axes(&self, spec: &ParamSpec) -> Vec<Vec<String>> {
        let c = &self.cfg;
        let dims: Vec<(&str, i64)> = spec
            .axes
            .iter()
            .map(|a| {
                let unit = match a {
                    Axis::Vocab => c.vocab_size,
                    Axis::Embed => c.d_model,
                    Axis::Heads => c.heads,
                    Axis::KvHeads => c.kv_heads,
                    Axis::Mlp => c.mlp_dim,
                    Axis::Norm | Axis::Label => 1,
                    Axis::Layers => c.layers,
                };
                (a.name(), unit as i64)
            })
            .collect();
        self.rules.shard(&self.mesh, &dims)
    }

    fn sharded(&self) -> bool {
        self.mesh.devices() > 1
    }

    fn hlo_mesh(&self) -> hlo::Result<hlo::Mesh> {
        hlo::Mesh::new(self.mesh.axes())
    }
}

fn sharding(axes: &[Vec<String>]) -> Sharding {
    Sharding {
        dims: axes.to_vec(),
    }
}

impl Constrain for Plan {
    fn constrain(&self, b: &mut Builder, x: Value, axes: &[&str]) -> hlo::Result<Value> {
        if !self.sharded() {
            return Ok(x);
        }
        let dims: Vec<(&str, i64)> = axes.iter().copied().zip(b.dims(x).to_vec()).collect();
        let s = sharding(&self.rules.shard(&self.mesh, &dims));
        b.sharding_constraint(x, &s)
    }

    /// A stacked layer weight gets its parameter's sharding, the `layers`
    /// axis by the `layers` rule (none by default).
    fn constrain_param(&self, b: &mut Builder, x: Value, spec: &ParamSpec) -> hlo::Result<Value> {
        if !self.sharded() {
            return Ok(x);
        }
        b.sharding_constraint(x, &sharding(&self.param_axes(spec)))
    }
}

/// The shapes of one step.
#[derive(Clone, Copy, Debug)]
pub struct StepShape {
    /// Micro-batches per step.
    pub accumulation: usize,
    /// Sequences per micro-batch (global, over all devices).
    pub micro_batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Optimizer steps of the run (for the schedule).
    pub total_steps: u64,
}

/// A built step program and the layout of its inputs.
pub struct StepProgram {
    /// The program.
    pub program: hlo::Program,
    /// Parameter slots (also the layout of `m` and `v`).
    pub params: Vec<Slot>,
    /// Batch slots: tokens, targets, loss_mask, segment_ids, positions.
    pub batch: Vec<Slot>,
    /// Names of the scalar outputs after the state ([`state_len`]), in
    /// order: `loss`, `grad_norm`, `learning_rate`, then the objective's
    /// [`Objective::metrics`].
    pub scalars: Vec<&'static str>,
    /// Whether the reference parameters (`ref.<name>`, laid out like the
    /// parameters, read only) follow `step` in the inputs (DPO, RL).
    pub reference: bool,
    /// The reward model's parameter slots (`reward.<name>`, read only),
    /// after the reference in the inputs (RL); empty otherwise.
    pub reward: Vec<Slot>,
}

/// The loss a step optimises.
#[derive(Clone, Debug, Default)]
pub struct Loss {
    /// `train.objective`.
    pub objective: Objective,
    /// `dpo.beta`.
    pub beta: f64,
    /// `[rl]` and the reward model's shape (`train.objective = "rl"`).
    pub rl: Option<RlLoss>,
}

/// Builds the step program of the language-model loss.
pub fn build_step(
    cfg: &GemmaConfig,
    opt: &OptimizerConfig,
    compute: gemma::ComputeOptions,
    shape: StepShape,
    plan: &Plan,
) -> Result<StepProgram> {
    build_step_with(cfg, opt, compute, shape, plan, Loss::default())
}

/// Builds the step program of `loss`. For DPO the inputs are `params[P]`,
/// `m[P]`, `v[P]`, `step`, `ref[P]`, then the batch; RL adds the reward
/// model's `reward[Q]` after `ref[P]`. Every objective's outputs end with
/// its [`Objective::metrics`].
pub fn build_step_with(
    cfg: &GemmaConfig,
    opt: &OptimizerConfig,
    compute: gemma::ComputeOptions,
    shape: StepShape,
    plan: &Plan,
    loss_kind: Loss,
) -> Result<StepProgram> {
    for (key, n) in [
        ("optimizer.accumulation_steps", shape.accumulation),
        ("data.batch_size (rows per micro-batch)", shape.micro_batch),
        ("data.seq_len", shape.seq_len),
    ] {
        if n == 0 {
            return Err(Error::config(
                "step",
                key,
                "is 0: a step needs at least one micro-batch of one row of one token",
            ));
        }
    }
    let mut b = Builder::new("train_step");
    if plan.sharded() {
        b.set_mesh(plan.hlo_mesh()?);
    }
    let params = param_slots(cfg, plan);
    let batch = batch_slots(plan, shape);
    let state = State::declare(&mut b, plan, &params)?;
    let p = &state.params;
    let objective = loss_kind.objective;
    let reference = match objective {
        Objective::Dpo | Objective::Rl => Some(declare_all(&mut b, plan, &params, "ref.")?),
        _ => None,
    };
    let rl = match (objective, &loss_kind.rl) {
        (Objective::Rl, Some(rl)) => Some(rl),
        (Objective::Rl, None) => {
            return Err(Error::config(
                "step",
                "rl",
                "train.objective = \"rl\" needs [rl] and its reward model",
            ));
        }
        _ => None,
    };
    let reward_slots = match rl {
        Some(rl) => {
            // The reward model is read as stored for generation: per layer.
            let reward_plan = Plan::new(&rl.reward, plan.mesh, plan.rules.clone());
            param_slots(&rl.reward, &reward_plan)
        }
        None => vec![],
    };
    let reward = declare_all(&mut b, plan, &reward_slots, "reward.")?;
    let inputs = declare_all(&mut b, plan, &batch, "")?;

    let (loss, grads, metrics) = if let Some(rl) = rl {
        // invariant: RL declares the reference above.
        let reference = reference.as_deref().expect("RL declares the reference");
        rl::loss_and_grads(
            &mut b, cfg, compute, plan, p, reference, &reward, &inputs, shape, rl,
        )?
    } else if objective.on_pairs() {
        pairs::loss_and_grads(
            &mut b,
            cfg,
            compute,
            plan,
            p,
            reference.as_deref(),
            &inputs,
            shape,
            objective,
            loss_kind.beta,
        )?
    } else {
        // Loss over all micro-batches, normalised by the step's total token count.
        let count = b.scope("loss_count", |b| -> hlo::Result<Value> {
            let c = b.sum(Batch::bind(&inputs).loss_mask, &[0, 1, 2])?;
            let one = b.scalar(1.0, DType::F32);
            b.max(c, one)
        })?;
        let (loss, grads) = loss_and_grads(&mut b, cfg, compute, plan, p, &inputs, count, shape)?;
        (loss, grads, vec![])
    };
    let u = update::adamw(
        &mut b,
        opt,
        cfg,
        plan.layout,
        &state,
        grads,
        shape.total_steps,
    )?;

    let mut scalars = vec![
        ("loss", loss),
        ("grad_norm", u.grad_norm),
        ("learning_rate", u.lr),
    ];
    scalars.extend(objective.metrics().iter().copied().zip(metrics));
    let mut outputs = u.state();
    outputs.extend(scalars.iter().map(|(_, v)| *v));
    let mut program = b.build(&outputs)?;
    shard_outputs(&mut program, plan, &params, 3)?;
    state.donate(&mut program)?;
    Ok(StepProgram {
        program,
        params,
        batch,
        scalars: scalars.into_iter().map(|(name, _)| name).collect(),
        reference: reference.is_some(),
        reward: reward_slots,
    })
}

/// How many buffers the training state is, for `params` parameters: the
/// parameters, both AdamW moments laid out like them, the step counter.
/// A step program takes them first and returns their update first.
pub fn state_len(params: usize) -> usize {
    3 * params + 1
}

/// One slot per stored parameter, laid out and sharded as the plan says.
fn param_slots(cfg: &GemmaConfig, plan: &Plan) -> Vec<Slot> {
    param_specs_in(cfg, plan.layout)
        .iter()
        .map(|s| Slot {
            name: s.name.clone(),
            shape: s.shape.clone(),
            dtype: DType::F32,
            axes: plan.param_axes(s),
        })
        .collect()
}

/// The batch inputs of a step by name: each `[accumulation, micro_batch,
/// seq_len]` as declared, or one micro-batch's `[micro_batch, seq_len]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Batch {
    /// Input token ids (i32).
    pub tokens: Value,
    /// The next token of each position (i32).
    pub targets: Value,
    /// 1 where a position's loss counts (f32).
    pub loss_mask: Value,
    /// Document id per token, 0 for padding (i32).
    pub segment_ids: Value,
    /// Position of each token within its document (i32).
    pub positions: Value,
}

impl Batch {
    /// The inputs' names and types, in the order of the step's inputs
    /// ([`StepProgram::batch`]).
    const FIELDS: [(&'static str, DType); 5] = [
        ("tokens", DType::I32),
        ("targets", DType::I32),
        ("loss_mask", DType::F32),
        ("segment_ids", DType::I32),
        ("positions", DType::I32),
    ];

    /// Values in [`Batch::FIELDS`] order.
    fn bind(v: &[Value]) -> Batch {
        let [tokens, targets, loss_mask, segment_ids, positions] = [v[0], v[1], v[2], v[3], v[4]];
        Batch {
            tokens,
            targets,
            loss_mask,
            segment_ids,
            positions,
        }
    }

    /// What the model reads.
    fn model_tokens(&self) -> Tokens {
        Tokens {
            ids: self.tokens,
            positions: self.positions,
            segment_ids: self.segment_ids,
        }
    }
}

/// The step's batch slots, [`Batch::FIELDS`]: `[A, micro_batch, T]` each.
fn batch_slots(plan: &Plan, shape: StepShape) -> Vec<Slot> {
    let (a, mb, t) = (shape.accumulation, shape.micro_batch, shape.seq_len);
    let batch_axes = plan.rules.shard(
        &plan.mesh,
        &[("accum", 1), ("batch", mb as i64), ("seq", t as i64)],
    );
    Batch::FIELDS
        .iter()
        .map(|(n, d)| Slot {
            name: n.to_string(),
            shape: vec![a, mb, t],
            dtype: *d,
            axes: batch_axes.clone(),
        })
        .collect()
}

fn step_slot() -> Slot {
    Slot {
        name: "step".into(),
        shape: vec![],
        dtype: DType::I32,
        axes: vec![],
    }
}

fn declare(b: &mut Builder, plan: &Plan, slot: &Slot, prefix: &str) -> hlo::Result<Value> {
    let dims: Vec<i64> = slot.shape.iter().map(|&d| d as i64).collect();
    let ty = TensorType::new(slot.dtype, dims);
    let name = format!("{prefix}{}", slot.name);
    if plan.sharded() {
        b.parameter_sharded(&name, ty, sharding(&slot.axes))
    } else {
        Ok(b.parameter(&name, ty))
    }
}

fn declare_all(
    b: &mut Builder,
    plan: &Plan,
    slots: &[Slot],
    prefix: &str,
) -> hlo::Result<Vec<Value>> {
    slots.iter().map(|s| declare(b, plan, s, prefix)).collect()
}

/// The loss (sum over micro-batches of token-loss sum / `count`) and its
/// gradient with respect to every parameter.
#[allow(clippy::too_many_arguments)]
fn loss_and_grads(
    b: &mut Builder,
    cfg: &GemmaConfig,
    compute: gemma::ComputeOptions,
    plan: &Plan,
    p: &[Value],
    inputs: &[Value],
    count: Value,
    shape: StepShape,
) -> Result<(Value, Vec<Value>)> {
    let n = p.len();
    let mut consts = p.to_vec();
    consts.push(count);
    let zeros = zeros_for(b, 1, p);
    let sums = accumulate(b, shape, inputs, &consts, &zeros, |b, x, c| {
        let (params, count) = (&c[..n], c[n]);
        let model = Gemma::with_layout(cfg, params, plan.layout, compute)?;
        let logits = model.forward(b, &x.model_tokens(), plan)?;
        let (sum, _) = token_loss(b, logits, x.targets, x.loss_mask)?;
        let l = b.div(sum, count)?;
        let mut out = vec![l];
        out.extend(b.grad(l, params)?);
        Ok(out)
    })?;
    Ok((sums[0], sums[1..].to_vec()))
}

/// Zeros for `scalars` scalar sums (f32), then one like each of `p`.
fn zeros_for(b: &mut Builder, scalars: usize, p: &[Value]) -> Vec<Value> {
    let mut z: Vec<Value> = (0..scalars).map(|_| b.scalar(0.0, DType::F32)).collect();
    z.extend(p.iter().map(|&x| b.zeros_like(x)));
    z
}

/// Outputs `0..groups * P` are laid out like the parameters.
fn shard_outputs(
    program: &mut hlo::Program,
    plan: &Plan,
    params: &[Slot],
    groups: usize,
) -> hlo::Result<()> {
    let n = params.len();
    if plan.sharded() {
        for k in 0..groups * n {
            program.set_output_sharding(k, sharding(&params[k % n].axes))?;
        }
    }
    Ok(())
}

/// The training state as a program's first inputs, in [`state_len`]
/// order: parameters, `m`, `v` (laid out like them), the step counter.
pub(super) struct State {
    pub params: Vec<Value>,
    pub m: Vec<Value>,
    pub v: Vec<Value>,
    pub step: Value,
}

impl State {
    /// Declares the state of parameters `slots`.
    fn declare(b: &mut Builder, plan: &Plan, slots: &[Slot]) -> hlo::Result<State> {
        Ok(State {
            params: declare_all(b, plan, slots, "")?,
            m: declare_all(b, plan, slots, "m.")?,
            v: declare_all(b, plan, slots, "v.")?,
            step: declare(b, plan, &step_slot(), "")?,
        })
    }

    /// Donates every state input to the output at its own index (the
    /// updated state comes first in the outputs).
    fn donate(&self, program: &mut hlo::Program) -> hlo::Result<()> {
        let inputs = self.params.iter().chain(&self.m).chain(&self.v);
        for (k, d) in inputs.copied().chain([self.step]).enumerate() {
            program.donate(d, k)?;
        }
        Ok(())
    }
}

/// The model, sharding plan and step program a config describes: the one
/// place where training and planning build their step.
pub fn build_for(cfg: &crate::TrainConfig) -> Result<(GemmaConfig, Plan, StepProgram)> {
    let (model, plan, shape) = shape_for(cfg)?;
    let step = build_step_with(
        &model,
        &cfg.optimizer,
        cfg.compute_options()?,
        shape,
        &plan,
        loss_of(cfg, &model)?,
    )?;
    Ok((model, plan, step))
}

/// The loss `cfg` trains (`model`: the policy's shape; RL reads its reward
/// model's shape from `rl.reward_model`).
pub fn loss_of(cfg: &crate::TrainConfig, model: &GemmaConfig) -> Result<Loss> {
    let rl = match (&cfg.rl, cfg.train.objective) {
        (Some(rl), Objective::Rl) => Some(RlLoss {
            kl_coef: rl.kl_coef,
            samples: rl.samples_per_prompt,
            reward: crate::rl::reward_config(cfg, model)?,
        }),
        _ => None,
    };
    Ok(Loss {
        objective: cfg.train.objective,
        beta: cfg.dpo.clone().unwrap_or_default().beta,
        rl,
    })
}

/// The plan and the parameter and batch slots of `cfg`'s fused step,
/// without building the program: what decides which host holds what.
pub fn slots_for(cfg: &crate::TrainConfig) -> Result<(Plan, Vec<Slot>, Vec<Slot>)> {
    let (model, plan, shape) = shape_for(cfg)?;
    let params = param_slots(&model, &plan);
    let batch = batch_slots(&plan, shape);
    Ok((plan, params, batch))
}

/// The model and sharding plan of `cfg`.
pub(crate) fn model_and_plan(cfg: &crate::TrainConfig) -> Result<(gemma::GemmaConfig, Plan)> {
    let model = cfg.model.resolve()?;
    let plan = Plan::new(
        &model,
        cfg.resolved_mesh()?,
        Rules::with_overrides(&cfg.mesh.rules)?,
    )
    .with_layout(cfg.state_layout());
    Ok((model, plan))
}

fn shape_for(cfg: &crate::TrainConfig) -> Result<(GemmaConfig, Plan, StepShape)> {
    let (model, plan) = model_and_plan(cfg)?;
    let a = cfg.optimizer.accumulation_steps;
    let shape = StepShape {
        accumulation: a,
        micro_batch: crate::rl::step_rows(cfg) / a,
        seq_len: cfg.data.seq_len,
        total_steps: cfg.optimizer.schedule_steps.unwrap_or(cfg.train.steps),
    };
    Ok((model, plan, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Micro-batches run as one loop: the program holds one forward and
    /// one backward pass whether a step has 2 or 16 of them.
    #[test]
    fn the_program_does_not_grow_with_the_micro_batches() {
        let model = GemmaConfig {
            layers: 2,
            ..GemmaConfig::tiny()
        };
        let plan = Plan::new(&model, Mesh::single(), Rules::default());
        let mlir = |accumulation: usize| {
            let shape = StepShape {
                accumulation,
                micro_batch: 2,
                seq_len: 8,
                total_steps: 10,
            };
            let opt = OptimizerConfig::default();
            let step =
                build_step(&model, &opt, gemma::ComputeOptions::default(), shape, &plan).unwrap();
            step.program.to_mlir()
        };
        let (two, sixteen) = (mlir(2), mlir(16));
        let dots = |m: &str| m.matches("stablehlo.dot_general").count();
        assert!(dots(&two) > 0);
        assert_eq!(dots(&two), dots(&sixteen));
        assert_eq!(
            two.matches("stablehlo.while").count(),
            sixteen.matches("stablehlo.while").count()
        );
        assert!(
            sixteen.len() < two.len() + 200,
            "{} vs {}",
            sixteen.len(),
            two.len()
        );
    }

    #[test]
    fn an_empty_step_shape_is_an_error_naming_its_key() {
        let model = GemmaConfig::tiny();
        let plan = Plan::new(&model, Mesh::single(), Rules::default());
        let compute = gemma::ComputeOptions::default();
        let full = StepShape {
            accumulation: 2,
            micro_batch: 2,
            seq_len: 8,
            total_steps: 10,
        };
        let cases = [
            (
                "optimizer.accumulation_steps",
                StepShape {
                    accumulation: 0,
                    ..full
                },
            ),
            (
                "data.batch_size",
                StepShape {
                    micro_batch: 0,
                    ..full
                },
            ),
            ("data.seq_len", StepShape { seq_len: 0, ..full }),
        ];
        for (key, shape) in cases {
            let opt = OptimizerConfig::default();
            let e = build_step(&model, &opt, compute, shape, &plan)
                .err()
                .expect(key);
            assert!(e.to_string().contains(key), "{e}");
        }
    }
}
