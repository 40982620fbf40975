//! The scalar semantics of every elementwise op and vocabulary reduction, generic over the
//! float type: the f64 interpreter, constant folding and the CPU executor's f32 arithmetic all
//! call these, so they compute the same thing by construction.
//!
//! Each function is one exhaustive `match` over its op family (no wildcard): a new op does
//! not compile until its meaning is written here. Compound ops use their overflow-free forms:
//! `softplus(x) = max(x,0) + log1p(exp(-|x|))`, `log_sigmoid(x) = -softplus(-x)`,
//! `logaddexp(a,b) = max + log1p(exp(-|a-b|))`.

use crate::op::{Binary, Cmp, Unary, VocabReduce};

/// The float operations the semantics need (implemented for `f32` and `f64`).
pub trait Float: Copy + PartialOrd + std::fmt::Debug + Send + Sync + 'static {
    /// `0`.
    const ZERO: Self;
    /// `1`.
    const ONE: Self;
    /// `-inf`.
    const NEG_INFINITY: Self;
    /// From an f64 (rounded).
    fn of(x: f64) -> Self;
    /// To f64 (exact).
    fn f64(self) -> f64;
    /// `-x`.
    fn neg(self) -> Self;
    /// `a + b`.
    fn add(self, b: Self) -> Self;
    /// `a - b`.
    fn sub(self, b: Self) -> Self;
    /// `a * b`.
    fn mul(self, b: Self) -> Self;
    /// `a / b`.
    fn div(self, b: Self) -> Self;
    /// `e^x`.
    fn exp(self) -> Self;
    /// `ln x`.
    fn ln(self) -> Self;
    /// `ln(1 + x)`.
    fn ln_1p(self) -> Self;
    /// `e^x - 1`.
    fn exp_m1(self) -> Self;
    /// `sqrt x`.
    fn sqrt(self) -> Self;
    /// `|x|`.
    fn abs(self) -> Self;
    /// `tanh x`.
    fn tanh(self) -> Self;
    /// `x^p`.
    fn powf(self, p: Self) -> Self;
    /// IEEE max (a NaN operand gives the other).
    fn max(self, b: Self) -> Self;
    /// IEEE min.
    fn min(self, b: Self) -> Self;
}

macro_rules! impl_float {
    ($t:ty) => {
        impl Float for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const NEG_INFINITY: Self = <$t>::NEG_INFINITY;
            fn of(x: f64) -> Self {
                x as $t
            }
            fn f64(self) -> f64 {
                self as f64
            }
            fn neg(self) -> Self {
                -self
            }
            fn add(self, b: Self) -> Self {
                self + b
            }
            fn sub(self, b: Self) -> Self {
                self - b
            }
            fn mul(self, b: Self) -> Self {
                self * b
            }
            fn div(self, b: Self) -> Self {
                self / b
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            fn exp_m1(self) -> Self {
                <$t>::exp_m1(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            fn powf(self, p: Self) -> Self {
                <$t>::powf(self, p)
            }
            fn max(self, b: Self) -> Self {
                <$t>::max(self, b)
            }
            fn min(self, b: Self) -> Self {
                <$t>::min(self, b)
            }
        }
    };
}
impl_float!(f32);
impl_float!(f64);

/// `log(1 + exp(x))` without overflow.
pub fn softplus<F: Float>(x: F) -> F {
    x.max(F::ZERO).add(x.abs().neg().exp().ln_1p())
}

/// `1 / (1 + exp(-x))` without overflow.
pub fn sigmoid<F: Float>(x: F) -> F {
    if x >= F::ZERO {
        F::ONE.div(F::ONE.add(x.neg().exp()))
    } else {
        let e = x.exp();
        e.div(F::ONE.add(e))
    }
}

/// `log(sigmoid(x))` without overflow.
pub fn log_sigmoid<F: Float>(x: F) -> F {
    softplus(x.neg()).neg()
}

/// `log(exp(a) + exp(b))` without overflow.
pub fn logaddexp<F: Float>(a: F, b: F) -> F {
    let m = a.max(b);
    if m == F::NEG_INFINITY {
        return m;
    }
    m.add(a.sub(b).abs().neg().exp().ln_1p())
}

/// A unary elementwise op.
pub fn unary<F: Float>(op: Unary, x: F) -> F {
    match op {
        Unary::Neg => x.neg(),
        Unary::Exp => x.exp(),
        Unary::Log => x.ln(),
        Unary::Log1p => x.ln_1p(),
        Unary::Expm1 => x.exp_m1(),
        Unary::Sqrt => x.sqrt(),
        Unary::Square => x.mul(x),
        Unary::Abs => x.abs(),
        Unary::Relu => x.max(F::ZERO),
        Unary::Sigmoid => sigmoid(x),
        Unary::LogSigmoid => log_sigmoid(x),
        Unary::Softplus => softplus(x),
        Unary::Tanh => x.tanh(),
        Unary::StopGradient => x,
    }
}

/// A binary elementwise op.
pub fn binary<F: Float>(op: Binary, a: F, b: F) -> F {
    match op {
        Binary::Add => a.add(b),
        Binary::Sub => a.sub(b),
        Binary::Mul => a.mul(b),
        Binary::Div => a.div(b),
        Binary::Pow => a.powf(b),
        Binary::Min => a.min(b),
        Binary::Max => a.max(b),
        Binary::LogAddExp => logaddexp(a, b),
    }
}

/// `clamp(x, lo, hi)`.
pub fn clamp<F: Float>(x: F, lo: F, hi: F) -> F {
    x.max(lo).min(hi)
}

/// A float comparison.
pub fn compare<F: Float>(op: Cmp, a: F, b: F) -> bool {
    match op {
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
        Cmp::Eq => a == b,
        Cmp::Ne => a != b,
    }
}

/// An index comparison (`eq`/`ne` of two indices; `None` is an invalid row, equal to nothing).
/// Order comparisons of indices are not typed, so they compare as unequal (`false`).
pub fn compare_idx(op: Cmp, a: Option<u32>, b: Option<u32>) -> bool {
    let eq = a.is_some() && a == b;
    match op {
        Cmp::Eq => eq,
        Cmp::Ne => !eq,
        Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge => false,
    }
}

/// A vocabulary reduction over one row, accumulated in f64 (max/logsumexp are exact in any
/// order; the sums use f64 so the CPU results do not depend on the chunking).
pub fn vocab_reduce<F: Float>(op: VocabReduce, row: &[F]) -> F {
    match op {
        VocabReduce::Sum => F::of(row.iter().map(|x| x.f64()).sum::<f64>()),
        VocabReduce::Max => row.iter().copied().fold(F::NEG_INFINITY, F::max),
        VocabReduce::LogSumExp => logsumexp(row),
    }
}

/// `log Σ exp(row)` with the row max subtracted first (sum in f64).
pub fn logsumexp<F: Float>(row: &[F]) -> F {
    let (m, ls) = lse_parts(row);
    if m == F::NEG_INFINITY {
        return m;
    }
    m.add(ls)
}

/// The log-sum-exp of `row` in two parts, `(m, log Σ exp(row − m))` with `m` the row max.
///
/// `log_softmax`, `softmax` and `logprob` are formed as `(z − m) − ls`: `z − m` is exact
/// (both are values of the row), so a large common offset of the row (a uniform bias of
/// 1e7) cancels exactly instead of being rounded into a large `lse` first.
pub fn lse_parts<F: Float>(row: &[F]) -> (F, F) {
    let m = row.iter().copied().fold(F::NEG_INFINITY, F::max);
    if m == F::NEG_INFINITY {
        return (m, F::ZERO);
    }
    let s: f64 = row.iter().map(|x| x.sub(m).exp().f64()).sum();
    (m, F::of(s.ln()))
}

/// `log_softmax(row)[k]` as `(row[k] − m) − ls` from [`lse_parts`].
pub fn log_softmax_at<F: Float>(x: F, (m, ls): (F, F)) -> F {
    x.sub(m).sub(ls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_and_f64_agree_on_every_unary_and_binary_op() {
        for &x in &[-3.5f64, -0.25, 0.0, 0.75, 2.0] {
            for op in Unary::ALL {
                let (a, b) = (unary(*op, x), f64::from(unary(*op, x as f32)));
                assert!(
                    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "{} {x}: {a} vs {b}",
                    op.name()
                );
            }
            for op in Binary::ALL {
                let y = 1.25;
                let (a, b) = (
                    binary(*op, x, y),
                    f64::from(binary(*op, x as f32, y as f32)),
                );
                assert!(
                    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "{} {x}: {a} vs {b}",
                    op.name()
                );
            }
        }
        assert_eq!(unary(Unary::Square, -3.0f64), 9.0);
        assert_eq!(
            logaddexp(f64::NEG_INFINITY, f64::NEG_INFINITY),
            f64::NEG_INFINITY
        );
        assert!((logsumexp(&[1e30f64, 1e30]) - (1e30 + 2f64.ln())).abs() < 1e15);
    }
}
