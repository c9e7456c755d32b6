//! Elementwise ops: unary math, binary arithmetic, comparisons, select, convert.

use crate::error::shape_err;
use crate::op::{BinaryOp, CmpDir, Op, UnaryOp};
use crate::{Builder, DType, Result, Value};

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {
        $( $(#[$doc])* pub fn $name(&mut self, x: Value) -> Result<Value> { self.unary(UnaryOp::$op, x) } )*
    };
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {
        $( $(#[$doc])* pub fn $name(&mut self, a: Value, b: Value) -> Result<Value> { self.binary(BinaryOp::$op, a, b) } )*
    };
}

macro_rules! compare_methods {
    ($($(#[$doc:meta])* $name:ident => $op:ident;)*) => {
        $( $(#[$doc])* pub fn $name(&mut self, a: Value, b: Value) -> Result<Value> { self.compare(CmpDir::$op, a, b) } )*
    };
}

impl Builder {
    /// An elementwise unary op. Transcendental ops need a float operand;
    /// `Not` needs a boolean or integer one; `Neg`, `Abs`, `Sign` any number.
    pub fn unary(&mut self, op: UnaryOp, x: Value) -> Result<Value> {
        let ty = self.check(op.name(), x)?.clone();
        let ok = match op {
            UnaryOp::Not => !ty.dtype.is_float(),
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign => {
                ty.dtype != DType::Bool && !ty.dtype.is_unsigned()
            }
            _ => ty.dtype.is_float(),
        };
        if !ok {
            return shape_err(op.name(), &[&ty], "an operand of a dtype this op supports");
        }
        Ok(self.push(Op::Unary(op, x), ty))
    }

    unary_methods! {
        /// `-x`.
        neg => Neg;
        /// `|x|`.
        abs => Abs;
        /// `e^x`.
        exp => Exp;
        /// Natural logarithm.
        log => Log;
        /// `log(1 + x)`.
        log1p => Log1p;
        /// Hyperbolic tangent.
        tanh => Tanh;
        /// `1 / sqrt(x)`.
        rsqrt => Rsqrt;
        /// Square root.
        sqrt => Sqrt;
        /// Sine.
        sin => Sin;
        /// Cosine.
        cos => Cos;
        /// Error function (emitted as `chlo.erf`).
        erf => Erf;
        /// `1 / (1 + e^-x)`.
        logistic => Logistic;
        /// Round toward -inf.
        floor => Floor;
        /// -1, 0 or 1.
        sign => Sign;
        /// Logical or bitwise not.
        not => Not;
    }

    /// A strict elementwise binary op: both operands must have the same type
    /// (see [`Builder::add_bcast`] and friends for broadcasting).
    pub fn binary(&mut self, op: BinaryOp, a: Value, b: Value) -> Result<Value> {
        let ta = self.check(op.name(), a)?.clone();
        let tb = self.check(op.name(), b)?;
        if &ta != tb {
            return shape_err(
                op.name(),
                &[&ta, tb],
                "two operands of the same shape and dtype",
            );
        }
        let ok = match op {
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => !ta.dtype.is_float(),
            BinaryOp::ShiftLeft | BinaryOp::ShiftRightLogical => ta.dtype.is_int(),
            BinaryOp::Pow => ta.dtype.is_float() || ta.dtype.is_int(),
            _ => ta.dtype != DType::Bool,
        };
        if !ok {
            return shape_err(
                op.name(),
                &[&ta, &ta],
                "operands of a dtype this op supports",
            );
        }
        Ok(self.push(Op::Binary(op, a, b), ta))
    }

    binary_methods! {
        /// `a + b`.
        add => Add;
        /// `a - b`.
        sub => Sub;
        /// `a * b`.
        mul => Mul;
        /// `a / b` (integers truncate).
        div => Div;
        /// Elementwise maximum.
        max => Max;
        /// Elementwise minimum.
        min => Min;
        /// `a ^ b`.
        pow => Pow;
        /// Remainder with the sign of `a`.
        rem => Rem;
        /// Logical or bitwise and.
        and => And;
        /// Logical or bitwise or.
        or => Or;
        /// Logical or bitwise exclusive or.
        xor => Xor;
        /// `a << b` on integers (0 when `b` is at least the bit width).
        shift_left => ShiftLeft;
        /// `a >> b` on integers, filling with zeros (0 when `b` is at least the bit width).
        shift_right_logical => ShiftRightLogical;
    }

    /// Elementwise comparison; returns a `Bool` tensor of the same dimensions.
    pub fn compare(&mut self, dir: CmpDir, a: Value, b: Value) -> Result<Value> {
        let ta = self.check("compare", a)?.clone();
        let tb = self.check("compare", b)?;
        if &ta != tb {
            return shape_err(
                "compare",
                &[&ta, tb],
                "two operands of the same shape and dtype",
            );
        }
        Ok(self.push(Op::Compare(dir, a, b), ta.with_dtype(DType::Bool)))
    }

    compare_methods! {
        /// `a == b`.
        eq => Eq;
        /// `a != b`.
        ne => Ne;
        /// `a < b`.
        lt => Lt;
        /// `a <= b`.
        le => Le;
        /// `a > b`.
        gt => Gt;
        /// `a >= b`.
        ge => Ge;
    }

    /// `pred ? on_true : on_false`, elementwise. `pred` is `Bool`, either a
    /// scalar or shaped like the branches, which must have the same type.
    pub fn select(&mut self, pred: Value, on_true: Value, on_false: Value) -> Result<Value> {
        let tp = self.check("select", pred)?.clone();
        let tt = self.check("select", on_true)?.clone();
        let tf = self.check("select", on_false)?;
        if tt != *tf || tp.dtype != DType::Bool || (tp.rank() != 0 && tp.dims != tt.dims) {
            return shape_err(
                "select",
                &[&tp, &tt, tf],
                "a Bool predicate (scalar or shaped like the branches) and two branches of the same type",
            );
        }
        Ok(self.push(Op::Select(pred, on_true, on_false), tt))
    }

    /// Reinterprets the bits of each element as `dtype`, which must have the
    /// same width (`f32` <-> `i32`/`u32`): `stablehlo.bitcast_convert`.
    /// For non-negative floats the integer order is the float order.
    pub fn bitcast_convert(&mut self, x: Value, dtype: DType) -> Result<Value> {
        let ty = self.check("bitcast_convert", x)?.clone();
        if ty.dtype == dtype {
            return Ok(x);
        }
        if ty.dtype.size_bytes() != dtype.size_bytes()
            || ty.dtype == DType::Bool
            || dtype == DType::Bool
        {
            return shape_err(
                "bitcast_convert",
                &[&ty],
                format!("a non-boolean operand as wide as {dtype}"),
            );
        }
        Ok(self.push(Op::Bitcast(x), ty.with_dtype(dtype)))
    }

    /// Converts to another element type (floats to integers truncate).
    pub fn convert(&mut self, x: Value, dtype: DType) -> Result<Value> {
        let ty = self.check("convert", x)?;
        if ty.dtype == dtype {
            return Ok(x);
        }
        let out = ty.with_dtype(dtype);
        Ok(self.push(Op::Convert(x), out))
    }
}
