//! Shared helpers: a deterministic random source and the finite-difference
//! gradient check.
#![allow(dead_code)]

pub mod blocks;
pub mod gemma_like;

use hlo::{Builder, DType, Result, Tensor, TensorType, Value};

/// A small deterministic generator (xorshift), so tests need no `rand`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    pub fn tensor(&mut self, dims: &[i64], lo: f64, hi: f64) -> Tensor {
        let n = dims.iter().product::<i64>() as usize;
        Tensor::new(dims.to_vec(), (0..n).map(|_| self.range(lo, hi)).collect())
    }

    pub fn ints(&mut self, dims: &[i64], hi: i64) -> Tensor {
        let n = dims.iter().product::<i64>() as usize;
        Tensor::new(
            dims.to_vec(),
            (0..n)
                .map(|_| (self.uniform() * hi as f64).floor())
                .collect(),
        )
    }
}

/// One input of a gradient check: its type, data, and whether to differentiate it.
pub struct Input {
    pub ty: TensorType,
    pub data: Tensor,
    pub diff: bool,
}

pub fn f64_in(rng: &mut Rng, dims: &[i64], lo: f64, hi: f64) -> Input {
    Input {
        ty: TensorType::f64(dims.to_vec()),
        data: rng.tensor(dims, lo, hi),
        diff: true,
    }
}

pub fn int_in(rng: &mut Rng, dims: &[i64], hi: i64) -> Input {
    Input {
        ty: TensorType::i32(dims.to_vec()),
        data: rng.ints(dims, hi),
        diff: false,
    }
}

/// Builds `f(inputs)`, projects it to a scalar with a random weight
/// tensor, takes `grad` and compares every differentiable input's gradient
/// with central finite differences of the interpreter. Returns the builder
/// for further checks.
pub fn check_grad(
    name: &str,
    inputs: Vec<Input>,
    f: impl Fn(&mut Builder, &[Value]) -> Result<Value>,
) -> Builder {
    check_grad_tol(name, inputs, 1e-6, f)
}

pub fn check_grad_tol(
    name: &str,
    inputs: Vec<Input>,
    tol: f64,
    f: impl Fn(&mut Builder, &[Value]) -> Result<Value>,
) -> Builder {
    let mut b = Builder::new(name);
    let params: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, inp)| b.parameter(&format!("in{i}"), inp.ty.clone()))
        .collect();
    let y = f(&mut b, &params).unwrap_or_else(|e| panic!("{name}: building: {e}"));
    let yty = b.ty(y).clone();
    let w = b.parameter("proj", yty.clone());
    let yw = b.mul(y, w).unwrap();
    let all: Vec<i64> = (0..yty.rank() as i64).collect();
    let loss = b.sum(yw, &all).unwrap();
    let wrt: Vec<Value> = params
        .iter()
        .zip(&inputs)
        .filter(|(_, i)| i.diff)
        .map(|(p, _)| *p)
        .collect();
    let grads = b
        .grad(loss, &wrt)
        .unwrap_or_else(|e| panic!("{name}: grad: {e}"));
    let mut rng = Rng::new(name.len() as u64 * 7919);
    let mut data: Vec<Tensor> = inputs.iter().map(|i| i.data.clone()).collect();
    data.push(rng.tensor(&yty.dims, -1.0, 1.0));
    let mut outs = vec![loss];
    outs.extend(&grads);
    let got = b.evaluate(&data, &outs).unwrap();
    assert!(
        got[0].data[0].is_finite(),
        "{name}: loss is {}",
        got[0].data[0]
    );
    let eval_loss = |d: &[Tensor]| b.evaluate(d, &[loss]).unwrap()[0].data[0];
    let mut k = 0;
    for (i, inp) in inputs.iter().enumerate() {
        if !inp.diff {
            continue;
        }
        k += 1;
        let g = &got[k];
        assert_eq!(g.dims, inp.data.dims, "{name}: gradient shape of input {i}");
        // Looser checks (f32 inside) need a step well above f32 rounding.
        let h = if inp.ty.dtype == DType::F64 && tol <= 1e-5 {
            1e-6
        } else {
            1e-3
        };
        for e in 0..inp.data.data.len() {
            let mut plus = data.clone();
            plus[i].data[e] += h;
            let mut minus = data.clone();
            minus[i].data[e] -= h;
            let fd = (eval_loss(&plus) - eval_loss(&minus)) / (2.0 * h);
            let an = g.data[e];
            assert!(
                (fd - an).abs() <= tol * fd.abs().max(an.abs()).max(1.0),
                "{name}: d/d input{i}[{e}]: autodiff {an}, finite difference {fd}"
            );
        }
    }
    b
}
