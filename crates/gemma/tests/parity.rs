//! Numerical parity with Hugging Face `transformers` `GemmaForCausalLM` in
//! float32: logits, loss and every parameter's gradient, on three small
//! random models (multi-query, multi-head, heads x head_dim != d_model).
//! Golden files come from `scripts/gen_model_golden.py`.

mod common;

use std::path::PathBuf;

use gemma::{ComputeOptions, Gemma, Tokens, Unconstrained, param_specs, token_loss};
use hlo::{Builder, TensorType};

struct Golden {
    ids: Vec<i32>,
    logits: Vec<f32>,
    loss: f32,
    grads: Vec<Vec<f32>>,
}

fn golden(dir: &std::path::Path, names: &[String]) -> Golden {
    let t = common::golden_tensors(dir);
    let f32s = |n: &str| common::f32s(&t, n);
    let ids = common::i32s(&t, "input_ids");
    Golden {
        ids,
        logits: f32s("logits"),
        loss: f32s("loss")[0],
        grads: names.iter().map(|n| f32s(&format!("grad.{n}"))).collect(),
    }
}

/// max |a - b| relative to max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn check(name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let ck = gemma::hf::load(&dir.join("model")).unwrap();
    let cfg = ck.config.clone();
    let specs = param_specs(&cfg);
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let g = golden(&dir, &names);
    let (bsz, t) = (2i64, 8i64);

    let mut b = Builder::new(&format!("parity_{name}"));
    let params = gemma::declare_parameters(&mut b, &cfg);
    let ids = b.parameter("ids", TensorType::i32([bsz, t]));
    let positions = b.parameter("positions", TensorType::i32([bsz, t]));
    let segment_ids = b.parameter("segment_ids", TensorType::i32([bsz, t]));
    let targets = b.parameter("targets", TensorType::i32([bsz, t]));
    let mask = b.parameter("mask", TensorType::f32([bsz, t]));
    let model = Gemma::new(&cfg, &params, ComputeOptions::default()).unwrap();
    let logits = model
        .forward(
            &mut b,
            &Tokens {
                ids,
                positions,
                segment_ids,
            },
            &Unconstrained,
        )
        .unwrap();
    let (sum, count) = token_loss(&mut b, logits, targets, mask).unwrap();
    let loss = b.div(sum, count).unwrap();
    let grads = b.grad(loss, &params).unwrap();
    let mut outs = vec![logits, loss];
    outs.extend(&grads);
    let program = b.build(&outs).unwrap();

    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, p) in specs.iter().zip(&ck.params) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(&p.data, &dims, 0).unwrap());
    }
    let pos: Vec<i32> = (0..bsz * t).map(|i| (i % t) as i32).collect();
    let seg = vec![1i32; (bsz * t) as usize];
    let tgt: Vec<i32> = (0..bsz * t)
        .map(|i| {
            if i % t == t - 1 {
                0
            } else {
                g.ids[i as usize + 1]
            }
        })
        .collect();
    let msk: Vec<f32> = (0..bsz * t)
        .map(|i| if i % t == t - 1 { 0.0 } else { 1.0 })
        .collect();
    for v in [&g.ids, &pos, &seg, &tgt] {
        bufs.push(client.buffer_from_host(v, &[bsz, t], 0).unwrap());
    }
    bufs.push(client.buffer_from_host(&msk, &[bsz, t], 0).unwrap());
    let out = exe.execute(&[bufs.iter().collect()]).unwrap();
    let out = &out[0];

    let logits = out[0].to_host::<f32>().unwrap();
    let e = rel_err(&logits, &g.logits);
    assert!(
        e < 1e-6,
        "{name}: logits differ by {e:e} (relative to the largest)"
    );
    let loss = out[1].to_host::<f32>().unwrap()[0];
    assert!(
        ((loss - g.loss) / g.loss).abs() < 1e-6,
        "{name}: loss {loss} vs {}",
        g.loss
    );
    for (i, n) in names.iter().enumerate() {
        let grad = out[2 + i].to_host::<f32>().unwrap();
        let e = rel_err(&grad, &g.grads[i]);
        assert!(
            e < 5e-6,
            "{name}: gradient of {n} differs by {e:e} (relative to its largest entry)"
        );
    }
}

#[test]
fn multi_query_matches_transformers() {
    check("multi_query");
}

#[test]
fn multi_head_matches_transformers() {
    check("multi_head");
}

#[test]
fn wide_heads_match_transformers() {
    check("wide_heads");
}

#[test]
fn malformed_token_inputs_are_errors_naming_the_input() {
    let cfg = gemma::GemmaConfig::tiny();
    let cases: [(&str, TensorType, TensorType, &str); 3] = [
        (
            "rank-1 ids",
            TensorType::i32([8]),
            TensorType::i32([2, 8]),
            "model input `ids` is I32[8]",
        ),
        (
            "float ids",
            TensorType::f32([2, 8]),
            TensorType::i32([2, 8]),
            "model input `ids` is F32[2, 8]",
        ),
        (
            "positions of another shape",
            TensorType::i32([2, 8]),
            TensorType::i32([2, 4]),
            "model input `positions` is I32[2, 4]: expected an integer tensor [2, 8]",
        ),
    ];
    for (what, ids_ty, pos_ty, want) in cases {
        let mut b = Builder::new("bad_inputs");
        let params = gemma::declare_parameters(&mut b, &cfg);
        let ids = b.parameter("ids", ids_ty);
        let positions = b.parameter("positions", pos_ty);
        let segment_ids = b.parameter("segment_ids", TensorType::i32([2, 8]));
        let model = Gemma::new(&cfg, &params, ComputeOptions::default()).unwrap();
        let t = Tokens {
            ids,
            positions,
            segment_ids,
        };
        let e = model.forward(&mut b, &t, &Unconstrained).unwrap_err();
        assert!(e.to_string().starts_with(want), "{what}: {e}");
    }
}
