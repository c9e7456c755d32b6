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
//! `gelu_tanh`, `cross_entropy`...) broadcasts and reads like the math. A
//! model's own blocks (Gemma's RMSNorm, RoPE and attention) are written on
//! these in the model's crate.
//!
//! Build, differentiate, shard, emit, and run on two CPU devices:
//!
//! ```
//! use hlo::{Builder, Mesh, RematPolicy, Sharding, Tensor, TensorType};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut b = Builder::new("step");
//! b.set_mesh(Mesh::new([("data", 2)])?);
//! let x = b.parameter_sharded("x", TensorType::f32([4, 3]), Sharding::new(["data", ""]))?;
//! let w = b.parameter("w", TensorType::f32([2, 3])); // [out, in], replicated
//! let loss = b.scope("layers.0", |b| {
//!     b.remat(RematPolicy::Full, |b| {
//!         let h = b.linear(x, w)?; // [4, 2]
//!         let h = b.gelu_tanh(h)?;
//!         b.mean(h, &[0, 1])
//!     })
//! })?;
//! let grads = b.grad(loss, &[w])?;
//! let step = b.mul_scalar(grads[0], 0.1)?;
//! let w_new = b.sub(w, step)?; // SGD
//! let mut program = b.build(&[loss, w_new])?;
//! program.donate(w, 1)?; // update w in place
//! let mlir = program.to_mlir();
//! assert!(mlir.contains("sdy.mesh @mesh = <[\"data\"=2]>"));
//!
//! // Each device gets its shard of x and a full copy of w.
//! let client = pjrt::cpu_client(2)?;
//! let exe = client.compile(&mlir, &pjrt::CompileOptions::spmd(program.num_partitions()))?;
//! let xs: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
//! let ws = [0.5f32, -0.25, 0.125, 1.0, 0.0, -1.0];
//! let mut args = Vec::new();
//! for dev in 0..2 {
//!     let x_shard = client.buffer_from_host(&xs[dev * 6..dev * 6 + 6], &[2, 3], dev)?;
//!     args.push(vec![x_shard, client.buffer_from_host(&ws, &[2, 3], dev)?]);
//! }
//! let out = exe.execute(&[args[0].iter().collect(), args[1].iter().collect()])?;
//!
//! // The host interpreter gives the reference numbers.
//! let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<_>>();
//! let want = program.evaluate(&[Tensor::new([4, 3], f64s(&xs)), Tensor::new([2, 3], f64s(&ws))])?;
//! let loss: Vec<f32> = out[1][0].to_host()?;
//! let w_new: Vec<f32> = out[0][1].to_host()?;
//! assert!((loss[0] as f64 - want[0].data[0]).abs() < 1e-6);
//! assert!(w_new.iter().zip(&want[1].data).all(|(a, b)| (*a as f64 - b).abs() < 1e-6));
//! # Ok(()) }
//! ```
//!
//! The convenience layer ([`nn`]) covers the generic part of a transformer
//! step: [`Builder::gelu_tanh`],
//! [`Builder::cross_entropy`] with a loss mask, [`Builder::softmax`],
//! [`Builder::logsumexp`], [`Builder::matmul`], [`Builder::linear`] and
//! broadcasting arithmetic ([`Builder::add_bcast`], [`Builder::mul_scalar`]...).
//!
//! Choosing tokens on the device (`sample.rs`): [`Builder::argmax_last`],
//! counter-based random numbers ([`Builder::mix32`],
//! [`Builder::uniform_rows`]), top-k and top-p cut-offs found by exact
//! bisection on bit patterns ([`Builder::kth_largest`],
//! [`Builder::top_p_threshold`]) and [`Builder::sample_categorical`].
//!
//! # Design notes
//! - Every op is interned: adding an op identical to an existing one (same
//!   operands and attributes) returns the existing value, so constants and
//!   repeated subexpressions (RoPE tables, masks) appear once in the module.
//! - [`Builder::grad`] runs one reverse sweep over the arena, one VJP `match`
//!   arm per op (`vjp.rs`); cotangents accumulate by addition; integer and
//!   boolean values carry none. A sharding constraint's cotangent gets the
//!   same constraint.
//! - [`Builder::remat`] marks a region; [`RematPolicy`] says what the
//!   backward pass keeps (an `optimization_barrier` keeps XLA from undoing it).
//! - [`Builder::scan`] runs a body over stacked weights as one
//!   `stablehlo.while` (MaxText's `scan_layers`); its gradient is a reverse
//!   loop that replays each iteration from its saved input carry.
//! - Emission is the pretty StableHLO form with Shardy (`sdy`) shardings;
//!   only nodes the outputs depend on are emitted; float constants print as
//!   exact decimals or as hex bit patterns (`0xFF800000`).
//!
//! Embedding lookups are `stablehlo.gather` ([`Builder::take_rows`]) with a
//! `stablehlo.scatter` add gradient ([`Builder::scatter_add_rows`]): a
//! one-hot matmul would materialise a `[tokens, vocab]` matrix, 8192 x 256000
//! floats (8 GiB in f32) per sequence for Gemma, and cost as many FLOPs as
//! a large layer.
//!
//! Debugging: with `MESHTRAIN_DUMP_HLO=DIR` set, every [`Program::to_mlir`]
//! also writes the module to `DIR/<name>.mlir`; [`Program::dump_to`] does it
//! explicitly. Ops carry `loc("layers.3.mlp")` from [`Builder::scope`], so the
//! compiled HLO's metadata points back to model names.
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
mod sample;
mod scan;
mod sharding;
mod vjp;

pub use builder::{Builder, Value};
pub use dtype::{DType, TensorType};
pub use error::{Error, Result};
pub use interp::{Tensor, erf};
pub use op::{BinaryOp, CmpDir, DotDims, Literal, ReduceKind, UnaryOp};
pub use program::{DotPrecision, Program};
pub use remat::RematPolicy;
pub use sample::{hash_combine_host, mix32_host};
pub use sharding::{Mesh, Sharding};
