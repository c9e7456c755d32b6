//! StableHLO text: determinism, constants, names, sharding, donation, errors.

use hlo::{Builder, DType, Error, Mesh, Sharding, TensorType};

fn small_program() -> hlo::Program {
    let mut b = Builder::new("small");
    let x = b.parameter("x", TensorType::f32([4, 3]));
    let w = b.parameter("layers.0.w", TensorType::f32([3, 2]));
    let y = b.scope("layers.0", |b| {
        let h = b.matmul(x, w)?;
        let h = b.mul_scalar(h, 0.1)?;
        let h = b.mul_scalar(h, 0.1)?; // the 0.1 splat is interned once
        b.tanh(h)
    });
    let y = y.unwrap();
    let l = b.mean(y, &[0, 1]).unwrap();
    let g = b.grad(l, &[w]).unwrap();
    b.build(&[l, g[0]]).unwrap()
}

#[test]
fn emission_is_deterministic() {
    let a = small_program().to_mlir();
    assert_eq!(a, small_program().to_mlir());
    assert_eq!(a, small_program().to_mlir());
}

#[test]
fn module_has_names_locations_and_one_constant_per_value() {
    let text = small_program().to_mlir();
    assert!(text.starts_with("module @small attributes {mhlo.num_partitions = 1 : i32, mhlo.num_replicas = 1 : i32} {"), "{text}");
    assert!(text.contains("func.func public @main(%x: tensor<4x3xf32>, %layers.0.w: tensor<3x2xf32>) -> (tensor<f32>, tensor<3x2xf32>)"), "{text}");
    assert!(text.contains("loc(\"layers.0\")"), "{text}");
    assert_eq!(
        text.matches("dense<0.1> : tensor<4x2xf32>").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("stablehlo.dot_general %x, %layers.0.w, contracting_dims = [1] x [0]"),
        "{text}"
    );
    assert!(
        text.contains("applies stablehlo.add across dimensions = [0, 1]"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("}\n}") || text.ends_with("  }\n}\n"));
}

#[test]
fn floats_round_trip_exactly() {
    let mut b = Builder::new("c");
    let vals = [0.1, -2.5, 1e-6, f64::NEG_INFINITY, 3.0e38];
    let outs: Vec<_> = vals.iter().map(|&v| b.scalar(v, DType::F32)).collect();
    let h = b.scalar(0.1, DType::BF16);
    let d = b.scalar(0.1, DType::F64);
    let i = b.scalar(-3.0, DType::I32);
    let t = b.scalar(1.0, DType::Bool);
    let mut all = outs.clone();
    all.extend([h, d, i, t]);
    let text = b.build(&all).unwrap().to_mlir();
    for want in [
        "dense<0.1> : tensor<f32>",
        "dense<-2.5> : tensor<f32>",
        &format!("dense<0x{:08X}> : tensor<f32>", 1e-6f32.to_bits()),
        "dense<0xFF800000> : tensor<f32>",
        "dense<0x3DCD> : tensor<bf16>",
        "dense<0.1> : tensor<f64>",
        "dense<-3> : tensor<i32>",
        "dense<true> : tensor<i1>",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
}

#[test]
fn dead_nodes_are_not_emitted() {
    let mut b = Builder::new("d");
    let x = b.parameter("x", TensorType::f32([2]));
    let _unused = b.exp(x).unwrap();
    let y = b.sin(x).unwrap();
    let text = b.build(&[y]).unwrap().to_mlir();
    assert!(
        !text.contains("exponential") && text.contains("stablehlo.sine %x"),
        "{text}"
    );
}

#[test]
fn sharded_module_uses_shardy() {
    let mut b = Builder::new("sh");
    b.set_mesh(Mesh::new([("data", 2), ("model", 4)]).unwrap());
    let x = b
        .parameter_sharded("x", TensorType::f32([8, 4]), Sharding::new(["data", ""]))
        .unwrap();
    let w = b
        .parameter_sharded("w", TensorType::f32([4, 8]), Sharding::new(["", "model"]))
        .unwrap();
    let y = b.matmul(x, w).unwrap();
    let y = b
        .sharding_constraint(y, &Sharding::new(["data", "model"]))
        .unwrap();
    let w2 = b.mul_scalar(w, 0.5).unwrap();
    let mut p = b.build(&[y, w2]).unwrap();
    p.donate(w, 1).unwrap();
    p.set_output_sharding(0, Sharding::new(["data", "model"]))
        .unwrap();
    let text = p.to_mlir();
    for want in [
        "mhlo.num_partitions = 8 : i32",
        "sdy.mesh @mesh = <[\"data\"=2, \"model\"=4]>",
        "%x: tensor<8x4xf32> {sdy.sharding = #sdy.sharding<@mesh, [{\"data\"}, {}]>}",
        "%w: tensor<4x8xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {\"model\"}]>, tf.aliasing_output = 1 : i32}",
        "-> (tensor<8x8xf32> {sdy.sharding = #sdy.sharding<@mesh, [{\"data\"}, {\"model\"}]>}, tensor<4x8xf32> {sdy.sharding = #sdy.sharding<@mesh, [{}, {}]>})",
        "sdy.sharding_constraint %0 <@mesh, [{\"data\"}, {\"model\"}]> : tensor<8x8xf32>",
    ] {
        assert!(text.contains(want), "missing {want} in\n{text}");
    }
    assert_eq!(p.num_partitions(), 8);
}

#[test]
fn donation_and_sharding_are_checked() {
    let mut b = Builder::new("e");
    b.set_mesh(Mesh::new([("data", 2)]).unwrap());
    let x = b.parameter("x", TensorType::f32([3]));
    let y = b.convert(x, DType::BF16).unwrap();
    let mut p = b.clone().build(&[y, x]).unwrap();
    let e = p.donate(x, 0).unwrap_err().to_string();
    assert!(
        e.contains("tensor<3xf32>") && e.contains("tensor<3xbf16>"),
        "{e}"
    );
    p.donate(x, 1).unwrap();
    assert!(p.donate(y, 1).is_err(), "not a parameter");
    let e = p
        .set_output_sharding(0, Sharding::new(["data"]))
        .unwrap_err();
    assert!(
        matches!(e, Error::Sharding { .. }) && e.to_string().contains("3"),
        "{e}"
    );
    assert!(
        b.sharding_constraint(x, &Sharding::new(["tensor"]))
            .is_err()
    );
}

#[test]
fn shape_errors_name_the_op_and_operands() {
    let mut b = Builder::new("e");
    let x = b.parameter("x", TensorType::f32([2, 3]));
    let y = b.parameter("y", TensorType::f32([3, 2]));
    let e = b.add(x, y).unwrap_err().to_string();
    assert!(
        e.starts_with("add:")
            && e.contains("tensor<2x3xf32>, tensor<3x2xf32>")
            && e.contains("same shape"),
        "{e}"
    );
    let e = b.matmul(x, x).unwrap_err().to_string();
    assert!(
        e.contains("dot_general") && e.contains("contracting_dims"),
        "{e}"
    );
    let e = b.reshape(x, &[4, 2]).unwrap_err().to_string();
    assert!(e.contains("reshape") && e.contains("6 elements"), "{e}");
    let i = b.parameter("i", TensorType::i32([2]));
    assert!(b.exp(i).is_err(), "exp of an integer");
    assert!(b.grad(x, &[x]).is_err(), "non-scalar loss");
    assert!(b.transpose(x, &[0, 0]).is_err());
    assert!(b.slice(x, &[0, 0], &[3, 3], &[1, 1]).is_err());
    assert!(b.add_bcast(x, y).is_err());
    let z = b.parameter("z", TensorType::f32([3]));
    let ok = b.add_bcast(x, z).unwrap();
    assert_eq!(b.dims(ok), &[2, 3]);
}

#[test]
fn dump_writes_the_module() {
    let p = small_program();
    let dir = std::env::temp_dir().join(format!("hlo-dump-{}", std::process::id()));
    let path = p.dump_to(&dir).unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), p.to_mlir());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn small_integer_powers_become_multiplies() {
    // XLA's CPU backend lowers `power` to exp(c * log x); x^3 in GELU must not pay that.
    let mut b = hlo::Builder::new("pow");
    let x = b.parameter("x", hlo::TensorType::f32([4]));
    let y3 = b.pow_scalar(x, 3.0).unwrap();
    let y2 = b.pow_scalar(x, 2.0).unwrap();
    let yh = b.pow_scalar(x, 0.5).unwrap();
    let p = b.build(&[y3, y2, yh]).unwrap();
    let mlir = p.to_mlir();
    assert!(!mlir.contains("stablehlo.power"), "{mlir}");
    let out = p
        .evaluate(&[hlo::Tensor::new([4], vec![1.0, 2.0, -3.0, 4.0])])
        .unwrap();
    assert_eq!(out[0].data, [1.0, 8.0, -27.0, 64.0]);
    assert_eq!(out[1].data, [1.0, 4.0, 9.0, 16.0]);
    assert_eq!(out[2].data[3], 2.0);
}

#[test]
fn highest_dot_precision_marks_f32_contractions_only_loop_bodies_too() {
    let build = |precision: Option<hlo::DotPrecision>| {
        let mut b = Builder::new("prec");
        let x = b.parameter("x", TensorType::f32([2, 4]));
        let w = b.parameter("w", TensorType::f32([3, 4, 4]));
        let (fin, _) = b
            .scan(3, &[x], &[w], &[], |b, c, ws, _| {
                let h = b.matmul(c[0], ws[0])?;
                Ok((vec![b.tanh(h)?], vec![]))
            })
            .unwrap();
        let xb = b.convert(fin[0], DType::BF16).unwrap();
        let wb = b.parameter("wb", TensorType::new(DType::BF16, vec![4, 2]));
        let y = b.matmul(xb, wb).unwrap();
        let mut p = b.build(&[fin[0], y]).unwrap();
        if let Some(prec) = precision {
            p.set_dot_precision(prec);
        }
        p.to_mlir()
    };
    let default = build(None);
    assert!(!default.contains("precision"), "{default}");
    assert_eq!(default, build(Some(hlo::DotPrecision::Default)));
    let highest = build(Some(hlo::DotPrecision::Highest));
    // The f32 matmul inside the loop body carries it; the bf16 one does not.
    assert_eq!(
        highest.matches("precision = [HIGHEST, HIGHEST]").count(),
        1,
        "{highest}"
    );
    let bf16_dot = highest
        .lines()
        .find(|l| l.contains("dot_general") && l.contains("bf16"))
        .unwrap();
    assert!(!bf16_dot.contains("precision"), "{bf16_dot}");
}
