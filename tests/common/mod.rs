//! Shared test support: random data, naive f64 building blocks, finite differences.
#![allow(dead_code)]

/// A normal-ish random number with standard deviation ~`sd`.
pub fn normal(rng: &mut fastrand::Rng, sd: f64) -> f64 {
    let s: f64 = (0..4).map(|_| rng.f64()).sum::<f64>() - 2.0;
    s * sd * 3f64.sqrt()
}

/// `n` random values as f32.
pub fn randn(rng: &mut fastrand::Rng, n: usize, sd: f64) -> Vec<f32> {
    (0..n).map(|_| normal(rng, sd) as f32).collect()
}

/// Targets `[S,T]` in `[0,v)` avoiding `ignore`, ~30% of rows set to `ignore` (row 0 of every
/// sequence stays valid).
pub fn targets(rng: &mut fastrand::Rng, s: usize, t: usize, v: usize, ignore: i64) -> Vec<i64> {
    let mut out = Vec::with_capacity(s * t);
    for _ in 0..s {
        for j in 0..t {
            let id = loop {
                let id = rng.usize(0..v) as i64;
                if id != ignore {
                    break id;
                }
            };
            out.push(if j > 0 && rng.f64() < 0.3 { ignore } else { id });
        }
    }
    out
}

/// f32 → f64.
pub fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| f64::from(v)).collect()
}

/// `z = x Wᵀ + b` for `x [R,H]`, `W [V,H]`.
pub fn linear(x: &[f64], w: &[f64], b: Option<&[f64]>, h: usize, v: usize) -> Vec<f64> {
    let r = x.len() / h;
    let mut z = vec![0.0; r * v];
    for i in 0..r {
        for j in 0..v {
            let mut acc = b.map_or(0.0, |b| b[j]);
            for k in 0..h {
                acc += x[i * h + k] * w[j * h + k];
            }
            z[i * v + j] = acc;
        }
    }
    z
}

/// log-sum-exp of a row.
pub fn lse(row: &[f64]) -> f64 {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

/// `log σ(x)`.
pub fn log_sigmoid(x: f64) -> f64 {
    -((-x).exp().ln_1p())
}

/// `|a-b| <= atol + rtol |b|`.
pub fn close(a: f64, b: f64, atol: f64, rtol: f64) -> bool {
    (a - b).abs() <= atol + rtol * b.abs()
}

/// Central differences with one Richardson step.
pub fn derivative(x: &[f64], i: usize, h: f64, f: impl Fn(&[f64]) -> f64) -> f64 {
    let mut y = x.to_vec();
    let mut at = |d: f64| {
        y[i] = x[i] + d;
        let r = f(&y);
        y[i] = x[i];
        r
    };
    let d1 = (at(h) - at(-h)) / (2.0 * h);
    let d2 = (at(h / 2.0) - at(-h / 2.0)) / h;
    (4.0 * d2 - d1) / 3.0
}

/// Checks `got[i]` against finite differences of `f` at `n` random coordinates of `x`.
pub fn check_fd(
    what: &str,
    got: &[f64],
    x: &[f64],
    n: usize,
    rng: &mut fastrand::Rng,
    f: impl Fn(&[f64]) -> f64,
) {
    assert_eq!(got.len(), x.len(), "{what}: gradient length");
    for _ in 0..n {
        let i = rng.usize(0..x.len());
        let num = derivative(x, i, 1e-3, &f);
        assert!(
            close(got[i], num, 1e-7, 1e-6),
            "{what}[{i}]: reference gives {} but finite differences of the naive formula give {num}",
            got[i]
        );
    }
}

#[path = "../../liger-ir/tests/common/mod.rs"]
pub mod ircommon;

pub mod difftest;
pub mod offset;
pub mod preference;
pub mod ranks;
