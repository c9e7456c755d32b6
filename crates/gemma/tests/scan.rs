//! The decoder layers as one loop (`ComputeOptions::scan_layers`): the
//! scanned model computes the logits, loss and every gradient the unrolled
//! one does, matches the transformers goldens (as `parity.rs` checks the
//! unrolled model), under every remat policy, and its program holds one
//! loop for the layers (and one for their gradient) instead of a copy per
//! layer.

mod common;

use std::path::PathBuf;

use gemma::{
    ComputeOptions, Gemma, GemmaConfig, Layout, Tokens, Unconstrained, param_specs, param_specs_in,
    token_loss,
};
use hlo::{Builder, Program, RematPolicy, TensorType};

const B: i64 = 2;
const T: i64 = 8;

/// Forward, mean loss and the gradient of every parameter, as one program
/// with outputs `[logits, loss, grads...]`, the parameters (and their
/// gradients) stored as `layout` says.
fn program(cfg: &GemmaConfig, opts: ComputeOptions, layout: Layout) -> Program {
    let mut b = Builder::new("scan_test");
    let params: Vec<_> = param_specs_in(cfg, layout)
        .iter()
        .map(|s| {
            let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
            b.parameter(&s.name, TensorType::f32(dims))
        })
        .collect();
    let ids = b.parameter("ids", TensorType::i32([B, T]));
    let positions = b.parameter("positions", TensorType::i32([B, T]));
    let segment_ids = b.parameter("segment_ids", TensorType::i32([B, T]));
    let targets = b.parameter("targets", TensorType::i32([B, T]));
    let mask = b.parameter("mask", TensorType::f32([B, T]));
    let model = Gemma::with_layout(cfg, &params, layout, opts).unwrap();
    let t = Tokens {
        ids,
        positions,
        segment_ids,
    };
    let logits = model.forward(&mut b, &t, &Unconstrained).unwrap();
    let (sum, count) = token_loss(&mut b, logits, targets, mask).unwrap();
    let loss = b.div(sum, count).unwrap();
    let grads = b.grad(loss, &params).unwrap();
    let mut outs = vec![logits, loss];
    outs.extend(&grads);
    b.build(&outs).unwrap()
}

/// Runs the program on `ids` and returns every output on the host, the
/// gradients in [`param_specs`] order. `docs`: two documents in the second
/// row, so that the per-segment mask matters (the goldens have one
/// document per row).
fn run(
    cfg: &GemmaConfig,
    opts: ComputeOptions,
    params: &[Vec<f32>],
    ids: &[i32],
    docs: bool,
) -> Vec<Vec<f32>> {
    run_stored(cfg, opts, Layout::PerLayer, params, ids, docs)
}

/// [`run`] with the parameters stored as `layout` says.
fn run_stored(
    cfg: &GemmaConfig,
    opts: ComputeOptions,
    layout: Layout,
    params: &[Vec<f32>],
    ids: &[i32],
    docs: bool,
) -> Vec<Vec<f32>> {
    let p = program(cfg, opts, layout);
    let client = pjrt::cpu_client(1).unwrap();
    let exe = client
        .compile(&p.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let mut bufs = Vec::new();
    let stored = gemma::to_layout(cfg, layout, params.to_vec()).unwrap();
    for (s, data) in param_specs_in(cfg, layout).iter().zip(&stored) {
        let dims: Vec<i64> = s.shape.iter().map(|&d| d as i64).collect();
        bufs.push(client.buffer_from_host(data, &dims, 0).unwrap());
    }
    let n = (B * T) as usize;
    let pos: Vec<i32> = (0..n).map(|i| (i as i64 % T) as i32).collect();
    let seg: Vec<i32> = (0..n)
        .map(|i| if docs && i >= n - 3 { 2 } else { 1 })
        .collect();
    let tgt: Vec<i32> = (0..n)
        .map(|i| if i as i64 % T == T - 1 { 0 } else { ids[i + 1] })
        .collect();
    let msk: Vec<f32> = (0..n)
        .map(|i| if i as i64 % T == T - 1 { 0.0 } else { 1.0 })
        .collect();
    for v in [ids, &pos, &seg, &tgt] {
        bufs.push(client.buffer_from_host(v, &[B, T], 0).unwrap());
    }
    bufs.push(client.buffer_from_host(&msk, &[B, T], 0).unwrap());
    let out = exe.execute(&[bufs.iter().collect()]).unwrap();
    let mut out: Vec<Vec<f32>> = out[0].iter().map(|o| o.to_host::<f32>().unwrap()).collect();
    let grads = gemma::from_layout(cfg, layout, out.split_off(2)).unwrap();
    out.extend(grads);
    out
}

/// max |a - b| relative to max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn opts(remat: RematPolicy, scan_layers: bool) -> ComputeOptions {
    ComputeOptions {
        remat,
        scan_layers,
        ..ComputeOptions::default()
    }
}

/// Outputs `got` agree with `want` to `tol` relative to each one's largest entry.
fn assert_close(what: &str, names: &[String], got: &[Vec<f32>], want: &[Vec<f32>], tol: f32) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let name = match i {
            0 => "logits",
            1 => "loss",
            _ => &names[i - 2],
        };
        let e = rel_err(g, w);
        assert!(e < tol, "{what}: {name} differs by {e:e}");
    }
}

/// A golden's model, parameters, token ids and outputs (logits, loss, grads).
struct Golden {
    cfg: GemmaConfig,
    params: Vec<Vec<f32>>,
    ids: Vec<i32>,
    want: Vec<Vec<f32>>,
}

fn golden_outputs(name: &str) -> Golden {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let ck = gemma::hf::load(&dir.join("model")).unwrap();
    let t = common::golden_tensors(&dir);
    let f32s = |n: &str| common::f32s(&t, n);
    let ids = common::i32s(&t, "input_ids");
    let mut want = vec![f32s("logits"), vec![f32s("loss")[0]]];
    for s in param_specs(&ck.config) {
        want.push(f32s(&format!("grad.{}", s.name)));
    }
    let params = ck.params.iter().map(|p| p.data.clone()).collect();
    Golden {
        cfg: ck.config.clone(),
        params,
        ids,
        want,
    }
}

/// The scanned model, with per-layer weights stacked by the program or
/// stored stacked, and the unrolled model on stored stacked weights (slice
/// by slice), compute transformers' logits, loss and gradients.
#[test]
fn scanned_layers_match_transformers() {
    for name in ["multi_query", "multi_head", "wide_heads"] {
        let Golden {
            cfg,
            params,
            ids,
            want,
        } = golden_outputs(name);
        let names: Vec<String> = param_specs(&cfg).into_iter().map(|s| s.name).collect();
        for (layout, scan) in [
            (Layout::PerLayer, true),
            (Layout::Stacked, true),
            (Layout::Stacked, false),
        ] {
            let what = format!("{name}, {layout:?}, scan_layers = {scan}");
            let o = opts(RematPolicy::None, scan);
            let got = run_stored(&cfg, o, layout, &params, &ids, false);
            // The tolerances of parity.rs: 1e-6 logits and loss, 5e-6 gradients.
            assert_close(&what, &names, &got[..2], &want[..2], 1e-6);
            assert_close(&what, &names, &got, &want, 5e-6);
        }
    }
}

/// Deterministic small values for a model's parameters.
fn params_of(cfg: &GemmaConfig) -> Vec<Vec<f32>> {
    let mut seed = 12345u64;
    param_specs(cfg)
        .iter()
        .map(|s| {
            (0..s.numel())
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let u = (seed >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                    if s.is_norm() {
                        u - 0.5
                    } else {
                        (u - 0.5) * 0.2
                    }
                })
                .collect()
        })
        .collect()
}

#[test]
fn scanned_equals_unrolled_under_every_remat_policy_with_post_norms() {
    let mut cfg = GemmaConfig::tiny();
    cfg.layers = 3;
    cfg.post_norms = true;
    cfg.validate().unwrap();
    let params = params_of(&cfg);
    let names: Vec<String> = param_specs(&cfg).into_iter().map(|s| s.name).collect();
    let ids: Vec<i32> = (0..B * T)
        .map(|i| ((i * 7 + 3) % cfg.vocab_size as i64) as i32)
        .collect();
    let want = run(&cfg, opts(RematPolicy::None, false), &params, &ids, true);
    for remat in [
        RematPolicy::None,
        RematPolicy::Full,
        RematPolicy::SaveMatmuls,
    ] {
        let got = run(&cfg, opts(remat, true), &params, &ids, true);
        // Summation order may differ (fusions in and out of a loop): the
        // tolerances of the transformers parity.
        assert_close(&format!("{remat:?}"), &names, &got[..2], &want[..2], 1e-6);
        assert_close(&format!("{remat:?}"), &names, &got, &want, 5e-6);
    }
}

#[test]
fn scanned_program_has_one_loop_for_the_layers_and_one_for_their_gradient() {
    let with_layers = |layers: usize, remat, scan| {
        let mut c = GemmaConfig::tiny();
        c.layers = layers;
        program(&c, opts(remat, scan), Layout::PerLayer).to_mlir()
    };
    let dots = |s: &str| s.matches("stablehlo.dot_general").count();
    for remat in [
        RematPolicy::None,
        RematPolicy::Full,
        RematPolicy::SaveMatmuls,
    ] {
        let (s2, s6) = (with_layers(2, remat, true), with_layers(6, remat, true));
        assert_eq!(s6.matches("stablehlo.while").count(), 2, "{remat:?}");
        // One copy of the layer however many layers: the program does not
        // grow with the layers but for the stacking of the weights.
        assert_eq!(dots(&s6), dots(&s2), "{remat:?}");
        let (u2, u6) = (with_layers(2, remat, false), with_layers(6, remat, false));
        assert_eq!(u6.matches("stablehlo.while").count(), 0);
        assert!(dots(&u6) > dots(&u2) + 4 * 7, "{remat:?}");
    }
}

/// With stacked weights the scanned program holds no per-layer copy of
/// anything: it is the same size for 2 layers and for 6.
#[test]
fn a_stacked_scanned_program_does_not_grow_with_depth() {
    let mlir = |layers: usize| {
        let mut c = GemmaConfig::tiny();
        c.layers = layers;
        let o = opts(RematPolicy::Full, true);
        program(&c, o, Layout::Stacked).to_mlir()
    };
    let (two, six) = (mlir(2), mlir(6));
    let ops = |s: &str| s.matches(" = stablehlo.").count();
    assert_eq!(ops(&two), ops(&six));
    let per_layer = {
        let mut c = GemmaConfig::tiny();
        c.layers = 6;
        program(&c, opts(RematPolicy::Full, true), Layout::PerLayer).to_mlir()
    };
    assert!(
        ops(&per_layer) > ops(&six) + 2 * 9 * 6,
        "{} vs {}",
        ops(&per_layer),
        ops(&six)
    );
}

#[test]
fn layouts_convert_both_ways_and_refuse_a_wrong_count() {
    let mut c = GemmaConfig::tiny();
    c.layers = 3;
    c.post_norms = true;
    let values: Vec<Vec<u32>> = param_specs(&c)
        .iter()
        .enumerate()
        .map(|(i, s)| vec![i as u32; s.numel()])
        .collect();
    let stacked = gemma::to_layout(&c, Layout::Stacked, values.clone()).unwrap();
    let specs = param_specs_in(&c, Layout::Stacked);
    assert_eq!(stacked.len(), specs.len());
    for (s, v) in specs.iter().zip(&stacked) {
        assert_eq!(s.numel(), v.len(), "{}", s.name);
    }
    // Layer 1's q_proj (index 1 + 11 + 1) is the second third of the stacked one.
    let q = &stacked[2];
    assert_eq!(q[q.len() / 3], 13);
    assert_eq!(
        gemma::from_layout(&c, Layout::Stacked, stacked).unwrap(),
        values
    );
    let e = gemma::to_layout(&c, Layout::Stacked, values[1..].to_vec()).unwrap_err();
    assert!(e.to_string().contains("parameter values"), "{e}");
}
