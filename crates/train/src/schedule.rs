//! The learning-rate schedule: linear warmup from 0, then constant, linear
//! or cosine decay to `min_lr_ratio * lr`. The same function exists twice:
//! on the host (tests, reports) and inside the step program, computed from
//! the step counter so the schedule needs no host round trip.

use hlo::{Builder, DType, Value};

use crate::config::OptimizerConfig;

/// Learning rate used by the update of step `step` (0-based) of `total`.
pub fn learning_rate(o: &OptimizerConfig, step: u64, total: u64) -> f64 {
    let w = o.warmup_steps;
    // Phase 1: warmup, reaching lr at the last warmup step.
    if step < w {
        return o.lr * (step + 1) as f64 / w as f64;
    }
    // Phase 2: decay over the remaining steps; progress runs 0 -> 1.
    let span = total.saturating_sub(w).max(1) as f64;
    let progress = ((step - w) as f64 / span).min(1.0);
    let floor = o.lr * o.min_lr_ratio;
    match o.schedule.as_str() {
        "linear" => o.lr - (o.lr - floor) * progress,
        "cosine" => floor + (o.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        _ => o.lr,
    }
}

/// The same schedule in the program: `step` is an i32 scalar; returns f32.
pub fn learning_rate_in_program(
    b: &mut Builder,
    o: &OptimizerConfig,
    step: Value,
    total: u64,
) -> hlo::Result<Value> {
    let s = b.convert(step, DType::F32)?;
    let w = o.warmup_steps as f64;
    let warm = {
        let s1 = b.add_scalar(s, 1.0)?;
        b.mul_scalar(s1, o.lr / w.max(1.0))?
    };
    let span = (total.saturating_sub(o.warmup_steps)).max(1) as f64;
    let progress = {
        let p = b.add_scalar(s, -w)?;
        let p = b.mul_scalar(p, 1.0 / span)?;
        let one = b.scalar(1.0, DType::F32);
        b.min(p, one)?
    };
    let floor = o.lr * o.min_lr_ratio;
    let decayed = match o.schedule.as_str() {
        "linear" => {
            let d = b.mul_scalar(progress, -(o.lr - floor))?;
            b.add_scalar(d, o.lr)?
        }
        "cosine" => {
            let a = b.mul_scalar(progress, std::f64::consts::PI)?;
            let c = b.cos(a)?;
            let c = b.add_scalar(c, 1.0)?;
            let c = b.mul_scalar(c, 0.5 * (o.lr - floor))?;
            b.add_scalar(c, floor)?
        }
        _ => b.scalar(o.lr, DType::F32),
    };
    let wv = b.scalar(w, DType::F32);
    let in_warmup = b.lt(s, wv)?;
    b.select(in_warmup, warm, decayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opt(schedule: &str, warmup: u64) -> OptimizerConfig {
        OptimizerConfig {
            lr: 1.0,
            schedule: schedule.into(),
            warmup_steps: warmup,
            min_lr_ratio: 0.1,
            ..Default::default()
        }
    }

    #[test]
    fn warmup_then_cosine() {
        let o = opt("cosine", 4);
        let lrs: Vec<f64> = (0..14).map(|s| learning_rate(&o, s, 14)).collect();
        assert_eq!(&lrs[..4], &[0.25, 0.5, 0.75, 1.0]);
        assert!((lrs[4] - 1.0).abs() < 1e-12);
        assert!(
            (lrs[9] - (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * 0.5).cos()))).abs() < 1e-12
        );
        assert!(lrs.windows(2).skip(4).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn linear_and_constant() {
        assert!((learning_rate(&opt("linear", 0), 5, 10) - 0.55).abs() < 1e-12);
        assert_eq!(learning_rate(&opt("constant", 2), 7, 10), 1.0);
        assert_eq!(learning_rate(&opt("constant", 2), 0, 10), 0.5);
    }
}
