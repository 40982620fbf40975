//! A uniform bias of 1e7 on every logit must cancel exactly (issue: `lse − z_y` formed in
//! f32 rounds the offset into the lse first). The logits are integers below 2^24, so the
//! f32 GEMM computes them exactly; the expected loss and gradients come from naive f64
//! formulas of the bias-free logits (cross-entropy and its smoothing term are invariant under
//! a common shift of a row).

use liger::prelude::*;
use liger::{RunOptions, Runtime, Strategy};

/// Runs FLCE with `ε = label_smoothing` under `strategy` on `rt` and compares with the naive
/// f64 formulas; `Err` says what differs.
pub fn check_uniform_bias(
    rt: &Runtime,
    strategy: Option<Strategy>,
    label_smoothing: f64,
) -> Result<(), String> {
    let (s, t, h, v) = (3usize, 5usize, 6usize, 47usize);
    let mut rng = fastrand::Rng::with_seed(1107);
    let tri = |rng: &mut fastrand::Rng| rng.i32(-1..=1) as f32;
    let x: Vec<f32> = (0..s * t * h).map(|_| tri(&mut rng)).collect();
    let w: Vec<f32> = (0..v * h).map(|_| tri(&mut rng)).collect();
    let b = vec![1.0e7f32; v];
    let tg = super::targets(&mut rng, s, t, v, -100);

    // Naive f64: the bias-free logits, mean over valid rows.
    let (xd, wd) = (super::f64s(&x), super::f64s(&w));
    let z = super::linear(&xd, &wd, None, h, v);
    let rows: Vec<usize> = (0..s * t).filter(|&r| tg[r] >= 0).collect();
    let n = rows.len() as f64;
    let eps = label_smoothing;
    let mut loss = 0.0;
    let mut dz = vec![0.0; s * t * v];
    for &r in &rows {
        let row = &z[r * v..(r + 1) * v];
        let l = super::lse(row);
        let y = tg[r] as usize;
        let mean_z = row.iter().sum::<f64>() / v as f64;
        loss += ((1.0 - eps) * (l - row[y]) + eps * (l - mean_z)) / n;
        for k in 0..v {
            let p = (row[k] - l).exp();
            let onehot = if k == y { 1.0 } else { 0.0 };
            dz[r * v + k] = (p - (1.0 - eps) * onehot - eps / v as f64) / n;
        }
    }
    let mut dx = vec![0.0; s * t * h];
    let mut dw = vec![0.0; v * h];
    for r in 0..s * t {
        for k in 0..v {
            for j in 0..h {
                dx[r * h + j] += dz[r * v + k] * wd[k * h + j];
                dw[k * h + j] += dz[r * v + k] * xd[r * h + j];
            }
        }
    }

    let head = Head::with_bias(
        TensorView::new(&x, &[s, t, h]).map_err(|e| e.to_string())?,
        TensorView::new(&w, &[v, h]).map_err(|e| e.to_string())?,
        TensorView::new(&b, &[v]).map_err(|e| e.to_string())?,
    );
    let inputs = InputSet::new().head("logits", head).tensor(
        "target",
        TensorView::new(&tg, &[s, t]).map_err(|e| e.to_string())?,
    );
    let params = ParamSet::new().float("label_smoothing", eps as f32);
    let opts = RunOptions {
        schedule: strategy,
        ..RunOptions::default()
    };
    let out = liger::run(&Flce, rt, &inputs, &params, &opts).map_err(|e| e.to_string())?;
    let ok = |a: f64, b: f64| super::close(a, b, 1e-5, 1e-5);
    if !ok(f64::from(out.loss), loss) {
        return Err(format!(
            "loss {} but the bias-free naive formula gives {loss} (ε = {eps}, {strategy:?})",
            out.loss
        ));
    }
    let g = out.grad("logits").ok_or("no gradient of logits")?;
    for (what, got, want) in [
        ("dx", g.x.as_ref().expect("gradient").to_f32(), &dx),
        ("dW", g.w.as_ref().expect("gradient").to_f32(), &dw),
    ] {
        for (i, (a, e)) in got.iter().zip(want.iter()).enumerate() {
            if !ok(f64::from(*a), *e) {
                return Err(format!(
                    "{what}[{i}] = {a} but the naive formula gives {e} (ε = {eps}, {strategy:?})"
                ));
            }
        }
    }
    Ok(())
}
