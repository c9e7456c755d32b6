//! Tensor programs for training: a typed op graph, reverse-mode autodiff,
//! rematerialization, Shardy sharding annotations and StableHLO emission.
//!
//! A [`Builder`] owns the graph; a [`Value`] is a small `Copy` handle to one
//! tensor in it. Every op checks shapes and dtypes when it is added and
//! returns an [`Error`] naming the op, the operand types and what it
//! expected. [`Builder::grad`] appends the backward pass to the same graph.
//! [`Builder::build`] turns the graph into a [`Program`] whose
//! [`Program::to_mlir`] is the StableHLO module a PJRT plugin compiles.
//!
//! The crate knows nothing about any model. Raw StableHLO ops (`add`,
//! `dot_general`, `reduce`...) are strict about shapes; the convenience
//! layer in [`nn`] (`add_bcast`, `mul_scalar`, `matmul`, `softmax`,
//! `rms_norm`, `rope`, `causal_attention`, `cross_entropy`...) broadcasts
//! and reads like the math.
//!
//! ```
//! use hlo::{Builder, Mesh, RematPolicy, Sharding, TensorType};
//!
//! # fn main() -> hlo::Result<()> {
//! let mut b = Builder::new("step");
//! b.set_mesh(Mesh::new([("data", 2)])?);
//! let x = b.parameter_sharded("x", TensorType::f32([4, 3]), Sharding::new(["data", ""]))?;
//! let w = b.parameter("w", TensorType::f32([3, 2]));
//! let loss = b.scope("layer0", |b| {
//!     b.remat(RematPolicy::Full, |b| {
//!         let h = b.matmul(x, w)?; // [4, 2]
//!         let h = b.tanh(h)?;
//!         b.mean(h, &[0, 1])
//!     })
//! })?;
//! let grads = b.grad(loss, &[w])?;
//! let mut program = b.build(&[loss, grads[0]])?;
//! program.set_output_sharding(1, Sharding::new(["", ""]))?;
//! let mlir = program.to_mlir();
//! assert!(mlir.contains("sdy.mesh @mesh = <[\"data\"=2]>"));
//! assert!(mlir.contains("stablehlo.optimization_barrier"));
//! // The host interpreter gives reference numbers.
//! let out = program.evaluate(&[
//!     hlo::Tensor::new([4, 3], vec![0.1; 12]),
//!     hlo::Tensor::new([3, 2], vec![0.2; 6]),
//! ])?;
//! assert!((out[0].data[0] - (0.06f64).tanh()).abs() < 1e-6);
//! # Ok(()) }
//! ```
//!
//! Embedding lookups are `stablehlo.gather` ([`Builder::take_rows`]) with a
//! `stablehlo.scatter` add gradient ([`Builder::scatter_add_rows`]): a
//! one-hot matmul would materialise a `[tokens, vocab]` matrix, 8192 x 256000
//! floats (8 GiB in f32) per sequence for Gemma, and cost as many FLOPs as
//! a large layer.
//!
//! Set `MESHTRAIN_DUMP_HLO=DIR` and call [`Program::dump_if_requested`] to
//! write the module to `DIR/<name>.mlir`.
#![deny(missing_docs)]

mod autodiff;
mod builder;
mod dtype;
mod emit;
mod error;
mod interp;
pub mod nn;
mod op;
mod ops;
mod program;
mod remat;
mod sharding;
mod vjp;

pub use builder::{Builder, Value};
pub use dtype::{DType, TensorType};
pub use error::{Error, Result};
pub use interp::{Tensor, erf};
pub use op::{BinaryOp, CmpDir, DotDims, Literal, ReduceKind, UnaryOp};
pub use program::Program;
pub use remat::RematPolicy;
pub use sharding::{Mesh, Sharding};
