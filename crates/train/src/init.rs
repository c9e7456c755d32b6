//! Initial parameters: random (normal, std 0.02, norms at zero as in
//! `transformers`' Gemma init) or from a Hugging Face checkpoint. Random
//! values depend only on the seed and the parameter's index, never on the
//! mesh, so every mesh starts from the same model.

use gemma::{GemmaConfig, param_specs};

use crate::{Error, Result};

/// splitmix64: small, fast, good enough for initialisation.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn uniform(state: &mut u64) -> f64 {
    ((splitmix(state) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Every parameter's initial values, in [`param_specs`] order. A reward
/// model (`cfg.score_head`) may start from a causal-LM checkpoint: the
/// backbone comes from it, the `score` head from the seed.
pub fn init_params(cfg: &GemmaConfig, init: &str, seed: u64) -> Result<Vec<Vec<f32>>> {
    if let Some(dir) = init.strip_prefix("hf:") {
        let ck = gemma::hf::load(&crate::config::hf_dir(dir)?)?;
        let head_from_seed = cfg.score_head && !ck.config.score_head;
        let backbone = GemmaConfig {
            score_head: cfg.score_head && ck.config.score_head,
            ..cfg.clone()
        };
        if ck.config != backbone {
            return Err(Error::config(
                "model",
                "model.init",
                format!(
                    "{dir} holds a model of another shape ({:?}) than the config ({:?})",
                    ck.config, cfg
                ),
            ));
        }
        let mut params: Vec<Vec<f32>> = ck.params.into_iter().map(|t| t.data).collect();
        if head_from_seed {
            let random = random_params(cfg, seed);
            // invariant: a score-head config's random parameters end with the head.
            params.push(random.last().expect("score head").clone());
        }
        return Ok(params);
    }
    Ok(random_params(cfg, seed))
}

fn random_params(cfg: &GemmaConfig, seed: u64) -> Vec<Vec<f32>> {
    param_specs(cfg)
        .iter()
        .enumerate()
        .map(|(i, spec)| {
            if spec.is_norm() {
                return vec![0.0; spec.numel()];
            }
            let mut state = seed ^ ((i as u64 + 1) << 32) ^ 0x6d65_7368;
            (0..spec.numel())
                .map(|_| {
                    // Box-Muller.
                    let (u1, u2) = (uniform(&mut state), uniform(&mut state));
                    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 0.02)
                        as f32
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_init_is_seeded_normal_with_zero_norms() {
        let c = GemmaConfig::tiny();
        let a = init_params(&c, "random", 1).unwrap();
        let b = init_params(&c, "random", 1).unwrap();
        let d = init_params(&c, "random", 2).unwrap();
        assert_eq!(a, b);
        assert_ne!(a[0], d[0]);
        assert!(
            a[1].iter().all(|&x| x == 0.0),
            "input_layernorm starts at zero"
        );
        let e = &a[0];
        let mean = e.iter().map(|&x| x as f64).sum::<f64>() / e.len() as f64;
        let std =
            (e.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / e.len() as f64).sqrt();
        assert!(
            mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3,
            "mean {mean} std {std}"
        );
    }

    #[test]
    fn a_reward_model_starts_from_a_causal_lm_with_a_seeded_head() {
        let lm = GemmaConfig {
            vocab_size: 64,
            d_model: 16,
            layers: 1,
            heads: 2,
            kv_heads: 1,
            head_dim: 8,
            mlp_dim: 32,
            ..GemmaConfig::tiny()
        };
        let params = init_params(&lm, "random", 3).unwrap();
        let dir = tempfile::tempdir().unwrap();
        gemma::hf::save(
            dir.path(),
            &lm,
            &host_of(&lm, &params),
            gemma::hf::SaveDtype::F32,
        )
        .unwrap();
        let init = format!("hf:{}", dir.path().display());
        let rm = GemmaConfig {
            score_head: true,
            ..lm.clone()
        };
        let got = init_params(&rm, &init, 5).unwrap();
        assert_eq!(got.len(), params.len() + 1);
        assert_eq!(
            &got[..params.len()],
            &params[..],
            "backbone from the checkpoint"
        );
        assert_eq!(got.last(), init_params(&rm, "random", 5).unwrap().last());
        // A causal LM does not start from a reward model.
        gemma::hf::save(
            dir.path(),
            &rm,
            &host_of(&rm, &got),
            gemma::hf::SaveDtype::F32,
        )
        .unwrap();
        let e = init_params(&lm, &init, 5).unwrap_err().to_string();
        assert!(e.contains("model.init"), "{e}");
    }

    fn host_of(cfg: &GemmaConfig, params: &[Vec<f32>]) -> Vec<gemma::hf::HostTensor> {
        param_specs(cfg)
            .iter()
            .zip(params)
            .map(|(s, d)| gemma::hf::HostTensor {
                shape: s.shape.clone(),
                data: d.clone(),
            })
            .collect()
    }
}
