//! Loss files (`examples/losses/*.rs`) through both doors of the front-end: compiled by the
//! macro (the modules below hold each file verbatim, which a test checks) and at run time
//! (`liger::compile_loss_file`, `liger run --loss`). The two give the same parameter tables,
//! the same gradient IR (so the same kernel-cache entries) and bitwise the same results under
//! every schedule; the example losses themselves match naive f64 formulas written here, with
//! gradients by finite differences. The same diagnostics come out of both doors: every
//! trybuild failure case compiled at run time reports the same message at the same line and
//! column as rustc shows for the macro.

mod common;

use std::collections::BTreeMap;

use common::*;
use liger::io::{OwnedData, OwnedTensor};
use liger::{ChunkedLoss, InputSet, ParamSet, RunOptions, Runtime, TensorView};

// BEGIN examples/losses/simpo.rs
#[rustfmt::skip]
#[liger::chunked_losses]
mod simpo_file {
//! SimPO (Meng et al. 2024): a reference-free preference loss on length-normalised
//! log-probabilities with a target reward margin.
//!
//! Run it on a DPO-style batch (`policy.x`, `policy.w`, `target`) without writing Rust:
//! `liger run --loss examples/losses/simpo.rs --inputs batch.safetensors`.

use liger::prelude::*;

/// SimPO: `-log σ(β(π̄_c − π̄_r) − γ)` per pair with `π̄` the mean log-probability of a
/// sequence's valid tokens and `γ = gamma_beta_ratio · β`; cDPO-style label smoothing. Metrics:
/// the rewards `β π̄` of each side.
#[chunked_loss]
pub fn simpo(
    policy: Logits,
    target: Target,
    #[default(2.0)]
    #[range(gt = 0.0)]
    beta: f32,
    #[default(0.5)] gamma_beta_ratio: f32,
    #[default(0.0)]
    #[range(0.0..=0.5)]
    label_smoothing: f32,
) -> Loss {
    let pi = seq_mean(logprob(policy, target));
    let margin = beta * (chosen(pi) - rejected(pi)) - gamma_beta_ratio * beta;
    metric("chosen_rewards", beta * chosen(pi));
    metric("rejected_rewards", beta * rejected(pi));
    mean(-(1.0 - label_smoothing) * log_sigmoid(margin) - label_smoothing * log_sigmoid(-margin))
}
}
// END examples/losses/simpo.rs

// BEGIN examples/losses/grpo.rs
#[rustfmt::skip]
#[liger::chunked_losses]
mod grpo_file {
//! GRPO with a per-token clipped surrogate (DeepSeekMath; the asymmetric clip of DAPO) and an
//! optional KL penalty to a reference policy's per-token log-probabilities.
//!
//! `liger run --loss examples/losses/grpo.rs --inputs rollouts.safetensors`, the file holding
//! `policy.x`, `policy.w`, `target`, `old_logps` `[S,T]`, `advantages` `[S]` and optionally
//! `ref_logps` `[S,T]`.

use liger::prelude::*;

/// GRPO per token: with `r = exp(logp − old_logps)` and the sequence's advantage `A`,
/// `−min(r·A, clip(r, 1 − ε_low, 1 + ε_high)·A)`, plus `β·KL` with the k3 estimator
/// `exp(ref − logp) − (ref − logp) − 1` when `ref_logps` is given; averaged over each
/// sequence's valid tokens, then over sequences. Metrics: the fraction of clipped tokens and,
/// with a reference, the mean KL.
#[chunked_loss]
pub fn grpo(
    policy: Logits,
    target: Target,
    old_logps: RowInput,
    advantages: SeqInput,
    ref_logps: Option<RowInput>,
    #[default(0.2)]
    #[range(ge = 0.0)]
    epsilon_low: f32,
    #[default(0.2)]
    #[range(ge = 0.0)]
    epsilon_high: f32,
    #[default(0.04)]
    #[range(ge = 0.0)]
    beta: f32,
) -> Loss {
    let lp = logprob(policy, target);
    let ratio = exp(lp - old_logps);
    let clipped = clamp(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high);
    let surrogate = min(ratio * advantages, clipped * advantages);
    metric("clip_fraction", mean(select(clipped != ratio, 1.0, 0.0)));
    let per_token = if let Some(r) = ref_logps {
        let kl = exp(r - lp) - (r - lp) - 1.0;
        metric("kl", mean(kl));
        beta * kl - surrogate
    } else {
        -surrogate
    };
    mean(seq_mean(per_token))
}
}
// END examples/losses/grpo.rs

// BEGIN examples/losses/preference.rs
#[rustfmt::skip]
#[liger::chunked_losses]
mod preference_file {
//! Two preference losses sharing helper functions: ORPO (Hong et al. 2024) and IPO
//! (Azar et al. 2023). Helpers are plain `fn`s in the loss language, typed with the level of
//! value they take and return, and inlined where they are called.
//!
//! `liger run --loss examples/losses/preference.rs --fn orpo --inputs batch.safetensors`

use liger::prelude::*;

/// The log-probability of each sequence: the sum over its valid tokens.
fn seq_logps(z: Vocab, t: Row) -> Seq {
    seq_sum(logprob(z, t))
}

/// The mean log-probability of each sequence's valid tokens.
fn seq_avg_logps(z: Vocab, t: Row) -> Seq {
    seq_mean(logprob(z, t))
}

/// Chosen minus rejected.
fn margin(x: Seq) -> Pair {
    chosen(x) - rejected(x)
}

/// `log(p / (1 − p))` of a probability given by its logarithm `lp < 0`.
fn log_odds(lp: Value) -> Value {
    lp - log1p(-exp(lp))
}

/// ORPO: the NLL of the chosen sequences' tokens plus `β · mean(−log σ(log-odds ratio))`,
/// the odds of each side from its mean token log-probability. Metrics: the mean log-odds
/// ratio and the NLL term.
#[chunked_loss]
pub fn orpo(
    policy: Logits,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
) -> Loss {
    let ratio = margin(log_odds(seq_avg_logps(policy, target)));
    let nll = sum(chosen(-seq_logps(policy, target))) / sum(chosen(seq_count()));
    metric("log_odds_ratio", mean(ratio));
    metric("nll", nll);
    nll + beta * mean(-log_sigmoid(ratio))
}

/// IPO: `(Δ − 1/(2β))²` per pair, with `Δ` the policy's margin over the reference's on mean
/// token log-probabilities.
#[chunked_loss]
pub fn ipo(
    policy: Logits,
    reference: Frozen<Logits>,
    target: Target,
    #[default(0.1)]
    #[range(gt = 0.0)]
    beta: f32,
) -> Loss {
    let d = margin(seq_avg_logps(policy, target)) - margin(seq_avg_logps(reference, target));
    mean(square(d - 1.0 / (2.0 * beta)))
}
}
// END examples/losses/preference.rs

const S: usize = 6;
const T: usize = 13;
const H: usize = 11;
const V: usize = 47;

/// One head's data (f32, as the executors see it).
struct HeadData {
    x: Vec<f32>,
    w: Vec<f32>,
}

impl HeadData {
    fn random(rng: &mut fastrand::Rng) -> Self {
        HeadData {
            x: randn(rng, S * T * H, 1.0),
            w: randn(rng, V * H, 0.35),
        }
    }
    fn head(&self) -> liger::Head<'_> {
        liger::Head::new(
            TensorView::new(&self.x, &[S, T, H]).expect("x"),
            TensorView::new(&self.w, &[V, H]).expect("w"),
        )
    }
    fn logits(&self) -> Vec<f64> {
        linear(&f64s(&self.x), &f64s(&self.w), None, H, V)
    }
}

/// A batch for every example loss: two heads, targets, per-row and per-sequence inputs.
struct Batch {
    policy: HeadData,
    reference: HeadData,
    target: Vec<i64>,
    old_logps: Vec<f32>,
    ref_logps: Vec<f32>,
    advantages: Vec<f32>,
}

/// Per-token log-probabilities of logits `z` (0 for an ignored row).
fn token_logps(z: &[f64], t: &[i64]) -> Vec<f64> {
    (0..S * T)
        .map(|r| {
            if t[r] < 0 {
                0.0
            } else {
                z[r * V + t[r] as usize] - lse(&z[r * V..(r + 1) * V])
            }
        })
        .collect()
}

fn batch(seed: u64) -> Batch {
    let mut rng = fastrand::Rng::with_seed(seed);
    let policy = HeadData::random(&mut rng);
    let reference = HeadData::random(&mut rng);
    let target = targets(&mut rng, S, T, V, -100);
    // Old log-probs at fixed offsets from the policy's own, so every ratio exp(lp - old) is
    // far from the clip boundaries (finite differences never straddle a kink).
    let lp = token_logps(&policy.logits(), &target);
    let offsets = [-0.5, 0.0, 0.05, 0.5];
    let old_logps = lp
        .iter()
        .map(|&l| (l + offsets[rng.usize(0..offsets.len())]) as f32)
        .collect();
    let ref_logps = lp
        .iter()
        .map(|&l| (l + normal(&mut rng, 0.2)) as f32)
        .collect();
    let advantages = randn(&mut rng, S, 1.0);
    Batch {
        policy,
        reference,
        target,
        old_logps,
        ref_logps,
        advantages,
    }
}

/// What one case feeds the loss: which heads, which side inputs.
#[derive(Clone, Copy)]
struct Case {
    file: &'static str,
    name: &'static str,
    reference_head: bool,
    grpo_inputs: bool,
    ref_logps: bool,
}

const CASES: &[Case] = &[
    Case {
        file: "examples/losses/simpo.rs",
        name: "simpo",
        reference_head: false,
        grpo_inputs: false,
        ref_logps: false,
    },
    Case {
        file: "examples/losses/grpo.rs",
        name: "grpo",
        reference_head: false,
        grpo_inputs: true,
        ref_logps: false,
    },
    Case {
        file: "examples/losses/grpo.rs",
        name: "grpo",
        reference_head: false,
        grpo_inputs: true,
        ref_logps: true,
    },
    Case {
        file: "examples/losses/preference.rs",
        name: "orpo",
        reference_head: false,
        grpo_inputs: false,
        ref_logps: false,
    },
    Case {
        file: "examples/losses/preference.rs",
        name: "ipo",
        reference_head: true,
        grpo_inputs: false,
        ref_logps: false,
    },
];

fn macro_loss(name: &str) -> &'static dyn ChunkedLoss {
    match name {
        "simpo" => &simpo_file::Simpo,
        "grpo" => &grpo_file::Grpo,
        "orpo" => &preference_file::Orpo,
        "ipo" => &preference_file::Ipo,
        other => panic!("no macro loss {other}"),
    }
}

fn file_loss(c: &Case) -> liger::DynLoss {
    let losses = liger::compile_loss_file(c.file).unwrap_or_else(|e| panic!("{e}"));
    *liger::pick_loss(&losses, Some(c.name), c.file).expect("the loss is in its file")
}

fn inputs<'a>(c: &Case, b: &'a Batch) -> InputSet<'a> {
    let mut set = InputSet::new()
        .head("policy", b.policy.head())
        .tensor("target", TensorView::new(&b.target, &[S, T]).expect("t"));
    if c.reference_head {
        set = set.head("reference", b.reference.head());
    }
    if c.grpo_inputs {
        set = set
            .tensor(
                "old_logps",
                TensorView::new(&b.old_logps, &[S, T]).expect("old"),
            )
            .tensor(
                "advantages",
                TensorView::new(&b.advantages, &[S]).expect("adv"),
            );
    }
    if c.ref_logps {
        set = set.tensor(
            "ref_logps",
            TensorView::new(&b.ref_logps, &[S, T]).expect("ref"),
        );
    }
    set
}

fn params(c: &Case) -> ParamSet {
    match c.name {
        "simpo" => ParamSet::new()
            .float("beta", 1.7)
            .float("label_smoothing", 0.1),
        "grpo" => ParamSet::new()
            .float("epsilon_high", 0.28)
            .float("beta", 0.05),
        _ => ParamSet::new().float("beta", 0.3),
    }
}

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

fn assert_same(a: &liger::LossOutput, b: &liger::LossOutput, what: &str) {
    assert_eq!(
        a.loss.to_bits(),
        b.loss.to_bits(),
        "{what}: loss {} vs {}",
        a.loss,
        b.loss
    );
    assert_eq!(a.metrics.len(), b.metrics.len(), "{what}: metrics");
    for (m, n) in a.metrics.iter().zip(&b.metrics) {
        assert_eq!(m.name, n.name, "{what}");
        assert_eq!(
            bits(&m.values),
            bits(&n.values),
            "{what}: metric {}",
            m.name
        );
    }
    for (g, h) in a.grads.iter().zip(&b.grads) {
        assert_eq!(
            bits(&g.x.as_ref().expect("gradient").to_f32()),
            bits(&h.x.as_ref().expect("gradient").to_f32()),
            "{what}: dx of {}",
            g.head
        );
        assert_eq!(
            bits(&g.w.as_ref().expect("gradient").to_f32()),
            bits(&h.w.as_ref().expect("gradient").to_f32()),
            "{what}: dW of {}",
            g.head
        );
    }
}

/// Each module above is its example file, token for token (rustfmt may re-indent and re-wrap
/// the module's body), so the macro compiles exactly what `--loss` reads.
#[test]
fn the_test_modules_are_the_example_files_verbatim() {
    let me = include_str!("loss_files.rs");
    let tokens = |t: &str| -> String {
        t.parse::<proc_macro2::TokenStream>()
            .expect("tokens")
            .to_string()
    };
    for file in ["simpo", "grpo", "preference"] {
        let path = format!("examples/losses/{file}.rs");
        let begin = format!("// BEGIN {path}\n");
        let end = format!("\n}}\n// END {path}");
        let start = me.find(&begin).expect("begin marker") + begin.len();
        let body_start = start + me[start..].find("{\n").expect("mod brace") + 2;
        let stop = me.find(&end).expect("end marker");
        let text = std::fs::read_to_string(&path).expect("example file");
        assert_eq!(
            tokens(&me[body_start..stop]),
            tokens(&text),
            "tests/loss_files.rs no longer holds {path}: paste the file again"
        );
    }
}

/// Same tables, same gradient IR per specialisation, bitwise the same results under every
/// schedule the loss allows, from the macro and from the file.
#[test]
fn loss_files_match_the_macro_bitwise_under_every_schedule() {
    let cpu = Runtime::cpu();
    for (k, c) in CASES.iter().enumerate() {
        let (m, f) = (macro_loss(c.name), file_loss(c));
        assert_eq!(m.name(), f.name());
        assert_eq!(m.doc(), f.doc());
        assert_eq!(m.params(), f.params(), "{}: parameter tables", c.name);
        assert_eq!(m.specializations().len(), f.specializations().len());
        for (a, b) in m.specializations().iter().zip(f.specializations()) {
            assert_eq!(a.choices, b.choices);
            if a.ir.is_some() {
                let (pa, pb) = (
                    liger::pipeline(m, a).expect("macro pipeline"),
                    liger::pipeline(&f, b).expect("file pipeline"),
                );
                assert_eq!(pa.canonical(), pb.canonical(), "{}: gradient IR", c.name);
            }
        }
        let b = batch(100 + k as u64);
        let set = inputs(c, &b);
        let ps = params(c);
        let names: Vec<&str> = set.names().collect();
        let (p, _) = liger::pipeline_for(m, &names, &ps).expect("pipeline");
        for s in p.schedule().candidates.clone() {
            let opts = RunOptions {
                schedule: Some(s),
                ..RunOptions::default()
            };
            let a = liger::run(m, &cpu, &set, &ps, &opts).expect("macro runs");
            let bo = liger::run(&f, &cpu, &set, &ps, &opts).expect("file runs");
            assert_same(&a, &bo, &format!("{} under {s}", c.name));
        }
    }
}

fn tensor_f32(shape: Vec<usize>, x: &[f32]) -> OwnedTensor {
    OwnedTensor {
        shape,
        data: OwnedData::F32(x.to_vec()),
    }
}

/// `liger run --loss FILE` writes bitwise what the macro's loss computes.
#[test]
fn liger_run_with_a_loss_file_matches_the_macro() {
    let dir = std::env::temp_dir().join(format!("liger-loss-files-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (k, c) in CASES.iter().enumerate() {
        let b = batch(200 + k as u64);
        let mut f = BTreeMap::new();
        f.insert(
            "policy.x".to_string(),
            tensor_f32(vec![S, T, H], &b.policy.x),
        );
        f.insert("policy.w".to_string(), tensor_f32(vec![V, H], &b.policy.w));
        f.insert(
            "target".to_string(),
            OwnedTensor {
                shape: vec![S, T],
                data: OwnedData::I64(b.target.clone()),
            },
        );
        if c.reference_head {
            f.insert(
                "reference.x".to_string(),
                tensor_f32(vec![S, T, H], &b.reference.x),
            );
            f.insert(
                "reference.w".to_string(),
                tensor_f32(vec![V, H], &b.reference.w),
            );
        }
        if c.grpo_inputs {
            f.insert(
                "old_logps".to_string(),
                tensor_f32(vec![S, T], &b.old_logps),
            );
            f.insert("advantages".to_string(), tensor_f32(vec![S], &b.advantages));
        }
        if c.ref_logps {
            f.insert(
                "ref_logps".to_string(),
                tensor_f32(vec![S, T], &b.ref_logps),
            );
        }
        let input = dir.join(format!("{k}.safetensors"));
        let output = dir.join(format!("{k}.out.safetensors"));
        liger::io::write(input.to_str().expect("path"), &f).expect("writes");
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_liger"));
        cmd.args(["run", "--loss", c.file, "--fn", c.name, "--inputs"])
            .arg(&input)
            .arg("--out")
            .arg(&output);
        let ps = params(c);
        for name in ["beta", "label_smoothing", "epsilon_high"] {
            if let Some(p) = match (c.name, name) {
                ("simpo", "beta") => Some("1.7"),
                ("simpo", "label_smoothing") => Some("0.1"),
                ("grpo", "epsilon_high") => Some("0.28"),
                ("grpo", "beta") => Some("0.05"),
                ("orpo" | "ipo", "beta") => Some("0.3"),
                _ => None,
            } {
                cmd.arg("--param").arg(format!("{name}={p}"));
            }
        }
        let st = cmd.output().expect("runs");
        assert!(
            st.status.success(),
            "{}: {}{}",
            c.name,
            String::from_utf8_lossy(&st.stdout),
            String::from_utf8_lossy(&st.stderr)
        );
        let got = liger::io::read(output.to_str().expect("path")).expect("output");
        let want = liger::run(
            macro_loss(c.name),
            &Runtime::cpu(),
            &inputs(c, &b),
            &ps,
            &RunOptions::default(),
        )
        .expect("macro runs");
        let f32s = |name: &str| -> Vec<f32> {
            match &got
                .get(name)
                .unwrap_or_else(|| panic!("{}: no {name}", c.name))
                .data
            {
                OwnedData::F32(v) => v.clone(),
                _ => panic!("{name} is not f32"),
            }
        };
        assert_eq!(bits(&f32s("loss")), bits(&[want.loss]), "{}: loss", c.name);
        for m in &want.metrics {
            assert_eq!(
                bits(&f32s(&format!("metric.{}", m.name))),
                bits(&m.values),
                "{}: {}",
                c.name,
                m.name
            );
        }
        let g = want.grad("policy").expect("policy grads");
        assert_eq!(
            bits(&f32s("grad.policy.x")),
            bits(&g.x.as_ref().expect("gradient").to_f32()),
            "{}: dx",
            c.name
        );
        assert_eq!(
            bits(&f32s("grad.policy.w")),
            bits(&g.w.as_ref().expect("gradient").to_f32()),
            "{}: dW",
            c.name
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn log_sigmoid_(x: f64) -> f64 {
    log_sigmoid(x)
}

/// Each sequence's valid-token mean and sum of `lp`, and its count.
fn per_seq(lp: &[f64], t: &[i64]) -> Vec<(f64, f64, f64)> {
    (0..S)
        .map(|s| {
            let rows: Vec<usize> = (s * T..(s + 1) * T).filter(|&r| t[r] >= 0).collect();
            let sum: f64 = rows.iter().map(|&r| lp[r]).sum();
            (sum / rows.len() as f64, sum, rows.len() as f64)
        })
        .collect()
}

/// The naive f64 loss of case `c` from policy logits `zp` and reference logits `zr`, with its
/// metrics by name.
fn naive(c: &Case, b: &Batch, zp: &[f64], zr: &[f64]) -> (f64, BTreeMap<&'static str, Vec<f64>>) {
    let r32 = |x: f64| f64::from(x as f32);
    let t = &b.target;
    let lp = token_logps(zp, t);
    let seqs = per_seq(&lp, t);
    let p = S / 2;
    let mut metrics = BTreeMap::new();
    let loss = match c.name {
        "simpo" => {
            let (beta, gamma, ls) = (r32(1.7), r32(0.5), r32(0.1));
            let mut total = 0.0;
            let (mut cr, mut rr) = (vec![], vec![]);
            for q in 0..p {
                let (pc, pr) = (seqs[q].0, seqs[p + q].0);
                let m = beta * (pc - pr) - gamma * beta;
                total += -(1.0 - ls) * log_sigmoid_(m) - ls * log_sigmoid_(-m);
                cr.push(beta * pc);
                rr.push(beta * pr);
            }
            metrics.insert("chosen_rewards", cr);
            metrics.insert("rejected_rewards", rr);
            total / p as f64
        }
        "grpo" => {
            let (el, eh, beta) = (r32(0.2), r32(0.28), r32(0.05));
            let mut per_seq_mean = [0.0; S];
            let (mut clipped_n, mut kl_sum, mut valid) = (0.0, 0.0, 0.0);
            for (s, seq_mean) in per_seq_mean.iter_mut().enumerate() {
                let mut acc = 0.0;
                let mut n = 0.0;
                for r in s * T..(s + 1) * T {
                    if t[r] < 0 {
                        continue;
                    }
                    let a = f64::from(b.advantages[s]);
                    let ratio = (lp[r] - f64::from(b.old_logps[r])).exp();
                    let cl = ratio.clamp(1.0 - el, 1.0 + eh);
                    let surr = (ratio * a).min(cl * a);
                    let mut v = -surr;
                    if c.ref_logps {
                        let d = f64::from(b.ref_logps[r]) - lp[r];
                        let kl = d.exp() - d - 1.0;
                        kl_sum += kl;
                        v += beta * kl;
                    }
                    if cl != ratio {
                        clipped_n += 1.0;
                    }
                    valid += 1.0;
                    acc += v;
                    n += 1.0;
                }
                *seq_mean = acc / n;
            }
            metrics.insert("clip_fraction", vec![clipped_n / valid]);
            if c.ref_logps {
                metrics.insert("kl", vec![kl_sum / valid]);
            }
            per_seq_mean.iter().sum::<f64>() / S as f64
        }
        "orpo" => {
            let beta = r32(0.3);
            let lo = |avg: f64| avg - (-(avg.exp())).ln_1p();
            let ratios: Vec<f64> = (0..p).map(|q| lo(seqs[q].0) - lo(seqs[p + q].0)).collect();
            let nll =
                -(0..p).map(|q| seqs[q].1).sum::<f64>() / (0..p).map(|q| seqs[q].2).sum::<f64>();
            let or = ratios.iter().map(|&r| -log_sigmoid_(r)).sum::<f64>() / p as f64;
            metrics.insert(
                "log_odds_ratio",
                vec![ratios.iter().sum::<f64>() / p as f64],
            );
            metrics.insert("nll", vec![nll]);
            nll + beta * or
        }
        "ipo" => {
            let beta = r32(0.3);
            let rseqs = per_seq(&token_logps(zr, t), t);
            (0..p)
                .map(|q| {
                    let d = (seqs[q].0 - seqs[p + q].0) - (rseqs[q].0 - rseqs[p + q].0);
                    (d - 1.0 / (2.0 * beta)).powi(2)
                })
                .sum::<f64>()
                / p as f64
        }
        other => panic!("{other}"),
    };
    (loss, metrics)
}

/// The example losses compute what their docs say: the f64 reference path of the file's loss
/// against naive formulas, gradients against finite differences of the naive loss.
#[test]
fn example_losses_match_naive_formulas_and_finite_differences() {
    for (k, c) in CASES.iter().enumerate() {
        let f = file_loss(c);
        let b = batch(300 + k as u64);
        let out = liger::reference::evaluate(&f, &inputs(c, &b), &params(c), -100)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let (zp, zr) = (b.policy.logits(), b.reference.logits());
        let (want, metrics) = naive(c, &b, &zp, &zr);
        assert!(
            close(out.loss, want, 1e-9, 1e-9),
            "{}: loss {} vs naive {want}",
            c.name,
            out.loss
        );
        for (name, values) in &metrics {
            let got = &out
                .metric(name)
                .unwrap_or_else(|| panic!("{}: no metric {name}", c.name))
                .values;
            for (g, w) in got.iter().zip(values) {
                assert!(
                    close(*g, *w, 1e-9, 1e-9),
                    "{}: metric {name} {g} vs {w}",
                    c.name
                );
            }
        }
        let g = out.grad("policy").expect("policy gradient");
        let mut rng = fastrand::Rng::with_seed(7 + k as u64);
        let (x, w) = (f64s(&b.policy.x), f64s(&b.policy.w));
        check_fd(&format!("{} dx", c.name), &g.x, &x, 8, &mut rng, |x2| {
            naive(c, &b, &linear(x2, &w, None, H, V), &zr).0
        });
        check_fd(&format!("{} dW", c.name), &g.w, &w, 8, &mut rng, |w2| {
            naive(c, &b, &linear(&x, w2, None, H, V), &zr).0
        });
    }
}

/// The `error: …` diagnostics of a trybuild `.stderr` (message, line, column); `None` when
/// rustc itself reports something (an `error[E…]`), which only the macro door can produce.
fn stderr_diagnostics(stderr: &str) -> Option<Vec<(String, usize, usize)>> {
    let mut out = Vec::new();
    let mut lines = stderr.lines().peekable();
    while let Some(l) = lines.next() {
        if l.starts_with("error[") {
            return None;
        }
        let Some(msg) = l.strip_prefix("error: ") else {
            continue;
        };
        let loc = lines.next()?;
        let loc = loc.trim_start().strip_prefix("--> ")?;
        let mut parts = loc.rsplitn(3, ':');
        let col = parts.next()?.parse().ok()?;
        let line = parts.next()?.parse().ok()?;
        out.push((msg.to_string(), line, col));
    }
    Some(out)
}

/// `text` with the lines `#[chunked_losses]`, `mod … {` and the module's closing `}` blanked
/// (unchanged when it holds no such module).
fn module_body_in_place(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(attr) = lines.iter().position(|l| l.trim() == "#[chunked_losses]") else {
        return text.to_string();
    };
    let close = lines
        .iter()
        .rposition(|l| *l == "}")
        .expect("the module's closing brace");
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if i == attr || i == attr + 1 || i == close {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The proc macro and the run-time door report the same errors at the same positions: every
/// trybuild failure case (a file holding one `#[chunked_loss]` fn) compiled as a loss file.
#[test]
fn every_trybuild_failure_reads_the_same_at_run_time() {
    // A plain Rust fn next to the loss: the macro door never sees it (and reports the call as
    // unknown), the file door reads it as a helper and reports its Rust types; checked below.
    let outside = ["user_function.rs"];
    let mut compared = 0;
    let mut dirs: Vec<_> = std::fs::read_dir("tests/ui/fail")
        .expect("ui/fail")
        .flatten()
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("category")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if outside.contains(&name) {
                continue;
            }
            let stderr = std::fs::read_to_string(path.with_extension("stderr")).expect("stderr");
            let Some(want) = stderr_diagnostics(&stderr) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).expect("case");
            // `fn main() {}` makes the trybuild case a program; a loss file has no main.
            let text = text.replace("\nfn main() {}\n", "\n");
            // A `#[chunked_losses] mod m { … }` case: the loss file is the module's body
            // (the wrapper lines blanked, so lines and columns stay).
            let text = module_body_in_place(&text);
            let origin = path.to_string_lossy().into_owned();
            let got = match liger_lang::compile_source(&text, &origin) {
                Ok(_) => panic!("{origin}: compiles at run time but not through the macro"),
                Err(e) => e.diagnostics,
            };
            let got: Vec<(String, usize, usize)> = got
                .into_iter()
                .map(|d| (d.message, d.line, d.column))
                .collect();
            assert_eq!(got, want, "{origin}: the two doors disagree");
            compared += 1;
        }
    }
    assert!(compared >= 40, "only {compared} cases compared");
    let path = "tests/ui/fail/unsupported_syntax/user_function.rs";
    let text = std::fs::read_to_string(path)
        .expect("case")
        .replace("\nfn main() {}\n", "\n");
    let e = liger_lang::compile_source(&text, path).expect_err("a Rust fn is not a helper");
    assert!(
        e.diagnostics.len() == 2
            && e.diagnostics
                .iter()
                .all(|d| d.message.starts_with("`f32` is not a helper type")),
        "{e}"
    );
}
