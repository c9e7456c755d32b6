//! The crate's error type.

use crate::TensorType;

/// Everything that can go wrong while building, differentiating, sharding or
/// emitting a program. Shape errors name the op, the operand types and what
/// the op expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- building ----
    /// An operand's shape or dtype does not fit the op.
    #[error("{op}: operands {} are invalid: expected {expected}", fmt_types(.operands))]
    Shape {
        /// The op being added.
        op: &'static str,
        /// The types of its operands.
        operands: Vec<TensorType>,
        /// What the op expected, in words.
        expected: String,
    },
    /// A `Value` handle that does not belong to this builder.
    #[error("{op}: value %{index} does not exist in this builder (it has {len} nodes)")]
    UnknownValue {
        /// The op being added.
        op: &'static str,
        /// The handle's index.
        index: usize,
        /// How many nodes the builder has.
        len: usize,
    },
    /// A multi-result node used as a tensor, or similar misuse.
    #[error("{op}: {message}")]
    Invalid {
        /// The op or method.
        op: &'static str,
        /// What is wrong.
        message: String,
    },

    // ---- autodiff ----
    /// `grad` needs a scalar floating-point loss.
    #[error("grad: loss must be a scalar float, got {0}")]
    NonScalarLoss(TensorType),

    // ---- sharding ----
    /// A sharding does not fit the mesh or the tensor it annotates.
    #[error("sharding for {what} ({ty}): {message}")]
    Sharding {
        /// Which value (parameter name, output index, constraint).
        what: String,
        /// The annotated tensor's type.
        ty: TensorType,
        /// What is wrong.
        message: String,
    },

    // ---- emission ----
    /// Writing the debug dump failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
}

fn fmt_types(types: &[TensorType]) -> String {
    let parts: Vec<String> = types.iter().map(|t| t.to_string()).collect();
    format!("({})", parts.join(", "))
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for a shape error.
pub(crate) fn shape_err<T>(
    op: &'static str,
    operands: &[&TensorType],
    expected: impl Into<String>,
) -> Result<T> {
    Err(Error::Shape {
        op,
        operands: operands.iter().map(|t| (*t).clone()).collect(),
        expected: expected.into(),
    })
}
