//! The decode-step kernels (custom calls on the CPU plugin): what the
//! matmuls compute equals XLA's dot of the same operands (bf16 products
//! summed in f32, rounded once), through the plugin and on the host, and
//! the attention kernel equals XLA's attention over the same caches.

use hlo::{Builder, DType, TensorType};
use pjrt::bf16;
use train::generate::kernels::{self, BF16_ATTENTION, BF16_TARGET, F32_ATTENTION, F32_TARGET};

/// Deterministic values in [-1, 1) with some spread of magnitudes.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            (2.0 * u - 1.0) * if s & 3 == 0 { 4.0 } else { 0.5 }
        })
        .collect()
}

/// Runs the custom call and XLA's dot (operands widened to f32, the
/// result rounded to `dtype`) on the same inputs; returns both as f32.
fn through_plugin(dtype: DType, m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let client = pjrt::cpu_client(1).unwrap();
    assert!(
        kernels::register(client.plugin()).unwrap(),
        "the CPU plugin has the FFI extension"
    );
    let target = if dtype == DType::BF16 {
        BF16_TARGET
    } else {
        F32_TARGET
    };
    let (mi, ki, ni) = (m as i64, k as i64, n as i64);
    let mut b = Builder::new("kernel");
    let x = b.parameter("x", TensorType::new(dtype, [mi, ki]));
    let w = b.parameter("w", TensorType::new(dtype, [ni, ki]));
    let y = b
        .custom_call(target, &[x, w], TensorType::new(dtype, [mi, ni]))
        .unwrap();
    let xf = b.convert(x, DType::F32).unwrap();
    let wf = b.convert(w, DType::F32).unwrap();
    let d = b.linear(xf, wf).unwrap();
    let d = b.convert(d, dtype).unwrap();
    let yf = b.convert(y, DType::F32).unwrap();
    let df = b.convert(d, DType::F32).unwrap();
    let program = b.build(&[yf, df]).unwrap();
    let (xv, wv) = (values(m * k, 1 + k as u64), values(n * k, 2 + n as u64));
    let bufs = [
        upload(&client, dtype, &xv, &[mi, ki]),
        upload(&client, dtype, &wv, &[ni, ki]),
    ];
    run_pair(&client, &program, &bufs)
}

/// `v` on the device in `dtype` (bf16: rounded).
fn upload(client: &pjrt::Client, dtype: DType, v: &[f32], dims: &[i64]) -> pjrt::Buffer {
    if dtype == DType::BF16 {
        let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        client.buffer_from_host(&h, dims, 0).unwrap()
    } else {
        client.buffer_from_host(v, dims, 0).unwrap()
    }
}

/// Compiles and runs `program` (two f32 outputs: kernel, XLA) on `inputs`.
fn run_pair(
    client: &pjrt::Client,
    program: &hlo::Program,
    inputs: &[pjrt::Buffer],
) -> (Vec<f32>, Vec<f32>) {
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let out = &exe.execute(&[inputs.iter().collect()]).unwrap()[0];
    (
        out[0].to_host::<f32>().unwrap(),
        out[1].to_host::<f32>().unwrap(),
    )
}

/// bf16: every element within one unit in the last place of XLA's, and
/// most equal (sums in another order round differently now and then).
/// f32: within f32 rounding of sums in another order (relative to the
/// largest element: terms cancel).
fn assert_close(got: &[f32], want: &[f32], dtype: DType, what: &str) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let mut differ = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = if dtype == DType::BF16 {
            2f32.powi(-7) * w.abs().max(1e-3)
        } else {
            2f32.powi(-18) * scale
        };
        assert!(
            (g - w).abs() <= tol,
            "{what}: element {i}: kernel {g} vs XLA {w}"
        );
        differ += usize::from(g != w);
    }
    if dtype == DType::BF16 {
        assert!(
            differ * 10 <= got.len(),
            "{what}: {differ} of {} differ",
            got.len()
        );
    }
}

#[test]
fn custom_calls_equal_xla_dots() {
    // Tails of K (not a multiple of 32 or 16), of N (not of 4) and of M
    // (not of 4); the larger shapes split N between threads.
    for dtype in [DType::BF16, DType::F32] {
        for (m, k, n) in [
            (1, 96, 37),
            (3, 40, 9),
            (8, 512, 1030),
            (1, 2048, 512),
            (5, 512, 2048),
        ] {
            let (got, want) = through_plugin(dtype, m, k, n);
            assert_close(
                &got,
                &want,
                dtype,
                &format!("{dtype} [{m}, {k}] x [{n}, {k}]"),
            );
        }
    }
}

#[test]
fn host_kernels_equal_f64_sums() {
    let (m, k, n) = (8, 200, 70);
    let x: Vec<bf16> = values(m * k, 3).into_iter().map(bf16::from_f32).collect();
    let w: Vec<bf16> = values(n * k, 4).into_iter().map(bf16::from_f32).collect();
    let y = kernels::matmul_bf16(&x, &w, m, k, n);
    let (xf, wf): (Vec<f32>, Vec<f32>) = (
        x.iter().map(|&v| f32::from(v)).collect(),
        w.iter().map(|&v| f32::from(v)).collect(),
    );
    let y32 = kernels::matmul_f32(&xf, &wf, m, k, n);
    for i in 0..m {
        for j in 0..n {
            let exact: f64 = (0..k)
                .map(|l| xf[i * k + l] as f64 * wf[j * k + l] as f64)
                .sum();
            let g = f32::from(y[i * n + j]) as f64;
            assert!(
                (g - exact).abs() <= 2f64.powi(-8) * exact.abs() + 1e-5,
                "bf16 [{i}, {j}]: {g} vs {exact}"
            );
            let g = y32[i * n + j] as f64;
            assert!(
                (g - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                "f32 [{i}, {j}]: {g} vs {exact}"
            );
        }
    }
}

#[test]
fn a_wrong_operand_shape_is_an_error_naming_the_shapes() {
    let client = pjrt::cpu_client(1).unwrap();
    assert!(kernels::register(client.plugin()).unwrap());
    let mut b = Builder::new("bad");
    let x = b.parameter("x", TensorType::new(DType::BF16, [2, 8]));
    let w = b.parameter("w", TensorType::new(DType::BF16, [4, 6]));
    let y = b
        .custom_call(BF16_TARGET, &[x, w], TensorType::new(DType::BF16, [2, 4]))
        .unwrap();
    let program = b.build(&[y]).unwrap();
    let exe = client
        .compile(&program.to_mlir(), &pjrt::CompileOptions::single())
        .unwrap();
    let xb = client
        .buffer_from_host(&[bf16::from_f32(1.0); 16], &[2, 8], 0)
        .unwrap();
    let wb = client
        .buffer_from_host(&[bf16::from_f32(1.0); 24], &[4, 6], 0)
        .unwrap();
    let err = match exe.execute(&[vec![&xb, &wb]]) {
        Ok(out) => match out[0][0].to_host::<bf16>() {
            Ok(_) => panic!("a [2, 8] x [4, 6] product ran"),
            Err(e) => e.to_string(),
        },
        Err(e) => e.to_string(),
    };
    assert!(err.contains("[2, 8] [4, 6]"), "{err}");
}

/// `(batch, heads, kv_heads, head_dim, cache slots)`.
type Shape = (usize, usize, usize, usize, usize);

/// The attention custom call and `attention_cached` with the mask "slots
/// `pad[b]..=slot`" on the same caches, as f32.
fn attention_through_plugin(
    dtype: DType,
    (batch, heads, kv, hd, len): Shape,
    pads: &[i32],
    slot: i32,
) -> (Vec<f32>, Vec<f32>) {
    let client = pjrt::cpu_client(1).unwrap();
    assert!(kernels::register(client.plugin()).unwrap());
    let target = if dtype == DType::BF16 {
        BF16_ATTENTION
    } else {
        F32_ATTENTION
    };
    let [bi, hi, ki, di, li] = [batch, heads, kv, hd, len].map(|x| x as i64);
    let mut b = Builder::new("attention");
    let q = b.parameter("q", TensorType::new(dtype, [bi, 1, hi, di]));
    let kt = b.parameter("kt", TensorType::new(dtype, [bi, ki, di, li]));
    let v = b.parameter("v", TensorType::new(dtype, [bi, ki, li, di]));
    let pad = b.parameter("pad", TensorType::i32([bi]));
    let at = b.parameter("slot", TensorType::i32([]));
    let q3 = b.reshape(q, &[bi, hi, di]).unwrap();
    let o = b
        .custom_call(
            target,
            &[q3, kt, v, pad, at],
            TensorType::new(dtype, [bi, hi, di]),
        )
        .unwrap();
    let cols = b.iota(TensorType::i32([bi, 1, li]), 2).unwrap();
    let first = b.broadcast_in_dim(pad, &[bi, 1, li], &[0]).unwrap();
    let last = b.broadcast_in_dim(at, &[bi, 1, li], &[]).unwrap();
    let real = b.ge(cols, first).unwrap();
    let seen = b.le(cols, last).unwrap();
    let mask = b.and(real, seen).unwrap();
    let x = gemma::blocks::attention_cached(&mut b, q, kt, v, mask).unwrap();
    let x = b.reshape(x, &[bi, hi, di]).unwrap();
    let of = b.convert(o, DType::F32).unwrap();
    let xf = b.convert(x, DType::F32).unwrap();
    let program = b.build(&[of, xf]).unwrap();
    let bufs = [
        upload(
            &client,
            dtype,
            &values(batch * heads * hd, 3),
            &[bi, 1, hi, di],
        ),
        upload(
            &client,
            dtype,
            &values(batch * kv * hd * len, 4),
            &[bi, ki, di, li],
        ),
        upload(
            &client,
            dtype,
            &values(batch * kv * len * hd, 5),
            &[bi, ki, li, di],
        ),
        client.buffer_from_host(pads, &[bi], 0).unwrap(),
        client.buffer_from_host(&[slot], &[], 0).unwrap(),
    ];
    run_pair(&client, &program, &bufs)
}

#[test]
fn attention_custom_call_equals_xla_attention() {
    // Grouped heads with rows starting at different slots (one attends to
    // a single slot); then the vector paths: odd groups, and the bench's
    // shape split between threads.
    let cases: [(Shape, Vec<i32>, i32); 3] = [
        ((3, 4, 2, 16, 40), vec![0, 5, 29], 29),
        // Groups of 7 heads (chunks of 4, 2 and 1), slots past a tile.
        ((2, 14, 2, 32, 100), vec![0, 40], 90),
        ((8, 8, 1, 64, 528), vec![0, 3, 17, 100, 0, 250, 1, 299], 299),
    ];
    for dtype in [DType::BF16, DType::F32] {
        for (dims, pads, slot) in &cases {
            let (got, want) = attention_through_plugin(dtype, *dims, pads, *slot);
            let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            // bf16: a probability's rounding may go the other way (the
            // exponential differs in its last bits): a few bf16 units.
            let tol = if dtype == DType::BF16 {
                2f32.powi(-6) * scale
            } else {
                2f32.powi(-18) * scale
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - w).abs() <= tol,
                    "{dtype} {dims:?}: element {i}: kernel {g} vs XLA {w}"
                );
            }
        }
    }
}
