//! The training step as one program: forward and loss per micro-batch,
//! backward, global gradient norm, clipping, AdamW with decoupled weight
//! decay, and the learning-rate schedule from the step counter. Parameters,
//! both moments and the step counter are donated to their updated outputs.
//!
//! Inputs: `params[P]`, `m[P]`, `v[P]`, `step` (i32), then the batch
//! `tokens`, `targets`, `loss_mask`, `segment_ids`, `positions`, each
//! `[accumulation, micro_batch, seq_len]`. Outputs: `params'[P]`, `m'[P]`,
//! `v'[P]`, `step + 1`, `loss`, `grad_norm`, `learning_rate`.

use gemma::{Axis, Constrain, Gemma, GemmaConfig, ParamSpec, Tokens, param_specs, token_loss};
use hlo::{Builder, DType, Sharding, TensorType, Value};
use mesh::{Mesh, Rules};

use crate::Result;
use crate::config::OptimizerConfig;
use crate::schedule::learning_rate_in_program;

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
}

impl Plan {
    /// A plan for `cfg` on `mesh`.
    pub fn new(cfg: &GemmaConfig, mesh: Mesh, rules: Rules) -> Plan {
        Plan {
            mesh,
            rules,
            cfg: cfg.clone(),
        }
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
                    Axis::Norm => 1,
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
}

/// Builds the step program.
pub fn build_step(
    cfg: &GemmaConfig,
    opt: &OptimizerConfig,
    compute: gemma::ComputeOptions,
    shape: StepShape,
    plan: &Plan,
) -> Result<StepProgram> {
    let mut b = Builder::new("train_step");
    if plan.sharded() {
        b.set_mesh(plan.hlo_mesh()?);
    }
    let specs = param_specs(cfg);
    let params: Vec<Slot> = specs
        .iter()
        .map(|s| Slot {
            name: s.name.clone(),
            shape: s.shape.clone(),
            dtype: DType::F32,
            axes: plan.param_axes(s),
        })
        .collect();
    let (a, mb, t) = (shape.accumulation, shape.micro_batch, shape.seq_len);
    let batch_axes = plan.rules.shard(
        &plan.mesh,
        &[("accum", 1), ("batch", mb as i64), ("seq", t as i64)],
    );
    let batch: Vec<Slot> = [
        ("tokens", DType::I32),
        ("targets", DType::I32),
        ("loss_mask", DType::F32),
        ("segment_ids", DType::I32),
        ("positions", DType::I32),
    ]
    .iter()
    .map(|(n, d)| Slot {
        name: n.to_string(),
        shape: vec![a, mb, t],
        dtype: *d,
        axes: batch_axes.clone(),
    })
    .collect();

    let declare = |b: &mut Builder, slot: &Slot, prefix: &str| -> hlo::Result<Value> {
        let dims: Vec<i64> = slot.shape.iter().map(|&d| d as i64).collect();
        let ty = TensorType::new(slot.dtype, dims);
        let name = format!("{prefix}{}", slot.name);
        if plan.sharded() {
            b.parameter_sharded(&name, ty, sharding(&slot.axes))
        } else {
            Ok(b.parameter(&name, ty))
        }
    };
    let p: Vec<Value> = params
        .iter()
        .map(|s| declare(&mut b, s, ""))
        .collect::<hlo::Result<_>>()?;
    let m: Vec<Value> = params
        .iter()
        .map(|s| declare(&mut b, s, "m."))
        .collect::<hlo::Result<_>>()?;
    let v: Vec<Value> = params
        .iter()
        .map(|s| declare(&mut b, s, "v."))
        .collect::<hlo::Result<_>>()?;
    let step_slot = Slot {
        name: "step".into(),
        shape: vec![],
        dtype: DType::I32,
        axes: vec![],
    };
    let step = declare(&mut b, &step_slot, "")?;
    let inputs: Vec<Value> = batch
        .iter()
        .map(|s| declare(&mut b, s, ""))
        .collect::<hlo::Result<_>>()?;

    // Loss over all micro-batches, normalised by the step's total token count.
    let count = b.scope("loss_count", |b| -> hlo::Result<Value> {
        let c = b.sum(inputs[2], &[0, 1, 2])?;
        let one = b.scalar(1.0, DType::F32);
        b.max(c, one)
    })?;
    let model = Gemma::new(cfg, &p, compute)?;
    let mut loss: Option<Value> = None;
    let mut grads: Option<Vec<Value>> = None;
    for i in 0..a {
        let micro = |b: &mut Builder, x: Value| -> hlo::Result<Value> {
            let s = b.slice_axis(x, 0, i as i64, 1)?;
            b.reshape(s, &[mb as i64, t as i64])
        };
        let [ids, targets, mask, segment_ids, positions] =
            [0, 1, 2, 3, 4].map(|k| micro(&mut b, inputs[k]));
        let tokens = Tokens {
            ids: ids?,
            positions: positions?,
            segment_ids: segment_ids?,
        };
        let logits = b.scope(&format!("micro_batch.{i}"), |b| {
            model.forward(b, &tokens, plan)
        })?;
        let (sum, _) = token_loss(&mut b, logits, targets?, mask?)?;
        let l = b.div(sum, count)?;
        let g = b.grad(l, &p)?;
        loss = Some(match loss {
            None => l,
            Some(acc) => b.add(acc, l)?,
        });
        grads = Some(match grads {
            None => g,
            Some(acc) => acc
                .iter()
                .zip(&g)
                .map(|(x, y)| b.add(*x, *y))
                .collect::<hlo::Result<_>>()?,
        });
    }
    let loss = loss.expect("at least one micro-batch");
    let mut grads = grads.expect("at least one micro-batch");

    let (grad_norm, lr, new_p, new_m, new_v, next_step) =
        b.scope("optimizer", |b| -> hlo::Result<_> {
            // Global gradient norm over every parameter.
            let mut sq = b.scalar(0.0, DType::F32);
            for g in &grads {
                let rank = b.rank(*g) as i64;
                let g2 = b.square(*g)?;
                let s = b.sum(g2, &(0..rank).collect::<Vec<_>>())?;
                sq = b.add(sq, s)?;
            }
            let grad_norm = b.sqrt(sq)?;
            // Clipping as torch's clip_grad_norm_: scale = min(1, max_norm / (norm + 1e-6)).
            if opt.clip_grad_norm > 0.0 {
                let denom = b.add_scalar(grad_norm, 1e-6)?;
                let maxn = b.scalar(opt.clip_grad_norm, DType::F32);
                let ratio = b.div(maxn, denom)?;
                let one = b.scalar(1.0, DType::F32);
                let scale = b.min(ratio, one)?;
                grads = grads
                    .iter()
                    .map(|g| b.mul_bcast(*g, scale))
                    .collect::<hlo::Result<_>>()?;
            }
            let lr = learning_rate_in_program(b, opt, step, shape.total_steps)?;
            // AdamW (torch.optim.AdamW): bias-corrected moments, decoupled decay.
            let next_step = {
                let one = b.constant(1.0, TensorType::new(DType::I32, Vec::<i64>::new()));
                b.add(step, one)?
            };
            let t = b.convert(next_step, DType::F32)?;
            let bc = |b: &mut Builder, beta: f64| -> hlo::Result<Value> {
                let base = b.scalar(beta, DType::F32);
                let pw = b.pow(base, t)?;
                let neg = b.neg(pw)?;
                b.add_scalar(neg, 1.0)
            };
            let (bc1, bc2) = (bc(b, opt.beta1)?, bc(b, opt.beta2)?);
            let (mut np, mut nm, mut nv) = (Vec::new(), Vec::new(), Vec::new());
            for (k, spec) in specs.iter().enumerate() {
                let g = grads[k];
                let m1 = b.mul_scalar(m[k], opt.beta1)?;
                let g1 = b.mul_scalar(g, 1.0 - opt.beta1)?;
                let m1 = b.add(m1, g1)?;
                let v1 = b.mul_scalar(v[k], opt.beta2)?;
                let g2 = b.square(g)?;
                let g2 = b.mul_scalar(g2, 1.0 - opt.beta2)?;
                let v1 = b.add(v1, g2)?;
                let mhat = b.div_bcast(m1, bc1)?;
                let vhat = b.div_bcast(v1, bc2)?;
                let den = b.sqrt(vhat)?;
                let den = b.add_scalar(den, opt.eps)?;
                let upd = b.div(mhat, den)?;
                let decays = opt.decays(spec);
                let mut p1 = p[k];
                if decays && opt.weight_decay > 0.0 {
                    // p *= 1 - lr * wd
                    let f = b.mul_scalar(lr, -opt.weight_decay)?;
                    let f = b.add_scalar(f, 1.0)?;
                    p1 = b.mul_bcast(p1, f)?;
                }
                let step_size = b.mul_bcast(upd, lr)?;
                np.push(b.sub(p1, step_size)?);
                nm.push(m1);
                nv.push(v1);
            }
            Ok((grad_norm, lr, np, nm, nv, next_step))
        })?;

    let n = params.len();
    let mut outputs = Vec::with_capacity(3 * n + 4);
    outputs.extend(&new_p);
    outputs.extend(&new_m);
    outputs.extend(&new_v);
    outputs.extend([next_step, loss, grad_norm, lr]);
    let mut program = b.build(&outputs)?;
    for k in 0..3 * n {
        if plan.sharded() {
            program.set_output_sharding(k, sharding(&params[k % n].axes))?;
        }
    }
    let donors: Vec<Value> = p
        .iter()
        .chain(&m)
        .chain(&v)
        .copied()
        .chain([step])
        .collect();
    for (k, d) in donors.iter().enumerate() {
        program.donate(*d, k)?;
    }
    Ok(StepProgram {
        program,
        params,
        batch,
    })
}

/// The model, sharding plan and step program a config describes: the one
/// place where training and planning build their step.
pub fn build_for(cfg: &crate::TrainConfig) -> Result<(GemmaConfig, Plan, StepProgram)> {
    let model = cfg.model.resolve()?;
    let plan = Plan::new(
        &model,
        cfg.resolved_mesh()?,
        Rules::with_overrides(&cfg.mesh.rules)?,
    );
    let a = cfg.optimizer.accumulation_steps;
    let shape = StepShape {
        accumulation: a,
        micro_batch: cfg.data.batch_size / a,
        seq_len: cfg.data.seq_len,
        total_steps: cfg.optimizer.schedule_steps.unwrap_or(cfg.train.steps),
    };
    let step = build_step(&model, &cfg.optimizer, cfg.compute_options()?, shape, &plan)?;
    Ok((model, plan, step))
}
