//! Element types and tensor types.

use std::fmt;

/// Element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
    /// bfloat16.
    BF16,
    /// IEEE binary16.
    F16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 64-bit integer.
    I64,
    /// Signed 8-bit integer.
    I8,
    /// Boolean (`i1`, StableHLO's `pred`).
    Bool,
}

impl DType {
    /// True for floating-point types (the ones that carry gradients).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::BF16 | DType::F16)
    }

    /// True for signed or unsigned integers (not `Bool`).
    pub fn is_int(self) -> bool {
        matches!(self, DType::I32 | DType::U32 | DType::I64 | DType::I8)
    }

    /// True for unsigned integers.
    pub fn is_unsigned(self) -> bool {
        matches!(self, DType::U32)
    }

    /// The MLIR spelling (`f32`, `bf16`, `i1`, `ui32`...).
    pub fn mlir(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::I32 => "i32",
            DType::U32 => "ui32",
            DType::I64 => "i64",
            DType::I8 => "i8",
            DType::Bool => "i1",
        }
    }

    /// Size of one element in bytes (`Bool` counts as one byte).
    pub fn size_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::I8 | DType::Bool => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.mlir())
    }
}

/// The type of a value: element type and static dimensions.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorType {
    /// Element type.
    pub dtype: DType,
    /// Dimensions, outermost first; empty for a scalar.
    pub dims: Vec<i64>,
}

impl TensorType {
    /// A tensor type from an element type and dimensions.
    pub fn new(dtype: DType, dims: impl Into<Vec<i64>>) -> Self {
        TensorType {
            dtype,
            dims: dims.into(),
        }
    }

    /// A scalar (rank 0) type.
    pub fn scalar(dtype: DType) -> Self {
        TensorType {
            dtype,
            dims: Vec::new(),
        }
    }

    /// `f32` tensor with these dimensions.
    pub fn f32(dims: impl Into<Vec<i64>>) -> Self {
        Self::new(DType::F32, dims)
    }

    /// `f64` tensor with these dimensions.
    pub fn f64(dims: impl Into<Vec<i64>>) -> Self {
        Self::new(DType::F64, dims)
    }

    /// `i32` tensor with these dimensions.
    pub fn i32(dims: impl Into<Vec<i64>>) -> Self {
        Self::new(DType::I32, dims)
    }

    /// Number of dimensions.
    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// Number of elements.
    pub fn numel(&self) -> i64 {
        self.dims.iter().product()
    }

    /// The same dimensions with another element type.
    pub fn with_dtype(&self, dtype: DType) -> Self {
        TensorType {
            dtype,
            dims: self.dims.clone(),
        }
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor<")?;
        for d in &self.dims {
            write!(f, "{d}x")?;
        }
        write!(f, "{}>", self.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_as_mlir() {
        assert_eq!(TensorType::f32([2, 3]).to_string(), "tensor<2x3xf32>");
        assert_eq!(TensorType::scalar(DType::Bool).to_string(), "tensor<i1>");
        assert_eq!(
            TensorType::new(DType::U32, [4]).to_string(),
            "tensor<4xui32>"
        );
    }
}
