//! `scan`: a loop over stacked layer weights, its gradient (a reverse loop),
//! against finite differences and against the same layers unrolled.

mod common;

use common::{Rng, check_grad, f64_in};
use hlo::{Builder, Result, Tensor, TensorType, Value};

/// One "layer": `h' = tanh(h W + b)`; per-step output `sum(h')`.
fn layer(b: &mut Builder, h: Value, w: Value, bias: Value) -> Result<(Value, Value)> {
    let z = b.matmul(h, w)?;
    let z = b.add_bcast(z, bias)?;
    let h2 = b.tanh(z)?;
    let s = b.sum(h2, &[0, 1])?;
    Ok((h2, s))
}

fn scanned(b: &mut Builder, x: &[Value]) -> Result<Value> {
    let (h, w, bias) = (x[0], x[1], x[2]);
    let (fin, ys) = b.scan(4, &[h], &[w], &[bias], |b, c, xs, k| {
        let (h2, s) = layer(b, c[0], xs[0], k[0])?;
        Ok((vec![h2], vec![s]))
    })?;
    let total = b.sum(ys[0], &[0])?; // [4] -> []
    let dims = b.dims(fin[0]).to_vec();
    let t = b.broadcast_in_dim(total, &dims, &[])?;
    b.add(fin[0], t)
}

fn unrolled(b: &mut Builder, x: &[Value]) -> Result<Value> {
    let (mut h, w, bias) = (x[0], x[1], x[2]);
    let mut total = None;
    for i in 0..4 {
        let wi = b.slice_axis(w, 0, i, 1)?;
        let wi = b.reshape(wi, &[3, 3])?;
        let (h2, s) = layer(b, h, wi, bias)?;
        h = h2;
        total = Some(match total {
            Some(t) => b.add(t, s)?,
            None => s,
        });
    }
    let dims = b.dims(h).to_vec();
    let t = b.broadcast_in_dim(total.expect("4 steps"), &dims, &[])?;
    b.add(h, t)
}

#[test]
fn scan_gradient_matches_finite_differences() {
    let mut rng = Rng::new(31);
    let inputs = vec![
        f64_in(&mut rng, &[2, 3], -1.0, 1.0),
        f64_in(&mut rng, &[4, 3, 3], -1.0, 1.0),
        f64_in(&mut rng, &[3], -0.5, 0.5),
    ];
    check_grad("scan", inputs, scanned);
}

#[test]
fn scan_equals_the_unrolled_layers() {
    let mut rng = Rng::new(32);
    let data = vec![
        rng.tensor(&[2, 3], -1.0, 1.0),
        rng.tensor(&[4, 3, 3], -1.0, 1.0),
        rng.tensor(&[3], -0.5, 0.5),
    ];
    let run = |f: fn(&mut Builder, &[Value]) -> Result<Value>| {
        let mut b = Builder::new("s");
        let x = [
            b.parameter("h", TensorType::f64([2, 3])),
            b.parameter("w", TensorType::f64([4, 3, 3])),
            b.parameter("b", TensorType::f64([3])),
        ];
        let y = f(&mut b, &x).unwrap();
        let l = b.sum(y, &[0, 1]).unwrap();
        let g = b.grad(l, &x).unwrap();
        let mut outs = vec![l];
        outs.extend(g);
        b.build(&outs).unwrap()
    };
    let (ps, pu) = (run(scanned), run(unrolled));
    let (a, c) = (ps.evaluate(&data).unwrap(), pu.evaluate(&data).unwrap());
    for (x, y) in a.iter().zip(&c) {
        assert_eq!(x.dims, y.dims);
        for (p, q) in x.data.iter().zip(&y.data) {
            assert!((p - q).abs() < 1e-12, "{p} vs {q}");
        }
    }
    // One loop forward and one backward, whatever the number of layers.
    assert_eq!(ps.op_counts()["while"], 2);
    assert_eq!(
        ps.op_counts().get("tanh"),
        None,
        "the layer lives in the loop body"
    );
    assert!(pu.op_counts()["tanh"] >= 4);
}

#[test]
fn scan_body_sees_only_its_arguments() {
    let mut b = Builder::new("s");
    let outer = b.parameter("o", TensorType::f32([2]));
    let h = b.parameter("h", TensorType::f32([2]));
    let r = b.scan(3, &[h], &[], &[], |b, c, _, _| {
        Ok((vec![b.add(c[0], outer)?], vec![]))
    });
    let e = r.unwrap_err().to_string();
    assert!(e.contains("another builder"), "{e}");
    let bad = b.scan(3, &[h], &[h], &[], |_, c, _, _| Ok((vec![c[0]], vec![])));
    assert!(bad.is_err(), "xs need a leading dimension of n");
    let out = b
        .scan(3, &[h], &[], &[], |b, c, _, _| {
            Ok((vec![b.mul_scalar(c[0], 2.0)?], vec![]))
        })
        .unwrap();
    let p = b.build(&[out.0[0]]).unwrap();
    let r = p
        .evaluate(&[
            Tensor::new([2], vec![0.0, 0.0]),
            Tensor::new([2], vec![1.0, -1.5]),
        ])
        .unwrap();
    assert_eq!(r[0].data, vec![8.0, -12.0]);
}

#[test]
fn scan_emits_a_while_loop() {
    let mut b = Builder::new("s");
    let h = b.parameter("h", TensorType::f32([2]));
    let w = b.parameter("w", TensorType::f32([3, 2]));
    let (fin, _) = b
        .scope("layers", |b| {
            b.scan(3, &[h], &[w], &[], |b, c, x, _| {
                let y = b.mul(c[0], x[0])?;
                Ok((vec![b.sin(y)?], vec![]))
            })
        })
        .unwrap();
    let l = b.sum(fin[0], &[0]).unwrap();
    let g = b.grad(l, &[w]).unwrap();
    let text = b.build(&[l, g[0]]).unwrap().to_mlir();
    if std::env::var_os("SHOW_MLIR").is_some() {
        println!("{text}");
    }
    for want in [
        "stablehlo.while(%w0_i = %c0, %w0_a0 = %h, %w0_s0 = %c1, %w0_x0 = %w)",
        "stablehlo.dynamic_slice %w0_x0, %w0_i, %w0_z, sizes = [1, 2]",
        "stablehlo.sine",
        "loc(\"layers\")",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    assert!(
        text.contains("stablehlo.subtract %w") && text.contains("_last, %w"),
        "the gradient loop runs backwards:\n{text}"
    );
}
