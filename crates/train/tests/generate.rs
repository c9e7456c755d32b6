//! Generation against transformers: greedy continuations equal
//! `GemmaForCausalLM.generate` (goldens from `scripts/gen_generate_golden.py`)
//! for random and trained models, prompts of different lengths in one batch,
//! on one device and on sharded meshes; sampling is deterministic per seed
//! whatever the batch, and its frequencies match the filtered softmax of
//! transformers' logits; a sample stops at a stop token.

use std::path::{Path, PathBuf};

use hlo::DType;
use train::config::{MeshSection, RuntimeConfig};
use train::generate::{Devices, GenerateOptions, Generator, Sampling};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn golden() -> serde_json::Value {
    let p = root().join("crates/train/tests/golden/generate/golden.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn generator(model: &str, devices: usize, mesh: (i64, i64, i64), dtype: DType) -> Generator {
    let ck = gemma::hf::load(&root().join(model)).unwrap();
    let runtime = RuntimeConfig {
        device_count: devices,
        ..RuntimeConfig::default()
    };
    let mesh = MeshSection {
        data: mesh.0,
        fsdp: mesh.1,
        tensor: mesh.2,
        ..MeshSection::default()
    };
    let dev = Devices::new(&ck.config, &runtime, &mesh, dtype).unwrap();
    Generator::new(dev, &ck, dtype).unwrap()
}

/// Every golden model's prompts in one batch; returns (model, mismatches).
fn check_greedy(devices: usize, mesh_of: impl Fn(&str) -> (i64, i64, i64)) {
    let g = golden();
    for m in g["greedy"].as_array().unwrap() {
        let model = m["model"].as_str().unwrap();
        let mut engine = generator(model, devices, mesh_of(model), DType::F32);
        let cases = m["cases"].as_array().unwrap();
        let prompts: Vec<Vec<u32>> = cases.iter().map(|c| ids(&c["prompt"])).collect();
        let opts = GenerateOptions {
            max_new_tokens: m["max_new_tokens"].as_u64().unwrap() as usize,
            ..GenerateOptions::default()
        };
        let out = engine.generate(&prompts, &opts, &mut |_| {}).unwrap();
        for (c, o) in cases.iter().zip(&out) {
            assert_eq!(o.prompt, ids(&c["prompt"]));
            assert_eq!(
                o.samples[0],
                ids(&c["new"]),
                "{model} on {devices} devices, prompt of {} tokens",
                o.prompt.len()
            );
        }
    }
}

#[test]
fn greedy_equals_transformers_on_one_device() {
    check_greedy(1, |_| (1, 1, 1));
}

#[test]
fn greedy_equals_transformers_on_sharded_meshes() {
    // Tensor parallel where the heads divide, FSDP and data parallel over the rest.
    check_greedy(8, |model| {
        if model.contains("multi_head") {
            (1, 2, 4)
        } else if model.contains("wide_heads") {
            (2, 4, 1) // 3 heads: no tensor parallelism
        } else {
            (2, 2, 2)
        }
    });
}

#[test]
fn a_sample_ends_at_a_stop_token() {
    let g = golden();
    let m = &g["greedy"][3]; // the trained model
    let case = &m["cases"][1];
    let want = ids(&case["new"]);
    let stop = want[4];
    let first = want.iter().position(|&t| t == stop).unwrap();
    let mut engine = generator(m["model"].as_str().unwrap(), 1, (1, 1, 1), DType::F32);
    let opts = GenerateOptions {
        max_new_tokens: 30,
        stop_ids: vec![stop],
        ..GenerateOptions::default()
    };
    let mut streamed = Vec::new();
    let out = engine
        .generate(&[ids(&case["prompt"])], &opts, &mut |e| {
            streamed.push(e.token)
        })
        .unwrap();
    assert_eq!(out[0].samples[0], want[..=first].to_vec());
    assert_eq!(streamed, want[..=first].to_vec());
}

#[test]
fn sampling_is_deterministic_and_independent_of_the_batch() {
    let g = golden();
    let m = &g["greedy"][0];
    let model = m["model"].as_str().unwrap();
    let prompts: Vec<Vec<u32>> = m["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| ids(&c["prompt"]))
        .collect();
    let mut engine = generator(model, 1, (1, 1, 1), DType::F32);
    let opts = GenerateOptions {
        max_new_tokens: 10,
        sampling: Sampling {
            temperature: 1.5,
            top_k: 20,
            top_p: 0.95,
        },
        num_samples: 3,
        seed: 7,
        stop_ids: vec![],
        max_batch: 32,
    };
    let all = engine.generate(&prompts, &opts, &mut |_| {}).unwrap();
    let again = engine.generate(&prompts, &opts, &mut |_| {}).unwrap();
    assert_eq!(all, again, "same seed, same samples");
    // Prompt 2 alone, in batches of one row: another bucket, same draws.
    let alone = engine
        .generate(
            &prompts[..3],
            &GenerateOptions {
                max_batch: 1,
                ..opts.clone()
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(alone[2], all[2]);
    let other = engine
        .generate(
            &prompts,
            &GenerateOptions {
                seed: 8,
                ..opts.clone()
            },
            &mut |_| {},
        )
        .unwrap();
    assert_ne!(all, other, "another seed, other samples");
    assert_ne!(all[0].samples[0], all[0].samples[1], "samples differ");
}

/// transformers' next-token logits after `input_ids[0]` of the parity golden.
fn parity_logits(name: &str) -> (Vec<u32>, Vec<f64>) {
    let dir = root().join("crates/gemma/tests/golden").join(name);
    let bytes = std::fs::read(dir.join("golden.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let words = |n: &str| -> Vec<[u8; 4]> {
        st.tensor(n)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| c.try_into().unwrap())
            .collect()
    };
    let input: Vec<u32> = words("input_ids")
        .iter()
        .map(|b| i32::from_le_bytes(*b) as u32)
        .collect();
    let logits: Vec<f64> = words("logits")
        .iter()
        .map(|b| f32::from_le_bytes(*b) as f64)
        .collect();
    let shape = st.tensor("logits").unwrap().shape().to_vec();
    let (t, v) = (shape[1], shape[2]);
    (input[..t].to_vec(), logits[(t - 1) * v..t * v].to_vec())
}

/// softmax(l / t), top-k (ties kept), then top-p on the renormalised rest,
/// with transformers' rule (ascending cumulative sums <= 1 - p removed).
fn filtered_softmax(l: &[f64], t: f64, k: usize, p: f64) -> Vec<f64> {
    let m = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let mut q: Vec<f64> = l.iter().map(|x| ((x - m) / t).exp()).collect();
    if k > 0 {
        let mut s = q.clone();
        s.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let th = s[k - 1];
        q.iter_mut().filter(|x| **x < th).for_each(|x| *x = 0.0);
    }
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|x| *x /= total);
    let mut order: Vec<usize> = (0..q.len()).collect();
    order.sort_by(|&a, &b| q[a].partial_cmp(&q[b]).unwrap());
    let mut cum = 0.0;
    let mut drop = vec![false; q.len()];
    for &i in &order[..order.len() - 1] {
        cum += q[i];
        drop[i] = cum <= 1.0 - p;
    }
    for (x, d) in q.iter_mut().zip(drop) {
        if d {
            *x = 0.0;
        }
    }
    let total: f64 = q.iter().sum();
    q.iter().map(|x| x / total).collect()
}

#[test]
fn sampled_frequencies_match_transformers_filtered_softmax() {
    let (prompt, logits) = parity_logits("multi_query");
    let mut engine = generator(
        "crates/gemma/tests/golden/multi_query/model",
        1,
        (1, 1, 1),
        DType::F32,
    );
    let n = 3000usize;
    for (t, k, p) in [(0.7f32, 0u32, 1.0f32), (1.0, 12, 1.0), (1.2, 0, 0.6)] {
        let opts = GenerateOptions {
            max_new_tokens: 1,
            sampling: Sampling {
                temperature: t,
                top_k: k,
                top_p: p,
            },
            num_samples: n,
            seed: 3,
            stop_ids: vec![],
            max_batch: 4096,
        };
        let out = engine
            .generate(std::slice::from_ref(&prompt), &opts, &mut |_| {})
            .unwrap();
        let mut counts = vec![0usize; logits.len()];
        for s in &out[0].samples {
            counts[s[0] as usize] += 1;
        }
        let want = filtered_softmax(&logits, t as f64, k as usize, p as f64);
        // Chi-square over tokens expected at least 5 times (the rest pooled).
        let (mut chi2, mut df, mut pool_e, mut pool_o) = (0.0, 0usize, 0.0, 0.0);
        for (j, &w) in want.iter().enumerate() {
            let e = w * n as f64;
            if w == 0.0 {
                assert_eq!(counts[j], 0, "t {t} k {k} p {p}: token {j} is filtered out");
            } else if e < 5.0 {
                pool_e += e;
                pool_o += counts[j] as f64;
            } else {
                chi2 += (counts[j] as f64 - e).powi(2) / e;
                df += 1;
            }
        }
        if pool_e > 0.0 {
            chi2 += (pool_o - pool_e).powi(2) / pool_e;
            df += 1;
        }
        // Upper 1e-6 quantile (Wilson-Hilferty).
        let d = (df - 1) as f64;
        let a = 2.0 / (9.0 * d);
        let crit = d * (1.0 - a + 4.753 * a.sqrt()).powi(3);
        assert!(
            chi2 < crit,
            "t {t} k {k} p {p}: chi2 {chi2:.1} >= {crit:.1} (df {d})"
        );
    }
}

/// bf16 generation on the CPU keeps the weights as f32 holding bf16 values
/// and multiplies in f32 (XLA's CPU backend would widen bf16 weights on
/// every call): the same scores and greedy tokens as bf16-stored weights,
/// and not the f32 model's scores (the weights really are rounded).
#[test]
fn bf16_weights_stored_as_f32_compute_what_bf16_weights_do() {
    let model = "crates/gemma/tests/golden/multi_query/model";
    let ck = gemma::hf::load(&root().join(model)).unwrap();
    let make = |compute: DType, stored: DType| {
        let dev = Devices::new(
            &ck.config,
            &RuntimeConfig::default(),
            &MeshSection::default(),
            compute,
        )
        .unwrap();
        Generator::with_storage(dev, &ck, compute, stored).unwrap()
    };
    let mut widened = make(DType::BF16, DType::F32);
    assert_eq!(widened.devices().weight_dtype(DType::BF16), DType::F32);
    let mut native = make(DType::BF16, DType::BF16);
    let mut full = make(DType::F32, DType::F32);
    let pairs: Vec<(Vec<u32>, Vec<u32>)> = (0..4u32)
        .map(|i| {
            let ctx: Vec<u32> = (0..3 + 5 * i).map(|t| 2 + (t * 7 + i) % 90).collect();
            (ctx, vec![5 + i, 17, 33 + i])
        })
        .collect();
    let a = widened.continuation_logprobs(&pairs, 4).unwrap();
    let b = native.continuation_logprobs(&pairs, 4).unwrap();
    let f = full.continuation_logprobs(&pairs, 4).unwrap();
    for ((x, y), z) in a.iter().zip(&b).zip(&f) {
        assert!((x - y).abs() <= 0.02 * y.abs().max(1.0), "{x} vs bf16 {y}");
        assert!(
            x != z,
            "bf16 scores equal f32 ones ({x}): weights not rounded"
        );
    }
    let prompts: Vec<Vec<u32>> = pairs.iter().map(|p| p.0.clone()).collect();
    let opts = GenerateOptions {
        max_new_tokens: 8,
        stop_ids: vec![],
        ..GenerateOptions::default()
    };
    let ga = widened.generate(&prompts, &opts, &mut |_| {}).unwrap();
    let gb = native.generate(&prompts, &opts, &mut |_| {}).unwrap();
    assert_eq!(ga, gb);
}

/// A decode step reads its caches in place: XLA's optimized program makes
/// nothing cache-sized besides each layer's in-place key and value updates
/// (a transpose of the key cache per layer and step, or a copy of a cache,
/// would add a cache-sized instruction and a cost growing with its length).
#[test]
fn a_decode_step_copies_no_cache() {
    let model = "crates/gemma/tests/golden/multi_query/model";
    for dtype in [DType::F32, DType::BF16] {
        let mut engine = generator(model, 1, (1, 1, 1), dtype);
        let cfg = engine.config().clone();
        let (batch, prompt, new) = (4, 8, 120);
        let hlo = engine.decode_step_hlo(batch, prompt, new).unwrap();
        let elems = (batch * cfg.kv_heads * cfg.head_dim * (prompt + new)) as i64;
        let sized: Vec<String> = hlo
            .instructions
            .iter()
            .filter(|i| i.computation == hlo.entry)
            .filter(|i| i.shape.tuple.is_empty() && i.shape.dims.iter().product::<i64>() == elems)
            .filter(|i| !matches!(i.opcode.as_str(), "parameter" | "bitcast"))
            .map(|i| format!("{} {}", i.opcode, i.name))
            .collect();
        assert_eq!(
            sized.len(),
            2 * cfg.layers,
            "{dtype:?}: cache-sized instructions {sized:#?}"
        );
        assert!(
            sized.iter().all(|s| s.contains("dynamic-update-slice")),
            "{dtype:?}: {sized:#?}"
        );
    }
}
