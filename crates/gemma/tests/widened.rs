//! `Matmuls::F32` (bf16 operands multiplied in f32, the result rounded to
//! bf16) computes what bf16 matmuls compute: the loss and every gradient of
//! a bf16 step agree with the plugin's own bf16 matmuls to bf16 precision,
//! and differ from the f32 model's (the operands really are rounded).

use std::path::PathBuf;

use gemma::{ComputeOptions, Gemma, Matmuls, Tokens, Unconstrained, param_specs, token_loss};
use hlo::{Builder, DType, RematPolicy, TensorType};

/// Loss and gradients of one batch of the multi-query golden model.
fn loss_and_grads(opts: ComputeOptions) -> (f32, Vec<Vec<f32>>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/multi_query/model");
    let ck = gemma::hf::load(&dir).unwrap();
    let cfg = ck.config.clone();
    let (bsz, t) = (2i64, 8i64);
    let mut b = Builder::new("widened");
    let params = gemma::declare_parameters(&mut b, &cfg);
    let ids = b.parameter("ids", TensorType::i32([bsz, t]));
    let positions = b.parameter("positions", TensorType::i32([bsz, t]));
    let segment_ids = b.parameter("segment_ids", TensorType::i32([bsz, t]));
    let targets = b.parameter("targets", TensorType::i32([bsz, t]));
    let model = Gemma::new(&cfg, &params, opts).unwrap();
    let tokens = Tokens {
        ids,
        positions,
        segment_ids,
    };
    let logits = model.forward(&mut b, &tokens, &Unconstrained).unwrap();
    let mask = b.constant(1.0, TensorType::f32([bsz, t]));
    let (sum, count) = token_loss(&mut b, logits, targets, mask).unwrap();
    let loss = b.div(sum, count).unwrap();
    let grads = b.grad(loss, &params).unwrap();
    let mut outs = vec![loss];
    outs.extend(&grads);
    let program = b.build(&outs).unwrap();
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    for (s, p) in param_specs(&cfg).iter().zip(&ck.params) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(&p.data, &dims, 0).unwrap());
    }
    let n = (bsz * t) as usize;
    let id: Vec<i32> = (0..n).map(|i| 2 + (i as i32 * 7) % 90).collect();
    let pos: Vec<i32> = (0..n).map(|i| (i as i64 % t) as i32).collect();
    let seg = vec![1i32; n];
    let tgt: Vec<i32> = (0..n).map(|i| 2 + (i as i32 * 7 + 7) % 90).collect();
    for v in [&id, &pos, &seg, &tgt] {
        bufs.push(client.buffer_from_host(v, &[bsz, t], 0).unwrap());
    }
    let out = &exe.execute(&[bufs.iter().collect()]).unwrap()[0];
    let loss = out[0].to_host::<f32>().unwrap()[0];
    let grads = out[1..]
        .iter()
        .map(|g| g.to_host::<f32>().unwrap())
        .collect();
    (loss, grads)
}

/// max |a - b| relative to max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn bf16_matmuls_widened_to_f32_compute_what_bf16_matmuls_do() {
    let opts = |dtype, matmuls| ComputeOptions {
        dtype,
        remat: RematPolicy::None,
        matmuls,
        scan_layers: false,
    };
    let widened = Matmuls::F32 {
        weights_rounded: false,
    };
    let (lw, gw) = loss_and_grads(opts(DType::BF16, widened));
    let (ln, gn) = loss_and_grads(opts(DType::BF16, Matmuls::Compute));
    let (lf, gf) = loss_and_grads(opts(DType::F32, Matmuls::Compute));
    assert!((lw - ln).abs() < 1e-2 * ln.abs(), "loss {lw} vs bf16 {ln}");
    assert!(
        lw != lf,
        "widened bf16 loss equals the f32 loss {lf}: nothing was rounded"
    );
    let mut worst = 0f32;
    for (i, (w, n)) in gw.iter().zip(&gn).enumerate() {
        let e = rel_err(w, n);
        assert!(e < 5e-2, "gradient {i} differs from bf16 matmuls' by {e:e}");
        worst = worst.max(rel_err(w, &gf[i]));
    }
    assert!(worst > 0.0, "widened bf16 gradients equal the f32 ones");
}
