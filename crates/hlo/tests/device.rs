//! Every op and its gradient on the real CPU plugin, compared with the host
//! interpreter; an 8-device sharded training step checked shard by shard.

mod common;

use common::Rng;
use hlo::{
    Builder, DType, DotDims, Mesh, Program, ReduceKind, Sharding, Tensor, TensorType, UnaryOp,
    Value,
};
use pjrt::{Buffer, Client, CompileOptions};

fn client(n: usize) -> Client {
    pjrt::cpu_client(n).expect("CPU plugin client")
}

fn to_device(c: &Client, t: &Tensor, dt: DType, device: usize) -> Buffer {
    let d = &t.data;
    let dims = &t.dims;
    match dt {
        DType::F32 => c.buffer_from_host(
            &d.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::F64 => c.buffer_from_host(d, dims, device),
        DType::BF16 => c.buffer_from_host(
            &d.iter()
                .map(|&v| pjrt::bf16::from_f64(v))
                .collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::F16 => c.buffer_from_host(
            &d.iter()
                .map(|&v| pjrt::f16::from_f64(v))
                .collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::I32 => c.buffer_from_host(
            &d.iter().map(|&v| v as i32).collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::U32 => c.buffer_from_host(
            &d.iter().map(|&v| v as u32).collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::I64 => c.buffer_from_host(
            &d.iter().map(|&v| v as i64).collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::I8 => c.buffer_from_host(
            &d.iter().map(|&v| v as i8).collect::<Vec<_>>(),
            dims,
            device,
        ),
        DType::Bool => c.buffer_from_host(
            &d.iter().map(|&v| v != 0.0).collect::<Vec<_>>(),
            dims,
            device,
        ),
    }
    .expect("host to device")
}

fn to_host(b: &Buffer, dt: DType) -> Vec<f64> {
    fn conv<T: pjrt::NativeType + Copy>(b: &Buffer, f: impl Fn(T) -> f64) -> Vec<f64> {
        b.to_host::<T>()
            .expect("device to host")
            .into_iter()
            .map(f)
            .collect()
    }
    match dt {
        DType::F32 => conv(b, |v: f32| v as f64),
        DType::F64 => conv(b, |v: f64| v),
        DType::BF16 => conv(b, |v: pjrt::bf16| v.to_f64()),
        DType::F16 => conv(b, |v: pjrt::f16| v.to_f64()),
        DType::I32 => conv(b, |v: i32| v as f64),
        DType::U32 => conv(b, |v: u32| v as f64),
        DType::I64 => conv(b, |v: i64| v as f64),
        DType::I8 => conv(b, |v: i8| v as f64),
        DType::Bool => conv(b, |v: bool| v as i64 as f64),
    }
}

/// Compiles and runs a 1-device program, returning its outputs as host tensors.
fn run(c: &Client, p: &Program, inputs: &[Tensor]) -> Vec<Tensor> {
    let text = p.to_mlir();
    let exe = c
        .compile(&text, &CompileOptions::single())
        .unwrap_or_else(|e| panic!("compile failed: {e}\n{text}"));
    let bufs: Vec<Buffer> = inputs
        .iter()
        .zip(p.parameter_types())
        .map(|(t, ty)| to_device(c, t, ty.dtype, 0))
        .collect();
    let out = exe.execute(&[bufs.iter().collect()]).expect("execute");
    out[0]
        .iter()
        .zip(p.output_types())
        .map(|(b, ty)| Tensor::new(ty.dims.clone(), to_host(b, ty.dtype)))
        .collect()
}

fn assert_close(name: &str, got: &[Tensor], want: &[Tensor], tol: f64) {
    assert_eq!(got.len(), want.len(), "{name}");
    for (k, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.dims, w.dims, "{name}: output {k} dims");
        for (e, (&a, &b)) in g.data.iter().zip(&w.data).enumerate() {
            let ok = (a - b).abs() <= tol * a.abs().max(b.abs()).max(1.0)
                || (a.is_nan() && b.is_nan())
                || a == b;
            assert!(ok, "{name}: output {k}[{e}]: device {a}, host {b}");
        }
    }
}

type BinFn = fn(&mut Builder, Value, Value) -> hlo::Result<Value>;

type Case = (
    &'static str,
    Vec<(TensorType, Tensor)>,
    Box<dyn Fn(&mut Builder, &[Value]) -> hlo::Result<Value>>,
);

fn f(rng: &mut Rng, dims: &[i64], lo: f64, hi: f64) -> (TensorType, Tensor) {
    (TensorType::f32(dims.to_vec()), rng.tensor(dims, lo, hi))
}

fn ints(rng: &mut Rng, dims: &[i64], hi: i64) -> (TensorType, Tensor) {
    (TensorType::i32(dims.to_vec()), rng.ints(dims, hi))
}

/// The f32 cases: each output and the gradient of `sum(output * proj)` for
/// every float input run on the device and on the host.
fn float_cases(rng: &mut Rng) -> Vec<Case> {
    let mut v: Vec<Case> = Vec::new();
    for (u, lo, hi) in [
        (UnaryOp::Neg, -2.0, 2.0),
        (UnaryOp::Abs, -2.0, 2.0),
        (UnaryOp::Exp, -2.0, 2.0),
        (UnaryOp::Log, 0.3, 3.0),
        (UnaryOp::Log1p, -0.5, 3.0),
        (UnaryOp::Tanh, -2.0, 2.0),
        (UnaryOp::Rsqrt, 0.3, 3.0),
        (UnaryOp::Sqrt, 0.3, 3.0),
        (UnaryOp::Sin, -3.0, 3.0),
        (UnaryOp::Cos, -3.0, 3.0),
        (UnaryOp::Erf, -2.0, 2.0),
        (UnaryOp::Logistic, -3.0, 3.0),
        (UnaryOp::Floor, -3.0, 3.0),
        (UnaryOp::Sign, -3.0, 3.0),
    ] {
        v.push((
            u.name_static(),
            vec![f(rng, &[2, 3], lo, hi)],
            Box::new(move |b, x| b.unary(u, x[0])),
        ));
    }
    let bin: [(&'static str, BinFn); 8] = [
        ("add", Builder::add),
        ("sub", Builder::sub),
        ("mul", Builder::mul),
        ("div", Builder::div),
        ("max", Builder::max),
        ("min", Builder::min),
        ("pow", Builder::pow),
        ("rem", Builder::rem),
    ];
    for (name, op) in bin {
        v.push((
            name,
            vec![f(rng, &[3, 2], 0.5, 2.0), f(rng, &[3, 2], 0.5, 2.0)],
            Box::new(move |b, x| op(b, x[0], x[1])),
        ));
    }
    v.push((
        "select",
        vec![f(rng, &[4], -1.0, 1.0), f(rng, &[4], -1.0, 1.0)],
        Box::new(|b, x| {
            let p = b.lt(x[0], x[1])?;
            b.select(p, x[0], x[1])
        }),
    ));
    v.push((
        "scalar_select_stop_gradient",
        vec![f(rng, &[4], -1.0, 1.0)],
        Box::new(|b, x| {
            let t = b.scalar(1.0, DType::Bool);
            let s = b.stop_gradient(x[0])?;
            let y = b.mul(x[0], s)?;
            b.select(t, y, x[0])
        }),
    ));
    v.push((
        "matmul_bf16_to_f32",
        vec![f(rng, &[3, 4], -1.0, 1.0), f(rng, &[4, 2], -1.0, 1.0)],
        Box::new(|b, x| {
            let l = b.convert(x[0], DType::BF16)?;
            let r = b.convert(x[1], DType::BF16)?;
            let dims = DotDims {
                lhs_contract: vec![1],
                rhs_contract: vec![0],
                ..DotDims::default()
            };
            b.dot_general_to(l, r, dims, DType::F32)
        }),
    ));
    v.push((
        "convert_bf16",
        vec![f(rng, &[4], -1.0, 1.0)],
        Box::new(|b, x| {
            let h = b.convert(x[0], DType::BF16)?;
            let h = b.tanh(h)?;
            b.convert(h, DType::F32)
        }),
    ));
    v.push((
        "broadcast_in_dim",
        vec![f(rng, &[3, 1], -1.0, 1.0)],
        Box::new(|b, x| b.broadcast_in_dim(x[0], &[2, 3, 4], &[1, 2])),
    ));
    v.push((
        "reshape_transpose",
        vec![f(rng, &[2, 6], -1.0, 1.0)],
        Box::new(|b, x| {
            let r = b.reshape(x[0], &[3, 2, 2])?;
            b.transpose(r, &[2, 0, 1])
        }),
    ));
    v.push((
        "slice",
        vec![f(rng, &[5, 7], -1.0, 1.0)],
        Box::new(|b, x| b.slice(x[0], &[1, 0], &[5, 6], &[2, 3])),
    ));
    v.push((
        "concatenate",
        vec![f(rng, &[2, 3], -1.0, 1.0), f(rng, &[2, 2], -1.0, 1.0)],
        Box::new(|b, x| b.concatenate(&[x[0], x[1]], 1)),
    ));
    v.push((
        "pad",
        vec![f(rng, &[3, 4], -1.0, 1.0), f(rng, &[], -1.0, 1.0)],
        Box::new(|b, x| b.pad(x[0], x[1], &[1, -1], &[2, 0], &[1, 2])),
    ));
    v.push((
        "dynamic_slice",
        vec![
            f(rng, &[4, 5], -1.0, 1.0),
            (TensorType::i32([]), Tensor::scalar(3.0)),
        ],
        Box::new(|b, x| {
            let z = b.scalar(0.0, DType::I32);
            let s = b.dynamic_slice(x[0], &[x[1], z], &[2, 3])?; // start clamped to 2
            let u = b.sin(s)?;
            b.dynamic_update_slice(x[0], u, &[z, x[1]])
        }),
    ));
    v.push((
        "dot_general",
        vec![
            f(rng, &[3, 2, 4, 5], -1.0, 1.0),
            f(rng, &[5, 2, 6, 3], -1.0, 1.0),
        ],
        Box::new(|b, x| {
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
        }),
    ));
    for kind in [ReduceKind::Sum, ReduceKind::Max, ReduceKind::Min] {
        v.push((
            "reduce",
            vec![f(rng, &[3, 4, 2], -1.0, 1.0)],
            Box::new(move |b, x| b.reduce(x[0], kind, &[0, 2])),
        ));
    }
    v.push((
        "gather_scatter",
        vec![f(rng, &[5, 3], -1.0, 1.0), ints(rng, &[2, 4], 5)],
        Box::new(|b, x| {
            let g = b.take_rows(x[0], x[1])?; // [2, 4, 3]
            let s = b.tanh(g)?;
            let z = b.zeros_like(x[0]);
            b.scatter_add_rows(z, x[1], s)
        }),
    ));
    v.push((
        "barrier",
        vec![f(rng, &[3], -1.0, 1.0)],
        Box::new(|b, x| {
            let o = b.optimization_barrier(&[x[0], x[0]])?;
            b.mul(o[0], o[1])
        }),
    ));
    v.push((
        "iota",
        vec![f(rng, &[2, 3], -1.0, 1.0)],
        Box::new(|b, x| {
            let i = b.iota(TensorType::f32([2, 3]), 1)?;
            b.mul(i, x[0])
        }),
    ));
    v.push((
        "softmax_logsumexp",
        vec![f(rng, &[2, 5], -2.0, 2.0)],
        Box::new(|b, x| {
            let s = b.softmax(x[0], 1)?;
            let l = b.logsumexp(x[0], 1)?;
            let l = b.keep_dims(l, &[1])?;
            b.add_bcast(s, l)
        }),
    ));
    v.push((
        "norm_gelu",
        vec![f(rng, &[2, 6], -2.0, 2.0), f(rng, &[6], -0.5, 0.5)],
        Box::new(|b, x| {
            let n = common::blocks::norm(b, x[0], x[1])?;
            b.gelu_tanh(n)
        }),
    ));
    v.push((
        "attention",
        vec![
            f(rng, &[1, 3, 2, 2], -1.0, 1.0),
            f(rng, &[1, 3, 2, 2], -1.0, 1.0),
            f(rng, &[1, 3, 2, 2], -1.0, 1.0),
        ],
        Box::new(|b, x| common::blocks::causal_attention(b, x[0], x[1], x[2])),
    ));
    v.push((
        "cross_entropy",
        vec![
            f(rng, &[2, 3, 5], -2.0, 2.0),
            ints(rng, &[2, 3], 5),
            f(rng, &[2, 3], 0.0, 1.0),
        ],
        Box::new(|b, x| {
            let l = b.cross_entropy(x[0], x[1], x[2])?;
            b.reshape(l, &[1])
        }),
    ));
    v
}

trait StaticName {
    fn name_static(self) -> &'static str;
}

impl StaticName for UnaryOp {
    fn name_static(self) -> &'static str {
        Box::leak(format!("{self:?}").into_boxed_str())
    }
}

#[test]
fn every_op_and_gradient_matches_the_interpreter() {
    let c = client(1);
    let mut rng = Rng::new(42);
    for (name, inputs, build) in float_cases(&mut rng) {
        let mut b = Builder::new(name);
        let params: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, (ty, _))| b.parameter(&format!("in{i}"), ty.clone()))
            .collect();
        let y = build(&mut b, &params).unwrap_or_else(|e| panic!("{name}: {e}"));
        let proj = b.parameter("proj", b.ty(y).clone());
        let yp = b.mul(y, proj).unwrap();
        let all: Vec<i64> = (0..b.rank(y) as i64).collect();
        let loss = b.sum(yp, &all).unwrap();
        let wrt: Vec<Value> = params
            .iter()
            .copied()
            .filter(|&p| b.dtype(p).is_float())
            .collect();
        let grads = b.grad(loss, &wrt).unwrap();
        let mut outs = vec![y];
        outs.extend(grads);
        let yd = b.dims(y).to_vec();
        let p = b.build(&outs).unwrap();
        let mut data: Vec<Tensor> = inputs.into_iter().map(|(_, t)| t).collect();
        data.push(rng.tensor(&yd, -1.0, 1.0));
        let want = p.evaluate(&data).unwrap();
        let got = run(&c, &p, &data);
        // XLA may keep bf16 intermediates in f32 (it elides convert pairs), so
        // the bf16 case agrees only to bf16 precision.
        let tol = if name.contains("bf16") { 1e-2 } else { 2e-4 };
        assert_close(name, &got, &want, tol);
    }
}

#[test]
fn integer_and_boolean_ops_match_the_interpreter() {
    let c = client(1);
    let mut b = Builder::new("ints");
    let x = b.parameter("x", TensorType::i32([6]));
    let y = b.parameter("y", TensorType::i32([6]));
    let q = b.div(x, y).unwrap();
    let r = b.rem(x, y).unwrap();
    let m = b.max(x, y).unwrap();
    let n = b.neg(x).unwrap();
    let lt = b.lt(x, y).unwrap();
    let ge = b.ge(x, y).unwrap();
    let both = b.and(lt, ge).unwrap();
    let either = b.or(lt, ge).unwrap();
    let not = b.not(lt).unwrap();
    let s = b.reduce(x, ReduceKind::Sum, &[0]).unwrap();
    let mx = b.reduce(x, ReduceKind::Max, &[0]).unwrap();
    let any = b.reduce(lt, ReduceKind::Max, &[0]).unwrap();
    let fl = b.convert(x, DType::F32).unwrap();
    let h = b.convert(fl, DType::BF16).unwrap();
    let i8v = b.convert(x, DType::I8).unwrap();
    let i64v = b.convert(x, DType::I64).unwrap();
    let oh = b.one_hot(y, 4, DType::F32).unwrap();
    let rows = b.take_rows(x, y).unwrap(); // a rank-1 table
    let added = b.scatter_add_rows(x, y, x).unwrap();
    let p = b
        .build(&[
            q, r, m, n, lt, both, either, not, s, mx, any, h, i8v, i64v, oh, rows, added,
        ])
        .unwrap();
    let data = [
        Tensor::new([6], vec![-7.0, 7.0, 3.0, 0.0, 100.0, -2.0]),
        Tensor::new([6], vec![2.0, -2.0, 3.0, 1.0, 3.0, 3.0]),
    ];
    let want = p.evaluate(&data).unwrap();
    let got = run(&c, &p, &data);
    assert_close("ints", &got, &want, 0.0);
}

#[test]
fn remat_step_matches_on_device() {
    let c = client(1);
    let mut rng = Rng::new(3);
    let data = [
        rng.tensor(&[4, 8], -1.0, 1.0),
        rng.tensor(&[8, 8], -1.0, 1.0),
    ];
    let build = |policy| {
        let mut b = Builder::new("remat");
        let x = b.parameter("x", TensorType::f32([4, 8]));
        let w = b.parameter("w", TensorType::f32([8, 8]));
        let h = b
            .remat(policy, |b| {
                let z = b.matmul(x, w)?;
                b.gelu_tanh(z)
            })
            .unwrap();
        let sq = b.square(h).unwrap();
        let l = b.mean(sq, &[0, 1]).unwrap();
        let g = b.grad(l, &[w]).unwrap();
        b.build(&[l, g[0]]).unwrap()
    };
    let mut dots = Vec::new();
    for policy in [hlo::RematPolicy::None, hlo::RematPolicy::Full] {
        let p = build(policy);
        assert_close(
            "remat",
            &run(&c, &p, &data),
            &p.evaluate(&data).unwrap(),
            1e-4,
        );
        // Count the matmuls XLA kept after its own optimizations.
        let exe = c.compile(&p.to_mlir(), &CompileOptions::single()).unwrap();
        let hlo = exe.executable().optimized_hlo().unwrap();
        dots.push(
            hlo.instructions
                .iter()
                .filter(|i| i.opcode == "dot")
                .count(),
        );
    }
    assert_eq!(
        dots[1],
        dots[0] + 1,
        "XLA keeps the replayed matmul (no CSE across the barrier): {dots:?}"
    );
}

/// A training step on a 2 x 4 mesh: data-parallel batch, model-parallel
/// weight columns, an SGD update donated in place; every shard checked.
#[test]
fn sharded_step_on_eight_devices() {
    let (nd, nm) = (2usize, 4usize);
    let c = client(nd * nm);
    let mut b = Builder::new("sharded");
    b.set_mesh(Mesh::new([("data", nd as i64), ("model", nm as i64)]).unwrap());
    let x = b
        .parameter_sharded("x", TensorType::f32([8, 4]), Sharding::new(["data", ""]))
        .unwrap();
    let w = b
        .parameter_sharded("w", TensorType::f32([4, 8]), Sharding::new(["", "model"]))
        .unwrap();
    let h = b.matmul(x, w).unwrap();
    let h = b
        .sharding_constraint(h, &Sharding::new(["data", "model"]))
        .unwrap();
    let a = b.tanh(h).unwrap();
    let sq = b.square(a).unwrap();
    let loss = b.mean(sq, &[0, 1]).unwrap();
    let g = b.grad(loss, &[w]).unwrap()[0];
    let step = b.mul_scalar(g, 0.5).unwrap();
    let w2 = b.sub(w, step).unwrap();
    let mut p = b.build(&[loss, g, w2]).unwrap();
    p.set_output_sharding(1, Sharding::new(["", "model"]))
        .unwrap();
    p.set_output_sharding(2, Sharding::new(["", "model"]))
        .unwrap();
    p.donate(w, 2).unwrap();
    let text = p.to_mlir();
    let exe = c
        .compile(&text, &CompileOptions::spmd(p.num_partitions()))
        .unwrap_or_else(|e| panic!("{e}\n{text}"));

    let mut rng = Rng::new(8);
    let xs = rng.tensor(&[8, 4], -1.0, 1.0);
    let ws = rng.tensor(&[4, 8], -1.0, 1.0);
    let want = p.evaluate(&[xs.clone(), ws.clone()]).unwrap();
    let rows = |t: &Tensor, r0: usize, n: usize| t.data[r0 * 4..(r0 + n) * 4].to_vec();
    let cols = |t: &Tensor, c0: usize, n: usize| {
        (0..4)
            .flat_map(|r| t.data[r * 8 + c0..r * 8 + c0 + n].to_vec())
            .collect::<Vec<_>>()
    };
    let mut bufs = Vec::new();
    for dev in 0..nd * nm {
        let (di, mi) = (dev / nm, dev % nm);
        let xb = to_device(
            &c,
            &Tensor::new([4, 4], rows(&xs, di * 4, 4)),
            DType::F32,
            dev,
        );
        let wb = to_device(
            &c,
            &Tensor::new([4, 2], cols(&ws, mi * 2, 2)),
            DType::F32,
            dev,
        );
        bufs.push(vec![xb, wb]);
    }
    let args: Vec<Vec<&Buffer>> = bufs.iter().map(|v| v.iter().collect()).collect();
    let out = exe.execute(&args).unwrap();
    for (dev, o) in out.iter().enumerate() {
        let mi = dev % nm;
        let loss = to_host(&o[0], DType::F32);
        assert!(
            (loss[0] - want[0].data[0]).abs() < 1e-5,
            "device {dev}: loss {} vs {}",
            loss[0],
            want[0].data[0]
        );
        for (k, name) in [(1, "grad"), (2, "updated w")] {
            let got = to_host(&o[k], DType::F32);
            let exp = cols(&want[k], mi * 2, 2);
            assert_eq!(got.len(), exp.len(), "device {dev}: {name} shard size");
            for (a, e) in got.iter().zip(&exp) {
                assert!(
                    (a - e).abs() < 1e-5,
                    "device {dev}: {name} shard {got:?} vs {exp:?}"
                );
            }
        }
    }
    assert!(bufs[0][1].is_deleted().unwrap(), "w was donated");
}

fn block(t: &Tensor, bounds: &[(i64, i64)]) -> Tensor {
    let dims: Vec<i64> = bounds.iter().map(|b| b.1).collect();
    let n: i64 = dims.iter().product();
    let mut data = Vec::with_capacity(n as usize);
    let mut idx = vec![0i64; dims.len()];
    for f in 0..n {
        let mut r = f;
        for d in (0..dims.len()).rev() {
            idx[d] = r % dims[d];
            r /= dims[d];
        }
        let mut flat = 0;
        for d in 0..dims.len() {
            flat = flat * t.dims[d] + bounds[d].0 + idx[d];
        }
        data.push(t.data[flat as usize]);
    }
    Tensor::new(dims, data)
}

fn toy_config() -> common::gemma_like::Config {
    common::gemma_like::Config {
        d: 16,
        layers: 2,
        heads: 4,
        head_dim: 4,
        mlp: 32,
        vocab: 64,
        batch: 2,
        seq: 8,
        mesh: [("fsdp", 2), ("tensor", 4)],
        remat: hlo::RematPolicy::SaveMatmuls,
        scan: false,
    }
}

/// Random inputs for the toy step (`v_lo`: smallest second moment).
fn toy_inputs(p: &Program, rng: &mut Rng, v_lo: f64) -> Vec<Tensor> {
    let names = p.parameter_names();
    p.parameter_types()
        .iter()
        .zip(&names)
        .map(|(ty, name)| match *name {
            "batch.ids" | "batch.labels" => rng.ints(&ty.dims, 64),
            "batch.mask" => Tensor::new(
                ty.dims.clone(),
                (0..ty.numel())
                    .map(|i| (i % 5 != 0) as i64 as f64)
                    .collect(),
            ),
            "opt.lr" => Tensor::scalar(0.01),
            n if n.starts_with("opt.v.") => rng.tensor(&ty.dims, v_lo, 1.0),
            n if n.starts_with("opt.m.") => rng.tensor(&ty.dims, -v_lo, v_lo),
            _ => rng.tensor(&ty.dims, -0.3, 0.3),
        })
        .collect()
}

/// One buffer per parameter per device, each holding that device's shard.
fn shard_inputs(c: &Client, p: &Program, inputs: &[Tensor]) -> Vec<Vec<Buffer>> {
    let mesh = p.builder().mesh().expect("mesh");
    let shardings = p.parameter_shardings();
    let types = p.parameter_types();
    (0..mesh.num_devices())
        .map(|dev| {
            inputs
                .iter()
                .zip(&types)
                .zip(&shardings)
                .map(|((t, ty), s)| {
                    let shard = match s {
                        Some(s) => block(t, &s.shard_bounds(mesh, &t.dims, dev)),
                        None => t.clone(),
                    };
                    to_device(c, &shard, ty.dtype, dev as usize)
                })
                .collect()
        })
        .collect()
}

/// A two-layer Gemma-shaped step with AdamW (the bench's graph at toy size)
/// on a 2 x 4 (fsdp x tensor) mesh: every output shard on every device
/// against the interpreter.
#[test]
fn gemma_like_step_on_eight_devices() {
    check_toy_step(&toy_config());
}

/// The same step with the layers scanned (one `stablehlo.while` each way).
#[test]
fn gemma_like_scanned_step_on_eight_devices() {
    check_toy_step(&common::gemma_like::Config {
        scan: true,
        ..toy_config()
    });
}

fn check_toy_step(cfg: &common::gemma_like::Config) {
    let (p, _) = common::gemma_like::build_step(cfg).unwrap();
    let mesh = p.builder().mesh().unwrap().clone();
    let c = client(8);
    let exe = c
        .compile(&p.to_mlir(), &CompileOptions::spmd(p.num_partitions()))
        .unwrap_or_else(|e| panic!("{e}"));
    let inputs = toy_inputs(&p, &mut Rng::new(77), 0.5);
    let want = p.evaluate(&inputs).unwrap();
    let bufs = shard_inputs(&c, &p, &inputs);
    let args: Vec<Vec<&Buffer>> = bufs.iter().map(|v| v.iter().collect()).collect();
    let out = exe.execute(&args).unwrap();
    let out_types = p.output_types();
    let out_shardings = p.output_shardings();
    assert!(
        want[0].data[0] > 3.0 && want[0].data[0] < 6.0,
        "loss near ln(64): {}",
        want[0].data[0]
    );
    for (dev, o) in out.iter().enumerate() {
        for (k, buf) in o.iter().enumerate() {
            let w = match out_shardings[k] {
                Some(s) => block(&want[k], &s.shard_bounds(&mesh, &want[k].dims, dev as i64)),
                None => want[k].clone(),
            };
            let got = to_host(buf, out_types[k].dtype);
            assert_eq!(got.len(), w.data.len(), "device {dev} output {k}");
            let scale = w.data.iter().fold(0f64, |m, v| m.max(v.abs()));
            for (e, (a, b)) in got.iter().zip(&w.data).enumerate() {
                assert!(
                    (a - b).abs() <= 2e-3 * scale + 1e-6,
                    "device {dev} output {k}[{e}]: {a} vs {b} (scale {scale})"
                );
            }
        }
    }
}

/// Ten AdamW steps on one batch, the donated state fed back from device to
/// device without a host round trip: the loss must fall.
#[test]
fn toy_training_reduces_the_loss() {
    let (p, _) = common::gemma_like::build_step(&toy_config()).unwrap();
    let c = client(8);
    let exe = c
        .compile(&p.to_mlir(), &CompileOptions::spmd(p.num_partitions()))
        .unwrap();
    let n = (p.parameter_types().len() - 4) / 3; // params, then (m, v) pairs, then 4 batch/lr inputs
    let mut bufs = shard_inputs(&c, &p, &toy_inputs(&p, &mut Rng::new(5), 0.0));
    let mut losses = Vec::new();
    for _ in 0..10 {
        let args: Vec<Vec<&Buffer>> = bufs.iter().map(|v| v.iter().collect()).collect();
        let out = exe.execute(&args).unwrap();
        losses.push(to_host(&out[0][0], DType::F32)[0]);
        assert!(bufs[0][0].is_deleted().unwrap(), "parameters are donated");
        for (dev, outs) in out.into_iter().enumerate() {
            let mut outs: Vec<Option<Buffer>> = outs.into_iter().map(Some).collect();
            for i in 0..n {
                bufs[dev][i] = outs[1 + i].take().unwrap();
                bufs[dev][n + 2 * i] = outs[1 + n + i].take().unwrap();
                bufs[dev][n + 2 * i + 1] = outs[1 + 2 * n + i].take().unwrap();
            }
        }
    }
    eprintln!("toy losses: {losses:?}");
    assert!(losses[9] < losses[0] - 0.5, "losses {losses:?}");
}

/// A scanned stack of layers (one `stablehlo.while` forward, one reverse
/// loop backward) and its gradients against the interpreter.
#[test]
fn scan_and_its_gradient_run_on_device() {
    let c = client(1);
    let mut b = Builder::new("scan");
    let h = b.parameter("h", TensorType::f32([2, 3]));
    let w = b.parameter("w", TensorType::f32([4, 3, 3]));
    let bias = b.parameter("bias", TensorType::f32([3]));
    let (fin, ys) = b
        .scope("layers", |b| {
            b.scan(4, &[h], &[w], &[bias], |b, c, xs, k| {
                let z = b.matmul(c[0], xs[0])?;
                let z = b.add_bcast(z, k[0])?;
                let h2 = b.tanh(z)?;
                let s = b.sum(h2, &[1])?;
                Ok((vec![h2], vec![s]))
            })
        })
        .unwrap();
    let sq = b.square(fin[0]).unwrap();
    let l1 = b.sum(sq, &[0, 1]).unwrap();
    let l2 = b.sum(ys[0], &[0, 1]).unwrap();
    let loss = b.add(l1, l2).unwrap();
    let g = b.grad(loss, &[h, w, bias]).unwrap();
    let p = b.build(&[loss, ys[0], g[0], g[1], g[2]]).unwrap();
    let mut rng = Rng::new(12);
    let data = [
        rng.tensor(&[2, 3], -1.0, 1.0),
        rng.tensor(&[4, 3, 3], -1.0, 1.0),
        rng.tensor(&[3], -0.5, 0.5),
    ];
    let text = p.to_mlir();
    assert_eq!(text.matches("stablehlo.while").count(), 2, "{text}");
    assert_close(
        "scan",
        &run(&c, &p, &data),
        &p.evaluate(&data).unwrap(),
        1e-4,
    );
}
