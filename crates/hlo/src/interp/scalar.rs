//! Scalar semantics of the elementwise ops, in `f64`.

use crate::DType;
use crate::op::{BinaryOp, CmpDir, UnaryOp};

/// Rounds `x` to what a value of `dt` can hold.
pub(crate) fn round_to(x: f64, dt: DType) -> f64 {
    match dt {
        DType::F64 => x,
        DType::F32 => x as f32 as f64,
        DType::BF16 => half::bf16::from_f64(x).to_f64(),
        DType::F16 => half::f16::from_f64(x).to_f64(),
        DType::Bool => (x != 0.0) as i64 as f64,
        DType::I32 => (x as i64) as i32 as f64,
        DType::U32 => (x as i64) as u32 as f64,
        DType::I8 => (x as i64) as i8 as f64,
        DType::I64 => (x as i64) as f64,
    }
}

/// The error function, accurate to about 1e-15 (a positive series below 3, a continued fraction above).
pub fn erf(x: f64) -> f64 {
    let a = x.abs();
    let r = if a < 3.0 {
        // erf(a) = 2/sqrt(pi) e^(-a^2) sum 2^n a^(2n+1) / (1 3 5 ... (2n+1)): positive terms, no cancellation.
        let (mut term, mut sum, x2) = (a, a, a * a);
        for n in 1..400 {
            term *= 2.0 * x2 / (2 * n + 1) as f64;
            sum += term;
            if term < 1e-17 * sum {
                break;
            }
        }
        sum * (-x2).exp() * std::f64::consts::FRAC_2_SQRT_PI
    } else {
        // erfc(a) = exp(-a^2)/sqrt(pi) / (a + 1/2/(a + 1/(a + 3/2/(a + ...))))
        let mut f = a;
        for k in (1..80).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
    };
    if x < 0.0 { -r } else { r }
}

pub(super) fn unary(u: UnaryOp, a: f64, dt: DType) -> f64 {
    match u {
        UnaryOp::Neg => -a,
        UnaryOp::Abs => a.abs(),
        UnaryOp::Exp => a.exp(),
        UnaryOp::Log => a.ln(),
        UnaryOp::Log1p => a.ln_1p(),
        UnaryOp::Tanh => a.tanh(),
        UnaryOp::Rsqrt => 1.0 / a.sqrt(),
        UnaryOp::Sqrt => a.sqrt(),
        UnaryOp::Sin => a.sin(),
        UnaryOp::Cos => a.cos(),
        UnaryOp::Erf => erf(a),
        UnaryOp::Logistic => 1.0 / (1.0 + (-a).exp()),
        UnaryOp::Floor => a.floor(),
        UnaryOp::Sign => {
            if a > 0.0 {
                1.0
            } else if a < 0.0 {
                -1.0
            } else {
                a
            }
        }
        UnaryOp::Not if dt == DType::Bool => (a == 0.0) as i64 as f64,
        UnaryOp::Not => !(a as i64) as f64,
    }
}

pub(super) fn binary(k: BinaryOp, a: f64, b: f64, dt: DType) -> f64 {
    let int = !dt.is_float();
    match k {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        // Integer products wrap at the dtype's width (exactly: f64 cannot hold them).
        BinaryOp::Mul if int => wrap_int((a as i64).wrapping_mul(b as i64), dt),
        BinaryOp::Mul => a * b,
        BinaryOp::Div if int => {
            if b == 0.0 {
                -1.0
            } else {
                (a / b).trunc()
            }
        }
        BinaryOp::Div => a / b,
        BinaryOp::Max => a.max(b),
        BinaryOp::Min => a.min(b),
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Rem => a % b,
        BinaryOp::And => ((a as i64) & (b as i64)) as f64,
        BinaryOp::Or => ((a as i64) | (b as i64)) as f64,
        BinaryOp::Xor => ((a as i64) ^ (b as i64)) as f64,
        BinaryOp::ShiftLeft | BinaryOp::ShiftRightLogical => shift(k, a, b, dt),
    }
}

/// An integer as a value of the integer dtype `dt` (wrapping).
fn wrap_int(x: i64, dt: DType) -> f64 {
    match dt {
        DType::I32 => x as i32 as f64,
        DType::U32 => x as u32 as f64,
        DType::I8 => x as i8 as f64,
        _ => x as f64,
    }
}

/// Shifts on the dtype's bit pattern; a shift by the width or more gives 0.
fn shift(k: BinaryOp, a: f64, b: f64, dt: DType) -> f64 {
    let bits = 8 * dt.size_bytes() as u32;
    let mask = if bits == 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let x = (a as i64 as u64) & mask;
    if b < 0.0 || b >= bits as f64 {
        return 0.0;
    }
    let y = match k {
        BinaryOp::ShiftLeft => (x << b as u32) & mask,
        _ => x >> b as u32,
    };
    // Back to the dtype's value (signed types reinterpret the top bit).
    match dt {
        DType::I32 => y as u32 as i32 as f64,
        DType::I8 => y as u8 as i8 as f64,
        DType::I64 => y as i64 as f64,
        _ => y as f64,
    }
}

/// Reinterprets `a` (a value of `from`) as a value of `to` of the same width.
pub(super) fn bitcast(a: f64, from: DType, to: DType) -> f64 {
    let bits: u64 = match from {
        DType::F32 => (a as f32).to_bits() as u64,
        DType::F64 => a.to_bits(),
        DType::BF16 => half::bf16::from_f64(a).to_bits() as u64,
        DType::F16 => half::f16::from_f64(a).to_bits() as u64,
        _ => a as i64 as u64,
    };
    match to {
        DType::F32 => f32::from_bits(bits as u32) as f64,
        DType::F64 => f64::from_bits(bits),
        DType::BF16 => half::bf16::from_bits(bits as u16).to_f64(),
        DType::F16 => half::f16::from_bits(bits as u16).to_f64(),
        DType::I32 => bits as u32 as i32 as f64,
        DType::U32 => bits as u32 as f64,
        DType::I8 => bits as u8 as i8 as f64,
        DType::I64 => bits as i64 as f64,
        DType::Bool => (bits != 0) as i64 as f64,
    }
}

pub(super) fn compare(c: CmpDir, a: f64, b: f64) -> bool {
    match c {
        CmpDir::Eq => a == b,
        CmpDir::Ne => a != b,
        CmpDir::Lt => a < b,
        CmpDir::Le => a <= b,
        CmpDir::Gt => a > b,
        CmpDir::Ge => a >= b,
    }
}
