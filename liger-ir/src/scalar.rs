//! Numerically safe scalar forms of the elementwise ops, in f64.
//!
//! Shared by the interpreter and constant folding so both compute the same thing. Compound
//! ops use their overflow-free forms: `softplus(x) = max(x,0) + log1p(exp(-|x|))`,
//! `log_sigmoid(x) = -softplus(-x)`, `logaddexp(a,b) = max + log1p(exp(-|a-b|))`.

use crate::op::Op;

/// `log(1 + exp(x))` without overflow.
pub fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `1 / (1 + exp(-x))` without overflow.
pub fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `log(sigmoid(x))` without overflow.
pub fn log_sigmoid(x: f64) -> f64 {
    -softplus(-x)
}

/// `log(exp(a) + exp(b))` without overflow.
pub fn logaddexp(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + (-(a - b).abs()).exp().ln_1p()
}

/// Applies a unary elementwise op; `None` if `op` is not one.
pub fn unary(op: Op, x: f64) -> Option<f64> {
    Some(match op {
        Op::Neg => -x,
        Op::Exp => x.exp(),
        Op::Log => x.ln(),
        Op::Log1p => x.ln_1p(),
        Op::Expm1 => x.exp_m1(),
        Op::Sqrt => x.sqrt(),
        Op::Abs => x.abs(),
        Op::Relu => x.max(0.0),
        Op::Sigmoid => sigmoid(x),
        Op::LogSigmoid => log_sigmoid(x),
        Op::Softplus => softplus(x),
        Op::Tanh => x.tanh(),
        Op::StopGradient => x,
        _ => return None,
    })
}

/// Applies a binary float op; `None` if `op` is not one.
pub fn binary(op: Op, a: f64, b: f64) -> Option<f64> {
    Some(match op {
        Op::Add => a + b,
        Op::Sub => a - b,
        Op::Mul => a * b,
        Op::Div => a / b,
        Op::Pow => a.powf(b),
        Op::Min => a.min(b),
        Op::Max => a.max(b),
        Op::LogAddExp => logaddexp(a, b),
        _ => return None,
    })
}

/// Applies a float comparison; `None` if `op` is not one.
pub fn compare(op: Op, a: f64, b: f64) -> Option<bool> {
    Some(match op {
        Op::Lt => a < b,
        Op::Le => a <= b,
        Op::Gt => a > b,
        Op::Ge => a >= b,
        Op::Eq => a == b,
        Op::Ne => a != b,
        _ => return None,
    })
}
