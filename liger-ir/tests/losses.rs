//! DPO, generalised JSD and FLCE as `.lir` files against naive f64 formulas written here.
//!
//! The loss and metrics of the interpreter must equal the naive forward formulas, and the
//! simplified gradient IR's `d_<head>` must equal central finite differences *of the naive
//! formulas* (never of liger-ir's own autodiff) at sampled coordinates, at S = 6 sequences,
//! T = 47, V = 123, ignore_index -100 and 42. The simplified gradient IRs are snapshotted and
//! may not have more than twice the nodes of their forward IR.

mod common;

use common::fd::derivative;
use common::{close, logits, targets};
use liger_ir::{HostBatch, HostInput, LossFn, Op, differentiate, evaluate, parse, print, simplify};

const S: usize = 6;
const T: usize = 47;
const V: usize = 123;

fn load(name: &str) -> LossFn {
    let path = format!("{}/tests/losses/{name}.lir", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("loss file");
    parse(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn grad_ir(f: &LossFn) -> LossFn {
    simplify(&differentiate(f).expect("differentiates"))
}

fn lse(row: &[f64]) -> f64 {
    let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
}

fn row(z: &[f64], r: usize) -> &[f64] {
    &z[r * V..(r + 1) * V]
}

/// Valid-row test: the target differs from the ignore index.
fn valid(t: &[i64], r: usize, ignore: i64) -> bool {
    t[r] != ignore
}

/// Coordinates to check: random ones, the target entry of some valid rows, entries of
/// invalid rows (whose gradient must be 0).
fn coords(rng: &mut fastrand::Rng, t: &[i64], ignore: i64) -> Vec<usize> {
    let mut out: Vec<usize> = (0..24).map(|_| rng.usize(0..S * T * V)).collect();
    let valid_rows: Vec<usize> = (0..S * T).filter(|&r| valid(t, r, ignore)).collect();
    let invalid_rows: Vec<usize> = (0..S * T).filter(|&r| !valid(t, r, ignore)).collect();
    for _ in 0..8 {
        let r = valid_rows[rng.usize(0..valid_rows.len())];
        out.push(r * V + t[r] as usize);
    }
    for _ in 0..4 {
        let r = invalid_rows[rng.usize(0..invalid_rows.len())];
        out.push(r * V + rng.usize(0..V));
    }
    out
}

fn check_grad(what: &str, got: &[f64], z: &[f64], at: &[usize], naive: impl Fn(&[f64]) -> f64) {
    for &i in at {
        let num = derivative(z, i, 1e-3, |y| Some(naive(y))).expect("smooth");
        assert!(
            close(got[i], num, 1e-7, 1e-6),
            "{what}: dL/dz[{i}] = {} but finite differences give {num}",
            got[i]
        );
    }
}

// ---------------------------------------------------------------- DPO

struct DpoOut {
    loss: f64,
    chosen: Vec<f64>,
    rejected: Vec<f64>,
}

fn dpo_naive(policy: &[f64], reference: &[f64], t: &[i64], ignore: i64, beta: f64) -> DpoOut {
    let seq_logp = |z: &[f64], s: usize| -> f64 {
        (s * T..(s + 1) * T)
            .filter(|&r| valid(t, r, ignore))
            .map(|r| row(z, r)[t[r] as usize] - lse(row(z, r)))
            .sum()
    };
    let p = S / 2;
    let mut out = DpoOut {
        loss: 0.0,
        chosen: vec![],
        rejected: vec![],
    };
    for i in 0..p {
        let c = seq_logp(policy, i) - seq_logp(reference, i);
        let r = seq_logp(policy, p + i) - seq_logp(reference, p + i);
        let x = beta * (c - r);
        out.loss += (1.0 + (-x).exp()).ln() / p as f64;
        out.chosen.push(beta * c);
        out.rejected.push(beta * r);
    }
    out
}

#[test]
fn dpo_matches_naive_formula_and_finite_differences() {
    let f = load("dpo");
    let g = grad_ir(&f);
    for (seed, ignore, beta) in [(1u64, -100i64, 0.1), (2, 42, 0.2), (3, 42, 1.5)] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let policy = logits(&mut rng, S * T * V, 1.5);
        let reference = logits(&mut rng, S * T * V, 1.5);
        let t = targets(&mut rng, S, T, V, ignore);
        let mut batch = HostBatch::new(S, T, V)
            .with("policy", HostInput::Logits(policy.clone()))
            .with("reference", HostInput::Logits(reference.clone()))
            .with("target", HostInput::Ids(t.clone()))
            .with("beta", HostInput::Scalar(beta));
        batch.ignore_index = ignore;
        let want = dpo_naive(&policy, &reference, &t, ignore, beta);
        for ir in [&f, &g] {
            let e = evaluate(ir, &batch).expect("evaluates");
            assert!(
                close(e.loss, want.loss, 1e-12, 1e-10),
                "loss {} vs {}",
                e.loss,
                want.loss
            );
            for (name, w) in [
                ("chosen_rewards", &want.chosen),
                ("rejected_rewards", &want.rejected),
            ] {
                let m = e.metric(name).expect("metric");
                assert_eq!(m.values.len(), S / 2);
                for (a, b) in m.values.iter().zip(w.iter()) {
                    assert!(close(*a, *b, 1e-12, 1e-10), "{name}: {a} vs {b}");
                }
            }
        }
        let e = evaluate(&g, &batch).expect("evaluates");
        let d = e.grad("policy").expect("d_policy");
        let at = coords(&mut rng, &t, ignore);
        check_grad("dpo", d, &policy, &at, |z| {
            dpo_naive(z, &reference, &t, ignore, beta).loss
        });
    }
}

// ---------------------------------------------------------------- JSD

struct JsdParams {
    beta: f64,
    tau: f64,
    wh: f64,
    ws: f64,
}

fn jsd_naive(
    student: &[f64],
    teacher: &[f64],
    t: &[i64],
    ignore: i64,
    p: &JsdParams,
) -> (f64, f64, f64) {
    let n = (0..S * T).filter(|&r| valid(t, r, ignore)).count() as f64;
    let (mut soft, mut hard) = (0.0, 0.0);
    for r in (0..S * T).filter(|&r| valid(t, r, ignore)) {
        let su: Vec<f64> = row(student, r).iter().map(|x| x / p.tau).collect();
        let tu: Vec<f64> = row(teacher, r).iter().map(|x| x / p.tau).collect();
        let (ls, lt) = (lse(&su), lse(&tu));
        for v in 0..V {
            let (s, tt) = (su[v] - ls, tu[v] - lt);
            let m = ((1.0 - p.beta) * s.exp() + p.beta * tt.exp()).ln();
            soft += p.beta * tt.exp() * (tt - m) + (1.0 - p.beta) * s.exp() * (s - m);
        }
        let z = row(student, r);
        hard += lse(z) - z[t[r] as usize];
    }
    let (soft, hard) = (soft / n, hard / n);
    (p.wh * hard + p.ws * soft, soft, hard)
}

#[test]
fn jsd_matches_naive_formula_and_finite_differences() {
    let f = load("jsd");
    let g = grad_ir(&f);
    let grid = [
        (
            11u64,
            -100i64,
            JsdParams {
                beta: 0.5,
                tau: 1.0,
                wh: 0.5,
                ws: 0.5,
            },
        ),
        (
            12,
            42,
            JsdParams {
                beta: 0.8,
                tau: 2.0,
                wh: 0.0,
                ws: 1.0,
            },
        ),
        (
            13,
            -100,
            JsdParams {
                beta: 0.2,
                tau: 0.5,
                wh: 1.0,
                ws: 0.0,
            },
        ),
        (
            14,
            42,
            JsdParams {
                beta: 0.3,
                tau: 0.7,
                wh: 0.25,
                ws: 0.75,
            },
        ),
    ];
    for (seed, ignore, p) in grid {
        let mut rng = fastrand::Rng::with_seed(seed);
        let student = logits(&mut rng, S * T * V, 1.5);
        let teacher = logits(&mut rng, S * T * V, 1.5);
        let t = targets(&mut rng, S, T, V, ignore);
        let mut batch = HostBatch::new(S, T, V)
            .with("student", HostInput::Logits(student.clone()))
            .with("teacher", HostInput::Logits(teacher.clone()))
            .with("target", HostInput::Ids(t.clone()))
            .with("beta", HostInput::Scalar(p.beta))
            .with("temperature", HostInput::Scalar(p.tau))
            .with("weight_hard", HostInput::Scalar(p.wh))
            .with("weight_soft", HostInput::Scalar(p.ws));
        batch.ignore_index = ignore;
        let (loss, soft, hard) = jsd_naive(&student, &teacher, &t, ignore, &p);
        for ir in [&f, &g] {
            let e = evaluate(ir, &batch).expect("evaluates");
            assert!(
                close(e.loss, loss, 1e-12, 1e-10),
                "loss {} vs {loss}",
                e.loss
            );
            let ms = e.metric("soft_loss").expect("soft").values[0];
            let mh = e.metric("hard_loss").expect("hard").values[0];
            assert!(close(ms, soft, 1e-12, 1e-10), "soft {ms} vs {soft}");
            assert!(close(mh, hard, 1e-12, 1e-10), "hard {mh} vs {hard}");
        }
        let e = evaluate(&g, &batch).expect("evaluates");
        let d = e.grad("student").expect("d_student");
        let at = coords(&mut rng, &t, ignore);
        check_grad("jsd", d, &student, &at, |z| {
            jsd_naive(z, &teacher, &t, ignore, &p).0
        });
    }
}

// ---------------------------------------------------------------- FLCE

fn flce_naive(z: &[f64], t: &[i64], ignore: i64, eps: f64, zs: f64) -> (f64, f64) {
    let rows: Vec<usize> = (0..S * T).filter(|&r| valid(t, r, ignore)).collect();
    let n = rows.len() as f64;
    let (mut loss, mut zl) = (0.0, 0.0);
    for r in rows {
        let x = row(z, r);
        let l = lse(x);
        let nll = l - x[t[r] as usize];
        let smooth = l - x.iter().sum::<f64>() / V as f64;
        loss += (1.0 - eps) * nll + eps * smooth + zs * l * l;
        zl += zs * l * l;
    }
    (loss / n, zl / n)
}

#[test]
fn flce_matches_naive_formula_and_finite_differences() {
    let f = load("flce");
    let g = grad_ir(&f);
    for (seed, ignore, eps, zs) in [
        (21u64, -100i64, 0.1, 1e-4),
        (22, 42, 0.0, 0.0),
        (23, 42, 0.3, 0.05),
    ] {
        let mut rng = fastrand::Rng::with_seed(seed);
        let z = logits(&mut rng, S * T * V, 2.0);
        let t = targets(&mut rng, S, T, V, ignore);
        let mut batch = HostBatch::new(S, T, V)
            .with("logits", HostInput::Logits(z.clone()))
            .with("target", HostInput::Ids(t.clone()))
            .with("label_smoothing", HostInput::Scalar(eps))
            .with("z_scale", HostInput::Scalar(zs));
        batch.ignore_index = ignore;
        let (loss, zl) = flce_naive(&z, &t, ignore, eps, zs);
        for ir in [&f, &g] {
            let e = evaluate(ir, &batch).expect("evaluates");
            assert!(
                close(e.loss, loss, 1e-12, 1e-10),
                "loss {} vs {loss}",
                e.loss
            );
            let m = e.metric("z_loss").expect("z_loss").values[0];
            assert!(close(m, zl, 1e-12, 1e-10), "z_loss {m} vs {zl}");
        }
        let e = evaluate(&g, &batch).expect("evaluates");
        let d = e.grad("logits").expect("d_logits");
        let at = coords(&mut rng, &t, ignore);
        check_grad("flce", d, &z, &at, |y| flce_naive(y, &t, ignore, eps, zs).0);
    }
}

// ---------------------------------------------------------------- gradient IR shape

#[test]
fn gradient_irs_are_compact_and_snapshotted() {
    for name in ["dpo", "jsd", "flce"] {
        let f = load(name);
        let g = grad_ir(&f);
        assert!(
            g.nodes.len() <= 2 * f.nodes.len(),
            "{name}: simplified gradient IR has {} nodes, more than twice the forward's {}",
            g.nodes.len(),
            f.nodes.len()
        );
        insta::assert_snapshot!(format!("{name}_gradient"), print(&g));
    }
}

#[test]
fn dpo_dlogits_is_row_coefficient_times_onehot_minus_softmax() {
    let g = grad_ir(&load("dpo"));
    let (_, d) = g.grads().next().expect("one gradient");
    let node = g.node(d);
    assert_eq!(
        node.op,
        Op::Binary(liger_ir::op::Binary::Mul),
        "d_policy is a product"
    );
    let (c, u) = (node.args[0], node.args[1]);
    assert_eq!(
        g.ty(c).level,
        liger_ir::Level::Row,
        "the coefficient is per row"
    );
    let u = g.node(u);
    assert_eq!(u.op, Op::Binary(liger_ir::op::Binary::Sub));
    assert_eq!(g.node(u.args[0]).op, Op::OneHot);
    assert_eq!(g.node(u.args[1]).op, Op::Softmax);
}
