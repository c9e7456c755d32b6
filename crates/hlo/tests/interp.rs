//! The host interpreter against hand-computed results (it is the reference
//! for the gradient checks and the device tests, so it is checked itself).

use hlo::{Builder, DType, DotDims, ReduceKind, Tensor, TensorType};

fn iota_f(n: usize) -> Vec<f64> {
    (0..n).map(|i| i as f64).collect()
}

#[test]
fn indexing_ops() {
    let mut b = Builder::new("t");
    let x = b.parameter("x", TensorType::f32([3, 4])); // x[i, j] = 4i + j
    let s = b.slice(x, &[0, 1], &[3, 4], &[2, 2]).unwrap();
    let t = b.transpose(x, &[1, 0]).unwrap();
    let zero = b.scalar(-1.0, DType::F32);
    let p = b.pad(x, zero, &[1, -1], &[0, 1], &[0, 1]).unwrap();
    let two = b.scalar(2.0, DType::I32);
    let nine = b.scalar(9.0, DType::I32);
    let d = b.dynamic_slice(x, &[two, nine], &[2, 2]).unwrap(); // clamped to [1, 2]
    let c = b.concatenate(&[x, x], 0).unwrap();
    let out = b
        .evaluate(&[Tensor::new([3, 4], iota_f(12))], &[s, t, p, d, c])
        .unwrap();
    assert_eq!(out[0].dims, vec![2, 2]);
    assert_eq!(out[0].data, vec![1.0, 3.0, 9.0, 11.0]);
    assert_eq!(
        out[1].data,
        vec![0.0, 4.0, 8.0, 1.0, 5.0, 9.0, 2.0, 6.0, 10.0, 3.0, 7.0, 11.0]
    );
    // pad: rows [-1-row, x0, x1, x2]; cols: low -1 crops the first of 0 _ 1 _ 2 _ 3, high +1.
    assert_eq!(out[2].dims, vec![4, 7]);
    assert_eq!(&out[2].data[..7], &[-1.0; 7]);
    assert_eq!(
        &out[2].data[7..14],
        &[-1.0, 1.0, -1.0, 2.0, -1.0, 3.0, -1.0]
    );
    assert_eq!(out[3].data, vec![6.0, 7.0, 10.0, 11.0]);
    assert_eq!(out[4].dims, vec![6, 4]);
    assert_eq!(out[4].data[12..], iota_f(12)[..]);
}

#[test]
fn gather_clamps_and_scatter_skips_out_of_range() {
    let mut b = Builder::new("t");
    let tab = b.parameter("tab", TensorType::f32([3, 2]));
    let ids = b.parameter("ids", TensorType::i32([4]));
    let g = b.take_rows(tab, ids).unwrap();
    let upd = b.full_like(g, 1.0);
    let s = b.scatter_add_rows(tab, ids, upd).unwrap();
    let out = b
        .evaluate(
            &[
                Tensor::new([3, 2], iota_f(6)),
                Tensor::new([4], vec![2.0, 0.0, 7.0, 2.0]),
            ],
            &[g, s],
        )
        .unwrap();
    assert_eq!(out[0].data, vec![4.0, 5.0, 0.0, 1.0, 4.0, 5.0, 4.0, 5.0]);
    assert_eq!(out[1].data, vec![1.0, 2.0, 2.0, 3.0, 6.0, 7.0]);
}

#[test]
fn dot_reduce_iota_and_integers() {
    let mut b = Builder::new("t");
    let x = b.parameter("x", TensorType::f64([2, 3]));
    let y = b.parameter("y", TensorType::f64([3, 2]));
    let d = b
        .dot_general(
            x,
            y,
            DotDims {
                lhs_contract: vec![1],
                rhs_contract: vec![0],
                ..DotDims::default()
            },
        )
        .unwrap();
    let m = b.reduce(x, ReduceKind::Max, &[1]).unwrap();
    let i = b.iota(TensorType::i32([2, 3]), 1).unwrap();
    let seven = b.constant(-7.0, TensorType::i32([2, 3]));
    let two = b.constant(2.0, TensorType::i32([2, 3]));
    let q = b.div(seven, two).unwrap();
    let r = b.rem(seven, two).unwrap();
    let h = b.constant(1.0 / 3.0, TensorType::new(DType::BF16, [1]));
    let out = b
        .evaluate(
            &[
                Tensor::new([2, 3], iota_f(6)),
                Tensor::new([3, 2], iota_f(6)),
            ],
            &[d, m, i, q, r, h],
        )
        .unwrap();
    assert_eq!(out[0].data, vec![10.0, 13.0, 28.0, 40.0]);
    assert_eq!(out[1].data, vec![2.0, 5.0]);
    assert_eq!(out[2].data, vec![0.0, 1.0, 2.0, 0.0, 1.0, 2.0]);
    assert_eq!(out[3].data[0], -3.0, "integer division truncates");
    assert_eq!(out[4].data[0], -1.0, "remainder takes the dividend's sign");
    assert_eq!(out[5].data[0], 0.333984375, "bf16 rounding");
}

#[test]
fn erf_matches_known_values() {
    for (x, want) in [
        (0.5, 0.520_499_877_813_046_5),
        (1.0, 0.842_700_792_949_714_9),
        (2.9, 0.999_958_902_121_900_5),
        (3.5, 0.999_999_256_901_627_7),
    ] {
        assert!(
            (hlo::erf(x) - want).abs() < 1e-14,
            "erf({x}) = {}",
            hlo::erf(x)
        );
        assert!((hlo::erf(-x) + want).abs() < 1e-14);
    }
}

#[test]
fn gelu_matches_its_formula() {
    let mut b = Builder::new("t");
    let x = b.parameter("x", TensorType::f64([1, 2, 1, 4]));
    let g = b.gelu_tanh(x).unwrap();
    let xs = vec![1.0, 2.0, 3.0, 4.0, 0.5, -1.0, 2.0, 1.5];
    let out = b
        .evaluate(&[Tensor::new([1, 2, 1, 4], xs.clone())], &[g])
        .unwrap();
    let gelu = |v: f64| {
        0.5 * v * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (v + 0.044715 * v * v * v)).tanh())
    };
    assert!((out[0].data[5] - gelu(-1.0)).abs() < 1e-12);
}

#[test]
fn cross_entropy_matches_its_formula() {
    let mut b = Builder::new("t");
    let logits = b.parameter("logits", TensorType::f64([2, 3]));
    let labels = b.parameter("labels", TensorType::i32([2]));
    let mask = b.parameter("mask", TensorType::f64([2]));
    let l = b.cross_entropy(logits, labels, mask).unwrap();
    let out = b
        .evaluate(
            &[
                Tensor::new([2, 3], vec![1.0, 2.0, 3.0, 0.0, 0.0, 5.0]),
                Tensor::new([2], vec![0.0, 2.0]),
                Tensor::new([2], vec![1.0, 0.0]),
            ],
            &[l],
        )
        .unwrap();
    let lse = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
    assert!(
        (out[0].data[0] - (lse - 1.0)).abs() < 1e-12,
        "only the unmasked position counts"
    );
}
