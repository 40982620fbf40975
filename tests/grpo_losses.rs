//! GRPO in every loss type and importance-sampling level through the CPU executor against
//! naive f64 formulas written here (never liger-ir's autodiff): on (S, T, H, V) =
//! (6, 47, 31, 123) under every schedule with gradients from central differences of the naive
//! loss on the per-token log-probs (detached quantities held at their base values), on
//! (16, 128, 64, 512) with the closed-form per-token derivatives; with and without old,
//! reference (precomputed or a head) and importance-sampling ratios, `delta`, the bias-corrected
//! KL, `num_items_in_batch`, a temperature, a bias; and the degenerate batches (a sequence with
//! no completion token, no completion token at all) behaving as TRL's clamped denominators.

mod common;

use common::*;
use liger::prelude::*;
use liger::{RunOptions, Runtime};

#[derive(Clone, Copy, Debug)]
struct Shape {
    s: usize,
    t: usize,
    h: usize,
    v: usize,
}

const SMALL: Shape = Shape {
    s: 6,
    t: 47,
    h: 31,
    v: 123,
};
const LARGE: Shape = Shape {
    s: 16,
    t: 128,
    h: 64,
    v: 512,
};

const TYPES: [&str; 8] = [
    "Grpo", "Bnpo", "DrGrpo", "Dapo", "Cispo", "Sapo", "Luspo", "Vespo",
];

#[derive(Clone, Copy, Debug)]
enum Ref {
    Head,
    Logps,
    None,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    loss_type: &'static str,
    sequence: bool,
    old: bool,
    reference: Ref,
    is_ratio: bool,
    bias_correction: bool,
    beta: f64,
    eps_low: f64,
    eps_high: f64,
    temperature: f64,
    delta: f64,
    num_items: f64,
    max_len: f64,
    bias: bool,
}

impl Case {
    fn params(&self) -> ParamSet {
        ParamSet::new()
            .variant("loss_type", self.loss_type)
            .variant(
                "importance_sampling_level",
                if self.sequence { "Sequence" } else { "Token" },
            )
            .variant(
                "bias_correction_kl",
                if self.bias_correction {
                    "true"
                } else {
                    "false"
                },
            )
            .float("beta", self.beta as f32)
            .float("epsilon_low", self.eps_low as f32)
            .float("epsilon_high", self.eps_high as f32)
            .float("temperature", self.temperature as f32)
            .float("delta", self.delta as f32)
            .float("num_items_in_batch", self.num_items as f32)
            .float("max_completion_length", self.max_len as f32)
    }
}

fn r32(x: f64) -> f64 {
    f64::from(x as f32)
}

struct Data {
    x: Vec<f32>,
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    xr: Vec<f32>,
    wr: Vec<f32>,
    target: Vec<i64>,
    mask: Vec<bool>,
    adv: Vec<f32>,
    old: Vec<f32>,
    ref_logps: Vec<f32>,
    is_ratio: Vec<f32>,
}

/// Log-softmax at the sampled token of `z / τ`, and the softmax rows.
fn token_logps(z: &[f64], t: &[i64], tau: f64, v: usize) -> (Vec<f64>, Vec<f64>) {
    let n = t.len();
    let mut lp = vec![0.0; n];
    let mut p = vec![0.0; n * v];
    for r in 0..n {
        let row: Vec<f64> = z[r * v..(r + 1) * v].iter().map(|x| x / tau).collect();
        let l = lse(&row);
        for k in 0..v {
            p[r * v + k] = (row[k] - l).exp();
        }
        lp[r] = row[t[r] as usize] - l;
    }
    (lp, p)
}

fn data(sh: Shape, c: &Case, seed: u64) -> Data {
    let mut rng = fastrand::Rng::with_seed(seed);
    let wsd = 1.2 / (sh.h as f64).sqrt();
    let x = randn(&mut rng, sh.s * sh.t * sh.h, 1.0);
    let w = randn(&mut rng, sh.v * sh.h, wsd);
    let b = c.bias.then(|| randn(&mut rng, sh.v, 0.5));
    let xr = randn(&mut rng, sh.s * sh.t * sh.h, 1.0);
    let wr = randn(&mut rng, sh.v * sh.h, wsd);
    let target: Vec<i64> = (0..sh.s * sh.t)
        .map(|_| rng.usize(0..sh.v) as i64)
        .collect();
    let mask: Vec<bool> = (0..sh.s * sh.t)
        .map(|r| r % sh.t == 0 || rng.f64() < 0.7)
        .collect();
    // Mixed-sign advantages, none near 0.
    let adv: Vec<f32> = (0..sh.s)
        .map(|s| {
            let m = 0.3 + rng.f64();
            (if s % 2 == 0 { m } else { -m }) as f32
        })
        .collect();
    // Old log-probs at one offset per sequence from the policy's own, so every ratio (token or
    // sequence level) is e^offset, far from the clip bounds and `delta`.
    let z = linear(
        &f64s(&x),
        &f64s(&w),
        b.as_deref().map(f64s).as_deref(),
        sh.h,
        sh.v,
    );
    let (lp, _) = token_logps(&z, &target, r32(c.temperature), sh.v);
    let offsets = [-0.5, 0.0, 0.05, 0.5];
    let per_seq: Vec<f64> = (0..sh.s)
        .map(|_| offsets[rng.usize(0..offsets.len())])
        .collect();
    let old = (0..sh.s * sh.t)
        .map(|r| (lp[r] - per_seq[r / sh.t]) as f32)
        .collect();
    let ref_logps = lp
        .iter()
        .map(|&l| (l + normal(&mut rng, 0.2)) as f32)
        .collect();
    let is_ratio = (0..sh.s * sh.t).map(|_| (0.5 + rng.f64()) as f32).collect();
    Data {
        x,
        w,
        b,
        xr,
        wr,
        target,
        mask,
        adv,
        old,
        ref_logps,
        is_ratio,
    }
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The naive loss and its two metrics from the policy's per-token log-probs `lp`, with every
/// detached quantity (on-policy old log-probs, the reference when absent, CISPO's and VESPO's
/// weights) taken at `lp0`.
fn naive(c: &Case, sh: Shape, d: &Data, lp: &[f64], lp0: &[f64], refs: &[f64]) -> (f64, f64, f64) {
    let n = sh.s * sh.t;
    let (beta, el, eh, delta) = (r32(c.beta), r32(c.eps_low), r32(c.eps_high), r32(c.delta));
    let old = |r: usize| if c.old { f64::from(d.old[r]) } else { lp0[r] };
    let m = |r: usize| d.mask[r];
    let count = |s: usize| (s * sh.t..(s + 1) * sh.t).filter(|&r| m(r)).count() as f64;
    // w per token: token level, or the sequence's mean log-ratio over its completion tokens.
    let w_of = |lp: &[f64], r: usize| -> f64 {
        if c.sequence {
            let s = r / sh.t;
            let sum: f64 = (s * sh.t..(s + 1) * sh.t)
                .filter(|&q| m(q))
                .map(|q| lp[q] - old(q))
                .sum();
            sum / count(s).max(1.0)
        } else {
            lp[r] - old(r)
        }
    };
    let tokens = (0..n).filter(|&r| m(r)).count() as f64;
    let mut per_token = vec![0.0; n];
    let (mut kl_sum, mut clipped_sum) = (0.0, 0.0);
    for r in 0..n {
        let s = r / sh.t;
        let a = f64::from(d.adv[s]);
        let rho = w_of(lp, r).exp();
        let rho0 = w_of(lp0, r).exp();
        let (lo, hi) = (1.0 - el, 1.0 + eh);
        let capped = if delta > 0.0 { rho.min(delta) } else { rho };
        let standard = -(capped * a).min(rho.clamp(lo, hi) * a);
        let clipped_both = if (rho < lo && a < 0.0) || (rho > hi && a > 0.0) {
            1.0
        } else {
            0.0
        };
        let (pl, clipped) = match c.loss_type {
            "Cispo" => (
                -rho0.min(eh) * a * lp[r],
                if rho > eh && a > 0.0 { 1.0 } else { 0.0 },
            ),
            "Sapo" => {
                let ts = if a > 0.0 { 1.0 } else { r32(1.05) };
                (-a * (4.0 / ts) * sig(ts * (rho - 1.0)), 0.0)
            }
            "Vespo" => {
                let mut seq_lr: f64 = (s * sh.t..(s + 1) * sh.t)
                    .filter(|&q| m(q))
                    .map(|q| (lp0[q] - old(q)).clamp(-20.0, 20.0))
                    .sum();
                if c.is_ratio {
                    seq_lr += (s * sh.t..(s + 1) * sh.t)
                        .filter(|&q| m(q))
                        .map(|q| f64::from(d.is_ratio[q]).ln().clamp(r32(-18.420681), 20.0))
                        .sum::<f64>();
                }
                let lw = seq_lr.clamp(r32(-18.420681), 20.0);
                let (k, lambda) = if a >= 0.0 { (2.0, 3.0) } else { (3.0, 2.0) };
                let phi = (lambda + k * lw - lambda * lw.exp()).exp();
                let phi = if phi.is_finite() && phi < 3.0e38 {
                    phi
                } else {
                    0.0
                };
                (-phi * a * lp[r], 0.0)
            }
            _ => (standard, clipped_both),
        };
        let pl = if c.is_ratio && c.loss_type != "Vespo" {
            pl * f64::from(d.is_ratio[r])
        } else {
            pl
        };
        let rf = match c.reference {
            Ref::None => lp0[r],
            _ => refs[r],
        };
        let mut k3 = (rf - lp[r]).exp() - (rf - lp[r]) - 1.0;
        if c.bias_correction {
            k3 *= rho;
        }
        per_token[r] = pl + beta * k3;
        if m(r) {
            kl_sum += k3;
            clipped_sum += clipped;
        }
    }
    let masked_sum: f64 = (0..n).filter(|&r| m(r)).map(|r| per_token[r]).sum();
    let seq_means = || -> f64 {
        (0..sh.s)
            .map(|s| {
                let sum: f64 = (s * sh.t..(s + 1) * sh.t)
                    .filter(|&r| m(r))
                    .map(|r| per_token[r])
                    .sum();
                sum / count(s).max(1.0)
            })
            .sum::<f64>()
            / sh.s as f64
    };
    let items = if c.num_items > 0.0 {
        r32(c.num_items).max(1.0)
    } else {
        tokens.max(1.0)
    };
    let loss = match c.loss_type {
        "Grpo" | "Sapo" => seq_means(),
        "Bnpo" => masked_sum / tokens.max(1.0),
        "DrGrpo" => masked_sum / (sh.s as f64 * r32(c.max_len)),
        "Luspo" => {
            (0..n).map(|r| per_token[r] * count(r / sh.t)).sum::<f64>() / (sh.s * sh.t) as f64
        }
        _ => masked_sum / items,
    };
    (
        loss,
        kl_sum / tokens.max(1.0),
        clipped_sum / tokens.max(1.0),
    )
}

/// d loss / d lp in closed form (the derivative table of the per-token losses, the KL term
/// and each reduction's weights; sequence level spreads `∂/∂w` over the sequence's tokens).
fn closed_form(c: &Case, sh: Shape, d: &Data, lp: &[f64], refs: &[f64]) -> Vec<f64> {
    let n = sh.s * sh.t;
    let (beta, el, eh, delta) = (r32(c.beta), r32(c.eps_low), r32(c.eps_high), r32(c.delta));
    let m = |r: usize| d.mask[r];
    let old = |r: usize| if c.old { f64::from(d.old[r]) } else { lp[r] };
    let count = |s: usize| (s * sh.t..(s + 1) * sh.t).filter(|&r| m(r)).count() as f64;
    let tokens = (0..n).filter(|&r| m(r)).count() as f64;
    let w_of = |r: usize| -> f64 {
        if c.sequence {
            let s = r / sh.t;
            (s * sh.t..(s + 1) * sh.t)
                .filter(|&q| m(q))
                .map(|q| lp[q] - old(q))
                .sum::<f64>()
                / count(s).max(1.0)
        } else {
            lp[r] - old(r)
        }
    };
    // The reduction's weight of each token's loss.
    let items = if c.num_items > 0.0 {
        r32(c.num_items).max(1.0)
    } else {
        tokens.max(1.0)
    };
    let weight = |r: usize| -> f64 {
        let s = r / sh.t;
        match c.loss_type {
            "Grpo" | "Sapo" => {
                if m(r) {
                    1.0 / (count(s).max(1.0) * sh.s as f64)
                } else {
                    0.0
                }
            }
            "Bnpo" => {
                if m(r) {
                    1.0 / tokens.max(1.0)
                } else {
                    0.0
                }
            }
            "DrGrpo" => {
                if m(r) {
                    1.0 / (sh.s as f64 * r32(c.max_len))
                } else {
                    0.0
                }
            }
            "Luspo" => count(s) / (sh.s * sh.t) as f64,
            _ => {
                if m(r) {
                    1.0 / items
                } else {
                    0.0
                }
            }
        }
    };
    let mut g = vec![0.0; n];
    // ∂ℓ/∂w per token (through ρ = e^w), and direct ∂ℓ/∂lp.
    let mut g_w = vec![0.0; n];
    for r in 0..n {
        let s = r / sh.t;
        let a = f64::from(d.adv[s]);
        let rho = w_of(r).exp();
        let wt = weight(r);
        let ratio = if c.is_ratio && c.loss_type != "Vespo" {
            f64::from(d.is_ratio[r])
        } else {
            1.0
        };
        match c.loss_type {
            "Cispo" => g[r] += wt * ratio * -rho.min(eh) * a,
            "Sapo" => {
                let ts = if a > 0.0 { 1.0 } else { r32(1.05) };
                let sg = sig(ts * (rho - 1.0));
                g_w[r] += wt * ratio * -a * 4.0 * sg * (1.0 - sg) * rho;
            }
            "Vespo" => {
                let mut seq_lr: f64 = (s * sh.t..(s + 1) * sh.t)
                    .filter(|&q| m(q))
                    .map(|q| (lp[q] - old(q)).clamp(-20.0, 20.0))
                    .sum();
                if c.is_ratio {
                    seq_lr += (s * sh.t..(s + 1) * sh.t)
                        .filter(|&q| m(q))
                        .map(|q| f64::from(d.is_ratio[q]).ln().clamp(r32(-18.420681), 20.0))
                        .sum::<f64>();
                }
                let lw = seq_lr.clamp(r32(-18.420681), 20.0);
                let (k, lambda) = if a >= 0.0 { (2.0, 3.0) } else { (3.0, 2.0) };
                let phi = (lambda + k * lw - lambda * lw.exp()).exp();
                let phi = if phi.is_finite() && phi < 3.0e38 {
                    phi
                } else {
                    0.0
                };
                g[r] += wt * -phi * a;
            }
            _ => {
                // −min(ρ'A, clamp(ρ)A): the unclipped term carries the gradient when it is
                // the minimum (and ρ' = ρ, i.e. below delta).
                let capped = if delta > 0.0 { rho.min(delta) } else { rho };
                let clipped = rho.clamp(1.0 - el, 1.0 + eh);
                let unclipped_min = capped * a <= clipped * a;
                let d_capped = if delta > 0.0 && rho > delta { 0.0 } else { 1.0 };
                let d_clip = if rho > 1.0 - el && rho < 1.0 + eh {
                    1.0
                } else {
                    0.0
                };
                let dl = if unclipped_min {
                    -a * d_capped
                } else {
                    -a * d_clip
                };
                g_w[r] += wt * ratio * dl * rho;
            }
        }
        // KL: β·k3 (times ρ with the bias correction); the reference is fixed.
        if !matches!(c.reference, Ref::None) || c.bias_correction {
            let rf = match c.reference {
                Ref::None => lp[r],
                _ => refs[r],
            };
            let k3 = (rf - lp[r]).exp() - (rf - lp[r]) - 1.0;
            let dk3 = if matches!(c.reference, Ref::None) {
                0.0
            } else {
                1.0 - (rf - lp[r]).exp()
            };
            if c.bias_correction {
                g[r] += wt * beta * dk3 * rho;
                g_w[r] += wt * beta * k3 * rho;
            } else {
                g[r] += wt * beta * dk3;
            }
        }
    }
    // ∂/∂w to ∂/∂lp: token level directly; sequence level spread as M/n over the sequence
    // (only when the old log-probs are given: on-policy, w is detached... no: w = lp − sg(lp)
    // still carries the gradient of lp).
    for r in 0..n {
        if c.sequence {
            let s = r / sh.t;
            if m(r) {
                let total: f64 = (s * sh.t..(s + 1) * sh.t).map(|q| g_w[q]).sum();
                g[r] += total / count(s).max(1.0);
            }
        } else {
            g[r] += g_w[r];
        }
    }
    g
}

/// Expected loss, `kl_mean`, `clip_ratio`, and the gradients of x, W and b.
type Expected = (f64, f64, f64, Vec<f64>, Vec<f64>, Option<Vec<f64>>);

fn expected(c: &Case, sh: Shape, d: &Data, closed: bool) -> Expected {
    let tau = r32(c.temperature);
    let (x, w) = (f64s(&d.x), f64s(&d.w));
    let b = d.b.as_deref().map(f64s);
    let z = linear(&x, &w, b.as_deref(), sh.h, sh.v);
    let (lp, p) = token_logps(&z, &d.target, tau, sh.v);
    let refs: Vec<f64> = match c.reference {
        Ref::Head => {
            let zr = linear(&f64s(&d.xr), &f64s(&d.wr), None, sh.h, sh.v);
            token_logps(&zr, &d.target, tau, sh.v).0
        }
        Ref::Logps => d.ref_logps.iter().map(|&v| f64::from(v)).collect(),
        Ref::None => lp.clone(),
    };
    let (loss, kl, clip) = naive(c, sh, d, &lp, &lp, &refs);
    let n = sh.s * sh.t;
    let g_lp = if closed {
        closed_form(c, sh, d, &lp, &refs)
    } else {
        let h = 1e-5;
        let mut g = vec![0.0; n];
        let mut cur = lp.clone();
        for r in 0..n {
            let v0 = cur[r];
            cur[r] = v0 + h;
            let up = naive(c, sh, d, &cur, &lp, &refs).0;
            cur[r] = v0 - h;
            let down = naive(c, sh, d, &cur, &lp, &refs).0;
            cur[r] = v0;
            g[r] = (up - down) / (2.0 * h);
        }
        g
    };
    // d lp / d z = (onehot − softmax(z/τ)) / τ.
    let mut dx = vec![0.0; n * sh.h];
    let mut dw = vec![0.0; sh.v * sh.h];
    let mut db = vec![0.0; sh.v];
    for r in 0..n {
        if g_lp[r] == 0.0 {
            continue;
        }
        for k in 0..sh.v {
            let one = if k as i64 == d.target[r] { 1.0 } else { 0.0 };
            let gz = g_lp[r] * (one - p[r * sh.v + k]) / tau;
            db[k] += gz;
            for j in 0..sh.h {
                dx[r * sh.h + j] += gz * w[k * sh.h + j];
                dw[k * sh.h + j] += gz * x[r * sh.h + j];
            }
        }
    }
    (loss, kl, clip, dx, dw, d.b.as_ref().map(|_| db))
}

fn check(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(f64::from(*g), *w, atol * scale, rtol),
            "{what}[{i}]: got {g}, naive {w}"
        );
    }
}

fn inputs<'a>(c: &Case, sh: Shape, d: &'a Data) -> InputSet<'a> {
    let head = |x: &'a [f32], w: &'a [f32], b: Option<&'a [f32]>| {
        let xv = TensorView::new(x, &[sh.s, sh.t, sh.h]).expect("x");
        let wv = TensorView::new(w, &[sh.v, sh.h]).expect("w");
        match b {
            Some(b) => Head::with_bias(xv, wv, TensorView::new(b, &[sh.v]).expect("b")),
            None => Head::new(xv, wv),
        }
    };
    let rows = |v: &'a [f32]| TensorView::new(v, &[sh.s, sh.t]).expect("row input");
    let mut set = InputSet::new()
        .head("policy", head(&d.x, &d.w, d.b.as_deref()))
        .tensor(
            "target",
            TensorView::new(&d.target[..], &[sh.s, sh.t]).expect("t"),
        )
        .tensor(
            "mask",
            TensorView::new(&d.mask[..], &[sh.s, sh.t]).expect("m"),
        )
        .tensor(
            "advantages",
            TensorView::new(&d.adv[..], &[sh.s]).expect("a"),
        );
    if c.old {
        set = set.tensor("old_logps", rows(&d.old));
    }
    match c.reference {
        Ref::Head => set = set.head("reference", head(&d.xr, &d.wr, None)),
        Ref::Logps => set = set.tensor("ref_logps", rows(&d.ref_logps)),
        Ref::None => {}
    }
    if c.is_ratio {
        set = set.tensor("is_ratio", rows(&d.is_ratio));
    }
    set
}

fn run_case(c: &Case, sh: Shape, d: &Data, closed: bool, every_schedule: bool) -> usize {
    run_with(
        c,
        sh,
        d,
        closed,
        every_schedule,
        inputs(c, sh, d),
        (1e-5, 1e-4),
    )
}

/// `run_case` on the input set `set` (the data of `d`, in whatever dtype), gradients compared
/// at `(atol, rtol)`.
fn run_with(
    c: &Case,
    sh: Shape,
    d: &Data,
    closed: bool,
    every_schedule: bool,
    set: InputSet<'_>,
    (atol, rtol): (f64, f64),
) -> usize {
    let (loss, kl, clip, dx, dw, db) = expected(c, sh, d, closed);
    let params = c.params();
    let names: Vec<&str> = set.names().collect();
    let (p, _) =
        liger::pipeline_for(&Grpo, &names, &params).unwrap_or_else(|e| panic!("{c:?}: {e}"));
    let schedules: Vec<Option<liger::Strategy>> = if every_schedule {
        p.schedule().candidates.iter().copied().map(Some).collect()
    } else {
        vec![None]
    };
    let mut runs = 0;
    for s in schedules {
        let opts = RunOptions {
            schedule: s,
            ..RunOptions::default()
        };
        let what = format!("{c:?} {s:?} {sh:?}");
        let out = liger::run(&Grpo, &Runtime::cpu(), &set, &params, &opts)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        runs += 1;
        assert!(
            close(f64::from(out.loss), loss, 1e-5, 1e-5),
            "{what}: loss {} vs naive {loss}",
            out.loss
        );
        let metric = |n: &str| {
            out.metric(n)
                .unwrap_or_else(|| panic!("{what}: no {n}"))
                .values
                .clone()
        };
        check(
            &format!("{what} kl_mean"),
            &metric("kl_mean"),
            &[kl],
            1e-5,
            1e-5,
        );
        check(
            &format!("{what} clip_ratio"),
            &metric("clip_ratio"),
            &[clip],
            1e-6,
            1e-6,
        );
        let g = out.grad("policy").expect("grad");
        check(
            &format!("{what} dx"),
            &g.x.as_ref().expect("gradient").to_f32(),
            &dx,
            atol,
            rtol,
        );
        check(
            &format!("{what} dW"),
            &g.w.as_ref().expect("gradient").to_f32(),
            &dw,
            atol,
            rtol,
        );
        if let (Some(gb), Some(wb)) = (&g.b, &db) {
            check(&format!("{what} db"), &gb.to_f32(), wb, atol, rtol);
        }
    }
    runs
}

/// Two configurations per loss type and level: everything given (old, precomputed reference,
/// IS ratios, delta, asymmetric clip, a bias) and on-policy with a reference head, the
/// bias-corrected KL, a temperature and `num_items_in_batch`.
fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for lt in TYPES {
        for sequence in [false, true] {
            let standard = !matches!(lt, "Cispo" | "Sapo" | "Vespo");
            out.push(Case {
                loss_type: lt,
                sequence,
                old: true,
                reference: Ref::Logps,
                is_ratio: true,
                bias_correction: false,
                beta: 0.1,
                eps_low: 0.2,
                eps_high: if lt == "Cispo" { 1.3 } else { 0.28 },
                temperature: 1.0,
                delta: if standard { 1.5 } else { 0.0 },
                num_items: 0.0,
                max_len: 64.0,
                bias: true,
            });
            out.push(Case {
                loss_type: lt,
                sequence,
                old: false,
                reference: Ref::Head,
                is_ratio: false,
                bias_correction: true,
                // The peers' second combination (β, ε_low, ε_high, τ) = (0, 0.1, 0.1, 2) at
                // the sequence level: a zero KL weight still computes `kl_mean`.
                beta: if sequence { 0.0 } else { 0.04 },
                eps_low: if sequence { 0.1 } else { 0.2 },
                eps_high: match (lt, sequence) {
                    ("Cispo", _) => 5.0,
                    (_, true) => 0.1,
                    _ => 0.2,
                },
                temperature: if sequence { 2.0 } else { 0.8 },
                delta: 0.0,
                num_items: 97.0,
                max_len: 40.0,
                bias: false,
            });
        }
    }
    out
}

#[test]
fn every_loss_type_and_level_against_naive_formulas_and_finite_differences() {
    let mut runs = 0;
    for (k, c) in cases().iter().enumerate() {
        let d = data(SMALL, c, 50 + k as u64);
        runs += run_case(c, SMALL, &d, false, true);
    }
    assert!(runs >= 32, "{runs}");
}

#[test]
fn every_loss_type_and_level_against_closed_form_gradients_at_16x128x64x512() {
    for (k, c) in cases().iter().enumerate() {
        let d = data(LARGE, c, 150 + k as u64);
        run_case(c, LARGE, &d, true, false);
    }
}

/// bf16 hidden states and weights (policy and reference heads): the naive formulas on the
/// rounded inputs, at the fp32 tolerances (the peers allow 1e-1/5e-1 in bf16; the f32
/// computation on bf16 inputs has no reason to be looser than on f32 inputs).
#[test]
fn bf16_inputs_against_the_naive_formulas_on_the_rounded_inputs() {
    use half::bf16;
    let round = |x: &mut Vec<f32>| {
        for v in x.iter_mut() {
            *v = bf16::from_f32(*v).to_f32();
        }
    };
    let to = |x: &[f32]| -> Vec<bf16> { x.iter().map(|&v| bf16::from_f32(v)).collect() };
    let mut runs = 0;
    for (k, c) in cases().iter().enumerate().filter(|(k, _)| k % 3 == 0) {
        let mut d = data(SMALL, c, 250 + k as u64);
        for a in [&mut d.x, &mut d.w, &mut d.xr, &mut d.wr] {
            round(a);
        }
        let (xb, wb, xrb, wrb) = (to(&d.x), to(&d.w), to(&d.xr), to(&d.wr));
        let sh = SMALL;
        fn head<'a>(x: &'a [bf16], w: &'a [bf16], sh: Shape) -> (TensorView<'a>, TensorView<'a>) {
            (
                TensorView::new(x, &[sh.s, sh.t, sh.h]).expect("x"),
                TensorView::new(w, &[sh.v, sh.h]).expect("w"),
            )
        }
        let (x, w) = head(&xb, &wb, sh);
        let policy = match &d.b {
            Some(b) => Head::with_bias(x, w, TensorView::new(&b[..], &[sh.v]).expect("b")),
            None => Head::new(x, w),
        };
        let mut set = inputs(c, sh, &d).head("policy", policy);
        if matches!(c.reference, Ref::Head) {
            let (x, w) = head(&xrb, &wrb, sh);
            set = set.head("reference", Head::new(x, w));
        }
        runs += run_with(c, sh, &d, false, false, set, (1e-5, 1e-4));
    }
    assert!(runs >= 10, "{runs}");
}

/// A sequence with no completion token and a batch with none at all: the clamped
/// denominators of TRL give 0 for the sequence's mean and a zero loss with zero gradients.
#[test]
fn masked_out_sequences_and_empty_batches_behave_as_trl() {
    for lt in TYPES {
        let c = Case {
            loss_type: lt,
            sequence: lt == "Grpo",
            old: true,
            reference: Ref::Logps,
            is_ratio: false,
            bias_correction: false,
            beta: 0.1,
            eps_low: 0.2,
            eps_high: 0.28,
            temperature: 1.0,
            delta: 0.0,
            num_items: 0.0,
            max_len: 64.0,
            bias: false,
        };
        let mut d = data(SMALL, &c, 999);
        for r in SMALL.t..2 * SMALL.t {
            d.mask[r] = false;
        }
        run_case(&c, SMALL, &d, false, false);
        d.mask.iter_mut().for_each(|m| *m = false);
        let out = liger::run(
            &Grpo,
            &Runtime::cpu(),
            &inputs(&c, SMALL, &d),
            &c.params(),
            &RunOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{lt}: {e}"));
        if lt != "Luspo" {
            assert_eq!(out.loss, 0.0, "{lt}: no completion token");
            let g = out.grad("policy").expect("grad");
            assert!(
                g.w.as_ref()
                    .expect("gradient")
                    .to_f32()
                    .iter()
                    .all(|v| *v == 0.0),
                "{lt}: gradient without tokens"
            );
        }
        assert_eq!(out.metric("kl_mean").map(|m| m.values[0]), Some(0.0));
    }
}

/// `num_items_in_batch` is a global count: doubling it halves the loss and the gradients.
#[test]
fn num_items_in_batch_scales_the_dapo_family() {
    let base = Case {
        loss_type: "Dapo",
        sequence: false,
        old: true,
        reference: Ref::None,
        is_ratio: false,
        bias_correction: false,
        beta: 0.0,
        eps_low: 0.2,
        eps_high: 0.2,
        temperature: 1.0,
        delta: 0.0,
        num_items: 100.0,
        max_len: 0.0,
        bias: false,
    };
    let d = data(SMALL, &base, 5);
    let run = |c: &Case| {
        liger::run(
            &Grpo,
            &Runtime::cpu(),
            &inputs(c, SMALL, &d),
            &c.params(),
            &RunOptions::default(),
        )
        .expect("runs")
    };
    let (a, b) = (
        run(&base),
        run(&Case {
            num_items: 200.0,
            ..base
        }),
    );
    assert!(close(
        f64::from(b.loss) * 2.0,
        f64::from(a.loss),
        1e-7,
        1e-6
    ));
    let (ga, gb) = (
        a.grad("policy")
            .expect("g")
            .w
            .as_ref()
            .expect("gradient")
            .to_f32(),
        b.grad("policy")
            .expect("g")
            .w
            .as_ref()
            .expect("gradient")
            .to_f32(),
    );
    assert!(
        ga.iter()
            .zip(&gb)
            .all(|(x, y)| close(f64::from(*y) * 2.0, f64::from(*x), 1e-9, 1e-5))
    );
    // DrGrpo without a completion length is refused before running.
    let e = Case {
        loss_type: "DrGrpo",
        max_len: 0.0,
        ..base
    }
    .params()
    .resolve(&Grpo)
    .expect_err("DrGrpo");
    assert!(
        matches!(
            e,
            liger::Error::ParamRange {
                name: "max_completion_length",
                ..
            }
        ),
        "{e}"
    );
}
