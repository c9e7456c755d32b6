//! Gemma's blocks (`gemma::blocks`) on the host interpreter, in f64:
//! their values against the formulas, and their gradients (the builder's
//! reverse-mode autodiff through them) against central finite differences.

use gemma::blocks;
use hlo::{Builder, Result, Tensor, TensorType, Value};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn tensor(&mut self, dims: &[i64], lo: f64, hi: f64) -> Tensor {
        let n = dims.iter().product::<i64>() as usize;
        let data = (0..n)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                lo + (hi - lo) * ((self.0 >> 11) as f64 / (1u64 << 53) as f64)
            })
            .collect();
        Tensor::new(dims.to_vec(), data)
    }
}

/// `f`'s gradient (of `sum(f(x) * proj)`) with respect to the f64 inputs
/// equals central finite differences of the interpreter; `fixed` are
/// further (integer) inputs that are not differentiated.
fn check_grad(
    name: &str,
    inputs: &[Tensor],
    fixed: &[(TensorType, Tensor)],
    f: impl Fn(&mut Builder, &[Value]) -> Result<Value>,
) {
    let mut b = Builder::new(name);
    let mut params: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, t)| b.parameter(&format!("x{i}"), TensorType::f64(t.dims.clone())))
        .collect();
    for (i, (ty, _)) in fixed.iter().enumerate() {
        params.push(b.parameter(&format!("k{i}"), ty.clone()));
    }
    let y = f(&mut b, &params).unwrap();
    let dims = b.dims(y).to_vec();
    let proj = b.parameter("proj", TensorType::f64(dims.clone()));
    let yw = b.mul(y, proj).unwrap();
    let all: Vec<i64> = (0..dims.len() as i64).collect();
    let loss = b.sum(yw, &all).unwrap();
    let grads = b.grad(loss, &params[..inputs.len()]).unwrap();
    let mut data: Vec<Tensor> = inputs.to_vec();
    data.extend(fixed.iter().map(|(_, t)| t.clone()));
    data.push(Rng(99).tensor(&dims, -1.0, 1.0));
    let mut outs = vec![loss];
    outs.extend(&grads);
    let got = b.evaluate(&data, &outs).unwrap();
    let h = 1e-6;
    for (i, g) in got[1..].iter().enumerate() {
        for j in 0..inputs[i].data.len() {
            let at = |d: f64| {
                let mut x = data.clone();
                x[i].data[j] += d;
                b.evaluate(&x, &[loss]).unwrap()[0].data[0]
            };
            let fd = (at(h) - at(-h)) / (2.0 * h);
            let err = (g.data[j] - fd).abs() / fd.abs().max(1.0);
            assert!(err < 1e-6, "{name}: input {i}[{j}]: {} vs {fd}", g.data[j]);
        }
    }
}

#[test]
fn rope_and_rms_norm_match_their_formulas() {
    let mut b = Builder::new("t");
    let x = b.parameter("x", TensorType::f64([1, 2, 1, 4]));
    let pos = b.parameter("pos", TensorType::i32([1, 2]));
    let r = blocks::rope(&mut b, x, pos, 10000.0).unwrap();
    let w = b.parameter("w", TensorType::f64([4]));
    let n = blocks::rms_norm(&mut b, x, w, 1e-6).unwrap();
    let xs = vec![1.0, 2.0, 3.0, 4.0, 0.5, -1.0, 2.0, 1.5];
    let out = b
        .evaluate(
            &[
                Tensor::new([1, 2, 1, 4], xs.clone()),
                Tensor::new([1, 2], vec![0.0, 3.0]),
                Tensor::new([4], vec![0.0, 0.5, -0.5, 1.0]),
            ],
            &[r, n],
        )
        .unwrap();
    // Position 0 leaves x unchanged; position 3 rotates pair (i, i+2) by 3 * 10000^(-2i/4).
    assert_eq!(&out[0].data[..4], &xs[..4]);
    for i in 0..2 {
        let th = 3.0 * 10000f64.powf(-((2 * i) as f64) / 4.0);
        let (a, c) = (xs[4 + i], xs[6 + i]);
        assert!((out[0].data[4 + i] - (a * th.cos() - c * th.sin())).abs() < 1e-12);
        assert!((out[0].data[6 + i] - (c * th.cos() + a * th.sin())).abs() < 1e-12);
    }
    // Gemma's norm scales by (1 + w).
    let ms = (1.0 + 4.0 + 9.0 + 16.0) / 4.0;
    let inv = 1.0 / (ms + 1e-6f64).sqrt();
    assert!((out[1].data[1] - 2.0 * inv * 1.5).abs() < 1e-12);
}

/// The causal mask `[B, T, S]`: query `t` sees keys `s <= t`.
fn causal(b: &mut Builder, bs: i64, t: i64) -> Result<Value> {
    let rows = b.iota(TensorType::i32([bs, t, t]), 1)?;
    let cols = b.iota(TensorType::i32([bs, t, t]), 2)?;
    b.compare(hlo::CmpDir::Le, cols, rows)
}

#[test]
fn attention_matches_its_formula() {
    // The first position attends only to itself, so it returns v[0].
    let mut b = Builder::new("a");
    let q = b.parameter("q", TensorType::f64([1, 2, 2, 1]));
    let k = b.parameter("k", TensorType::f64([1, 2, 1, 1]));
    let v = b.parameter("v", TensorType::f64([1, 2, 1, 1]));
    let mask = causal(&mut b, 1, 2).unwrap();
    let o = blocks::attention(&mut b, q, k, v, mask).unwrap();
    let out = b
        .evaluate(
            &[
                Tensor::new([1, 2, 2, 1], vec![1.0, 2.0, 3.0, 4.0]),
                Tensor::new([1, 2, 1, 1], vec![0.5, -1.0]),
                Tensor::new([1, 2, 1, 1], vec![10.0, 20.0]),
            ],
            &[o],
        )
        .unwrap();
    assert_eq!(&out[0].data[..2], &[10.0, 10.0]);
    let p = |qv: f64| {
        let (s0, s1) = (qv * 0.5, -qv);
        let m = s0.max(s1);
        let (e0, e1) = ((s0 - m).exp(), (s1 - m).exp());
        (10.0 * e0 + 20.0 * e1) / (e0 + e1)
    };
    assert!((out[0].data[2] - p(3.0)).abs() < 1e-12 && (out[0].data[3] - p(4.0)).abs() < 1e-12);
}

#[test]
fn the_blocks_gradients_match_finite_differences() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    check_grad(
        "rms_norm",
        &[rng.tensor(&[2, 6], -2.0, 2.0), rng.tensor(&[6], -0.5, 0.5)],
        &[],
        |b, x| blocks::rms_norm(b, x[0], x[1], 1e-6),
    );
    let pos = Tensor::new([1, 3], vec![0.0, 4.0, 9.0]);
    check_grad(
        "rope",
        &[rng.tensor(&[1, 3, 2, 4], -1.0, 1.0)],
        &[(TensorType::i32([1, 3]), pos)],
        |b, x| blocks::rope(b, x[0], x[1], 10000.0),
    );
    // Grouped heads (4 query heads over 2 kv heads), causal.
    check_grad(
        "attention",
        &[
            rng.tensor(&[1, 3, 4, 2], -1.0, 1.0),
            rng.tensor(&[1, 3, 2, 2], -1.0, 1.0),
            rng.tensor(&[1, 3, 2, 2], -1.0, 1.0),
        ],
        &[],
        |b, x| {
            let m = causal(b, 1, 3)?;
            blocks::attention(b, x[0], x[1], x[2], m)
        },
    );
    // An explicit mask (two documents packed in one row) and S != T.
    let docs = Tensor::new(
        [1, 3, 4],
        vec![1., 0., 0., 0., 1., 1., 0., 0., 0., 0., 1., 1.],
    );
    check_grad(
        "masked_attention",
        &[
            rng.tensor(&[1, 3, 2, 2], -1.0, 1.0),
            rng.tensor(&[1, 4, 1, 2], -1.0, 1.0),
            rng.tensor(&[1, 4, 1, 2], -1.0, 1.0),
        ],
        &[(TensorType::i32([1, 3, 4]), docs)],
        |b, x| {
            let zero = b.constant(0.0, TensorType::i32([1, 3, 4]));
            let m = b.ne(x[3], zero)?;
            blocks::attention(b, x[0], x[1], x[2], m)
        },
    );
}

/// Over a KV cache's layout (keys `[B, KV, D, S]`, values `[B, KV, S, D]`)
/// attention computes what it does over `[B, S, KV, D]`.
#[test]
fn cached_attention_equals_attention() {
    let mut rng = Rng(7);
    let (q, k, v) = (
        rng.tensor(&[2, 3, 4, 2], -1.0, 1.0),
        rng.tensor(&[2, 5, 2, 2], -1.0, 1.0),
        rng.tensor(&[2, 5, 2, 2], -1.0, 1.0),
    );
    let mut b = Builder::new("cached");
    let qv = b.parameter("q", TensorType::f64([2, 3, 4, 2]));
    let kv = b.parameter("k", TensorType::f64([2, 5, 2, 2]));
    let vv = b.parameter("v", TensorType::f64([2, 5, 2, 2]));
    let rows = b.iota(TensorType::i32([2, 3, 5]), 1).unwrap();
    let cols = b.iota(TensorType::i32([2, 3, 5]), 2).unwrap();
    let two = b.constant(2.0, TensorType::i32([2, 3, 5]));
    let shifted = b.add(rows, two).unwrap();
    let mask = b.compare(hlo::CmpDir::Le, cols, shifted).unwrap();
    let plain = blocks::attention(&mut b, qv, kv, vv, mask).unwrap();
    let kt = b.transpose(kv, &[0, 2, 3, 1]).unwrap();
    let vt = b.transpose(vv, &[0, 2, 1, 3]).unwrap();
    let cached = blocks::attention_cached(&mut b, qv, kt, vt, mask).unwrap();
    let out = b.evaluate(&[q, k, v], &[plain, cached]).unwrap();
    for (a, c) in out[0].data.iter().zip(&out[1].data) {
        assert!((a - c).abs() < 1e-12, "{a} vs {c}");
    }
    // A wrong layout is a shape error naming the op.
    let e = blocks::attention_cached(&mut b, qv, kv, vv, mask).unwrap_err();
    assert!(e.to_string().contains("attention"), "{e}");
}
