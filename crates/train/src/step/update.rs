//! The optimizer part of a step: global gradient norm, torch-style
//! clipping, the learning rate from the step counter, AdamW with decoupled
//! weight decay.

use gemma::{GemmaConfig, Layout, param_specs_in};
use hlo::{Builder, DType, TensorType, Value};

use crate::config::OptimizerConfig;
use crate::schedule::learning_rate_in_program;

/// The updated state and what the step reports.
pub(super) struct Update {
    pub params: Vec<Value>,
    pub m: Vec<Value>,
    pub v: Vec<Value>,
    pub next_step: Value,
    pub grad_norm: Value,
    pub lr: Value,
}

impl Update {
    /// The updated state, as [`super::state_len`] lays it out: parameters,
    /// `m`, `v`, the step counter.
    pub fn state(&self) -> Vec<Value> {
        let mut out = Vec::with_capacity(super::state_len(self.params.len()));
        out.extend(&self.params);
        out.extend(&self.m);
        out.extend(&self.v);
        out.push(self.next_step);
        out
    }
}

/// Applies `grads` (of the mean loss) to `state` (stored as `layout` says).
pub(super) fn adamw(
    b: &mut Builder,
    opt: &OptimizerConfig,
    cfg: &GemmaConfig,
    layout: Layout,
    state: &super::State,
    mut grads: Vec<Value>,
    total_steps: u64,
) -> hlo::Result<Update> {
    let (p, m, v, step) = (&state.params, &state.m, &state.v, state.step);
    let specs = param_specs_in(cfg, layout);
    b.scope("optimizer", |b| -> hlo::Result<Update> {
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
        let lr = learning_rate_in_program(b, opt, step, total_steps)?;
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
            let mut p1 = p[k];
            if opt.decays(spec) && opt.weight_decay > 0.0 {
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
        Ok(Update {
            params: np,
            m: nm,
            v: nv,
            next_step,
            grad_norm,
            lr,
        })
    })
}
