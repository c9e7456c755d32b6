//! The node kinds of the graph (one per StableHLO op we emit).

use crate::Value;
use crate::sharding::Sharding;

/// A scalar literal, splatted over a constant's shape. Floats are stored as
/// the bits of an `f64` so that ops can be hashed and compared exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Literal {
    /// A floating-point value (bits of an `f64`).
    Float(u64),
    /// An integer value.
    Int(i64),
    /// A boolean value.
    Bool(bool),
}

impl Literal {
    /// The value as `f64` (booleans are 0 or 1).
    pub fn as_f64(self) -> f64 {
        match self {
            Literal::Float(b) => f64::from_bits(b),
            Literal::Int(i) => i as f64,
            Literal::Bool(b) => b as i64 as f64,
        }
    }
}

/// Elementwise unary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    Log,
    Log1p,
    Tanh,
    Rsqrt,
    Sqrt,
    Sin,
    Cos,
    Erf,
    Logistic,
    Floor,
    Sign,
    Not,
}

impl UnaryOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "negate",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exponential",
            UnaryOp::Log => "log",
            UnaryOp::Log1p => "log_plus_one",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Sin => "sine",
            UnaryOp::Cos => "cosine",
            UnaryOp::Erf => "erf",
            UnaryOp::Logistic => "logistic",
            UnaryOp::Floor => "floor",
            UnaryOp::Sign => "sign",
            UnaryOp::Not => "not",
        }
    }
}

/// Elementwise binary ops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
    Pow,
    Rem,
    And,
    Or,
    Xor,
    ShiftLeft,
    ShiftRightLogical,
}

impl BinaryOp {
    pub(crate) fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "subtract",
            BinaryOp::Mul => "multiply",
            BinaryOp::Div => "divide",
            BinaryOp::Max => "maximum",
            BinaryOp::Min => "minimum",
            BinaryOp::Pow => "power",
            BinaryOp::Rem => "remainder",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
            BinaryOp::Xor => "xor",
            BinaryOp::ShiftLeft => "shift_left",
            BinaryOp::ShiftRightLogical => "shift_right_logical",
        }
    }
}

/// Comparison directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum CmpDir {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpDir {
    pub(crate) fn name(self) -> &'static str {
        match self {
            CmpDir::Eq => "EQ",
            CmpDir::Ne => "NE",
            CmpDir::Lt => "LT",
            CmpDir::Le => "LE",
            CmpDir::Gt => "GT",
            CmpDir::Ge => "GE",
        }
    }
}

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceKind {
    /// Sum (init 0).
    Sum,
    /// Maximum (init -inf or the type's minimum).
    Max,
    /// Minimum (init +inf or the type's maximum).
    Min,
}

/// Dimension numbers of `dot_general`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct DotDims {
    /// Batch dimensions of the left operand.
    pub lhs_batch: Vec<i64>,
    /// Batch dimensions of the right operand (paired with `lhs_batch`).
    pub rhs_batch: Vec<i64>,
    /// Contracting dimensions of the left operand.
    pub lhs_contract: Vec<i64>,
    /// Contracting dimensions of the right operand (paired with `lhs_contract`).
    pub rhs_contract: Vec<i64>,
}

/// A node's operation and its operands.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Op {
    Parameter(usize),
    Constant(Literal),
    Iota(i64),
    Unary(UnaryOp, Value),
    Binary(BinaryOp, Value, Value),
    Compare(CmpDir, Value, Value),
    Select(Value, Value, Value),
    Convert(Value),
    /// reinterpret the bits as another type of the same width
    Bitcast(Value),
    Broadcast(Value, Vec<i64>),
    Reshape(Value),
    Transpose(Value, Vec<i64>),
    /// operand, start, limit, stride
    Slice(Value, Vec<i64>, Vec<i64>, Vec<i64>),
    /// operand, start indices (scalar ints), sizes
    DynamicSlice(Value, Vec<Value>, Vec<i64>),
    /// operand, update, start indices
    DynamicUpdateSlice(Value, Value, Vec<Value>),
    Concat(Vec<Value>, i64),
    /// operand, padding value, low, high, interior
    Pad(Value, Value, Vec<i64>, Vec<i64>, Vec<i64>),
    Dot(Value, Value, DotDims),
    Reduce(Value, ReduceKind, Vec<i64>),
    /// table [V, D...], indices [I...] -> [I..., D...]
    Gather(Value, Value),
    /// operand [V, D...], indices [I...], updates [I..., D...] -> [V, D...]
    ScatterAdd(Value, Value, Value),
    /// multi-result node; its results are `Project` nodes
    Barrier(Vec<Value>),
    Project(Value, usize),
    Constraint(Value, Sharding),
    /// identity forward, no gradient (emits no instruction)
    StopGradient(Value),
    /// multi-result loop (`stablehlo.while`): carries, xs, consts; its
    /// results are `Project` nodes (final carries, then stacked ys)
    Scan(BodyRef, Vec<Value>),
    /// a typed FFI custom call (`api_version = 4`) of the named target,
    /// one result, row-major layouts
    CustomCall(String, Vec<Value>),
}

/// A shared scan body, compared and hashed by identity.
#[derive(Clone, Debug)]
pub(crate) struct BodyRef(pub std::sync::Arc<crate::scan::ScanBody>);

impl PartialEq for BodyRef {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for BodyRef {}

impl std::hash::Hash for BodyRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::sync::Arc::as_ptr(&self.0).hash(state)
    }
}

impl Op {
    /// The operands, in order.
    pub(crate) fn operands(&self) -> Vec<Value> {
        use Op::*;
        match self {
            Parameter(_) | Constant(_) | Iota(_) => vec![],
            Unary(_, x)
            | Convert(x)
            | Bitcast(x)
            | Broadcast(x, _)
            | Reshape(x)
            | Transpose(x, _) => vec![*x],
            Slice(x, ..) | Reduce(x, ..) | Project(x, _) | Constraint(x, _) | StopGradient(x) => {
                vec![*x]
            }
            Binary(_, a, b) | Compare(_, a, b) | Dot(a, b, _) | Gather(a, b) => vec![*a, *b],
            Pad(a, b, ..) => vec![*a, *b],
            Select(a, b, c) | ScatterAdd(a, b, c) => vec![*a, *b, *c],
            DynamicSlice(x, idx, _) => std::iter::once(*x).chain(idx.iter().copied()).collect(),
            DynamicUpdateSlice(x, u, idx) => {
                [*x, *u].into_iter().chain(idx.iter().copied()).collect()
            }
            Concat(xs, _) | Barrier(xs) | Scan(_, xs) | CustomCall(_, xs) => xs.clone(),
        }
    }

    /// The same op with its operands replaced, in the order of `operands()`.
    pub(crate) fn with_operands(&self, new: &[Value]) -> Op {
        use Op::*;
        let n = |i: usize| new[i];
        match self {
            Parameter(_) | Constant(_) | Iota(_) => self.clone(),
            Unary(u, _) => Unary(*u, n(0)),
            Convert(_) => Convert(n(0)),
            Bitcast(_) => Bitcast(n(0)),
            Broadcast(_, d) => Broadcast(n(0), d.clone()),
            Reshape(_) => Reshape(n(0)),
            Transpose(_, p) => Transpose(n(0), p.clone()),
            Slice(_, a, b, c) => Slice(n(0), a.clone(), b.clone(), c.clone()),
            Reduce(_, k, a) => Reduce(n(0), *k, a.clone()),
            Project(_, i) => Project(n(0), *i),
            Constraint(_, s) => Constraint(n(0), s.clone()),
            StopGradient(_) => StopGradient(n(0)),
            Binary(o, ..) => Binary(*o, n(0), n(1)),
            Compare(c, ..) => Compare(*c, n(0), n(1)),
            Dot(_, _, d) => Dot(n(0), n(1), d.clone()),
            Gather(..) => Gather(n(0), n(1)),
            Pad(_, _, l, h, i) => Pad(n(0), n(1), l.clone(), h.clone(), i.clone()),
            Select(..) => Select(n(0), n(1), n(2)),
            ScatterAdd(..) => ScatterAdd(n(0), n(1), n(2)),
            DynamicSlice(_, _, s) => DynamicSlice(n(0), new[1..].to_vec(), s.clone()),
            DynamicUpdateSlice(..) => DynamicUpdateSlice(n(0), n(1), new[2..].to_vec()),
            Concat(_, d) => Concat(new.to_vec(), *d),
            Barrier(_) => Barrier(new.to_vec()),
            Scan(body, _) => Scan(body.clone(), new.to_vec()),
            CustomCall(t, _) => CustomCall(t.clone(), new.to_vec()),
        }
    }

    /// True for nodes with several results (reached through `Project`).
    pub(crate) fn is_multi(&self) -> bool {
        matches!(self, Op::Barrier(_) | Op::Scan(..))
    }

    /// Short name used in errors and op counts.
    pub(crate) fn kind(&self) -> &'static str {
        use Op::*;
        match self {
            Parameter(_) => "parameter",
            Constant(_) => "constant",
            Iota(_) => "iota",
            Unary(u, _) => u.name(),
            Binary(b, ..) => b.name(),
            Compare(..) => "compare",
            Select(..) => "select",
            Convert(_) => "convert",
            Bitcast(_) => "bitcast_convert",
            Broadcast(..) => "broadcast_in_dim",
            Reshape(_) => "reshape",
            Transpose(..) => "transpose",
            Slice(..) => "slice",
            DynamicSlice(..) => "dynamic_slice",
            DynamicUpdateSlice(..) => "dynamic_update_slice",
            Concat(..) => "concatenate",
            Pad(..) => "pad",
            Dot(..) => "dot_general",
            Reduce(..) => "reduce",
            Gather(..) => "gather",
            ScatterAdd(..) => "scatter",
            Barrier(_) => "optimization_barrier",
            Project(..) => "result",
            Constraint(..) => "sharding_constraint",
            StopGradient(_) => "stop_gradient",
            Scan(..) => "while",
            CustomCall(..) => "custom_call",
        }
    }
}
