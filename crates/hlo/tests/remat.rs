//! Rematerialization: the backward pass replays what the policy does not
//! save, and gradients are unchanged.

mod common;

use common::Rng;
use hlo::{Builder, RematPolicy, TensorType};

/// Two tanh-MLP layers, each its own remat region.
fn mlp(policy: RematPolicy) -> (hlo::Program, Vec<hlo::Tensor>) {
    let mut b = Builder::new("mlp");
    let x = b.parameter("x", TensorType::f64([3, 4]));
    let ws: Vec<_> = (0..2)
        .map(|i| b.parameter(&format!("w{i}"), TensorType::f64([4, 4])))
        .collect();
    let mut h = x;
    for (i, &w) in ws.iter().enumerate() {
        h = b
            .scope(&format!("layers.{i}"), |b| {
                b.remat(policy, |b| {
                    let z = b.matmul(h, w)?;
                    let a = b.tanh(z)?;
                    let s = b.sin(a)?;
                    b.add(s, h)
                })
            })
            .unwrap();
    }
    let sq = b.square(h).unwrap();
    let loss = b.mean(sq, &[0, 1]).unwrap();
    let grads = b.grad(loss, &[x, ws[0], ws[1]]).unwrap();
    let mut outs = vec![loss];
    outs.extend(grads);
    let mut rng = Rng::new(1);
    let inputs = vec![
        rng.tensor(&[3, 4], -1.0, 1.0),
        rng.tensor(&[4, 4], -1.0, 1.0),
        rng.tensor(&[4, 4], -1.0, 1.0),
    ];
    (b.build(&outs).unwrap(), inputs)
}

#[test]
fn full_remat_recomputes_each_layer() {
    let (none, inputs) = mlp(RematPolicy::None);
    let (full, _) = mlp(RematPolicy::Full);
    let (c0, c1) = (none.op_counts(), full.op_counts());
    assert_eq!(c0.get("optimization_barrier"), None);
    assert_eq!(c1["optimization_barrier"], 2, "one barrier per layer");
    assert_eq!(c1["tanh"], 2 * c0["tanh"], "tanh is replayed");
    // sin's own output is not needed by any VJP, so its replay is dead and not emitted.
    assert_eq!(c1["sine"], c0["sine"]);
    assert_eq!(
        c1["dot_general"],
        c0["dot_general"] + 2,
        "the matmuls are replayed"
    );
    assert_eq!(
        none.evaluate(&inputs).unwrap(),
        full.evaluate(&inputs).unwrap(),
        "same gradients"
    );
    // The replay reads the barrier's results, not the forward values.
    let text = full.to_mlir();
    assert!(text.contains("stablehlo.optimization_barrier"), "{text}");
}

#[test]
fn save_matmuls_keeps_dot_outputs() {
    let (none, inputs) = mlp(RematPolicy::None);
    let (save, _) = mlp(RematPolicy::SaveMatmuls);
    let (c0, c2) = (none.op_counts(), save.op_counts());
    assert_eq!(
        c2["dot_general"], c0["dot_general"],
        "matmul outputs are saved, not replayed"
    );
    assert_eq!(c2["tanh"], 2 * c0["tanh"], "elementwise work is replayed");
    assert_eq!(c2["optimization_barrier"], 2);
    assert_eq!(
        none.evaluate(&inputs).unwrap(),
        save.evaluate(&inputs).unwrap()
    );
}

#[test]
fn regions_do_not_nest() {
    let mut b = Builder::new("n");
    let r = b.remat(RematPolicy::Full, |b| {
        b.remat(RematPolicy::Full, |_| Ok(()))
    });
    assert!(r.is_err());
}
