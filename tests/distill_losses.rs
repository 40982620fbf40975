//! KL and cosine distillation and FLCE with class weights through the CPU executor, every
//! schedule, against naive f64 formulas written here; gradients of x, W and b against central
//! differences of the naive loss at sampled coordinates. (S, T, H, V) = (6, 47, 31, 123),
//! bias on and off, ignore_index -100 and 42, the peers' hyperparameter combinations.

mod common;

use common::*;
use liger::prelude::*;
use liger::{ChunkedLoss, RunOptions, Runtime};

const S: usize = 6;
const T: usize = 47;
const H: usize = 31;
const V: usize = 123;

fn r32(x: f64) -> f64 {
    f64::from(x as f32)
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    xt: Vec<f32>,
    wt: Vec<f32>,
    target: Vec<i64>,
    class_weight: Vec<f32>,
}

fn data(seed: u64, bias: bool, ignore: i64) -> Data {
    let mut rng = fastrand::Rng::with_seed(seed);
    Data {
        x: randn(&mut rng, S * T * H, 1.0),
        w: randn(&mut rng, V * H, 0.3),
        b: bias.then(|| randn(&mut rng, V, 0.5)),
        xt: randn(&mut rng, S * T * 2 * H, 1.0),
        wt: randn(&mut rng, V * 2 * H, 0.25),
        target: targets(&mut rng, S, T, V, ignore),
        class_weight: (0..V).map(|_| (0.2 + rng.f64() * 1.6) as f32).collect(),
    }
}

#[derive(Clone, Copy, Debug)]
enum Loss {
    Kl {
        forward: bool,
        tau: f64,
        wh: f64,
        ws: f64,
    },
    Cosine {
        beta: f64,
        tau: f64,
        wh: f64,
        ws: f64,
    },
    Flce {
        eps: f64,
        zl: f64,
        sum: bool,
    },
}

fn log_softmax_row(row: &[f64], tau: f64) -> Vec<f64> {
    let r: Vec<f64> = row.iter().map(|v| v / tau).collect();
    let l = lse(&r);
    r.iter().map(|v| v - l).collect()
}

/// The naive loss from student logits `z` (teacher logits `zt`) with its metrics.
fn naive(l: Loss, z: &[f64], zt: &[f64], d: &Data, ignore: i64) -> (f64, Vec<(&'static str, f64)>) {
    let valid: Vec<usize> = (0..S * T).filter(|&r| d.target[r] != ignore).collect();
    let n = (valid.len() as f64).max(1.0);
    let ce = |r: usize| -> f64 {
        let row = &z[r * V..(r + 1) * V];
        lse(row) - row[d.target[r] as usize]
    };
    match l {
        Loss::Kl {
            forward,
            tau,
            wh,
            ws,
        } => {
            let tau = r32(tau);
            let soft: f64 = valid
                .iter()
                .map(|&r| {
                    let s = log_softmax_row(&z[r * V..(r + 1) * V], tau);
                    let t = log_softmax_row(&zt[r * V..(r + 1) * V], tau);
                    (0..V)
                        .map(|k| {
                            if forward {
                                t[k].exp() * (t[k] - s[k])
                            } else {
                                s[k].exp() * (s[k] - t[k])
                            }
                        })
                        .sum::<f64>()
                })
                .sum::<f64>()
                / n;
            let hard: f64 = valid.iter().map(|&r| ce(r)).sum::<f64>() / n;
            (
                r32(wh) * hard + r32(ws) * soft,
                vec![("soft_loss", soft), ("hard_loss", hard)],
            )
        }
        Loss::Cosine { beta, tau, wh, ws } => {
            let tau = r32(tau);
            let soft: f64 = (0..S * T)
                .map(|r| {
                    let a: Vec<f64> = z[r * V..(r + 1) * V].iter().map(|v| v / tau).collect();
                    let b: Vec<f64> = zt[r * V..(r + 1) * V].iter().map(|v| v / tau).collect();
                    let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
                    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
                    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
                    r32(beta) * (1.0 - dot / (na * nb).max(1e-8))
                })
                .sum::<f64>()
                / n;
            let hard: f64 = valid.iter().map(|&r| ce(r)).sum::<f64>() / n;
            (
                r32(wh) * hard + r32(ws) * soft,
                vec![("soft_loss", soft), ("hard_loss", hard)],
            )
        }
        Loss::Flce { eps, zl, sum } => {
            let (eps, zl) = (r32(eps), r32(zl));
            let w: Vec<f64> = d.class_weight.iter().map(|&v| f64::from(v)).collect();
            let (mut weighted, mut wsum, mut zsum, mut correct) = (0.0, 0.0, 0.0, 0.0);
            for &r in &valid {
                let row = &z[r * V..(r + 1) * V];
                let l = lse(row);
                let y = d.target[r] as usize;
                let smooth: f64 = (0..V).map(|k| w[k] * (l - row[k])).sum::<f64>() / V as f64;
                weighted += (1.0 - eps) * w[y] * (l - row[y]) + eps * smooth;
                wsum += w[y];
                zsum += zl * l * l;
                let argmax = (0..V).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                correct += if argmax == y { 1.0 } else { 0.0 };
            }
            let nv = valid.len() as f64;
            let (loss, z_metric) = if sum {
                (weighted + zsum, zsum)
            } else {
                (weighted / wsum.max(1e-30) + zsum / nv, zsum / nv)
            };
            (loss, vec![("z_loss", z_metric), ("accuracy", correct / nv)])
        }
    }
}

fn logits(d: &Data, x: &[f64], w: &[f64], b: Option<&[f64]>) -> (Vec<f64>, Vec<f64>) {
    let _ = d;
    let z = linear(x, w, b, H, V);
    let zt = linear(&f64s(&d.xt), &f64s(&d.wt), None, 2 * H, V);
    (z, zt)
}

fn case(l: Loss) -> (&'static dyn ChunkedLoss, ParamSet) {
    match l {
        Loss::Kl {
            forward,
            tau,
            wh,
            ws,
        } => (
            &KlDistill,
            ParamSet::new()
                .variant("direction", if forward { "Forward" } else { "Reverse" })
                .float("temperature", tau as f32)
                .float("weight_hard", wh as f32)
                .float("weight_soft", ws as f32),
        ),
        Loss::Cosine { beta, tau, wh, ws } => (
            &CosineDistill,
            ParamSet::new()
                .float("beta", beta as f32)
                .float("temperature", tau as f32)
                .float("weight_hard", wh as f32)
                .float("weight_soft", ws as f32),
        ),
        Loss::Flce { eps, zl, sum } => (
            &Flce,
            ParamSet::new()
                .float("label_smoothing", eps as f32)
                .float("z_loss_scale", zl as f32)
                .variant("reduction", if sum { "Sum" } else { "Mean" }),
        ),
    }
}

fn run(l: Loss, seed: u64, bias: bool, ignore: i64) -> usize {
    let d = data(seed, bias, ignore);
    let (loss, params) = case(l);
    fn head<'a>(x: &'a [f32], w: &'a [f32], h: usize) -> Head<'a> {
        Head::new(
            TensorView::new(x, &[S, T, h]).expect("x"),
            TensorView::new(w, &[V, h]).expect("w"),
        )
    }
    let first = match &d.b {
        Some(b) => Head::with_bias(
            TensorView::new(&d.x[..], &[S, T, H]).expect("x"),
            TensorView::new(&d.w[..], &[V, H]).expect("w"),
            TensorView::new(&b[..], &[V]).expect("b"),
        ),
        None => head(&d.x, &d.w, H),
    };
    let target = TensorView::new(&d.target[..], &[S, T]).expect("t");
    let set = match l {
        Loss::Flce { .. } => InputSet::new()
            .head("logits", first)
            .tensor("target", target)
            .tensor(
                "class_weight",
                TensorView::new(&d.class_weight[..], &[V]).expect("cw"),
            ),
        _ => InputSet::new()
            .head("student", first)
            .head("teacher", head(&d.xt, &d.wt, 2 * H))
            .tensor("target", target),
    };
    let (x, w) = (f64s(&d.x), f64s(&d.w));
    let b = d.b.as_deref().map(f64s);
    let (z, zt) = logits(&d, &x, &w, b.as_deref());
    let (want, metrics) = naive(l, &z, &zt, &d, ignore);
    let f = |x: &[f64], w: &[f64], b: Option<&[f64]>| {
        naive(l, &linear(x, w, b, H, V), &zt, &d, ignore).0
    };
    let names: Vec<&str> = set.names().collect();
    let (p, _) = liger::pipeline_for(loss, &names, &params).expect("pipeline");
    let mut runs = 0;
    let mut rng = fastrand::Rng::with_seed(seed ^ 77);
    for s in p.schedule().candidates.clone() {
        let opts = RunOptions {
            ignore_index: ignore,
            schedule: Some(s),
            ..RunOptions::default()
        };
        let what = format!("{l:?} {s} bias {bias} ignore {ignore}");
        let out = liger::run(loss, &Runtime::cpu(), &set, &params, &opts)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        runs += 1;
        assert!(
            close(f64::from(out.loss), want, 1e-5, 1e-5),
            "{what}: loss {} vs naive {want}",
            out.loss
        );
        for (name, v) in &metrics {
            let got = out
                .metric(name)
                .unwrap_or_else(|| panic!("{what}: no {name}"))
                .values[0];
            assert!(
                close(f64::from(got), *v, 1e-5, 1e-5),
                "{what}: {name} {got} vs {v}"
            );
        }
        let g = out
            .grad(if matches!(l, Loss::Flce { .. }) {
                "logits"
            } else {
                "student"
            })
            .expect("grad");
        let (gx, gw) = (g.x.to_f32(), g.w.to_f32());
        // Central differences of the naive loss at sampled coordinates of x, W and b.
        for _ in 0..6 {
            let i = rng.usize(0..x.len());
            let num = derivative(&x, i, 1e-3, |x2| f(x2, &w, b.as_deref()));
            assert!(
                close(f64::from(gx[i]), num, 2e-6, 2e-4),
                "{what}: dx[{i}] {} vs {num}",
                gx[i]
            );
            let j = rng.usize(0..w.len());
            let num = derivative(&w, j, 1e-3, |w2| f(&x, w2, b.as_deref()));
            assert!(
                close(f64::from(gw[j]), num, 2e-6, 2e-4),
                "{what}: dW[{j}] {} vs {num}",
                gw[j]
            );
            if let (Some(gb), Some(bb)) = (&g.b, &b) {
                let gb = gb.to_f32();
                let k = rng.usize(0..V);
                let num = derivative(bb, k, 1e-3, |b2| f(&x, &w, Some(b2)));
                assert!(
                    close(f64::from(gb[k]), num, 2e-6, 2e-4),
                    "{what}: db[{k}] {} vs {num}",
                    gb[k]
                );
            }
        }
    }
    runs
}

#[test]
fn kl_distillation_both_directions() {
    // The peers' (τ, w_hard, w_soft) combinations.
    for (k, (tau, wh, ws)) in [(1.0, 0.5, 0.5), (2.0, 0.0, 1.0), (0.5, 1.0, 0.0)]
        .into_iter()
        .enumerate()
    {
        for forward in [true, false] {
            run(
                Loss::Kl {
                    forward,
                    tau,
                    wh,
                    ws,
                },
                10 + k as u64,
                k == 1,
                if k == 2 { 42 } else { -100 },
            );
        }
    }
}

#[test]
fn cosine_distillation_counts_every_row_and_divides_by_the_valid_ones() {
    for (k, (beta, tau, wh, ws)) in [
        (0.5, 1.0, 0.5, 0.5),
        (0.8, 2.0, 0.0, 1.0),
        (0.2, 0.5, 1.0, 0.0),
    ]
    .into_iter()
    .enumerate()
    {
        run(
            Loss::Cosine { beta, tau, wh, ws },
            20 + k as u64,
            k != 1,
            if k == 1 { 42 } else { -100 },
        );
    }
}

#[test]
fn flce_with_class_weights() {
    for (k, (eps, zl, sum)) in [(0.0, 0.0, false), (0.1, 1e-4, false), (0.1, 1e-4, true)]
        .into_iter()
        .enumerate()
    {
        run(
            Loss::Flce { eps, zl, sum },
            30 + k as u64,
            k > 0,
            if k == 1 { 42 } else { -100 },
        );
    }
}
