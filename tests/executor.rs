//! The CPU executor against the f64 reference interpreter: every built-in loss, every
//! applicable schedule (forced), several memory budgets, odd shapes, bias on and off,
//! ignore_index -100 and 42. fp32 inputs: `|a-b| <= 1e-5 + 1e-4 |b|` for loss, metrics and
//! every gradient; bf16 inputs: `‖a−b‖/‖b‖ <= 1e-2` per tensor.

mod common;

use common::*;
use half::bf16;
use liger::prelude::*;
use liger::{ChunkedLoss, RunOptions, Runtime, Strategy, TensorData};

struct Shape {
    s: usize,
    t: usize,
    h: usize,
    v: usize,
}

struct Case {
    loss: &'static dyn ChunkedLoss,
    params: ParamSet,
    heads: Vec<(&'static str, usize)>,
    extra_seq: Option<&'static str>,
}

struct Data {
    x: Vec<Vec<f32>>,
    w: Vec<Vec<f32>>,
    b: Vec<Option<Vec<f32>>>,
    t: Vec<i64>,
    seq: Vec<f32>,
}

fn data(case: &Case, sh: &Shape, seed: u64, bias: bool, ignore: i64) -> Data {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut d = Data {
        x: vec![],
        w: vec![],
        b: vec![],
        t: vec![],
        seq: vec![],
    };
    for (_, hmul) in &case.heads {
        let h = sh.h * hmul;
        d.x.push(randn(&mut rng, sh.s * sh.t * h, 1.0));
        d.w.push(randn(&mut rng, sh.v * h, 0.6 / (h as f64).sqrt() * 3.0));
        d.b.push(bias.then(|| randn(&mut rng, sh.v, 0.5)));
    }
    d.t = targets(&mut rng, sh.s, sh.t, sh.v, ignore);
    d.seq = randn(&mut rng, sh.s, 3.0);
    d
}

fn bf16_round(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

fn inputs<'a>(
    case: &Case,
    sh: &Shape,
    d: &'a Data,
    xb: &'a [Vec<bf16>],
    wb: &'a [Vec<bf16>],
    use_bf16: bool,
) -> InputSet<'a> {
    let mut set = InputSet::new();
    for (k, (name, hmul)) in case.heads.iter().enumerate() {
        let h = sh.h * hmul;
        let (x, w) = if use_bf16 {
            (
                TensorView::new(&xb[k], &[sh.s, sh.t, h]).expect("x"),
                TensorView::new(&wb[k], &[sh.v, h]).expect("w"),
            )
        } else {
            (
                TensorView::new(&d.x[k], &[sh.s, sh.t, h]).expect("x"),
                TensorView::new(&d.w[k], &[sh.v, h]).expect("w"),
            )
        };
        let head = match &d.b[k] {
            Some(b) => Head::with_bias(x, w, TensorView::new(b, &[sh.v]).expect("b")),
            None => Head::new(x, w),
        };
        set = set.head(name, head);
    }
    set = set.tensor("target", TensorView::new(&d.t, &[sh.s, sh.t]).expect("t"));
    if let Some(name) = case.extra_seq {
        set = set.tensor(name, TensorView::new(&d.seq, &[sh.s]).expect("seq"));
    }
    set
}

fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - y).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

fn compare(what: &str, out: &liger::LossOutput, want: &liger::reference::Output, bf16: bool) {
    let (atol, rtol) = (1e-5, 1e-4);
    let ok = |a: f32, b: f64| close(f64::from(a), b, atol, rtol);
    if bf16 {
        assert!(
            rel_err(&[out.loss], &[want.loss]) <= 1e-2,
            "{what}: loss {} vs {}",
            out.loss,
            want.loss
        );
    } else {
        assert!(
            ok(out.loss, want.loss),
            "{what}: loss {} vs {}",
            out.loss,
            want.loss
        );
    }
    for m in &want.metrics {
        let got = out
            .metric(&m.name)
            .unwrap_or_else(|| panic!("{what}: metric {}", m.name));
        if bf16 {
            assert!(
                rel_err(&got.values, &m.values) <= 1e-2,
                "{what}: metric {}",
                m.name
            );
        } else {
            for (a, b) in got.values.iter().zip(&m.values) {
                assert!(ok(*a, *b), "{what}: metric {}: {a} vs {b}", m.name);
            }
        }
    }
    assert_eq!(out.grads.len(), want.grads.len(), "{what}: gradient heads");
    for gw in &want.grads {
        let g = out
            .grad(&gw.head)
            .unwrap_or_else(|| panic!("{what}: grad {}", gw.head));
        let mut tensors = vec![
            ("x", g.x.as_ref().expect("gradient").to_f32(), &gw.x),
            ("w", g.w.as_ref().expect("gradient").to_f32(), &gw.w),
        ];
        if let (Some(a), Some(b)) = (&g.b, &gw.b) {
            tensors.push(("b", a.to_f32(), b));
        } else {
            assert_eq!(
                g.b.is_some(),
                gw.b.is_some(),
                "{what}: bias gradient presence"
            );
        }
        for (name, a, b) in tensors {
            assert_eq!(a.len(), b.len());
            if bf16 {
                let e = rel_err(&a, b);
                assert!(e <= 1e-2, "{what}: d{name} relative error {e}");
            } else {
                for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                    assert!(
                        ok(*x, *y),
                        "{what}: d{}.{name}[{i}] = {x} vs reference {y}",
                        gw.head
                    );
                }
            }
        }
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            loss: &Dpo,
            params: ParamSet::new()
                .float("beta", 0.2)
                .variant("average", "true")
                .variant("nll", "true")
                .float("label_smoothing", 0.1),
            heads: vec![("policy", 1), ("reference", 2)],
            extra_seq: None,
        },
        Case {
            loss: &Dpo,
            params: ParamSet::new()
                .float("beta", 0.5)
                .variant("loss_type", "Hinge"),
            heads: vec![("policy", 1)],
            extra_seq: Some("ref_logps"),
        },
        Case {
            loss: &Flce,
            params: ParamSet::new()
                .float("label_smoothing", 0.1)
                .float("z_loss_scale", 1e-3)
                .variant("softcap", "true")
                .float("softcap_value", 3.0),
            heads: vec![("logits", 1)],
            extra_seq: None,
        },
        Case {
            loss: &Flce,
            params: ParamSet::new().variant("reduction", "Sum"),
            heads: vec![("logits", 1)],
            extra_seq: None,
        },
        Case {
            loss: &Jsd,
            params: ParamSet::new().float("beta", 0.3).float("temperature", 1.5),
            heads: vec![("student", 1), ("teacher", 2)],
            extra_seq: None,
        },
    ]
}

fn schedules(case: &Case, set: &InputSet<'_>) -> Vec<Strategy> {
    let names: Vec<&str> = set.names().collect();
    let (p, _) = liger::pipeline_for(case.loss, &names, &case.params).expect("pipeline");
    p.schedule().candidates.clone()
}

#[test]
fn executor_matches_the_reference_fp32() {
    let shape = Shape {
        s: 6,
        t: 47,
        h: 31,
        v: 123,
    };
    let rt = Runtime::cpu();
    let mut runs = 0;
    for (ci, case) in cases().iter().enumerate() {
        for (bias, ignore) in [(false, -100i64), (true, 42)] {
            let d = data(case, &shape, 100 + ci as u64, bias, ignore);
            let set = inputs(case, &shape, &d, &[], &[], false);
            let want = liger::reference::evaluate(case.loss, &set, &case.params, ignore)
                .expect("reference");
            for strategy in schedules(case, &set) {
                for budget in [40 << 10, 400 << 10, 64 << 20] {
                    // 4 MiB of the budget are reserved for GEMM packing and small arrays.
                    let opts = RunOptions {
                        ignore_index: ignore,
                        chunk_memory: budget + (4 << 20),
                        schedule: Some(strategy),
                        ..RunOptions::default()
                    };
                    let out = match liger::run(case.loss, &rt, &set, &case.params, &opts) {
                        Ok(out) => out,
                        Err(liger::Error::Runtime(liger::runtime::Error::Budget { .. }))
                            if matches!(strategy, Strategy::GroupAligned | Strategy::Deferred)
                                && budget < (1 << 20) =>
                        {
                            continue;
                        }
                        Err(e) => panic!("{} {strategy} budget {budget}: {e}", case.loss.name()),
                    };
                    if budget == 40 << 10 {
                        assert!(
                            out.report.chunk_rows < 47,
                            "{strategy}: a small budget gives small chunks ({})",
                            out.report.chunk_rows
                        );
                    }
                    assert_eq!(out.report.strategy, strategy);
                    let what = format!(
                        "{} {} bias={bias} ignore={ignore} {strategy} budget={budget} chunk={} chunks={}",
                        case.loss.name(),
                        want.spec,
                        out.report.chunk_rows,
                        out.report.chunks
                    );
                    compare(&what, &out, &want, false);
                    runs += 1;
                }
            }
        }
    }
    assert!(runs >= 50, "{runs} runs");
}

#[test]
fn executor_matches_the_reference_on_a_larger_shape() {
    let shape = Shape {
        s: 4,
        t: 130,
        h: 48,
        v: 1031,
    };
    let rt = Runtime::cpu();
    for (ci, case) in cases().iter().enumerate().filter(|(i, _)| *i != 3) {
        let d = data(case, &shape, 200 + ci as u64, true, -100);
        let set = inputs(case, &shape, &d, &[], &[], false);
        let want =
            liger::reference::evaluate(case.loss, &set, &case.params, -100).expect("reference");
        for strategy in schedules(case, &set) {
            let opts = RunOptions {
                ignore_index: -100,
                chunk_memory: 16 << 20,
                schedule: Some(strategy),
                ..RunOptions::default()
            };
            let out = liger::run(case.loss, &rt, &set, &case.params, &opts).expect("runs");
            compare(
                &format!("{} {strategy} (large)", case.loss.name()),
                &out,
                &want,
                false,
            );
        }
    }
}

#[test]
fn executor_with_bf16_inputs_is_within_one_percent() {
    let shape = Shape {
        s: 6,
        t: 47,
        h: 31,
        v: 123,
    };
    let rt = Runtime::cpu();
    for (ci, case) in cases().iter().enumerate() {
        let mut d = data(case, &shape, 300 + ci as u64, ci % 2 == 0, -100);
        let xb: Vec<Vec<bf16>> = d.x.iter().map(|x| bf16_round(x)).collect();
        let wb: Vec<Vec<bf16>> = d.w.iter().map(|w| bf16_round(w)).collect();
        // The reference sees the same bf16-rounded values, in f64.
        d.x = xb
            .iter()
            .map(|x| x.iter().map(|v| v.to_f32()).collect())
            .collect();
        d.w = wb
            .iter()
            .map(|w| w.iter().map(|v| v.to_f32()).collect())
            .collect();
        let set_ref = inputs(case, &shape, &d, &[], &[], false);
        let want =
            liger::reference::evaluate(case.loss, &set_ref, &case.params, -100).expect("reference");
        let set = inputs(case, &shape, &d, &xb, &wb, true);
        assert!(matches!(
            match set.get(case.heads[0].0) {
                Some(liger::InputValue::Head(h)) => h.x.data(),
                _ => TensorData::F32(&[]),
            },
            TensorData::BF16(_)
        ));
        for strategy in schedules(case, &set) {
            let opts = RunOptions {
                ignore_index: -100,
                chunk_memory: 8 << 20,
                schedule: Some(strategy),
                ..RunOptions::default()
            };
            let out = liger::run(case.loss, &rt, &set, &case.params, &opts).expect("runs");
            compare(
                &format!("{} {strategy} bf16", case.loss.name()),
                &out,
                &want,
                true,
            );
        }
    }
}

#[test]
fn the_planner_picks_a_strategy_and_reports_it() {
    let shape = Shape {
        s: 4,
        t: 20,
        h: 8,
        v: 50,
    };
    let case = &cases()[0];
    let d = data(case, &shape, 7, false, -100);
    let set = inputs(case, &shape, &d, &[], &[], false);
    let out = liger::run(
        case.loss,
        &Runtime::cpu(),
        &set,
        &case.params,
        &RunOptions::default(),
    )
    .expect("runs");
    assert!(!out.report.forced);
    assert!(out.report.estimate <= out.report.budget);
    assert!(matches!(
        out.report.strategy,
        Strategy::GroupAligned | Strategy::Deferred
    ));
    let flce = &cases()[2];
    let d = data(flce, &shape, 8, false, -100);
    let set = inputs(flce, &shape, &d, &[], &[], false);
    let out = liger::run(
        flce.loss,
        &Runtime::cpu(),
        &set,
        &flce.params,
        &RunOptions::default(),
    )
    .expect("runs");
    assert_eq!(out.report.strategy, Strategy::Fused, "FLCE is row-local");
    let e = liger::run(
        flce.loss,
        &Runtime::cpu(),
        &set,
        &flce.params,
        &RunOptions {
            schedule: Some(Strategy::Deferred),
            ..RunOptions::default()
        },
    )
    .expect_err("deferred does not apply to a row-local loss");
    assert!(e.to_string().contains("row-local"), "{e}");
}

#[test]
fn a_uniform_bias_of_1e7_cancels_exactly_under_every_schedule() {
    let rt = Runtime::cpu();
    for strategy in [None, Some(Strategy::Fused), Some(Strategy::TwoPass)] {
        for eps in [0.0, 0.1] {
            if let Err(e) = common::offset::check_uniform_bias(&rt, strategy, eps) {
                panic!("{e}");
            }
        }
    }
}

/// `RunOptions::grads`: every subset of {x, W, b} under every schedule gives the full run's
/// loss and metrics, the asked-for gradients bitwise, `None` for the others, fewer GEMM FLOPs
/// in the report, and no f32 working copy (budget) for a gradient not asked for.
#[test]
fn gradients_not_asked_for_are_not_computed() {
    let shape = Shape {
        s: 4,
        t: 23,
        h: 19,
        v: 61,
    };
    let rt = Runtime::cpu();
    let mut runs = 0;
    for (ci, case) in cases().iter().enumerate() {
        let d = data(case, &shape, 300 + ci as u64, true, -100);
        let set = inputs(case, &shape, &d, &[], &[], false);
        for strategy in schedules(case, &set) {
            let base = RunOptions {
                schedule: Some(strategy),
                chunk_memory: (4 << 20) + (120 << 10),
                ..RunOptions::default()
            };
            let full = liger::run(case.loss, &rt, &set, &case.params, &base).expect("full");
            for mask in 0..8u8 {
                let wanted = liger::Wanted {
                    x: mask & 1 != 0,
                    w: mask & 2 != 0,
                    b: mask & 4 != 0,
                };
                let opts = RunOptions {
                    grads: wanted,
                    ..base
                };
                let what = format!("{} {strategy} {wanted:?}", case.loss.name());
                let out = liger::run(case.loss, &rt, &set, &case.params, &opts)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                runs += 1;
                assert_eq!(out.loss.to_bits(), full.loss.to_bits(), "{what}");
                assert_eq!(out.metrics, full.metrics, "{what}");
                assert_eq!(out.grads.len(), full.grads.len(), "{what}");
                for (g, f) in out.grads.iter().zip(&full.grads) {
                    for (part, on, got, all) in [
                        ("x", wanted.x, &g.x, &f.x),
                        ("w", wanted.w, &g.w, &f.w),
                        ("b", wanted.b, &g.b, &f.b),
                    ] {
                        if on {
                            assert_eq!(got, all, "{what}: {part} differs from the full run");
                        } else {
                            assert!(got.is_none(), "{what}: {part} was not asked for");
                        }
                    }
                }
                let gemms = u8::from(wanted.x) + u8::from(wanted.w);
                if gemms < 2 {
                    assert!(
                        out.report.gemm_flops < full.report.gemm_flops,
                        "{what}: {} vs {} FLOPs",
                        out.report.gemm_flops,
                        full.report.gemm_flops
                    );
                }
            }
        }
    }
    assert!(runs >= 96, "{runs}");
    // bf16 gradients keep an f32 working copy only of the ones asked for: a budget that fits
    // with W frozen but not with every copy.
    let case = &cases()[2];
    let big = Shape {
        s: 2,
        t: 8,
        h: 64,
        v: 4099,
    };
    let d = data(case, &big, 7, false, -100);
    let set = inputs(case, &big, &d, &[], &[], false);
    let bf = RunOptions {
        grad_dtypes: liger::GradDTypes::all(liger::DType::BF16),
        chunk_memory: (4 << 20) + (600 << 10),
        ..RunOptions::default()
    };
    let err = liger::run(case.loss, &rt, &set, &case.params, &bf).expect_err("copies");
    assert!(
        matches!(
            err,
            liger::Error::Runtime(liger::runtime::Error::GradBudget { .. })
        ),
        "{err}"
    );
    let frozen = RunOptions {
        grads: liger::Wanted::parse("x").expect("x"),
        ..bf
    };
    let out = liger::run(case.loss, &rt, &set, &case.params, &frozen).expect("W frozen");
    assert!(out.grads[0].w.is_none() && out.grads[0].x.is_some());
}

#[test]
fn gradient_selections_parse_or_say_why() {
    use liger::Wanted;
    assert_eq!(Wanted::parse("x,w,b").expect("all"), Wanted::ALL);
    assert_eq!(Wanted::parse("none").expect("none"), Wanted::NONE);
    assert_eq!(
        Wanted::parse(" x ").expect("x"),
        Wanted {
            x: true,
            w: false,
            b: false
        }
    );
    let err = Wanted::parse("x,W").expect_err("W").to_string();
    assert!(
        err.contains("`W` is not a gradient") && err.contains("x, w, b"),
        "{err}"
    );
}

/// Which built-ins let rows go, as the IR says: every loss whose logit-derived row values are
/// reduced only under `valid(target)` or a `RowMask` input; not cosine distillation (its soft
/// term runs over every row) nor FLCE with `reduction: None` (per-token losses out).
#[test]
fn the_ir_says_which_rows_carry_nothing() {
    for loss in liger::losses::builtin() {
        let spec = &loss.specializations()[0];
        let p = liger::pipeline(loss, spec).expect("pipeline");
        let g = p.grad();
        let masks: Vec<String> = p
            .schedule()
            .skippable
            .as_ref()
            .map(|s| {
                s.masks
                    .iter()
                    .map(|m| match g.node(*m).op {
                        liger::ir::Op::Input(k) => g.inputs[k.index()].name.clone(),
                        _ => "?".into(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let want: &[&str] = match loss.name() {
            "cosine_distill" => &[],
            "grpo" => &["mask"],
            // The first specialisation has the NLL target too.
            "orpo" => &["target", "nll_target"],
            _ => &["target"],
        };
        assert_eq!(masks, want, "{}", loss.name());
    }
    let none = liger::losses::Flce
        .specializations()
        .iter()
        .find(|s| s.choices.contains(&("reduction", "None")))
        .expect("a None specialisation");
    let p = liger::pipeline(&liger::losses::Flce, none).expect("pipeline");
    assert!(
        p.schedule().skippable.is_none(),
        "row metrics keep every row"
    );
}

/// Skipping the rows that carry nothing gives the every-row results (up to the order of
/// sums) under every schedule and budget, fewer chunks, and the count of skipped rows.
#[test]
fn skipped_rows_give_the_every_row_results() {
    let shape = Shape {
        s: 6,
        t: 47,
        h: 31,
        v: 123,
    };
    let rt = Runtime::cpu();
    let mut runs = 0;
    for (ci, case) in cases().iter().enumerate() {
        for ignore in [-100i64, 42] {
            let mut d = data(case, &shape, 500 + ci as u64, ci % 2 == 0, ignore);
            // Prompts: the first 3 to 30 rows of each sequence ignored (besides the data's
            // scattered ignored rows), as post-training batches are.
            for q in 0..shape.s {
                let k = 3 + (q * 11 + ci * 5) % 28;
                d.t[q * shape.t..q * shape.t + k].fill(ignore);
            }
            // Rows in dead runs of at least MIN_DEAD_RUN rows are skipped; shorter runs run.
            let mut dead = 0;
            let mut run = 0;
            for (r, &t) in d.t.iter().enumerate() {
                if t == ignore {
                    run += 1;
                }
                if t != ignore || r + 1 == d.t.len() {
                    if run >= liger::runtime::MIN_DEAD_RUN {
                        dead += run;
                    }
                    run = 0;
                }
            }
            assert!(dead >= 40, "the data has prompt-like runs: {dead}");
            let set = inputs(case, &shape, &d, &[], &[], false);
            for strategy in schedules(case, &set) {
                for budget in [400 << 10, 64 << 20] {
                    let base = RunOptions {
                        ignore_index: ignore,
                        chunk_memory: budget + (4 << 20),
                        schedule: Some(strategy),
                        ..RunOptions::default()
                    };
                    let every = RunOptions {
                        skip_dead_rows: false,
                        ..base
                    };
                    let what = format!(
                        "{} {strategy} ignore {ignore} budget {budget}",
                        case.loss.name()
                    );
                    let (a, b) = match (
                        liger::run(case.loss, &rt, &set, &case.params, &base),
                        liger::run(case.loss, &rt, &set, &case.params, &every),
                    ) {
                        (Ok(a), Ok(b)) => (a, b),
                        (Err(liger::Error::Runtime(liger::runtime::Error::Budget { .. })), _) => {
                            continue;
                        }
                        (a, b) => panic!("{what}: {:?} / {:?}", a.err(), b.err()),
                    };
                    runs += 1;
                    assert_eq!(a.report.skipped_rows, dead, "{what}");
                    assert_eq!(b.report.skipped_rows, 0, "{what}");
                    if strategy != Strategy::Deferred {
                        assert!(a.report.chunks <= b.report.chunks, "{what}");
                    }
                    let near = |x: f32, y: f32| (x - y).abs() <= 1e-6 + 1e-5 * y.abs();
                    assert!(near(a.loss, b.loss), "{what}: {} vs {}", a.loss, b.loss);
                    for (m, n) in a.metrics.iter().zip(&b.metrics) {
                        for (x, y) in m.values.iter().zip(&n.values) {
                            assert!(near(*x, *y), "{what}: {} {x} vs {y}", m.name);
                        }
                    }
                    for (g, h) in a.grads.iter().zip(&b.grads) {
                        for (part, x, y) in
                            [("x", &g.x, &h.x), ("w", &g.w, &h.w), ("b", &g.b, &h.b)]
                        {
                            let (Some(x), Some(y)) = (x, y) else { continue };
                            let (x, y) = (x.to_f32(), y.to_f32());
                            let scale = y.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
                            for (i, (p, q)) in x.iter().zip(&y).enumerate() {
                                assert!(
                                    (p - q).abs() <= 1e-5 * scale + 1e-5 * q.abs(),
                                    "{what}: d{}.{part}[{i}] {p} vs {q}",
                                    g.head
                                );
                            }
                        }
                        // Every ignored row's dx is exactly zero, skipped or computed.
                        if let Some(dx) = &g.x {
                            let hh = dx.len() / (shape.s * shape.t);
                            let dx = dx.to_f32();
                            for (r, &t) in d.t.iter().enumerate() {
                                if t == ignore {
                                    assert!(dx[r * hh..(r + 1) * hh].iter().all(|&v| v == 0.0));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    assert!(runs >= 30, "{runs}");
}
