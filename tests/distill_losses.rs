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
    token_weight: Vec<f32>,
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
        token_weight: (0..S * T).map(|_| (rng.f64() * 2.0 - 0.5) as f32).collect(),
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
        reduction: Red,
        /// With `class_weight`.
        cw: bool,
        /// With `token_weight` (reduction `None` only).
        tw: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Red {
    Mean,
    Sum,
    None,
}

fn log_softmax_row(row: &[f64], tau: f64) -> Vec<f64> {
    let r: Vec<f64> = row.iter().map(|v| v / tau).collect();
    let l = lse(&r);
    r.iter().map(|v| v - l).collect()
}

/// The naive loss from student logits `z` (teacher logits `zt`) with its metrics.
fn naive(
    l: Loss,
    z: &[f64],
    zt: &[f64],
    d: &Data,
    ignore: i64,
) -> (f64, Vec<(&'static str, Vec<f64>)>) {
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
                vec![("soft_loss", vec![soft]), ("hard_loss", vec![hard])],
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
                vec![("soft_loss", vec![soft]), ("hard_loss", vec![hard])],
            )
        }
        Loss::Flce {
            eps,
            zl,
            reduction,
            cw,
            tw,
        } => {
            let (eps, zl) = (r32(eps), r32(zl));
            let w: Vec<f64> = if cw {
                d.class_weight.iter().map(|&v| f64::from(v)).collect()
            } else {
                vec![1.0; V]
            };
            let (mut weighted, mut wsum, mut zsum, mut correct) = (0.0, 0.0, 0.0, 0.0);
            let (mut per_token, mut z_token) = (vec![0.0; S * T], vec![0.0; S * T]);
            let mut tw_sum = 0.0;
            for &r in &valid {
                let row = &z[r * V..(r + 1) * V];
                let l = lse(row);
                let y = d.target[r] as usize;
                let smooth: f64 = (0..V).map(|k| w[k] * (l - row[k])).sum::<f64>() / V as f64;
                let term = (1.0 - eps) * w[y] * (l - row[y]) + eps * smooth;
                weighted += term;
                wsum += w[y];
                zsum += zl * l * l;
                per_token[r] = term + zl * l * l;
                z_token[r] = zl * l * l;
                let t = if tw {
                    f64::from(d.token_weight[r])
                } else {
                    1.0
                };
                tw_sum += t * per_token[r];
                let argmax = (0..V).fold(0, |b, k| if row[k] > row[b] { k } else { b });
                correct += if argmax == y { 1.0 } else { 0.0 };
            }
            let nv = valid.len() as f64;
            let acc = ("accuracy", vec![correct / nv]);
            match reduction {
                Red::Sum => (weighted + zsum, vec![("z_loss", vec![zsum]), acc]),
                Red::Mean => (
                    weighted / wsum.max(1e-30) + zsum / nv,
                    vec![("z_loss", vec![zsum / nv]), acc],
                ),
                Red::None => (
                    tw_sum,
                    vec![("per_token_loss", per_token), ("z_loss", z_token), acc],
                ),
            }
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
        Loss::Flce {
            eps, zl, reduction, ..
        } => (
            &Flce,
            ParamSet::new()
                .float("label_smoothing", eps as f32)
                .float("z_loss_scale", zl as f32)
                .variant("reduction", &format!("{reduction:?}")),
        ),
    }
}

/// FLCE's inputs: the head, the targets, and the class and token weights of `d` when asked.
fn flce_set<'a>(
    head: Head<'a>,
    target: TensorView<'a>,
    d: &'a Data,
    (cw, tw): (bool, bool),
    (s, t, v): (usize, usize, usize),
) -> InputSet<'a> {
    let mut set = InputSet::new()
        .head("logits", head)
        .tensor("target", target);
    if cw {
        set = set.tensor(
            "class_weight",
            TensorView::new(&d.class_weight[..], &[v]).expect("cw"),
        );
    }
    if tw {
        set = set.tensor(
            "token_weight",
            TensorView::new(&d.token_weight[..], &[s, t]).expect("tw"),
        );
    }
    set
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
        Loss::Flce { cw, tw, .. } => flce_set(first, target, &d, (cw, tw), (S, T, V)),
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
            let got = &out
                .metric(name)
                .unwrap_or_else(|| panic!("{what}: no {name}"))
                .values;
            assert_eq!(
                got.len(),
                v.len(),
                "{what}: {name} has {} values",
                got.len()
            );
            for (k, (g, want)) in got.iter().zip(v).enumerate() {
                assert!(
                    close(f64::from(*g), *want, 1e-5, 1e-5),
                    "{what}: {name}[{k}] {g} vs {want}"
                );
            }
        }
        let g = out
            .grad(if matches!(l, Loss::Flce { .. }) {
                "logits"
            } else {
                "student"
            })
            .expect("grad");
        let (gx, gw) = (
            g.x.as_ref().expect("gradient").to_f32(),
            g.w.as_ref().expect("gradient").to_f32(),
        );
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
    for (k, (eps, zl, reduction)) in [
        (0.0, 0.0, Red::Mean),
        (0.1, 1e-4, Red::Mean),
        (0.1, 1e-4, Red::Sum),
    ]
    .into_iter()
    .enumerate()
    {
        run(
            Loss::Flce {
                eps,
                zl,
                reduction,
                cw: true,
                tw: false,
            },
            30 + k as u64,
            k > 0,
            if k == 1 { 42 } else { -100 },
        );
    }
}

#[test]
fn flce_reduction_none_gives_per_token_losses_and_weighted_gradients() {
    // Per-token losses (0 at ignored rows), per-token z-loss, and gradients of
    // Σ t_r·ℓ_r with random upstream weights (some negative) or of Σ ℓ_r without them.
    for (k, (eps, zl, cw, tw)) in [
        (0.0, 0.0, false, true),
        (0.1, 1e-4, false, false),
        (0.1, 1e-4, true, true),
        (0.0, 1e-4, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        run(
            Loss::Flce {
                eps,
                zl,
                reduction: Red::None,
                cw,
                tw,
            },
            40 + k as u64,
            k % 2 == 0,
            if k == 1 { 42 } else { -100 },
        );
    }
}

#[test]
fn flce_refuses_token_weights_outside_reduction_none() {
    let d = data(50, false, -100);
    let set = InputSet::new()
        .head(
            "logits",
            Head::new(
                TensorView::new(&d.x[..], &[S, T, H]).expect("x"),
                TensorView::new(&d.w[..], &[V, H]).expect("w"),
            ),
        )
        .tensor(
            "target",
            TensorView::new(&d.target[..], &[S, T]).expect("t"),
        )
        .tensor(
            "token_weight",
            TensorView::new(&d.token_weight[..], &[S, T]).expect("tw"),
        );
    for red in ["Mean", "Sum"] {
        let params = ParamSet::new().variant("reduction", red);
        let err = liger::run(
            &Flce,
            &Runtime::cpu(),
            &set,
            &params,
            &RunOptions::default(),
        )
        .expect_err("token_weight under Mean/Sum");
        let msg = err.to_string();
        assert!(
            matches!(err, liger::Error::UnusedInput { .. }) && msg.contains("token_weight"),
            "{red}: {msg}"
        );
    }
}

/// A teacher with a larger vocabulary: refused by default with a typed error, and with
/// `vocab_prefix` bitwise the run with its first V rows given explicitly.
#[test]
fn a_larger_teacher_vocabulary_needs_the_prefix_option() {
    let d = data(60, false, -100);
    let extra = 9;
    let mut rng = fastrand::Rng::with_seed(61);
    let mut wt_big = d.wt.clone();
    wt_big.extend(randn(&mut rng, extra * 2 * H, 0.25));
    let bt_big = randn(&mut rng, V + extra, 0.5);
    let student = || {
        Head::new(
            TensorView::new(&d.x[..], &[S, T, H]).expect("x"),
            TensorView::new(&d.w[..], &[V, H]).expect("w"),
        )
    };
    let target = TensorView::new(&d.target[..], &[S, T]).expect("t");
    let teacher = |rows: usize| {
        Head::with_bias(
            TensorView::new(&d.xt[..], &[S, T, 2 * H]).expect("xt"),
            TensorView::new(&wt_big[..rows * 2 * H], &[rows, 2 * H]).expect("wt"),
            TensorView::new(&bt_big[..rows], &[rows]).expect("bt"),
        )
    };
    let set = |rows: usize| {
        InputSet::new()
            .head("student", student())
            .head("teacher", teacher(rows))
            .tensor("target", target.clone())
    };
    for loss in [&KlDistill as &dyn ChunkedLoss, &CosineDistill, &Jsd] {
        let params = ParamSet::new();
        let err = liger::run(
            loss,
            &Runtime::cpu(),
            &set(V + extra),
            &params,
            &RunOptions::default(),
        )
        .expect_err("larger teacher without the option");
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                liger::Error::Runtime(liger::runtime::Error::HeadVocab {
                    got,
                    v: V,
                    trainable: false,
                    ..
                }) if got == V + extra
            ) && msg.contains("vocab_prefix"),
            "{}: {msg}",
            loss.name()
        );
        let opts = RunOptions {
            vocab_prefix: true,
            ..RunOptions::default()
        };
        let cut = liger::run(loss, &Runtime::cpu(), &set(V + extra), &params, &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", loss.name()));
        let exact = liger::run(loss, &Runtime::cpu(), &set(V), &params, &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", loss.name()));
        assert_eq!(cut.loss.to_bits(), exact.loss.to_bits(), "{}", loss.name());
        assert_eq!(cut.grads, exact.grads, "{}", loss.name());
        assert!(cut.loss.is_finite());
        // A smaller teacher is a shape error with or without the option.
        let err = liger::run(loss, &Runtime::cpu(), &set(V - 1), &params, &opts)
            .expect_err("smaller teacher");
        assert!(err.to_string().contains("teacher.w"), "{err}");
    }
}

/// The closed-form `d loss / d z` of one row of the student logits (`zt` the teacher's row,
/// `scale_*` the row's weights in the loss), as written out in the test below.
fn closed_row(l: Loss, z: &[f64], zt: &[f64], y: Option<usize>, tw: f64, d: &Data) -> Vec<f64> {
    let v = z.len();
    let softmax = |r: &[f64], tau: f64| -> Vec<f64> {
        let s: Vec<f64> = r.iter().map(|x| x / tau).collect();
        let l = lse(&s);
        s.iter().map(|x| (x - l).exp()).collect()
    };
    let p = softmax(z, 1.0);
    let mut g = vec![0.0; v];
    match l {
        Loss::Kl {
            forward,
            tau,
            wh,
            ws,
        } => {
            let (tau, wh, ws) = (r32(tau), r32(wh), r32(ws));
            let Some(y) = y else { return g };
            let q = softmax(z, tau);
            let t = softmax(zt, tau);
            // Forward KL(t‖q): (q − t)/τ. Reverse KL(q‖t): q ⊙ (a − E_q a)/τ, a = log q − log t.
            let a: Vec<f64> = (0..v).map(|k| q[k].ln() - t[k].ln()).collect();
            let ea: f64 = (0..v).map(|k| q[k] * a[k]).sum();
            for j in 0..v {
                let soft = if forward {
                    (q[j] - t[j]) / tau
                } else {
                    q[j] * (a[j] - ea) / tau
                };
                let hard = p[j] - if j == y { 1.0 } else { 0.0 };
                g[j] = wh * hard + ws * soft;
            }
        }
        Loss::Cosine { beta, tau, wh, ws } => {
            let (beta, tau, wh, ws) = (r32(beta), r32(tau), r32(wh), r32(ws));
            // d/dz of β(1 − cos(z/τ, zt/τ)) = −(β/τ)(b/(|a||b|) − cos·a/|a|²); every row.
            let a: Vec<f64> = z.iter().map(|x| x / tau).collect();
            let b: Vec<f64> = zt.iter().map(|x| x / tau).collect();
            let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
            let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
            let cos = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / (na * nb);
            for j in 0..v {
                g[j] = -ws * beta / tau * (b[j] / (na * nb) - cos * a[j] / (na * na));
                if let Some(y) = y {
                    g[j] += wh * (p[j] - if j == y { 1.0 } else { 0.0 });
                }
            }
        }
        Loss::Flce { eps, zl, cw, .. } => {
            let Some(y) = y else { return g };
            let (eps, zl) = (r32(eps), r32(zl));
            let w: Vec<f64> = if cw {
                d.class_weight.iter().map(|&x| f64::from(x)).collect()
            } else {
                vec![1.0; v]
            };
            let wsum: f64 = w.iter().sum();
            let l = lse(z);
            // (1−ε)·w_y(p − e_y) + (ε/V)(Σw·p − w) + 2s·lse·p, times the row's weight.
            for j in 0..v {
                let nll = w[y] * (p[j] - if j == y { 1.0 } else { 0.0 });
                let smooth = (wsum * p[j] - w[j]) / v as f64;
                g[j] = tw * ((1.0 - eps) * nll + eps * smooth + 2.0 * zl * l * p[j]);
            }
        }
    }
    g
}

fn bf16_round(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|&v| half::bf16::from_f32(v).to_f32())
        .collect()
}

/// Closed-form gradients at (S, T, H, V) = (16, 128, 64, 512), teacher hidden 128, every
/// schedule; fp32 inputs at rtol 1e-5 and bf16 inputs (the formulas on the rounded inputs).
#[test]
fn closed_form_gradients_at_16x128x64x512() {
    const S2: usize = 16;
    const T2: usize = 128;
    const H2: usize = 64;
    const V2: usize = 512;
    let n_rows = S2 * T2;
    let cases = [
        Loss::Kl {
            forward: true,
            tau: 2.0,
            wh: 0.5,
            ws: 0.5,
        },
        Loss::Kl {
            forward: false,
            tau: 1.0,
            wh: 0.0,
            ws: 1.0,
        },
        Loss::Cosine {
            beta: 0.8,
            tau: 2.0,
            wh: 0.5,
            ws: 0.5,
        },
        Loss::Flce {
            eps: 0.1,
            zl: 1e-4,
            reduction: Red::Mean,
            cw: true,
            tw: false,
        },
        Loss::Flce {
            eps: 0.1,
            zl: 1e-4,
            reduction: Red::None,
            cw: false,
            tw: true,
        },
    ];
    for (k, l) in cases.into_iter().enumerate() {
        for bf in [false, true] {
            let ignore = if k % 2 == 0 { -100 } else { 42 };
            let mut rng = fastrand::Rng::with_seed(70 + k as u64);
            let mut x = randn(&mut rng, n_rows * H2, 1.0);
            let mut w = randn(&mut rng, V2 * H2, 0.2);
            let b = randn(&mut rng, V2, 0.5);
            let mut xt = randn(&mut rng, n_rows * 2 * H2, 1.0);
            let mut wt = randn(&mut rng, V2 * 2 * H2, 0.15);
            if bf {
                for a in [&mut x, &mut w, &mut xt, &mut wt] {
                    *a = bf16_round(a);
                }
            }
            let target = targets(&mut rng, S2, T2, V2, ignore);
            let d = Data {
                x: Vec::new(),
                w: Vec::new(),
                b: None,
                xt: Vec::new(),
                wt: Vec::new(),
                target: target.clone(),
                class_weight: (0..V2).map(|_| (0.2 + rng.f64() * 1.6) as f32).collect(),
                token_weight: (0..n_rows)
                    .map(|_| (rng.f64() * 2.0 - 0.5) as f32)
                    .collect(),
            };
            let (xf, wf, bfv) = (f64s(&x), f64s(&w), f64s(&b));
            let z = linear(&xf, &wf, Some(&bfv), H2, V2);
            let zt = linear(&f64s(&xt), &f64s(&wt), None, 2 * H2, V2);
            let valid: Vec<bool> = target.iter().map(|&t| t != ignore).collect();
            let nv = valid.iter().filter(|&&v| v).count() as f64;
            // Each row's weight in the loss: 1/valid rows for the means, Σ w_y for FLCE-Mean's
            // weighted terms (its z-loss term divides by the valid rows: written apart below).
            let mut dz = vec![0.0; n_rows * V2];
            let wy_sum: f64 = (0..n_rows)
                .filter(|&r| valid[r])
                .map(|r| f64::from(d.class_weight[target[r] as usize]))
                .sum();
            for r in 0..n_rows {
                let zr = &z[r * V2..(r + 1) * V2];
                let ztr = &zt[r * V2..(r + 1) * V2];
                let y = valid[r].then(|| target[r] as usize);
                let g: Vec<f64> = match l {
                    Loss::Flce {
                        reduction: Red::Mean,
                        eps,
                        zl,
                        ..
                    } => {
                        // Weighted terms over Σ w_y, the z-loss over the valid rows.
                        let terms = closed_row(
                            Loss::Flce {
                                eps,
                                zl: 0.0,
                                reduction: Red::Mean,
                                cw: true,
                                tw: false,
                            },
                            zr,
                            ztr,
                            y,
                            1.0 / wy_sum,
                            &d,
                        );
                        let l = lse(zr);
                        let p: Vec<f64> = zr.iter().map(|v| (v - l).exp()).collect();
                        let zl = r32(zl);
                        (0..V2)
                            .map(|j| {
                                terms[j]
                                    + if y.is_some() {
                                        2.0 * zl * l * p[j] / nv
                                    } else {
                                        0.0
                                    }
                            })
                            .collect()
                    }
                    Loss::Flce { .. } => {
                        closed_row(l, zr, ztr, y, f64::from(d.token_weight[r]), &d)
                    }
                    _ => closed_row(l, zr, ztr, y, 1.0, &d)
                        .into_iter()
                        .map(|g| g / nv)
                        .collect(),
                };
                dz[r * V2..(r + 1) * V2].copy_from_slice(&g);
            }
            // dx = dZ·W, dW = dZᵀ·x, db = Σ_rows dZ.
            let mut dx = vec![0.0; n_rows * H2];
            let mut dw = vec![0.0; V2 * H2];
            let mut db = vec![0.0; V2];
            for r in 0..n_rows {
                for j in 0..V2 {
                    let g = dz[r * V2 + j];
                    if g == 0.0 {
                        continue;
                    }
                    db[j] += g;
                    for h in 0..H2 {
                        dx[r * H2 + h] += g * wf[j * H2 + h];
                        dw[j * H2 + h] += g * xf[r * H2 + h];
                    }
                }
            }

            let xb: Vec<half::bf16> = x.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let wb: Vec<half::bf16> = w.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let xtb: Vec<half::bf16> = xt.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let wtb: Vec<half::bf16> = wt.iter().map(|&v| half::bf16::from_f32(v)).collect();
            fn view<'a>(
                bf: bool,
                f: &'a [f32],
                h: &'a [half::bf16],
                shape: &[usize],
            ) -> TensorView<'a> {
                if bf {
                    TensorView::new(h, shape).expect("view")
                } else {
                    TensorView::new(f, shape).expect("view")
                }
            }
            let student = Head::with_bias(
                view(bf, &x, &xb, &[S2, T2, H2]),
                view(bf, &w, &wb, &[V2, H2]),
                TensorView::new(&b[..], &[V2]).expect("b"),
            );
            let tview = TensorView::new(&target[..], &[S2, T2]).expect("t");
            let (loss, params) = case(l);
            let set = match l {
                Loss::Flce { cw, tw, .. } => flce_set(student, tview, &d, (cw, tw), (S2, T2, V2)),
                _ => InputSet::new()
                    .head("student", student)
                    .head(
                        "teacher",
                        Head::new(
                            view(bf, &xt, &xtb, &[S2, T2, 2 * H2]),
                            view(bf, &wt, &wtb, &[V2, 2 * H2]),
                        ),
                    )
                    .tensor("target", tview),
            };
            let names: Vec<&str> = set.names().collect();
            let (p, _) = liger::pipeline_for(loss, &names, &params).expect("pipeline");
            let head = if matches!(l, Loss::Flce { .. }) {
                "logits"
            } else {
                "student"
            };
            for s in p.schedule().candidates.clone() {
                let opts = RunOptions {
                    ignore_index: ignore,
                    schedule: Some(s),
                    chunk_memory: 6 << 20,
                    ..RunOptions::default()
                };
                let what = format!("{l:?} bf16 {bf} {s}");
                let out = liger::run(loss, &Runtime::cpu(), &set, &params, &opts)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let g = out.grad(head).expect("grad");
                for (name, got, want) in [
                    ("dx", g.x.as_ref().expect("gradient").to_f32(), &dx),
                    ("dW", g.w.as_ref().expect("gradient").to_f32(), &dw),
                    ("db", g.b.as_ref().expect("db").to_f32(), &db),
                ] {
                    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    for (i, (a, e)) in got.iter().zip(want.iter()).enumerate() {
                        assert!(
                            close(f64::from(*a), *e, 1e-5 * scale.max(1e-3), 1e-4),
                            "{what}: {name}[{i}] {a} vs closed form {e} (max |{name}| {scale})"
                        );
                    }
                }
            }
        }
    }
}
