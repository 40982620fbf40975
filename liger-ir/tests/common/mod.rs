//! Shared test support: random data, finite differences and a generator of random,
//! well-levelled loss functions. Every test binary includes this module; not every binary
//! uses every item.
#![allow(dead_code)]

pub mod fd;
pub mod generator;

use liger_ir::{HostBatch, HostInput};

/// A normal-ish random number (sum of uniforms), mean 0, standard deviation ~`sd`.
pub fn normal(rng: &mut fastrand::Rng, sd: f64) -> f64 {
    let s: f64 = (0..4).map(|_| rng.f64()).sum::<f64>() - 2.0;
    s * sd * 3f64.sqrt()
}

/// Random logits `[S,T,V]`.
pub fn logits(rng: &mut fastrand::Rng, n: usize, sd: f64) -> Vec<f64> {
    (0..n).map(|_| normal(rng, sd)).collect()
}

/// Random targets `[S,T]` with some rows set to `ignore` (never a whole sequence: row 0 of
/// each sequence stays valid), ids in `[0, v)`.
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

/// `|a - b| <= atol + rtol * |b|`.
pub fn close(a: f64, b: f64, atol: f64, rtol: f64) -> bool {
    (a - b).abs() <= atol + rtol * b.abs() || (a.is_nan() && b.is_nan())
}

/// Replaces one head's logits in a batch.
pub fn with_logits(batch: &HostBatch, head: &str, z: Vec<f64>) -> HostBatch {
    let mut b = batch.clone();
    b.inputs.insert(head.to_string(), HostInput::Logits(z));
    b
}
