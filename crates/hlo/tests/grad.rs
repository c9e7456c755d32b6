//! Every VJP rule against central finite differences in f64.

mod common;

use common::{Input, Rng, check_grad, check_grad_tol, f64_in, int_in};
use hlo::{DType, DotDims, ReduceKind, TensorType, UnaryOp};

#[test]
fn unary_rules() {
    let cases: [(UnaryOp, f64, f64); 13] = [
        (UnaryOp::Neg, -2.0, 2.0),
        (UnaryOp::Abs, 0.2, 2.0),
        (UnaryOp::Exp, -2.0, 2.0),
        (UnaryOp::Log, 0.3, 3.0),
        (UnaryOp::Log1p, -0.5, 3.0),
        (UnaryOp::Tanh, -2.0, 2.0),
        (UnaryOp::Rsqrt, 0.3, 3.0),
        (UnaryOp::Sqrt, 0.3, 3.0),
        (UnaryOp::Sin, -3.0, 3.0),
        (UnaryOp::Cos, -3.0, 3.0),
        (UnaryOp::Erf, -2.5, 2.5),
        (UnaryOp::Logistic, -4.0, 4.0),
        (UnaryOp::Abs, -2.0, -0.2),
    ];
    for (u, lo, hi) in cases {
        let mut rng = Rng::new(u as u64 + 1);
        check_grad(
            &format!("{u:?}"),
            vec![f64_in(&mut rng, &[2, 3], lo, hi)],
            |b, x| b.unary(u, x[0]),
        );
    }
}

#[test]
fn piecewise_constant_unaries_have_zero_gradient() {
    let mut rng = Rng::new(3);
    for u in [UnaryOp::Floor, UnaryOp::Sign] {
        // Away from the jumps the finite difference is 0 too.
        let mut inp = f64_in(&mut rng, &[5], 0.1, 0.9);
        inp.data.data.iter_mut().for_each(|v| *v += 1.0);
        check_grad(&format!("{u:?}"), vec![inp], |b, x| b.unary(u, x[0]));
    }
}

#[test]
fn binary_rules() {
    let mut rng = Rng::new(11);
    type Op = fn(&mut hlo::Builder, hlo::Value, hlo::Value) -> hlo::Result<hlo::Value>;
    let cases: [(&str, Op, f64, f64); 7] = [
        ("add", hlo::Builder::add, -2.0, 2.0),
        ("sub", hlo::Builder::sub, -2.0, 2.0),
        ("mul", hlo::Builder::mul, -2.0, 2.0),
        ("div", hlo::Builder::div, 0.5, 2.0),
        ("max", hlo::Builder::max, -2.0, 2.0),
        ("min", hlo::Builder::min, -2.0, 2.0),
        ("pow", hlo::Builder::pow, 0.5, 2.0),
    ];
    for (name, op, lo, hi) in cases {
        let a = f64_in(&mut rng, &[3, 2], lo, hi);
        let b = f64_in(&mut rng, &[3, 2], lo, hi);
        check_grad(name, vec![a, b], |bb, x| op(bb, x[0], x[1]));
    }
    let a = f64_in(&mut rng, &[4], 2.1, 2.9);
    let b = f64_in(&mut rng, &[4], 0.8, 0.95);
    check_grad("rem", vec![a, b], |bb, x| bb.rem(x[0], x[1]));
}

#[test]
fn max_min_ties_split_the_gradient() {
    let mut b = hlo::Builder::new("ties");
    let x = b.parameter("x", TensorType::f64([2]));
    let m = b.max(x, x).unwrap();
    let l = b.sum(m, &[0]).unwrap();
    let g = b.grad(l, &[x]).unwrap();
    let out = b
        .evaluate(&[hlo::Tensor::new([2], vec![1.0, 2.0])], &[g[0]])
        .unwrap();
    assert_eq!(out[0].data, vec![1.0, 1.0]); // 0.5 through each operand
    let r = b.reduce(x, ReduceKind::Max, &[0]).unwrap();
    let g = b.grad(r, &[x]).unwrap();
    let out = b
        .evaluate(&[hlo::Tensor::new([2], vec![3.0, 3.0])], &[g[0]])
        .unwrap();
    assert_eq!(out[0].data, vec![0.5, 0.5]);
}

#[test]
fn select_compare_and_convert() {
    let mut rng = Rng::new(5);
    let a = f64_in(&mut rng, &[2, 3], -1.0, 1.0);
    let c = f64_in(&mut rng, &[2, 3], -1.0, 1.0);
    check_grad("select", vec![a, c], |b, x| {
        let p = b.lt(x[0], x[1])?;
        let s = b.select(p, x[0], x[1])?;
        let z = b.scalar(0.3, DType::F64);
        let pz = b.gt(z, z)?; // scalar predicate
        let t = b.select(pz, x[1], s)?;
        b.mul(t, x[0])
    });
    let a = f64_in(&mut rng, &[4], -1.0, 1.0);
    check_grad_tol("convert", vec![a], 1e-3, |b, x| {
        let f = b.convert(x[0], DType::F32)?;
        let f = b.tanh(f)?;
        b.convert(f, DType::F64)
    });
    // Integer paths carry no gradient: floor through an int cast.
    let a = f64_in(&mut rng, &[4], 0.1, 0.9);
    check_grad("int_path", vec![a], |b, x| {
        let i = b.convert(x[0], DType::I32)?;
        let f = b.convert(i, DType::F64)?;
        b.add(f, x[0])
    });
}

#[test]
fn shape_rules() {
    let mut rng = Rng::new(7);
    check_grad(
        "broadcast_in_dim",
        vec![f64_in(&mut rng, &[3, 1], -1.0, 1.0)],
        |b, x| b.broadcast_in_dim(x[0], &[2, 3, 4], &[1, 2]),
    );
    check_grad(
        "reshape",
        vec![f64_in(&mut rng, &[2, 6], -1.0, 1.0)],
        |b, x| b.reshape(x[0], &[3, 4]),
    );
    check_grad(
        "transpose",
        vec![f64_in(&mut rng, &[2, 3, 4], -1.0, 1.0)],
        |b, x| b.transpose(x[0], &[2, 0, 1]),
    );
    check_grad(
        "slice",
        vec![f64_in(&mut rng, &[5, 7], -1.0, 1.0)],
        |b, x| b.slice(x[0], &[1, 0], &[5, 6], &[2, 3]),
    );
    check_grad(
        "concatenate",
        vec![
            f64_in(&mut rng, &[2, 3], -1.0, 1.0),
            f64_in(&mut rng, &[2, 2], -1.0, 1.0),
        ],
        |b, x| b.concatenate(&[x[0], x[1], x[0]], 1),
    );
    check_grad(
        "pad",
        vec![
            f64_in(&mut rng, &[3, 4], -1.0, 1.0),
            f64_in(&mut rng, &[], -1.0, 1.0),
        ],
        |b, x| b.pad(x[0], x[1], &[1, -1], &[2, 0], &[1, 2]),
    );
}

#[test]
fn dynamic_slice_rules() {
    let mut rng = Rng::new(9);
    let mut starts = int_in(&mut rng, &[], 4);
    starts.data.data[0] = 1.0;
    check_grad(
        "dynamic_slice",
        vec![f64_in(&mut rng, &[4, 5], -1.0, 1.0), starts],
        |b, x| {
            let zero = b.scalar(0.0, DType::I32);
            let three = b.scalar(3.0, DType::I32); // clamped to 5 - 3 = 2
            let s = b.dynamic_slice(x[0], &[x[1], zero], &[2, 3])?;
            let t = b.dynamic_slice(x[0], &[zero, three], &[2, 3])?;
            b.mul(s, t)
        },
    );
    let mut starts = int_in(&mut rng, &[], 4);
    starts.data.data[0] = 2.0;
    check_grad(
        "dynamic_update_slice",
        vec![
            f64_in(&mut rng, &[4, 3], -1.0, 1.0),
            f64_in(&mut rng, &[2, 3], -1.0, 1.0),
            starts,
        ],
        |b, x| {
            let zero = b.scalar(0.0, DType::I32);
            let u = b.tanh(x[1])?;
            b.dynamic_update_slice(x[0], u, &[x[2], zero])
        },
    );
}

#[test]
fn dot_general_rules() {
    let mut rng = Rng::new(13);
    // Batch dims in the middle, two contracting dims in swapped order.
    let l = f64_in(&mut rng, &[3, 2, 4, 5], -1.0, 1.0); // [k1, b, m, k2]
    let r = f64_in(&mut rng, &[5, 2, 6, 3], -1.0, 1.0); // [k2, b, n, k1]
    check_grad("dot_general", vec![l, r], |b, x| {
        b.dot_general(
            x[0],
            x[1],
            DotDims {
                lhs_batch: vec![1],
                rhs_batch: vec![1],
                lhs_contract: vec![0, 3],
                rhs_contract: vec![3, 0],
            },
        )
    });
    check_grad(
        "matmul",
        vec![
            f64_in(&mut rng, &[2, 3, 4], -1.0, 1.0),
            f64_in(&mut rng, &[4, 5], -1.0, 1.0),
        ],
        |b, x| b.matmul(x[0], x[1]),
    );
    check_grad(
        "linear",
        vec![
            f64_in(&mut rng, &[2, 4], -1.0, 1.0),
            f64_in(&mut rng, &[3, 4], -1.0, 1.0),
        ],
        |b, x| b.linear(x[0], x[1]),
    );
    check_grad(
        "outer",
        vec![
            f64_in(&mut rng, &[2], -1.0, 1.0),
            f64_in(&mut rng, &[3], -1.0, 1.0),
        ],
        |b, x| b.dot_general(x[0], x[1], DotDims::default()),
    );
}

#[test]
fn reduce_rules() {
    let mut rng = Rng::new(17);
    for kind in [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Min] {
        check_grad(
            &format!("reduce_{kind:?}"),
            vec![f64_in(&mut rng, &[3, 4, 2], -1.0, 1.0)],
            |b, x| b.reduce(x[0], kind, &[0, 2]),
        );
    }
}

#[test]
fn gather_and_scatter_rules() {
    let mut rng = Rng::new(19);
    let mut ids = int_in(&mut rng, &[2, 3], 5);
    ids.data.data[1] = ids.data.data[0]; // a repeated row accumulates
    check_grad(
        "gather",
        vec![f64_in(&mut rng, &[5, 4], -1.0, 1.0), ids],
        |b, x| b.take_rows(x[0], x[1]),
    );
    let ids = int_in(&mut rng, &[3], 4);
    check_grad(
        "scatter",
        vec![
            f64_in(&mut rng, &[4, 2], -1.0, 1.0),
            ids,
            f64_in(&mut rng, &[3, 2], -1.0, 1.0),
        ],
        |b, x| {
            let u = b.sin(x[2])?;
            b.scatter_add_rows(x[0], x[1], u)
        },
    );
}

#[test]
fn barrier_and_constraint_pass_gradients() {
    let mut rng = Rng::new(23);
    check_grad(
        "barrier",
        vec![
            f64_in(&mut rng, &[3], -1.0, 1.0),
            f64_in(&mut rng, &[3], -1.0, 1.0),
        ],
        |b, x| {
            let o = b.optimization_barrier(&[x[0], x[1]])?;
            b.mul(o[0], o[1])
        },
    );
    let mut b = hlo::Builder::new("c");
    b.set_mesh(hlo::Mesh::new([("d", 2)]).unwrap());
    let x = b.parameter("x", TensorType::f64([4]));
    let s = hlo::Sharding::new(["d"]);
    let y = b.sharding_constraint(x, &s).unwrap();
    let y2 = b.square(y).unwrap();
    let l = b.sum(y2, &[0]).unwrap();
    let g = b.grad(l, &[x]).unwrap()[0];
    let p = b.build(&[g]).unwrap();
    assert_eq!(
        p.op_counts()["sharding_constraint"],
        2,
        "the cotangent is constrained too"
    );
}

#[test]
fn convenience_layer_rules() {
    let mut rng = Rng::new(29);
    check_grad(
        "softmax",
        vec![f64_in(&mut rng, &[2, 5], -2.0, 2.0)],
        |b, x| b.softmax(x[0], 1),
    );
    check_grad(
        "logsumexp",
        vec![f64_in(&mut rng, &[3, 4], -2.0, 2.0)],
        |b, x| b.logsumexp(x[0], 0),
    );
    check_grad(
        "gelu_tanh",
        vec![f64_in(&mut rng, &[7], -3.0, 3.0)],
        |b, x| b.gelu_tanh(x[0]),
    );
    let labels = int_in(&mut rng, &[2, 3], 5);
    let mask = Input {
        ty: TensorType::f64([2, 3]),
        data: hlo::Tensor::new([2, 3], vec![1.0, 1.0, 0.0, 1.0, 0.0, 1.0]),
        diff: false,
    };
    check_grad(
        "cross_entropy",
        vec![f64_in(&mut rng, &[2, 3, 5], -2.0, 2.0), labels, mask],
        |b, x| b.cross_entropy(x[0], x[1], x[2]),
    );
}

#[test]
fn stop_gradient_blocks_the_cotangent() {
    let mut b = hlo::Builder::new("sg");
    let x = b.parameter("x", TensorType::f64([3]));
    let s = b.stop_gradient(x).unwrap();
    let y = b.mul(x, s).unwrap();
    let l = b.sum(y, &[0]).unwrap();
    let g = b.grad(l, &[x]).unwrap();
    let p = b.build(&[l, g[0]]).unwrap();
    let out = p
        .evaluate(&[hlo::Tensor::new([3], vec![1.0, -2.0, 3.0])])
        .unwrap();
    assert_eq!(out[0].data, vec![14.0]);
    assert_eq!(out[1].data, vec![1.0, -2.0, 3.0], "d/dx x * sg(x) = sg(x)");
    assert!(
        !p.to_mlir().contains("stop_gradient"),
        "emits no instruction"
    );
}
