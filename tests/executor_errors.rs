//! Bad input to the executor gives a typed error naming the problem, never a panic or a
//! silent NaN. Each case is its own test.

mod common;

use common::*;
use liger::prelude::*;
use liger::runtime::Error as RtError;
use liger::{Error, RunOptions, Runtime};

struct Batch {
    s: usize,
    t: usize,
    h: usize,
    v: usize,
    x: Vec<f32>,
    w: Vec<f32>,
    tg: Vec<i64>,
}

fn batch(s: usize, t: usize) -> Batch {
    let (h, v) = (8, 17);
    let mut rng = fastrand::Rng::with_seed(9);
    Batch {
        s,
        t,
        h,
        v,
        x: randn(&mut rng, s * t * h, 1.0),
        w: randn(&mut rng, v * h, 0.5),
        tg: targets(&mut rng, s, t, v, -100),
    }
}

impl Batch {
    fn head(&self) -> Head<'_> {
        Head::new(
            TensorView::new(&self.x, &[self.s, self.t, self.h]).expect("x"),
            TensorView::new(&self.w, &[self.v, self.h]).expect("w"),
        )
    }
    fn dpo(&self) -> InputSet<'_> {
        InputSet::new()
            .head("policy", self.head())
            .head("reference", self.head())
            .tensor(
                "target",
                TensorView::new(&self.tg, &[self.s, self.t]).expect("t"),
            )
    }
    fn flce(&self) -> InputSet<'_> {
        InputSet::new().head("logits", self.head()).tensor(
            "target",
            TensorView::new(&self.tg, &[self.s, self.t]).expect("t"),
        )
    }
}

fn run(
    loss: &dyn liger::ChunkedLoss,
    set: &InputSet<'_>,
    params: &ParamSet,
) -> Result<liger::LossOutput, Error> {
    liger::run(loss, &Runtime::cpu(), set, params, &RunOptions::default())
}

#[test]
fn shape_mismatch_names_the_tensor() {
    let b = batch(2, 5);
    let w2 = vec![0.5f32; 17 * 7];
    let set = InputSet::new()
        .head(
            "logits",
            Head::new(
                TensorView::new(&b.x, &[2, 5, 8]).expect("x"),
                TensorView::new(&w2, &[17, 7]).expect("w"),
            ),
        )
        .tensor("target", TensorView::new(&b.tg, &[2, 5]).expect("t"));
    match run(&Flce, &set, &ParamSet::new()) {
        Err(Error::Runtime(RtError::Shape { input, got, .. })) => {
            assert_eq!((input.as_str(), got), ("logits.w", vec![17, 7]))
        }
        other => panic!("{other:?}"),
    }
    let set = InputSet::new()
        .head("logits", b.head())
        .tensor("target", TensorView::new(&b.tg, &[5, 2]).expect("t"));
    assert!(
        matches!(run(&Flce, &set, &ParamSet::new()), Err(Error::Runtime(RtError::Shape { input, .. })) if input == "target")
    );
}

#[test]
fn target_outside_the_vocabulary_is_located() {
    let mut b = batch(2, 5);
    b.tg[7] = 17;
    match run(&Flce, &b.flce(), &ParamSet::new()) {
        Err(Error::Runtime(RtError::TargetOutOfRange {
            seq: 1,
            pos: 2,
            value: 17,
            vocab: 17,
            ..
        })) => {}
        other => panic!("{other:?}"),
    }
    b.tg[7] = -1;
    assert!(matches!(
        run(&Flce, &b.flce(), &ParamSet::new()),
        Err(Error::Runtime(RtError::TargetOutOfRange { value: -1, .. }))
    ));
}

#[test]
fn ignore_index_42_is_honoured_and_minus_100_then_refused() {
    let mut b = batch(2, 5);
    for x in b.tg.iter_mut().filter(|x| **x == -100) {
        *x = 42;
    }
    b.tg[3] = 42;
    let opts = RunOptions {
        ignore_index: 42,
        ..RunOptions::default()
    };
    liger::run(&Flce, &Runtime::cpu(), &b.flce(), &ParamSet::new(), &opts)
        .expect("42 is the ignore index");
    // With the default ignore index, 42 is a token id outside V = 17.
    assert!(matches!(
        run(&Flce, &b.flce(), &ParamSet::new()),
        Err(Error::Runtime(RtError::TargetOutOfRange { value: 42, .. }))
    ));
}

#[test]
fn odd_sequence_count_for_a_paired_loss() {
    let b = batch(3, 4);
    assert!(matches!(
        run(&Dpo, &b.dpo(), &ParamSet::new()),
        Err(Error::Runtime(RtError::OddSequenceCount { num_seqs: 3 }))
    ));
}

#[test]
fn sequence_without_valid_token_under_seq_mean() {
    let mut b = batch(2, 4);
    for r in 4..8 {
        b.tg[r] = -100;
    }
    let params = ParamSet::new().variant("average", "true");
    assert!(matches!(
        run(&Dpo, &b.dpo(), &params),
        Err(Error::Runtime(RtError::EmptySequence { seq: 1 }))
    ));
    // Summed log-probs allow it, with a warning naming the first such sequence.
    let out = run(&Dpo, &b.dpo(), &ParamSet::new()).expect("seq_sum of no row is 0");
    assert_eq!(out.report.warnings.len(), 1, "{:?}", out.report.warnings);
    assert!(
        out.report.warnings[0].starts_with("sequence 1 has no valid row"),
        "{:?}",
        out.report.warnings
    );
}

#[test]
fn batch_without_any_valid_token_warns_for_every_reduction_policy() {
    let mut b = batch(2, 4);
    b.tg.iter_mut().for_each(|t| *t = -100);
    // DPO: seq_sum of nothing is 0 for both sides, so the loss is log 2: said, not silent.
    let out = run(&Dpo, &b.dpo(), &ParamSet::new()).expect("runs");
    assert!(
        (out.loss - std::f32::consts::LN_2).abs() < 1e-6,
        "{}",
        out.loss
    );
    assert!(
        out.report
            .warnings
            .iter()
            .any(|w| w.starts_with("sequence 0 has no valid row")),
        "{:?}",
        out.report.warnings
    );
    // FLCE: a row-level mean over no row is 0 with a warning.
    let out = run(&Flce, &b.flce(), &ParamSet::new()).expect("runs");
    assert_eq!(out.loss, 0.0);
    assert!(
        out.report
            .warnings
            .iter()
            .any(|w| w.contains("row-level mean selects no row")),
        "{:?}",
        out.report.warnings
    );
    // Every valid: no warning.
    let b = batch(2, 4);
    let mut full = b.tg.clone();
    full.iter_mut().for_each(|t| *t = t.rem_euclid(17));
    let set = InputSet::new()
        .head("policy", b.head())
        .head("reference", b.head())
        .tensor("target", TensorView::new(&full, &[2, 4]).expect("t"));
    let out = run(&Dpo, &set, &ParamSet::new()).expect("runs");
    assert!(out.report.warnings.is_empty(), "{:?}", out.report.warnings);
}

#[test]
fn an_input_given_but_not_used_is_refused_naming_both() {
    let b = batch(2, 4);
    let ref_logps = vec![-3.0f32, -4.0];
    let set = b
        .dpo()
        .tensor("ref_logps", TensorView::new(&ref_logps, &[2]).expect("r"));
    match run(&Dpo, &set, &ParamSet::new()) {
        Err(Error::UnusedInput { name, instead, .. }) => {
            assert_eq!(name, "ref_logps");
            assert!(instead.contains("`reference`"), "{instead}");
        }
        other => panic!("{other:?}"),
    }
    // The f64 reference path refuses it the same way.
    assert!(matches!(
        liger::reference::evaluate(&Dpo, &set, &ParamSet::new(), -100),
        Err(Error::UnusedInput { .. })
    ));
    // Either alone is fine.
    let only_logps = InputSet::new()
        .head("policy", b.head())
        .tensor("target", TensorView::new(&b.tg, &[2, 4]).expect("t"))
        .tensor("ref_logps", TensorView::new(&ref_logps, &[2]).expect("r"));
    run(&Dpo, &only_logps, &ParamSet::new()).expect("ref_logps alone");
    run(&Dpo, &b.dpo(), &ParamSet::new()).expect("reference alone");
}

#[test]
fn results_that_overflow_f32_are_refused() {
    // Every input finite, but x·Wᵀ = 8 · 3e38² overflows f32.
    let mut b = batch(2, 4);
    b.x.iter_mut().for_each(|v| *v = 3e38);
    b.w.iter_mut().for_each(|v| *v = 3e38);
    match run(&Flce, &b.flce(), &ParamSet::new()) {
        Err(Error::Runtime(RtError::NonFiniteResult { what, .. })) => {
            assert!(!what.is_empty())
        }
        other => panic!("{other:?}"),
    }
    // f64 inputs finite in f64 but not in f32 are refused as inputs, naming the tensor.
    let b = batch(2, 4);
    let mut x64: Vec<f64> = b.x.iter().map(|&v| f64::from(v)).collect();
    x64[6] = 1e300;
    let w64: Vec<f64> = b.w.iter().map(|&v| f64::from(v)).collect();
    let set = InputSet::new()
        .head(
            "logits",
            Head::new(
                TensorView::new(&x64, &[2, 4, 8]).expect("x"),
                TensorView::new(&w64, &[17, 8]).expect("w"),
            ),
        )
        .tensor("target", TensorView::new(&b.tg, &[2, 4]).expect("t"));
    match run(&Flce, &set, &ParamSet::new()) {
        Err(Error::Runtime(RtError::NonFinite { input, index, .. })) => {
            assert_eq!((input.as_str(), index), ("logits.x", 6))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_inputs_are_refused() {
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut b = batch(2, 4);
        b.x[5] = bad;
        match run(&Flce, &b.flce(), &ParamSet::new()) {
            Err(Error::Runtime(RtError::NonFinite {
                input, index: 5, ..
            })) => assert_eq!(input, "logits.x"),
            other => panic!("{other:?}"),
        }
        let mut b = batch(2, 4);
        b.w[3] = bad;
        assert!(
            matches!(run(&Flce, &b.flce(), &ParamSet::new()), Err(Error::Runtime(RtError::NonFinite { input, .. })) if input == "logits.w")
        );
    }
}

#[test]
fn empty_batch_is_refused() {
    let b = batch(2, 4);
    let empty: Vec<f32> = Vec::new();
    let tg: Vec<i64> = Vec::new();
    let set = InputSet::new()
        .head(
            "logits",
            Head::new(
                TensorView::new(&empty, &[0, 4, 8]).expect("x"),
                TensorView::new(&b.w, &[17, 8]).expect("w"),
            ),
        )
        .tensor("target", TensorView::new(&tg, &[0, 4]).expect("t"));
    assert!(matches!(
        run(&Flce, &set, &ParamSet::new()),
        Err(Error::Runtime(RtError::EmptyBatch { .. }))
    ));
}

#[test]
fn missing_optional_input_refuses_the_specialisation() {
    let b = batch(2, 4);
    let set = InputSet::new()
        .head("policy", b.head())
        .tensor("target", TensorView::new(&b.tg, &[2, 4]).expect("t"));
    match run(&Dpo, &set, &ParamSet::new()) {
        Err(Error::Refused {
            input: "ref_logps", ..
        }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_required_input_and_unknown_input() {
    let b = batch(2, 4);
    let set = InputSet::new().head("logits", b.head());
    assert!(
        matches!(run(&Flce, &set, &ParamSet::new()), Err(Error::Runtime(RtError::MissingInput { name, .. })) if name == "target")
    );
    let set = b
        .flce()
        .tensor("weights", TensorView::new(&b.tg, &[2, 4]).expect("t"));
    assert!(
        matches!(run(&Flce, &set, &ParamSet::new()), Err(Error::Runtime(RtError::UnknownInput { name, .. })) if name == "weights")
    );
}

#[test]
fn budget_too_small_says_what_is_needed() {
    let b = batch(2, 4);
    let opts = RunOptions {
        chunk_memory: 1000,
        ..RunOptions::default()
    };
    match liger::run(&Flce, &Runtime::cpu(), &b.flce(), &ParamSet::new(), &opts) {
        Err(Error::Runtime(e @ RtError::Budget { .. })) => {
            assert!(e.to_string().contains("RunOptions::chunk_memory"), "{e}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn gradient_dtypes_are_f32_bf16_or_f16() {
    let b = batch(2, 5);
    let opts = RunOptions {
        grad_dtypes: liger::GradDTypes {
            w: liger::DType::I64,
            ..liger::GradDTypes::default()
        },
        ..RunOptions::default()
    };
    match liger::run(&Flce, &Runtime::cpu(), &b.flce(), &ParamSet::new(), &opts) {
        Err(Error::Runtime(e @ RtError::GradDType { grad: "w", .. })) => {
            assert!(
                e.to_string().contains("`grad w` was asked for in i64"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    let f32s = liger::run(
        &Flce,
        &Runtime::cpu(),
        &b.flce(),
        &ParamSet::new(),
        &RunOptions::default(),
    )
    .expect("f32");
    let opts = RunOptions {
        grad_dtypes: liger::GradDTypes::all(liger::DType::BF16),
        ..RunOptions::default()
    };
    let bf = liger::run(&Flce, &Runtime::cpu(), &b.flce(), &ParamSet::new(), &opts).expect("bf16");
    assert_eq!(
        bf.loss.to_bits(),
        f32s.loss.to_bits(),
        "the loss does not depend on it"
    );
    let (g, g32) = (&bf.grads[0], &f32s.grads[0]);
    let (gx, gw) = (g.x.as_ref().expect("dx"), g.w.as_ref().expect("dW"));
    let (gx32, gw32) = (g32.x.as_ref().expect("dx"), g32.w.as_ref().expect("dW"));
    assert_eq!(gx.dtype(), liger::DType::BF16);
    assert_eq!(gw.dtype(), liger::DType::BF16);
    assert_eq!(
        *gx,
        liger::GradBuf::from_f32(gx32.to_f32(), liger::DType::BF16)
    );
    assert_eq!(
        *gw,
        liger::GradBuf::from_f32(gw32.to_f32(), liger::DType::BF16)
    );
    assert!(gx32.as_f32().is_some_and(|x| x.iter().any(|v| *v != 0.0)));
}

#[test]
fn gradient_dtype_specs_parse_or_say_why() {
    use liger::DType::{BF16, F16, F32};
    use liger::GradDTypes;
    assert_eq!(
        GradDTypes::parse("bf16").expect("all"),
        GradDTypes::all(BF16)
    );
    let m = GradDTypes::parse("x=f16, b=bf16").expect("mixed");
    assert_eq!((m.x, m.w, m.b), (F16, F32, BF16));
    for (bad, why) in [
        ("f8", "`f8` is not f32, bf16 or f16"),
        ("x=bf16,q=f32", "`q` is not a gradient"),
        ("x=bf16,w", "`w` is not NAME=DTYPE"),
    ] {
        let e = GradDTypes::parse(bad).expect_err(bad);
        assert!(e.to_string().contains(why), "{bad}: {e}");
    }
}
