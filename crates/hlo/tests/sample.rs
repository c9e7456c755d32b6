//! Token choice on the device: the integer hash equals its host twin (on
//! the interpreter and the CPU plugin), argmax takes the first maximum, the
//! bisection thresholds equal sorting, and sampled frequencies match the
//! filtered softmax (chi-square) for temperature, top-k and top-p.

use hlo::{Builder, DType, Tensor, TensorType, hash_combine_host, mix32_host};
use pjrt::{Buffer, Client, CompileOptions};

fn client() -> Client {
    pjrt::cpu_client(1).expect("CPU plugin client")
}

fn run(c: &Client, p: &hlo::Program, args: &[Buffer]) -> Vec<Buffer> {
    let exe = c
        .compile(&p.to_mlir(), &CompileOptions::single())
        .expect("compiles");
    let mut out = exe.execute(&[args.iter().collect()]).expect("runs");
    out.remove(0)
}

#[test]
fn hash_matches_the_host_on_interpreter_and_device() {
    let xs: Vec<u32> = vec![
        0,
        1,
        2,
        0x7fff_ffff,
        0x8000_0000,
        0xffff_ffff,
        12345,
        0xdead_beef,
    ];
    let ys: Vec<u32> = vec![7, 0, 0xffff_ffff, 3, 99, 1, 0x8000_0001, 42];
    let n = xs.len() as i64;
    let mut b = Builder::new("hash");
    let x = b.parameter("x", TensorType::new(DType::U32, [n]));
    let y = b.parameter("y", TensorType::new(DType::U32, [n]));
    let m = b.mix32(x).unwrap();
    let h = b.hash_combine(x, y).unwrap();
    let p = b.build(&[m, h]).unwrap();
    let want_m: Vec<u32> = xs.iter().map(|&a| mix32_host(a)).collect();
    let want_h: Vec<u32> = xs
        .iter()
        .zip(&ys)
        .map(|(&a, &c)| hash_combine_host(a, c))
        .collect();
    assert_ne!(want_m[0], want_m[1]);

    let t = |v: &[u32]| Tensor::new([n], v.iter().map(|&a| a as f64).collect());
    let host = p.evaluate(&[t(&xs), t(&ys)]).unwrap();
    let as_u32 = |t: &Tensor| t.data.iter().map(|&a| a as u32).collect::<Vec<_>>();
    assert_eq!(as_u32(&host[0]), want_m);
    assert_eq!(as_u32(&host[1]), want_h);

    let c = client();
    let out = run(
        &c,
        &p,
        &[
            c.buffer_from_host(&xs, &[n], 0).unwrap(),
            c.buffer_from_host(&ys, &[n], 0).unwrap(),
        ],
    );
    assert_eq!(out[0].to_host::<u32>().unwrap(), want_m);
    assert_eq!(out[1].to_host::<u32>().unwrap(), want_h);
}

#[test]
fn argmax_takes_the_first_maximum() {
    let rows: Vec<f32> = vec![
        1.0, 3.0, 3.0, 2.0, // tie: index 1
        -5.0, -4.0, -4.5, -9.0, // 1
        0.0, 0.0, 0.0, 0.0, // 0
        2.0, 1.0, 7.0, 7.5, // 3
    ];
    let mut b = Builder::new("argmax");
    let x = b.parameter("x", TensorType::f32([4, 4]));
    let a = b.argmax_last(x).unwrap();
    let p = b.build(&[a]).unwrap();
    let host = p
        .evaluate(&[Tensor::new(
            [4, 4],
            rows.iter().map(|&v| v as f64).collect(),
        )])
        .unwrap();
    assert_eq!(host[0].data, vec![1.0, 1.0, 0.0, 3.0]);
    let c = client();
    let out = run(&c, &p, &[c.buffer_from_host(&rows, &[4, 4], 0).unwrap()]);
    assert_eq!(out[0].to_host::<i32>().unwrap(), vec![1, 1, 0, 3]);
}

/// A deterministic stream of numbers in [0, 1) for test data.
fn lcg(seed: u64) -> impl FnMut() -> f64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn thresholds_equal_sorting() {
    let (rows, v) = (6usize, 40usize);
    let mut r = lcg(3);
    let mut x = vec![0f32; rows * v];
    for (i, e) in x.iter_mut().enumerate() {
        // Rows with ties, zeros and tiny values.
        *e = match i % 7 {
            0 => 0.0,
            1 => 0.25,
            _ => (r() * r() * 1e-3f64.powf(r())) as f32,
        };
    }
    let ks: Vec<i32> = vec![1, 3, 7, 40, 55, 0];
    let ps: Vec<f32> = vec![0.1, 0.5, 0.9, 1.0, 0.33, 0.999];
    let mut b = Builder::new("thresholds");
    let xv = b.parameter("x", TensorType::f32([rows as i64, v as i64]));
    let kv = b.parameter("k", TensorType::i32([rows as i64]));
    let pv = b.parameter("p", TensorType::f32([rows as i64]));
    let kth = b.kth_largest(xv, kv).unwrap();
    let tp = b.top_p_threshold(xv, pv).unwrap();
    let p = b.build(&[kth, tp]).unwrap();
    let c = client();
    let out = run(
        &c,
        &p,
        &[
            c.buffer_from_host(&x, &[rows as i64, v as i64], 0).unwrap(),
            c.buffer_from_host(&ks, &[rows as i64], 0).unwrap(),
            c.buffer_from_host(&ps, &[rows as i64], 0).unwrap(),
        ],
    );
    let kth = out[0].to_host::<f32>().unwrap();
    let tp = out[1].to_host::<f32>().unwrap();
    for row in 0..rows {
        let xs = &x[row * v..(row + 1) * v];
        let mut sorted = xs.to_vec();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let k = (ks[row].max(1) as usize).min(v);
        assert_eq!(kth[row], sorted[k - 1], "row {row}: k-th largest, k = {k}");
        // transformers' rule: ascending cumulative sums, drop those <= 1 - p.
        let total: f64 = xs.iter().map(|&a| a as f64).sum();
        let mut asc = sorted.clone();
        asc.reverse();
        let mut cum = 0.0;
        let mut keep_min = f32::INFINITY;
        for &a in &asc {
            cum += a as f64 / total;
            if cum > 1.0 - ps[row] as f64 + 1e-9 {
                keep_min = keep_min.min(a);
            }
        }
        keep_min = keep_min.min(sorted[0]);
        let kept = xs.iter().filter(|&&a| a >= tp[row]).count();
        let want = xs.iter().filter(|&&a| a >= keep_min).count();
        assert_eq!(
            kept, want,
            "row {row}: top-p {} keeps {kept}, expected {want}",
            ps[row]
        );
    }
}

/// The distribution `transformers` samples from: softmax(logits / t), then
/// top-k (ties kept), then top-p on the renormalised survivors.
fn filtered_softmax(logits: &[f64], t: f64, k: usize, top_p: f64) -> Vec<f64> {
    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logits.iter().map(|&l| ((l - m) / t).exp()).collect();
    let s: f64 = e.iter().sum();
    let mut p: Vec<f64> = e.iter().map(|x| x / s).collect();
    if k > 0 {
        let mut sorted = p.clone();
        sorted.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let th = sorted[k.min(p.len()) - 1];
        p.iter_mut().filter(|x| **x < th).for_each(|x| *x = 0.0);
    }
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= s);
    if top_p < 1.0 {
        let mut idx: Vec<usize> = (0..p.len()).collect();
        idx.sort_by(|&a, &b| p[a].partial_cmp(&p[b]).unwrap());
        let mut cum = 0.0;
        let mut drop = vec![false; p.len()];
        for &i in &idx[..idx.len() - 1] {
            cum += p[i];
            drop[i] = cum <= 1.0 - top_p;
        }
        for (x, d) in p.iter_mut().zip(drop) {
            if d {
                *x = 0.0;
            }
        }
        let s: f64 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= s);
    }
    p
}

/// Upper `alpha = 1e-6` quantile of chi-square with `df` degrees of
/// freedom (Wilson-Hilferty; z = 4.753).
fn chi2_critical(df: usize) -> f64 {
    let d = df as f64;
    let a = 2.0 / (9.0 * d);
    d * (1.0 - a + 4.753 * a.sqrt()).powi(3)
}

#[test]
fn sampled_frequencies_match_the_filtered_softmax() {
    let v = 12usize;
    let n = 6000usize;
    let logits: Vec<f32> = vec![
        1.2, -0.3, 0.8, 2.0, 0.0, -1.5, 1.9, 0.4, -0.7, 1.0, 2.0, -2.5,
    ];
    let c = client();
    // (temperature, top_k, top_p)
    let cases = [
        (1.0, 0, 1.0),
        (0.6, 0, 1.0),
        (1.7, 0, 1.0),
        (1.0, 4, 1.0),
        (1.0, 0, 0.7),
        (1.3, 6, 0.8),
    ];
    for (ci, &(t, k, tp)) in cases.iter().enumerate() {
        let mut b = Builder::new("sample");
        let lv = b.parameter("logits", TensorType::f32([n as i64, v as i64]));
        let keys = b.parameter("keys", TensorType::new(DType::U32, [n as i64]));
        let temp = b.parameter("t", TensorType::f32([]));
        let kv = b.parameter("k", TensorType::i32([n as i64]));
        let pv = b.parameter("p", TensorType::f32([n as i64]));
        let u = b.uniform_rows(keys, v as i64).unwrap();
        let s = b
            .sample_categorical(lv, temp, (k > 0).then_some(kv), (tp < 1.0).then_some(pv), u)
            .unwrap();
        let p = b.build(&[s]).unwrap();
        let all: Vec<f32> = (0..n).flat_map(|_| logits.iter().copied()).collect();
        let keys: Vec<u32> = (0..n as u32).map(|i| hash_combine_host(77, i)).collect();
        let args = [
            c.buffer_from_host(&all, &[n as i64, v as i64], 0).unwrap(),
            c.buffer_from_host(&keys, &[n as i64], 0).unwrap(),
            c.buffer_from_host(&[t as f32], &[], 0).unwrap(),
            c.buffer_from_host(&vec![k; n], &[n as i64], 0).unwrap(),
            c.buffer_from_host(&vec![tp as f32; n], &[n as i64], 0)
                .unwrap(),
        ];
        let draws = run(&c, &p, &args)[0].to_host::<i32>().unwrap();
        let again = run(&c, &p, &args)[0].to_host::<i32>().unwrap();
        assert_eq!(draws, again, "case {ci}: the same keys give the same draws");
        let mut counts = vec![0usize; v];
        for &d in &draws {
            counts[d as usize] += 1;
        }
        let l64: Vec<f64> = logits.iter().map(|&x| x as f64).collect();
        let want = filtered_softmax(&l64, t, k as usize, tp);
        let mut chi2 = 0.0;
        let mut df = 0usize;
        let mut tv = 0.0;
        for j in 0..v {
            if want[j] == 0.0 {
                assert_eq!(
                    counts[j], 0,
                    "case {ci}: token {j} is filtered out but was drawn"
                );
                continue;
            }
            let e = want[j] * n as f64;
            chi2 += (counts[j] as f64 - e).powi(2) / e;
            df += 1;
            tv += (counts[j] as f64 / n as f64 - want[j]).abs() / 2.0;
        }
        let crit = chi2_critical(df.saturating_sub(1).max(1));
        assert!(
            chi2 < crit,
            "case {ci} (t {t}, k {k}, p {tp}): chi2 {chi2:.1} >= {crit:.1}; counts {counts:?}, expected {want:?}"
        );
        assert!(tv < 0.03, "case {ci}: total variation {tv:.3}");
    }
}
