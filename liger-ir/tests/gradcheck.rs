//! Autodiff against finite differences of the interpreter.
//!
//! For random, well-levelled loss functions (see `common::generator`), the gradient IR's
//! `d_policy` must match central finite differences (Richardson-extrapolated) of the forward
//! loss at sampled coordinates, with `|a-b| <= 1e-7 + 1e-6 |b|` in f64. Coordinates where a
//! branch (abs/relu sign, min/max/clamp side, comparison, argmax) flips within the stencil are
//! skipped: the derivative is not defined there. The simplified gradient must also agree with
//! the unsimplified one, and the forward loss must be unchanged by both passes.

mod common;

use common::fd::derivative;
use common::generator::{gen_ops, random_case, surface_ops};
use common::{close, with_logits};
use liger_ir::{HostInput, differentiate, evaluate, simplify, verify};

const H: f64 = 1e-3;
const COORDS: usize = 6;

struct Outcome {
    checked: usize,
    skipped: usize,
    failures: Vec<String>,
}

fn check_case(seed: u64, focus: Option<&str>) -> Outcome {
    let case = random_case(seed, focus);
    let f = &case.f;
    if let Err(e) = verify(f) {
        panic!(
            "seed {seed}: generated IR does not verify:\n{e}\n{}",
            liger_ir::print(f)
        );
    }
    let g = differentiate(f).unwrap_or_else(|e| panic!("seed {seed}: autodiff failed: {e}"));
    let s = simplify(&g);
    verify(&s).unwrap_or_else(|e| {
        panic!(
            "seed {seed}: simplified IR does not verify: {e}\n{}\n{}",
            liger_ir::print(&g),
            liger_ir::print(&s)
        )
    });
    let base = evaluate(f, &case.batch).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let eg = evaluate(&g, &case.batch).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let es = evaluate(&s, &case.batch).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    let mut out = Outcome {
        checked: 0,
        skipped: 0,
        failures: vec![],
    };
    let text = || liger_ir::print(f);
    for (what, l) in [("gradient IR", eg.loss), ("simplified IR", es.loss)] {
        if !close(l, base.loss, 1e-12, 1e-12) {
            out.failures.push(format!(
                "seed {seed}: {what} loss {l} != forward {}",
                base.loss
            ));
        }
    }
    let (dg, ds) = (
        eg.grad("policy").expect("grad"),
        es.grad("policy").expect("grad"),
    );
    for (k, (a, b)) in dg.iter().zip(ds).enumerate() {
        if !close(*b, *a, 1e-12, 1e-9) {
            out.failures.push(format!(
                "seed {seed}: simplified d_policy[{k}] = {b} but unsimplified = {a}\n{}",
                text()
            ));
            break;
        }
    }
    let Some(HostInput::Logits(z)) = case.batch.inputs.get("policy").cloned() else {
        panic!("policy logits")
    };
    // Autodiff treats `stop_gradient` values as constants: pin them for the differences.
    let base_vals = liger_ir::interp::evaluate_nodes(f, &case.batch).expect("evaluates");
    let pins: Vec<_> = f
        .ids()
        .filter(|v| f.node(*v).op == liger_ir::Op::Unary(liger_ir::op::Unary::StopGradient))
        .map(|v| (v, base_vals[v.index()].clone()))
        .collect();
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x5eed);
    for _ in 0..COORDS {
        let i = rng.usize(0..z.len());
        let num = derivative(&z, i, H, |y| {
            let e = liger_ir::interp::evaluate_pinned(
                f,
                &with_logits(&case.batch, "policy", y.to_vec()),
                &pins,
            )
            .ok()?;
            (e.branch_signature == base.branch_signature).then_some(e.loss)
        });
        let Some(num) = num else {
            out.skipped += 1;
            continue;
        };
        out.checked += 1;
        let a = ds[i];
        if !close(a, num, 1e-7, 1e-6) {
            out.failures.push(format!(
                "seed {seed}: d_policy[{i}] autodiff {a:e} vs finite differences {num:e}\n{}\n{}",
                text(),
                liger_ir::print(&s)
            ));
        }
    }
    out
}

fn ops_of(f: &liger_ir::LossFn) -> std::collections::BTreeSet<String> {
    f.nodes
        .iter()
        .map(|n| match n.op {
            liger_ir::Op::Broadcast(_) => "broadcast".to_string(),
            op => op.name(),
        })
        .collect()
}

#[test]
fn random_losses_match_finite_differences() {
    let cases = 1200u64;
    let (mut checked, mut skipped) = (0, 0);
    let mut failures = Vec::new();
    for seed in 0..cases {
        let o = check_case(seed, None);
        checked += o.checked;
        skipped += o.skipped;
        failures.extend(o.failures);
    }
    eprintln!("{cases} cases, {checked} coordinates checked, {skipped} skipped at kinks");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(
        checked >= cases as usize * COORDS * 9 / 10,
        "too many coordinates skipped"
    );
}

#[test]
fn generator_covers_every_surface_op_50_times() {
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for seed in 0..1200u64 {
        let case = random_case(seed, None);
        for op in ops_of(&case.f) {
            *counts.entry(op).or_default() += 1;
        }
    }
    let low: Vec<String> = surface_ops()
        .iter()
        .filter(|op| counts.get(op.as_str()).copied().unwrap_or(0) < 50)
        .map(|op| format!("{op}: {}", counts.get(op.as_str()).copied().unwrap_or(0)))
        .collect();
    eprintln!("{counts:?}");
    assert!(
        low.is_empty(),
        "ops in fewer than 50 of 1200 cases: {low:?}"
    );
}

#[test]
fn every_op_vjp_matches_finite_differences() {
    let mut failures = Vec::new();
    for op in &gen_ops() {
        let op = op.as_str();
        let mut used = 0;
        let mut checked = 0;
        for seed in 0..25u64 {
            let seed = seed * 7919 + op.len() as u64 * 104_729 + op.as_bytes()[0] as u64;
            let case = random_case(seed, Some(op));
            if ops_of(&case.f).contains(op) {
                used += 1;
            }
            let o = check_case(seed, Some(op));
            checked += o.checked;
            failures.extend(o.failures);
        }
        assert!(
            used >= 15,
            "`{op}` appeared in only {used} of 25 focused cases"
        );
        assert!(checked >= 100, "`{op}`: only {checked} coordinates checked");
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
