//! Gemma v1 for meshtrain: the 2B/7B shapes and any custom one
//! ([`GemmaConfig`]), the parameter tree with logical axes
//! ([`param_specs`]), the reward model ([`Gemma::score`]), and Hugging
//! Face checkpoint import/export ([`hf`]).
//!
//! ```
//! let c = gemma::GemmaConfig::gemma_2b();
//! c.validate().unwrap();
//! let specs = gemma::param_specs(&c);
//! assert_eq!(specs[0].name, "model.embed_tokens.weight");
//! assert_eq!(specs[0].shape, [256_000, 2048]);
//! assert_eq!(c.num_params(), 2_506_172_416);
//! ```
#![deny(missing_docs)]

pub mod blocks;
mod config;
pub mod decode;
mod error;
pub mod hf;
mod model;
mod params;
mod reward;
mod scan;
mod weights;

pub use config::GemmaConfig;
pub use error::{Error, Result};
pub use model::{
    Attend, ComputeOptions, Constrain, Gemma, MaskedAttention, Matmuls, Tokens, Unconstrained,
    token_log_probs, token_loss,
};
pub use params::{
    Axis, Layout, ParamSpec, declare_parameters, from_layout, param_specs, param_specs_in,
    stacked_layer_specs, stacked_name, to_layout,
};
