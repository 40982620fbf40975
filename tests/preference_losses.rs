//! The preference losses (DPO and its eleven loss types, CPO, SimPO, ORPO, KTO) through the
//! CPU executor against naive f64 formulas written here, never liger-ir's autodiff:
//!
//! - on (S, T, H, V) = (6, 47, 31, 123), every schedule that applies and a budget small enough
//!   for several chunks, the gradients from central differences of the naive loss on the
//!   per-token log-probs (then `dz = g · (onehot − softmax)`, `dx = dz W`, `dW = dzᵀ x`,
//!   `db = Σ dz`);
//! - on (16, 128, 64, 512), the closed-form gradients of the per-pair losses (their derivative
//!   tables written here) through the same chain;
//! - bias on and off, ignore_index -100 and 42, the peers' hyperparameter combinations, fp32
//!   inputs at `|a − b| ≤ 1e-5 + 1e-5·|b|` for loss and metrics, and for gradients
//!   `1e-5·max(1, max|b|) + 1e-4·|b|` (the f32 GEMMs round terms of the gradient's own size),
//!   and bf16 inputs (the naive formulas on the rounded inputs) at the peers' bf16 tolerances.

mod common;

use std::collections::BTreeMap;

use common::preference::*;
use common::*;
use half::bf16;
use liger::prelude::*;
use liger::{RunOptions, Runtime, Strategy, TensorData};

/// Hyperparameters are f32 kernel arguments: the naive formulas use the same rounded values.
fn r32(x: f64) -> f64 {
    f64::from(x as f32)
}

/// Per-row softmax and target log-probs of logits `z` (`None` rows: ignored).
struct Rows {
    p: Vec<f64>,
    lp: Vec<f64>,
    valid: Vec<bool>,
}

fn rows(z: &[f64], t: &[i64], ignore: i64, v: usize) -> Rows {
    let n = t.len();
    let mut p = vec![0.0; n * v];
    let mut lp = vec![0.0; n];
    let mut valid = vec![false; n];
    for r in 0..n {
        let row = &z[r * v..(r + 1) * v];
        let l = lse(row);
        for k in 0..v {
            p[r * v + k] = (row[k] - l).exp();
        }
        if t[r] != ignore {
            valid[r] = true;
            lp[r] = row[t[r] as usize] - l;
        }
    }
    Rows { p, lp, valid }
}

/// Sequence sums (or means) of `lp` over the valid rows.
fn seq_logps(lp: &[f64], valid: &[bool], sh: Shape, average: bool) -> Vec<f64> {
    (0..sh.s)
        .map(|s| {
            let (mut sum, mut n) = (0.0, 0.0);
            for r in s * sh.t..(s + 1) * sh.t {
                if valid[r] {
                    sum += lp[r];
                    n += 1.0;
                }
            }
            if average { sum / n } else { sum }
        })
        .collect()
}

fn ls(x: f64) -> f64 {
    log_sigmoid(x)
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The per-pair DPO loss of type `t` from the margins `c`, `r` (policy minus reference) and
/// its derivatives with respect to `c` and `r` (the closed-form table).
fn dpo_pair(t: &str, c: f64, r: f64, beta: f64, eps: f64, tau: f64) -> (f64, f64, f64) {
    let (a, b) = (beta * c, beta * r);
    let d = a - b;
    // (loss, dℓ/dΔ part, direct dℓ/da, direct dℓ/db) folded into dℓ/dc, dℓ/dr.
    match t {
        "Sigmoid" => {
            let g = -(1.0 - eps) * sig(-d) + eps * sig(d);
            (-(1.0 - eps) * ls(d) - eps * ls(-d), beta * g, -beta * g)
        }
        "Hinge" => {
            let g = if d < 1.0 { -1.0 } else { 0.0 };
            ((1.0 - d).max(0.0), beta * g, -beta * g)
        }
        "Ipo" => {
            let u = c - r - 1.0 / (2.0 * beta);
            (u * u, 2.0 * u, -2.0 * u)
        }
        "Robust" => {
            let g = (-(1.0 - eps) * sig(-d) - eps * sig(d)) / (1.0 - 2.0 * eps);
            (
                (-(1.0 - eps) * ls(d) + eps * ls(-d)) / (1.0 - 2.0 * eps),
                beta * g,
                -beta * g,
            )
        }
        "ExoPair" => {
            let q = sig(d);
            let l = q * (ls(d) - (1.0 - eps).ln()) + (1.0 - q) * (ls(-d) - eps.ln());
            let g = q * (1.0 - q) * (d + (eps / (1.0 - eps)).ln());
            (l, beta * g, -beta * g)
        }
        "NcaPair" => (
            -ls(a) - 0.5 * ls(-a) - 0.5 * ls(-b),
            beta * (-sig(-a) + 0.5 * sig(a)),
            beta * 0.5 * sig(b),
        ),
        "BcoPair" => (-ls(a) - ls(-b), -beta * sig(-a), beta * sig(b)),
        "SppoHard" => {
            let (u, w) = (c - 1.0 / (2.0 * beta), r + 1.0 / (2.0 * beta));
            (u * u + w * w, 2.0 * u, 2.0 * w)
        }
        "ApoZero" => (
            (1.0 - sig(a)) + sig(b),
            -beta * sig(a) * sig(-a),
            beta * sig(b) * sig(-b),
        ),
        "ApoDown" => (
            sig(a) + (1.0 - sig(d)),
            beta * (sig(a) * sig(-a) - sig(d) * sig(-d)),
            beta * sig(d) * sig(-d),
        ),
        "Discopop" => {
            let w = sig(d / tau);
            let l = (1.0 - w) * -ls(d) + w * (-d).exp();
            let g =
                w * (1.0 - w) / tau * ((-d).exp() + ls(d)) - (1.0 - w) * sig(-d) - w * (-d).exp();
            (l, beta * g, -beta * g)
        }
        other => panic!("no DPO type {other}"),
    }
}

/// The naive loss and metrics from the policy's per-token log-probs `lp` (target) and `lpn`
/// (NLL target), the reference's sequence log-probs and the data; with the closed-form
/// derivatives of the loss with respect to each sequence log-prob `L_b` and the NLL's
/// per-token coefficient (`g_nll`, on the NLL target's rows).
struct Naive {
    loss: f64,
    metrics: BTreeMap<&'static str, Vec<f64>>,
    g_seq: Vec<f64>,
    g_nll: f64,
}

#[allow(clippy::too_many_arguments)]
fn naive(
    c: &Case,
    sh: Shape,
    lp: &[f64],
    valid: &[bool],
    lpn: &[f64],
    validn: &[bool],
    ref_seq: &[f64],
    d: &Data,
) -> Naive {
    let (beta, eps, alpha) = (r32(c.beta), r32(c.eps), r32(c.alpha));
    let pi = seq_logps(lp, valid, sh, c.averaged());
    let mut metrics = BTreeMap::new();
    let mut g_seq = vec![0.0; sh.s];
    let mut g_nll = 0.0;
    let mut loss = 0.0;
    let p = sh.s / 2;
    // NLL of the chosen half: mean over its valid (NLL target) tokens, 0 when it has none.
    let nll = |lp: &[f64], valid: &[bool]| {
        let (mut sum, mut n) = (0.0, 0.0);
        for r in 0..p * sh.t {
            if valid[r] {
                sum -= lp[r];
                n += 1.0;
            }
        }
        (sum / f64::max(n, 1.0), f64::max(n, 1.0))
    };
    match c.fam {
        Fam::Dpo(_) | Fam::Cpo | Fam::Simpo => {
            let (mut cr, mut rr, mut cl, mut rl) = (vec![], vec![], vec![], vec![]);
            let (mut margin, mut acc) = (0.0, 0.0);
            for q in 0..p {
                let (lc, lr) = (pi[q], pi[p + q]);
                let (refc, refr) = (ref_seq[q], ref_seq[p + q]);
                let (l, gc, gr, rc, rj) = match c.fam {
                    Fam::Dpo(t) => {
                        let (cc, rrr) = (lc - refc, lr - refr);
                        let (l, gc, gr) = dpo_pair(t, cc, rrr, beta, eps, r32(c.tau));
                        (l, gc, gr, beta * cc, beta * rrr)
                    }
                    Fam::Cpo | Fam::Simpo => {
                        let shift = if c.fam == Fam::Simpo {
                            r32(c.gamma)
                        } else {
                            0.0
                        };
                        let dd = beta * (lc - lr) - shift;
                        let g = -(1.0 - eps) * sig(-dd) + eps * sig(dd);
                        let l = -(1.0 - eps) * ls(dd) - eps * ls(-dd);
                        (l, beta * g, -beta * g, beta * lc, beta * lr)
                    }
                    _ => unreachable!(),
                };
                loss += l / p as f64;
                g_seq[q] += gc / p as f64;
                g_seq[p + q] += gr / p as f64;
                cr.push(rc);
                rr.push(rj);
                cl.push(lc);
                rl.push(lr);
                margin += (rc - rj) / p as f64;
                acc += if rc > rj { 1.0 / p as f64 } else { 0.0 };
            }
            metrics.insert("chosen_rewards", cr);
            metrics.insert("rejected_rewards", rr);
            metrics.insert("chosen_logps", cl);
            metrics.insert("rejected_logps", rl);
            metrics.insert("reward_margin", vec![margin]);
            metrics.insert("reward_accuracy", vec![acc]);
            if c.nll {
                let (n_loss, n) = nll(lp, valid);
                loss += alpha * n_loss;
                g_nll = -alpha / n;
                metrics.insert("nll_loss", vec![n_loss]);
            }
        }
        Fam::Orpo => {
            let (mut ratio, mut chosen_o) = (0.0, 0.0);
            let (mut cr, mut rr) = (vec![], vec![]);
            for q in 0..p {
                let (ac, ar) = (pi[q], pi[p + q]);
                let o = (ac - ar) - ((-ac.exp()).ln_1p() - (-ar.exp()).ln_1p());
                loss += -beta * ls(o) / p as f64;
                let g = -beta * sig(-o) / p as f64;
                g_seq[q] += g / (1.0 - ac.exp());
                g_seq[p + q] += -g / (1.0 - ar.exp());
                ratio += ls(o) / p as f64;
                chosen_o += o / p as f64;
                cr.push(beta * ac);
                rr.push(beta * ar);
            }
            let (n_loss, n) = if c.nll_target {
                nll(lpn, validn)
            } else {
                nll(lp, valid)
            };
            loss += n_loss;
            g_nll = -1.0 / n;
            metrics.insert("chosen_logps", (0..p).map(|q| pi[q]).collect());
            metrics.insert("rejected_logps", (p..2 * p).map(|q| pi[q]).collect());
            metrics.insert("chosen_rewards", cr);
            metrics.insert("rejected_rewards", rr);
            metrics.insert("log_odds_ratio", vec![ratio]);
            metrics.insert("log_odds_chosen", vec![chosen_o]);
            metrics.insert("nll_loss", vec![n_loss]);
        }
        Fam::Kto => {
            let kl = if c.kl { f64::from(d.kl) } else { 0.0 };
            let mut sums = [0.0; 6];
            for s in 0..sh.s {
                let rho = pi[s] - ref_seq[s];
                let z = beta * (rho - kl);
                let sign = if d.preference[s] { 1.0 } else { -1.0 };
                loss += (1.0 - sig(sign * z)) / sh.s as f64;
                g_seq[s] += -beta * sign * sig(sign * z) * (1.0 - sig(sign * z)) / sh.s as f64;
                let k = if d.preference[s] { 0 } else { 1 };
                sums[k] += pi[s];
                sums[2 + k] += beta * rho;
                sums[4 + k] += 1.0;
            }
            metrics.insert("chosen_logps_sum", vec![sums[0]]);
            metrics.insert("rejected_logps_sum", vec![sums[1]]);
            metrics.insert("chosen_rewards_sum", vec![sums[2]]);
            metrics.insert("rejected_rewards_sum", vec![sums[3]]);
            metrics.insert("num_chosen", vec![sums[4]]);
            metrics.insert("num_rejected", vec![sums[5]]);
        }
    }
    Naive {
        loss,
        metrics,
        g_seq,
        g_nll,
    }
}

/// The reference's sequence log-probs as the loss sees them (0 for reference-free).
fn reference_seq(c: &Case, sh: Shape, d: &Data) -> Vec<f64> {
    match c.reference {
        Ref::None => vec![0.0; sh.s],
        Ref::Logps => d.ref_logps.iter().map(|&v| f64::from(v)).collect(),
        Ref::Head => {
            let z = linear(
                &f64s(&d.xr),
                &f64s(&d.wr),
                d.br.as_deref().map(f64s).as_deref(),
                sh.h,
                sh.v,
            );
            let rw = rows(&z, &d.target, c.ignore, sh.v);
            seq_logps(&rw.lp, &rw.valid, sh, c.averaged())
        }
    }
}

struct Expected {
    loss: f64,
    metrics: BTreeMap<&'static str, Vec<f64>>,
    dx: Vec<f64>,
    dw: Vec<f64>,
    db: Option<Vec<f64>>,
}

/// The naive loss, metrics and gradients; `closed_form` takes the derivative of the loss with
/// respect to the per-token log-probs from the derivative tables, else from central differences
/// of the naive loss.
fn expected(c: &Case, sh: Shape, d: &Data, closed_form: bool) -> Expected {
    let (x, w) = (f64s(&d.x), f64s(&d.w));
    let b = d.b.as_deref().map(f64s);
    let z = linear(&x, &w, b.as_deref(), sh.h, sh.v);
    let rw = rows(&z, &d.target, c.ignore, sh.v);
    let nt = if c.nll_target {
        &d.nll_target
    } else {
        &d.target
    };
    let rn = rows(&z, nt, c.ignore, sh.v);
    let rseq = reference_seq(c, sh, d);
    let refs: &[f64] = &rseq;
    let base = naive(c, sh, &rw.lp, &rw.valid, &rn.lp, &rn.valid, refs, d);
    let n = sh.s * sh.t;
    // d loss / d lp (target rows) and d loss / d lpn (NLL rows).
    let (g_lp, g_lpn): (Vec<f64>, Vec<f64>) = if closed_form {
        let counts: Vec<f64> = (0..sh.s)
            .map(|s| (s * sh.t..(s + 1) * sh.t).filter(|&r| rw.valid[r]).count() as f64)
            .collect();
        let g_lp = (0..n)
            .map(|r| {
                let s = r / sh.t;
                if !rw.valid[r] {
                    return 0.0;
                }
                let kappa = if c.averaged() { 1.0 / counts[s] } else { 1.0 };
                base.g_seq[s] * kappa
            })
            .collect();
        let chosen_rows = (sh.s / 2) * sh.t;
        let g_lpn = (0..n)
            .map(|r| {
                if r < chosen_rows && rn.valid[r] && c.paired() {
                    base.g_nll
                } else {
                    0.0
                }
            })
            .collect();
        (g_lp, g_lpn)
    } else {
        let f = |lp: &[f64], lpn: &[f64]| naive(c, sh, lp, &rw.valid, lpn, &rn.valid, refs, d).loss;
        let h = 1e-4;
        let mut g_lp = vec![0.0; n];
        let mut g_lpn = vec![0.0; n];
        let mut lp = rw.lp.clone();
        let mut lpn = rn.lp.clone();
        for r in 0..n {
            if rw.valid[r] {
                let v0 = lp[r];
                lp[r] = v0 + h;
                let up = f(&lp, &rn.lp);
                lp[r] = v0 - h;
                let down = f(&lp, &rn.lp);
                lp[r] = v0;
                g_lp[r] = (up - down) / (2.0 * h);
            }
            if c.nll_target && rn.valid[r] {
                let v0 = lpn[r];
                lpn[r] = v0 + h;
                let up = f(&rw.lp, &lpn);
                lpn[r] = v0 - h;
                let down = f(&rw.lp, &lpn);
                lpn[r] = v0;
                g_lpn[r] = (up - down) / (2.0 * h);
            }
        }
        (g_lp, g_lpn)
    };
    // Without a separate NLL target, the NLL's tokens are the target's: fold them in.
    let (g_lp, g_lpn) = if !closed_form || c.nll_target {
        (g_lp, g_lpn)
    } else {
        let merged: Vec<f64> = g_lp.iter().zip(&g_lpn).map(|(a, b)| a + b).collect();
        (merged, vec![0.0; n])
    };
    let mut dz = vec![0.0; n * sh.v];
    for r in 0..n {
        for k in 0..sh.v {
            let p = rw.p[r * sh.v + k];
            let mut g = 0.0;
            if g_lp[r] != 0.0 {
                let one = if k as i64 == d.target[r] { 1.0 } else { 0.0 };
                g += g_lp[r] * (one - p);
            }
            if g_lpn[r] != 0.0 {
                let one = if k as i64 == nt[r] { 1.0 } else { 0.0 };
                g += g_lpn[r] * (one - p);
            }
            dz[r * sh.v + k] = g;
        }
    }
    let mut dx = vec![0.0; n * sh.h];
    let mut dw = vec![0.0; sh.v * sh.h];
    let mut db = vec![0.0; sh.v];
    for r in 0..n {
        for k in 0..sh.v {
            let g = dz[r * sh.v + k];
            if g == 0.0 {
                continue;
            }
            db[k] += g;
            for j in 0..sh.h {
                dx[r * sh.h + j] += g * w[k * sh.h + j];
                dw[k * sh.h + j] += g * x[r * sh.h + j];
            }
        }
    }
    Expected {
        loss: base.loss,
        metrics: base.metrics,
        dx,
        dw,
        db: d.b.as_ref().map(|_| db),
    }
}

#[derive(Clone, Copy)]
struct Tol {
    atol: f64,
    rtol: f64,
    grad_atol: f64,
    grad_rtol: f64,
}

const FP32: Tol = Tol {
    atol: 1e-5,
    rtol: 1e-5,
    grad_atol: 1e-5,
    grad_rtol: 1e-4,
};

fn check(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    check_scaled(what, got, want, atol, rtol, 1.0);
}

/// Gradients: the absolute tolerance scales with the gradient's largest entry (f32 GEMMs sum
/// terms of that size, so their rounding does too).
fn check_grad(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    check_scaled(what, got, want, atol, rtol, scale);
}

fn check_scaled(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64, scale: f64) {
    let atol = atol * scale;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(f64::from(*g), *w, atol, rtol),
            "{what}[{i}]: got {g}, naive {w}"
        );
    }
}

/// Runs case `c` on `sh` under every schedule (and a small budget) and checks everything.
fn run_case(
    c: &Case,
    sh: Shape,
    seed: u64,
    closed_form: bool,
    bf16_inputs: bool,
    tol: Tol,
) -> usize {
    let mut d = data(sh, seed, c);
    // Precomputed reference log-probs as a reference model gives them: the reference head's
    // sequence log-probs (the loss's averaging), slightly perturbed.
    let head_ref = reference_seq(
        &Case {
            reference: Ref::Head,
            ..*c
        },
        sh,
        &d,
    );
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    d.ref_logps = head_ref
        .iter()
        .map(|&v| (v + normal(&mut rng, 0.3)) as f32)
        .collect();
    let (xb, wb): (Vec<bf16>, Vec<bf16>) = (
        d.x.iter().map(|&v| bf16::from_f32(v)).collect(),
        d.w.iter().map(|&v| bf16::from_f32(v)).collect(),
    );
    if bf16_inputs {
        // The naive formulas see exactly the values the executor reads.
        d.x = round_bf16(&d.x);
        d.w = round_bf16(&d.w);
    }
    let want = expected(c, sh, &d, closed_form);
    let (x, w) = if bf16_inputs {
        (TensorData::BF16(&xb), TensorData::BF16(&wb))
    } else {
        (TensorData::F32(&d.x), TensorData::F32(&d.w))
    };
    let set = inputs(c, sh, &d, &x, &w);
    let params = c.params();
    let names: Vec<&str> = set.names().collect();
    let (p, _) = liger::pipeline_for(c.loss(), &names, &params).expect("pipeline");
    let mut runs = 0;
    let schedules: Vec<Option<Strategy>> = if closed_form {
        vec![None]
    } else {
        p.schedule().candidates.iter().copied().map(Some).collect()
    };
    for s in schedules {
        for budget in [None, Some((4 << 20) + (200 << 10))] {
            let opts = RunOptions {
                ignore_index: c.ignore,
                schedule: s,
                chunk_memory: budget.unwrap_or(256 << 20),
                ..RunOptions::default()
            };
            let what = format!("{c:?} {s:?} budget {budget:?} bf16 {bf16_inputs}");
            let out = match liger::run(c.loss(), &Runtime::cpu(), &set, &params, &opts) {
                Ok(o) => o,
                Err(liger::Error::Runtime(liger::runtime::Error::Budget { .. }))
                    if budget.is_some() =>
                {
                    continue;
                }
                Err(e) => panic!("{what}: {e}"),
            };
            runs += 1;
            assert!(
                close(f64::from(out.loss), want.loss, tol.atol, tol.rtol),
                "{what}: loss {} vs naive {}",
                out.loss,
                want.loss
            );
            for (name, values) in &want.metrics {
                let m = out
                    .metric(name)
                    .unwrap_or_else(|| panic!("{what}: no metric {name}"));
                check(
                    &format!("{what} metric {name}"),
                    &m.values,
                    values,
                    tol.atol,
                    tol.rtol,
                );
            }
            let g = out.grad("policy").expect("policy gradient");
            check_grad(
                &format!("{what} dx"),
                &g.x.as_ref().expect("gradient").to_f32(),
                &want.dx,
                tol.grad_atol,
                tol.grad_rtol,
            );
            check_grad(
                &format!("{what} dW"),
                &g.w.as_ref().expect("gradient").to_f32(),
                &want.dw,
                tol.grad_atol,
                tol.grad_rtol,
            );
            match (&g.b, &want.db) {
                (Some(gb), Some(wb)) => check_grad(
                    &format!("{what} db"),
                    &gb.to_f32(),
                    wb,
                    tol.grad_atol,
                    tol.grad_rtol,
                ),
                (None, None) => {}
                _ => panic!("{what}: bias gradient presence"),
            }
        }
    }
    runs
}

#[test]
fn dpo_every_loss_type_against_naive_formulas_and_finite_differences() {
    let mut runs = 0;
    for (k, c) in dpo_cases().iter().enumerate() {
        runs += run_case(c, SMALL, 10 + k as u64, false, false, FP32);
    }
    assert!(runs >= 100, "{runs} runs");
}

#[test]
fn cpo_simpo_orpo_kto_against_naive_formulas_and_finite_differences() {
    let mut runs = 0;
    for (k, c) in other_cases().iter().enumerate() {
        runs += run_case(c, SMALL, 200 + k as u64, false, false, FP32);
    }
    assert!(runs >= 40, "{runs} runs");
}

#[test]
fn every_preference_loss_against_closed_form_gradients_at_16x128x64x512() {
    let mut cases = dpo_cases();
    cases.extend(other_cases());
    for (k, c) in cases.iter().enumerate() {
        run_case(c, LARGE, 400 + k as u64, true, false, FP32);
    }
}

/// bf16 inputs at the peers' bf16 tolerances (the naive formulas on the rounded inputs).
#[test]
fn bf16_inputs_at_the_peers_tolerances() {
    let tol = |fam: Fam| match fam {
        Fam::Cpo => Tol {
            atol: 5e-2,
            rtol: 5e-2,
            grad_atol: 5e-2,
            grad_rtol: 5e-2,
        },
        Fam::Simpo => Tol {
            atol: 5e-3,
            rtol: 5e-3,
            grad_atol: 5e-3,
            grad_rtol: 5e-3,
        },
        _ => Tol {
            atol: 5e-2,
            rtol: 5e-1,
            grad_atol: 5e-2,
            grad_rtol: 5e-1,
        },
    };
    let mut cases: Vec<Case> = dpo_cases().into_iter().step_by(2).collect();
    cases.extend(other_cases().into_iter().step_by(3));
    for (k, c) in cases.iter().enumerate() {
        run_case(c, SMALL, 600 + k as u64, true, true, tol(c.fam));
    }
}

/// The NaN hazards the peers leave open have a defined behaviour here.
#[test]
fn nan_hazards_have_a_documented_behaviour() {
    let sh = SMALL;
    // A chosen half with no valid NLL token: the NLL term is 0 (its normaliser is clamped to
    // 1; the peers divide by zero).
    let o = Case {
        nll_target: true,
        ..Case::base(Fam::Orpo)
    };
    let mut od = data(sh, 8, &o);
    for r in 0..(sh.s / 2) * sh.t {
        od.nll_target[r] = o.ignore;
    }
    let (x, w) = (TensorData::F32(&od.x), TensorData::F32(&od.w));
    let out = liger::run(
        &Orpo,
        &Runtime::cpu(),
        &inputs(&o, sh, &od, &x, &w),
        &o.params(),
        &RunOptions::default(),
    )
    .expect("runs");
    assert_eq!(out.metric("nll_loss").map(|m| m.values[0]), Some(0.0));
    // Averaging over a sequence with no valid token: a typed error naming the sequence.
    let mut ed = data(sh, 9, &o);
    for r in sh.t..2 * sh.t {
        ed.target[r] = o.ignore;
    }
    let (x, w) = (TensorData::F32(&ed.x), TensorData::F32(&ed.w));
    match liger::run(
        &Orpo,
        &Runtime::cpu(),
        &inputs(&o, sh, &ed, &x, &w),
        &o.params(),
        &RunOptions::default(),
    ) {
        Err(liger::Error::Runtime(liger::runtime::Error::EmptySequence { seq: 1 })) => {}
        other => panic!("{other:?}"),
    }
    // ORPO at probability 1 (a sequence's mean log-prob is 0): a typed non-finite-result error.
    let sure = Case::base(Fam::Orpo);
    let mut sd = data(SMALL, 10, &sure);
    // A head whose logits put all the mass on token 0 of every row, and targets all 0.
    sd.w.iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = if i / sh.h == 0 { 200.0 } else { 0.0 });
    sd.x.iter_mut().for_each(|v| *v = 1.0);
    sd.target.iter_mut().for_each(|t| *t = 0);
    let (x, w) = (TensorData::F32(&sd.x), TensorData::F32(&sd.w));
    match liger::run(
        &Orpo,
        &Runtime::cpu(),
        &inputs(&sure, sh, &sd, &x, &w),
        &sure.params(),
        &RunOptions::default(),
    ) {
        Err(liger::Error::Runtime(liger::runtime::Error::NonFiniteResult { .. })) => {}
        other => panic!("{other:?}"),
    }
}

/// KTO's class sums are the same whatever the chunking (the peers' chunk_size > 1 bug).
#[test]
fn kto_metrics_do_not_depend_on_the_chunking() {
    let c = Case {
        kl: true,
        ..Case::base(Fam::Kto)
    };
    let d = data(SMALL, 77, &c);
    let (x, w) = (TensorData::F32(&d.x), TensorData::F32(&d.w));
    let set = inputs(&c, SMALL, &d, &x, &w);
    let want = expected(&c, SMALL, &d, true);
    let mut chunks = Vec::new();
    for budget in [(4 << 20) + (100 << 10), (4 << 20) + (400 << 10), 256 << 20] {
        let opts = RunOptions {
            chunk_memory: budget,
            ..RunOptions::default()
        };
        let out = liger::run(&Kto, &Runtime::cpu(), &set, &c.params(), &opts).expect("runs");
        chunks.push(out.report.chunks);
        for (name, values) in &want.metrics {
            let m = out.metric(name).expect("metric");
            check(
                &format!("kto {name} budget {budget}"),
                &m.values,
                values,
                1e-5,
                1e-5,
            );
        }
    }
    assert!(
        chunks.iter().max() > chunks.iter().min(),
        "chunk counts {chunks:?}"
    );
}

/// `logits_metrics`: the mean (or, for KTO, the sum) of each side's logits over every position
/// and vocabulary entry, ignored positions and the bias included, as the peers define them.
#[test]
fn logits_metrics_cover_every_position() {
    let sh = SMALL;
    for fam in [
        Fam::Dpo("Sigmoid"),
        Fam::Cpo,
        Fam::Simpo,
        Fam::Orpo,
        Fam::Kto,
    ] {
        let c = Case {
            bias: true,
            ..Case::base(fam)
        };
        let d = data(sh, 91, &c);
        let (x, w) = (TensorData::F32(&d.x), TensorData::F32(&d.w));
        let params = c.params().variant("logits_metrics", "true");
        let out = liger::run(
            c.loss(),
            &Runtime::cpu(),
            &inputs(&c, sh, &d, &x, &w),
            &params,
            &RunOptions::default(),
        )
        .expect("runs");
        let z = linear(
            &f64s(&d.x),
            &f64s(&d.w),
            d.b.as_deref().map(f64s).as_deref(),
            sh.h,
            sh.v,
        );
        let row_sum = |s: usize| -> f64 { z[s * sh.t * sh.v..(s + 1) * sh.t * sh.v].iter().sum() };
        let (want_c, want_r, names) = if fam == Fam::Kto {
            let c_sum: f64 = (0..sh.s).filter(|&s| d.preference[s]).map(row_sum).sum();
            let r_sum: f64 = (0..sh.s).filter(|&s| !d.preference[s]).map(row_sum).sum();
            (c_sum, r_sum, ("chosen_logits_sum", "rejected_logits_sum"))
        } else {
            let p = sh.s / 2;
            let n = (p * sh.t * sh.v) as f64;
            let c_sum: f64 = (0..p).map(row_sum).sum();
            let r_sum: f64 = (p..sh.s).map(row_sum).sum();
            (
                c_sum / n,
                r_sum / n,
                ("chosen_logits_mean", "rejected_logits_mean"),
            )
        };
        for (name, want) in [(names.0, want_c), (names.1, want_r)] {
            let m = out
                .metric(name)
                .unwrap_or_else(|| panic!("{fam:?}: no {name}"));
            check(&format!("{fam:?} {name}"), &m.values, &[want], 1e-5, 1e-5);
        }
        // Off by default: the metrics are absent.
        let out = liger::run(
            c.loss(),
            &Runtime::cpu(),
            &inputs(&c, sh, &d, &x, &w),
            &c.params(),
            &RunOptions::default(),
        )
        .expect("runs");
        assert!(out.metric(names.0).is_none());
    }
}
