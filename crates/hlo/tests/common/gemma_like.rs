//! A Gemma-shaped training step (forward with remat per layer, masked
//! cross-entropy, backward, AdamW) for the bench and the sharded device test.
//! The real model lives in the Gemma crate; this only needs the shapes.
#![allow(dead_code)]

use super::blocks;
use hlo::{Builder, DType, Mesh, Program, RematPolicy, Result, Sharding, TensorType, Value};

/// Model and mesh sizes.
pub struct Config {
    pub d: i64,
    pub layers: usize,
    pub heads: i64,
    pub head_dim: i64,
    pub mlp: i64,
    pub vocab: i64,
    pub batch: i64,
    pub seq: i64,
    pub mesh: [(&'static str, i64); 2],
    pub remat: RematPolicy,
    /// Scan over stacked layer weights instead of unrolling the layers.
    pub scan: bool,
}

/// Gemma 7B, unrolled, FSDP x tensor over a 16 x 16 mesh.
pub const GEMMA_7B: Config = Config {
    d: 3072,
    layers: 28,
    heads: 16,
    head_dim: 256,
    mlp: 24576,
    vocab: 256000,
    batch: 1,
    seq: 8192,
    mesh: [("fsdp", 16), ("tensor", 16)],
    remat: RematPolicy::Full,
    scan: false,
};

/// One layer's weights, in the order of the specs in `build_step`.
struct Layer {
    ln1: Value,
    q: Value,
    k: Value,
    v: Value,
    o: Value,
    ln2: Value,
    gate: Value,
    up: Value,
    down: Value,
}

impl Layer {
    fn new(w: &[Value]) -> Layer {
        let [ln1, q, k, v, o, ln2, gate, up, down] = w.try_into().expect("9 layer weights");
        Layer {
            ln1,
            q,
            k,
            v,
            o,
            ln2,
            gate,
            up,
            down,
        }
    }
}

fn param(
    b: &mut Builder,
    params: &mut Vec<(Value, Sharding)>,
    name: &str,
    dims: &[i64],
    s: &[&str],
) -> Result<Value> {
    let sharding = Sharding::new(s.iter().copied());
    let v = b.parameter_sharded(name, TensorType::f32(dims.to_vec()), sharding.clone())?;
    params.push((v, sharding));
    Ok(v)
}

fn layer_forward(b: &mut Builder, c: &Config, l: &Layer, x: Value) -> Result<Value> {
    let act = Sharding::new(["", "", "tensor"]);
    let h = blocks::norm(b, x, l.ln1)?;
    let attn = b.scope("self_attn", |b| {
        let q = b.linear(h, l.q)?; // [1, T, H*Dh]
        let k = b.linear(h, l.k)?;
        let v = b.linear(h, l.v)?;
        let q = b.reshape(q, &[c.batch, c.seq, c.heads, c.head_dim])?;
        let k = b.reshape(k, &[c.batch, c.seq, c.heads, c.head_dim])?;
        let v = b.reshape(v, &[c.batch, c.seq, c.heads, c.head_dim])?;
        let a = blocks::causal_attention(b, q, k, v)?; // [1, T, H, Dh]
        let a = b.reshape(a, &[c.batch, c.seq, c.heads * c.head_dim])?;
        b.linear(a, l.o)
    })?;
    let x = b.add(x, attn)?;
    let x = b.sharding_constraint(x, &act)?;
    let h = blocks::norm(b, x, l.ln2)?;
    let mlp = b.scope("mlp", |b| {
        let g = b.linear(h, l.gate)?;
        let g = b.gelu_tanh(g)?;
        let u = b.linear(h, l.up)?;
        let gu = b.mul(g, u)?;
        b.linear(gu, l.down)
    })?;
    let x = b.add(x, mlp)?;
    b.sharding_constraint(x, &act)
}

/// Forward, cross-entropy, backward and AdamW; returns the program and the
/// number of nodes in the graph. Parameters come first (embedding, then
/// per layer, then the final norm), then both moments per parameter, then
/// `ids`, `labels`, `mask`, `lr`; outputs are the loss, the new parameters,
/// the new first and second moments, each donated by its input.
pub fn build_step(c: &Config) -> Result<(Program, usize)> {
    let mut b = Builder::new("gemma7b_train_step");
    b.set_mesh(Mesh::new(c.mesh)?);
    let mut params = Vec::new();
    let embed = param(
        &mut b,
        &mut params,
        "model.embed_tokens.weight",
        &[c.vocab, c.d],
        &["tensor", "fsdp"],
    )?;
    // (name, dims, sharding) of each layer weight, in `Layer` order.
    let qkv = c.heads * c.head_dim;
    let specs: [(&str, Vec<i64>, [&str; 2]); 9] = [
        ("input_layernorm.weight", vec![c.d], ["", ""]),
        (
            "self_attn.q_proj.weight",
            vec![qkv, c.d],
            ["tensor", "fsdp"],
        ),
        (
            "self_attn.k_proj.weight",
            vec![qkv, c.d],
            ["tensor", "fsdp"],
        ),
        (
            "self_attn.v_proj.weight",
            vec![qkv, c.d],
            ["tensor", "fsdp"],
        ),
        (
            "self_attn.o_proj.weight",
            vec![c.d, qkv],
            ["fsdp", "tensor"],
        ),
        ("post_attention_layernorm.weight", vec![c.d], ["", ""]),
        ("mlp.gate_proj.weight", vec![c.mlp, c.d], ["tensor", "fsdp"]),
        ("mlp.up_proj.weight", vec![c.mlp, c.d], ["tensor", "fsdp"]),
        ("mlp.down_proj.weight", vec![c.d, c.mlp], ["fsdp", "tensor"]),
    ];
    let mut layers: Vec<Vec<Value>> = Vec::new();
    if c.scan {
        // One stacked [layers, ...] weight per kind, scanned over.
        let mut stacked = Vec::new();
        for (name, dims, s) in &specs {
            let mut d = vec![c.layers as i64];
            d.extend(dims);
            let mut sh = vec![""];
            sh.extend(&s[..dims.len()]);
            stacked.push(param(
                &mut b,
                &mut params,
                &format!("model.layers.{name}"),
                &d,
                &sh,
            )?);
        }
        layers.push(stacked);
    } else {
        for i in 0..c.layers {
            let mut ws = Vec::new();
            for (name, dims, s) in &specs {
                ws.push(param(
                    &mut b,
                    &mut params,
                    &format!("model.layers.{i}.{name}"),
                    dims,
                    &s[..dims.len()],
                )?);
            }
            layers.push(ws);
        }
    }
    let final_norm = param(&mut b, &mut params, "model.norm.weight", &[c.d], &[""])?;
    // ZeRO-3: both AdamW moments are sharded like their parameter.
    let moments: Vec<(Value, Value)> = params
        .iter()
        .enumerate()
        .map(|(i, (p, s))| {
            let ty = b.ty(*p).clone();
            let m = b.parameter_sharded(&format!("opt.m.{i}"), ty.clone(), s.clone())?;
            let v = b.parameter_sharded(&format!("opt.v.{i}"), ty, s.clone())?;
            Ok((m, v))
        })
        .collect::<Result<_>>()?;
    let (shardings, params): (Vec<Sharding>, Vec<Value>) =
        params.into_iter().map(|(v, s)| (s, v)).unzip();
    let ids = b.parameter_sharded(
        "batch.ids",
        TensorType::i32([c.batch, c.seq]),
        Sharding::new(["", "fsdp"]),
    )?;
    let labels = b.parameter_sharded(
        "batch.labels",
        TensorType::i32([c.batch, c.seq]),
        Sharding::new(["", "fsdp"]),
    )?;
    let mask = b.parameter_sharded(
        "batch.mask",
        TensorType::f32([c.batch, c.seq]),
        Sharding::new(["", "fsdp"]),
    )?;
    let lr = b.parameter("opt.lr", TensorType::scalar(DType::F32));

    let loss = b.scope("model", |b| {
        let x = b.take_rows(embed, ids)?; // [B, T, D]
        let mut x = b.mul_scalar(x, (c.d as f64).sqrt())?;
        if c.scan {
            let (fin, _) = b.scope("layers", |b| {
                b.scan(c.layers as i64, &[x], &layers[0], &[], |b, carry, ws, _| {
                    Ok((
                        vec![layer_forward(b, c, &Layer::new(ws), carry[0])?],
                        vec![],
                    ))
                })
            })?;
            x = fin[0];
        } else {
            for (i, ws) in layers.iter().enumerate() {
                let l = Layer::new(ws);
                x = b.scope(&format!("layers.{i}"), |b| {
                    b.remat(c.remat, |b| layer_forward(b, c, &l, x))
                })?;
            }
        }
        let x = blocks::norm(b, x, final_norm)?;
        let logits = b.linear(x, embed)?; // [1, T, V]
        b.cross_entropy(logits, labels, mask)
    })?;
    let grads = b.grad(loss, &params)?;
    let mut outs = vec![loss];
    let (b1, b2, eps, wd) = (0.9, 0.95, 1e-8, 0.1);
    b.push_scope("adamw");
    let mut new_m = Vec::new();
    let mut new_v = Vec::new();
    for ((&p, &g), &(m, v)) in params.iter().zip(&grads).zip(&moments) {
        let gm = b.mul_scalar(g, 1.0 - b1)?;
        let mm = b.mul_scalar(m, b1)?;
        let m2 = b.add(mm, gm)?;
        let g2 = b.square(g)?;
        let g2 = b.mul_scalar(g2, 1.0 - b2)?;
        let vv = b.mul_scalar(v, b2)?;
        let v2 = b.add(vv, g2)?;
        let den = b.sqrt(v2)?;
        let den = b.add_scalar(den, eps)?;
        let upd = b.div(m2, den)?;
        let decay = b.mul_scalar(p, wd)?;
        let upd = b.add(upd, decay)?;
        let step = b.mul_bcast(upd, lr)?;
        let p2 = b.sub(p, step)?;
        outs.push(p2);
        new_m.push(m2);
        new_v.push(v2);
    }
    b.pop_scope();
    outs.extend(&new_m);
    outs.extend(&new_v);
    let nodes = b.len();
    let n = params.len();
    let mut program = b.build(&outs)?;
    for (i, &p) in params.iter().enumerate() {
        for k in 0..3 {
            program.set_output_sharding(1 + k * n + i, shardings[i].clone())?;
        }
        program.donate(p, 1 + i)?;
        program.donate(moments[i].0, 1 + n + i)?;
        program.donate(moments[i].1, 1 + 2 * n + i)?;
    }
    Ok((program, nodes))
}
