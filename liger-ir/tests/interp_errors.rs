//! The interpreter's typed errors and warnings: bad input is named, never a panic or a NaN.

use liger_ir::interp::{EvalError, EvalWarning};
use liger_ir::{HostBatch, HostInput, evaluate, parse};

const DPO: &str = include_str!("losses/dpo.lir");

fn mean_lp() -> liger_ir::LossFn {
    parse(
        "; liger-ir v1\nloss ce {\n  input z: logits\n  input t: target\n  m = valid t\n  lp = logprob z, t\n  s = seq_mean lp, m\n  x = mean s\n  loss = x\n}\n",
    )
    .expect("parses")
}

fn batch(s: usize, t: usize, v: usize) -> HostBatch {
    let z: Vec<f64> = (0..s * t * v).map(|i| (i as f64 * 0.37).sin()).collect();
    let ids: Vec<i64> = (0..s * t).map(|i| (i % v.max(1)) as i64).collect();
    HostBatch::new(s, t, v)
        .with("z", HostInput::Logits(z))
        .with("t", HostInput::Ids(ids))
}

#[test]
fn shape_mismatch_names_the_input() {
    let mut b = batch(2, 3, 5);
    b.inputs.insert("z".into(), HostInput::Logits(vec![0.5; 7]));
    match evaluate(&mean_lp(), &b) {
        Err(EvalError::ShapeMismatch {
            name,
            got: 7,
            expected,
        }) => {
            assert_eq!(name, "z");
            assert!(expected.contains("[2,3,5] = 30"), "{expected}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn target_out_of_range_is_located() {
    for (ignore, bad) in [(-100, 5), (-100, -1), (42, -100), (42, 7)] {
        let mut b = batch(2, 3, 5);
        b.ignore_index = ignore;
        let mut ids: Vec<i64> = vec![1; 6];
        ids[4] = bad;
        b.inputs.insert("t".into(), HostInput::Ids(ids));
        match evaluate(&mean_lp(), &b) {
            Err(EvalError::TargetOutOfRange {
                seq: 1,
                pos: 1,
                value,
                vocab: 5,
                ..
            }) => {
                assert_eq!(value, bad)
            }
            other => panic!("ignore {ignore}, id {bad}: {other:?}"),
        }
    }
}

#[test]
fn ignore_index_42_is_a_value_not_a_sign() {
    let mut b = batch(2, 3, 50);
    b.ignore_index = 42;
    let mut ids: Vec<i64> = vec![3; 6];
    ids[1] = 42;
    b.inputs.insert("t".into(), HostInput::Ids(ids.clone()));
    let with_42_ignored = evaluate(&mean_lp(), &b).expect("evaluates").loss;
    b.ignore_index = -100;
    let with_42_as_token = evaluate(&mean_lp(), &b).expect("evaluates").loss;
    assert_ne!(with_42_ignored, with_42_as_token);
    assert!(with_42_ignored.is_finite() && with_42_as_token.is_finite());
}

#[test]
fn non_finite_inputs_are_refused() {
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut b = batch(2, 3, 5);
        let mut z = vec![0.1; 30];
        z[17] = bad;
        b.inputs.insert("z".into(), HostInput::Logits(z));
        match evaluate(&mean_lp(), &b) {
            Err(EvalError::NonFinite {
                name, index: 17, ..
            }) => assert_eq!(name, "z"),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn empty_batch_is_refused() {
    for (s, t, v) in [(0, 3, 5), (2, 0, 5), (2, 3, 0)] {
        assert!(matches!(
            evaluate(&mean_lp(), &batch(s, t, v)),
            Err(EvalError::EmptyBatch { .. })
        ));
    }
}

#[test]
fn seq_mean_of_a_sequence_with_no_valid_row_is_an_error() {
    let mut b = batch(2, 3, 5);
    b.inputs
        .insert("t".into(), HostInput::Ids(vec![1, 2, 3, -100, -100, -100]));
    assert_eq!(
        evaluate(&mean_lp(), &b),
        Err(EvalError::EmptySequence { seq: 1 })
    );
}

#[test]
fn mean_over_no_rows_is_zero_with_a_warning() {
    let f = parse(
        "; liger-ir v1\nloss ce {\n  input z: logits\n  input t: target\n  m = valid t\n  lp = logprob z, t\n  x = mean lp, m\n  loss = x\n}\n",
    )
    .expect("parses");
    let mut b = batch(2, 3, 5);
    b.inputs.insert("t".into(), HostInput::Ids(vec![-100; 6]));
    let e = evaluate(&f, &b).expect("evaluates");
    assert_eq!(e.loss, 0.0);
    assert!(matches!(
        e.warnings.as_slice(),
        [EvalWarning::MeanOverNoRows { .. }]
    ));
    let g = liger_ir::pipeline_of(&liger_ir::print(&f))
        .expect("differentiates")
        .grad()
        .clone();
    let e = evaluate(&g, &b).expect("evaluates");
    assert!(
        e.grad("z").expect("grad").iter().all(|x| *x == 0.0),
        "no gradient"
    );
}

#[test]
fn masked_seq_sum_over_no_rows_is_zero_with_a_warning() {
    let f = parse(
        "; liger-ir v1\nloss s {\n  input z: logits\n  input t: target\n  m = valid t\n  lp = logprob z, t\n  x = seq_sum lp, m\n  y = mean x\n  loss = y\n}\n",
    )
    .expect("parses");
    let mut b = batch(3, 2, 5);
    b.inputs.insert(
        "t".into(),
        HostInput::Ids(vec![1, 2, -100, -100, -100, -100]),
    );
    let e = evaluate(&f, &b).expect("evaluates");
    assert!(
        matches!(
            e.warnings.as_slice(),
            [EvalWarning::EmptySeqSum { seq: 1, .. }]
        ),
        "{:?}",
        e.warnings
    );
    b.inputs
        .insert("t".into(), HostInput::Ids(vec![1, 2, 3, -100, 0, 4]));
    assert!(evaluate(&f, &b).expect("evaluates").warnings.is_empty());
}

#[test]
fn odd_sequence_count_for_a_paired_loss() {
    let f = parse(DPO).expect("parses");
    let z: Vec<f64> = (0..3 * 2 * 4).map(|i| (i as f64).cos()).collect();
    let b = HostBatch::new(3, 2, 4)
        .with("policy", HostInput::Logits(z.clone()))
        .with("reference", HostInput::Logits(z))
        .with("target", HostInput::Ids(vec![1; 6]))
        .with("beta", HostInput::Scalar(0.1));
    assert_eq!(
        evaluate(&f, &b),
        Err(EvalError::OddSequenceCount { num_seqs: 3 })
    );
}

#[test]
fn missing_unknown_and_mistyped_inputs() {
    let f = mean_lp();
    let mut b = batch(2, 3, 5);
    b.inputs.remove("t");
    assert!(matches!(evaluate(&f, &b), Err(EvalError::MissingInput { name, .. }) if name == "t"));
    let b = batch(2, 3, 5).with("tt", HostInput::Scalar(1.0));
    assert!(matches!(evaluate(&f, &b), Err(EvalError::UnknownInput { name, .. }) if name == "tt"));
    let b = batch(2, 3, 5).with("t", HostInput::Floats(vec![0.0; 6]));
    assert!(matches!(evaluate(&f, &b), Err(EvalError::WrongInputType { name, .. }) if name == "t"));
}

#[test]
fn invalid_ir_is_refused_with_its_diagnostics() {
    let f = parse("; liger-ir v1\nloss bad {\n  input z: logits\n  input t: target\n  lp = logprob z, t\n  c = chosen lp\n  loss = c\n}\n")
        .expect("parses");
    match evaluate(&f, &batch(2, 3, 5)) {
        Err(EvalError::InvalidIr(d)) => assert!(d.has(liger_ir::DiagKind::LevelMisuse)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn errors_display_what_to_fix() {
    let e = EvalError::EmptySequence { seq: 3 };
    assert!(e.to_string().contains("sequence 3") && e.to_string().contains("seq_mean_or_zero"));
    let e = EvalError::OddSequenceCount { num_seqs: 5 };
    assert!(e.to_string().contains("5 sequences"));
}
