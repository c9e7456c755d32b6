//! Gemma v1 shapes: the 2B and 7B presets, a tiny smoke shape, any custom
//! shape, and the Hugging Face `config.json` they correspond to.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The shape and constants of a Gemma v1 model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GemmaConfig {
    /// Vocabulary size (256000 for the released models).
    pub vocab_size: usize,
    /// Residual width.
    pub d_model: usize,
    /// Number of decoder layers.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (1 = multi-query); must divide `heads`.
    pub kv_heads: usize,
    /// Width of one head (256 for the released models, independent of d_model).
    pub head_dim: usize,
    /// Hidden width of the GeGLU MLP.
    pub mlp_dim: usize,
    /// Longest sequence the model is used with.
    pub max_seq_len: usize,
    /// RoPE base.
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    pub norm_eps: f64,
    /// Normalise each sub-layer's output too (the technical report's variant,
    /// Gemma 2 style). Released v1 checkpoints do not: off by default.
    #[serde(default)]
    pub post_norms: bool,
    /// A reward model: a bias-free `score` head (`score.weight [1, d_model]`)
    /// on the last real token's final-normed state instead of the tied LM
    /// head, as transformers' `GemmaForSequenceClassification` with
    /// `num_labels = 1`.
    #[serde(default)]
    pub score_head: bool,
}

impl GemmaConfig {
    /// Gemma 2B: multi-query attention.
    pub fn gemma_2b() -> Self {
        GemmaConfig {
            vocab_size: 256_000,
            d_model: 2048,
            layers: 18,
            heads: 8,
            kv_heads: 1,
            head_dim: 256,
            mlp_dim: 16_384,
            max_seq_len: 8192,
            rope_theta: 10_000.0,
            norm_eps: 1e-6,
            post_norms: false,
            score_head: false,
        }
    }

    /// Gemma 7B: multi-head attention, heads x head_dim (4096) != d_model (3072).
    pub fn gemma_7b() -> Self {
        GemmaConfig {
            d_model: 3072,
            layers: 28,
            heads: 16,
            kv_heads: 16,
            mlp_dim: 24_576,
            ..Self::gemma_2b()
        }
    }

    /// A few-million-parameter shape for CPU smoke runs.
    pub fn tiny() -> Self {
        GemmaConfig {
            vocab_size: 4096,
            d_model: 256,
            layers: 4,
            heads: 4,
            kv_heads: 1,
            head_dim: 64,
            mlp_dim: 1024,
            max_seq_len: 512,
            ..Self::gemma_2b()
        }
    }

    /// A preset by name: `gemma-2b`, `gemma-7b`, `tiny`.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "gemma-2b" => Ok(Self::gemma_2b()),
            "gemma-7b" => Ok(Self::gemma_7b()),
            "tiny" => Ok(Self::tiny()),
            other => Err(Error::Preset(other.to_string())),
        }
    }

    /// Refuses impossible shapes, naming the key and what is allowed.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv_heads", self.kv_heads),
            ("head_dim", self.head_dim),
            ("mlp_dim", self.mlp_dim),
            ("max_seq_len", self.max_seq_len),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::config(key, v, "must be at least 1"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::config(
                "kv_heads",
                self.kv_heads,
                format!("must divide heads = {}", self.heads),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(
                "head_dim",
                self.head_dim,
                "must be even (RoPE rotates halves)",
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(Error::config(
                "rope_theta",
                self.rope_theta,
                "must be a finite number above 1",
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0 && self.norm_eps < 1.0) {
            return Err(Error::config(
                "norm_eps",
                self.norm_eps,
                "must be in (0, 1)",
            ));
        }
        Ok(())
    }

    /// Number of parameters (embedding counted once: the output head is tied).
    pub fn num_params(&self) -> usize {
        crate::params::param_specs(self)
            .iter()
            .map(|p| p.numel())
            .sum()
    }

    /// Reads a Hugging Face `config.json` of a `GemmaForCausalLM`.
    pub fn from_hf_json(text: &str, path: &std::path::Path) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let int = |key: &str| -> Result<usize> {
            v.get(key)
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize)
                .ok_or_else(|| Error::format(path, format!("`{key}` missing or not an integer")))
        };
        let float = |key: &str, default: f64| {
            v.get(key)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(default)
        };
        if let Some(t) = v.get("model_type").and_then(|t| t.as_str())
            && t != "gemma"
        {
            return Err(Error::format(
                path,
                format!("model_type is {t:?}; this importer reads Gemma v1 (\"gemma\")"),
            ));
        }
        for key in ["hidden_activation", "hidden_act"] {
            if let Some(act) = v.get(key).and_then(|a| a.as_str())
                && !matches!(act, "gelu_pytorch_tanh" | "gelu")
            {
                return Err(Error::format(
                    path,
                    format!("{key} = {act:?}; Gemma uses the tanh GELU"),
                ));
            }
        }
        let heads = int("num_attention_heads")?;
        let cfg = GemmaConfig {
            vocab_size: int("vocab_size")?,
            d_model: int("hidden_size")?,
            layers: int("num_hidden_layers")?,
            heads,
            kv_heads: v
                .get("num_key_value_heads")
                .and_then(serde_json::Value::as_u64)
                .map_or(heads, |n| n as usize),
            head_dim: int("head_dim")?,
            mlp_dim: int("intermediate_size")?,
            max_seq_len: int("max_position_embeddings")?,
            // transformers 5 moved it under `rope_parameters`.
            rope_theta: v
                .get("rope_parameters")
                .and_then(|r| r.get("rope_theta"))
                .and_then(serde_json::Value::as_f64)
                .unwrap_or_else(|| float("rope_theta", 10_000.0)),
            norm_eps: float("rms_norm_eps", 1e-6),
            post_norms: false,
            score_head: score_head(&v, path)?,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The Hugging Face `config.json` for this shape (`GemmaForCausalLM`, or
    /// `GemmaForSequenceClassification` with one label for a reward model).
    pub fn to_hf_json(&self, torch_dtype: &str) -> serde_json::Value {
        let mut v = self.causal_lm_json(torch_dtype);
        if self.score_head {
            v["architectures"] = serde_json::json!(["GemmaForSequenceClassification"]);
            v["id2label"] = serde_json::json!({"0": "LABEL_0"});
            v["label2id"] = serde_json::json!({"LABEL_0": 0});
        }
        v
    }

    fn causal_lm_json(&self, torch_dtype: &str) -> serde_json::Value {
        serde_json::json!({
            "architectures": ["GemmaForCausalLM"],
            "model_type": "gemma",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.mlp_dim,
            "max_position_embeddings": self.max_seq_len,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.norm_eps,
            "hidden_act": "gelu_pytorch_tanh",
            "hidden_activation": "gelu_pytorch_tanh",
            "attention_bias": false,
            "attention_dropout": 0.0,
            "tie_word_embeddings": true,
            "bos_token_id": 2,
            "eos_token_id": 1,
            "pad_token_id": 0,
            "torch_dtype": torch_dtype,
        })
    }
}

/// Whether a `config.json` describes a reward model:
/// `GemmaForSequenceClassification`, which must have exactly one label.
fn score_head(v: &serde_json::Value, path: &std::path::Path) -> Result<bool> {
    let arch = v.get("architectures").and_then(|a| a.as_array());
    let classifier = arch.is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str() == Some("GemmaForSequenceClassification"))
    });
    if !classifier {
        return Ok(false);
    }
    let labels = match (v.get("num_labels"), v.get("id2label")) {
        (Some(n), _) => n.as_u64(),
        (None, Some(m)) => m.as_object().map(|m| m.len() as u64),
        // transformers' default is two labels.
        (None, None) => Some(2),
    };
    if labels != Some(1) {
        return Err(Error::format(
            path,
            format!(
                "GemmaForSequenceClassification with {} labels (num_labels / id2label); \
                 a reward model has exactly 1",
                labels.map_or("an unreadable number of".into(), |n| n.to_string())
            ),
        ));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_shapes_have_the_published_sizes() {
        // 2B: 2.51e9 parameters with the embedding; 7B: 8.54e9.
        assert_eq!(GemmaConfig::gemma_2b().num_params(), 2_506_172_416);
        assert_eq!(GemmaConfig::gemma_7b().num_params(), 8_537_680_896);
    }

    #[test]
    fn impossible_values_name_the_key() {
        let mut c = GemmaConfig::tiny();
        c.heads = 6;
        c.kv_heads = 4;
        let e = c.validate().unwrap_err().to_string();
        assert_eq!(e, "model.kv_heads = 4: must divide heads = 6");
        let mut c = GemmaConfig::tiny();
        c.head_dim = 7;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("model.head_dim = 7")
        );
        assert!(
            GemmaConfig::preset("gemma-3b")
                .unwrap_err()
                .to_string()
                .contains("gemma-3b")
        );
    }

    #[test]
    fn hf_config_round_trips() {
        let c = GemmaConfig::gemma_7b();
        let text = c.to_hf_json("float32").to_string();
        assert_eq!(
            GemmaConfig::from_hf_json(&text, "c.json".as_ref()).unwrap(),
            c
        );
    }
}
