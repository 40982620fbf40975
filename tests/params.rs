//! Parameters and inputs by name: defaults, validation, typed errors.

use liger::prelude::*;
use liger::runtime::Error as RtError;
use liger::{DefaultValue, Error, ParamKind};

#[test]
fn parameter_table_of_dpo() {
    let p = Dpo.param("beta").expect("beta");
    assert_eq!(
        (p.kind, p.default),
        (ParamKind::Hyper, DefaultValue::Float(0.1))
    );
    let lt = Dpo.param("loss_type").expect("loss_type");
    assert_eq!(lt.kind, ParamKind::VariantEnum);
    assert_eq!(
        lt.choices,
        [
            "Sigmoid", "Hinge", "Ipo", "Robust", "ExoPair", "NcaPair", "BcoPair", "SppoHard",
            "ApoZero", "ApoDown", "Discopop"
        ]
    );
    assert_eq!(lt.default, DefaultValue::Variant("Sigmoid"));
    assert!(
        Dpo.param("reference")
            .is_some_and(|p| p.optional && p.kind == ParamKind::Frozen)
    );
}

#[test]
fn resolve_fills_defaults_and_checks_names() {
    let r = ParamSet::new()
        .float("beta", 0.3)
        .variant("loss_type", "hinge")
        .resolve(&Dpo)
        .expect("valid");
    assert_eq!(r.float("beta"), Some(0.3));
    assert_eq!(r.float("label_smoothing"), Some(0.0));
    assert_eq!(r.variant("loss_type"), Some("Hinge"));
    assert_eq!(r.variant("average"), Some("false"));

    let e = ParamSet::new()
        .float("betta", 0.3)
        .resolve(&Dpo)
        .expect_err("unknown");
    assert!(
        matches!(&e, Error::UnknownParam { name, .. } if name == "betta"),
        "{e}"
    );
    let e = ParamSet::new()
        .variant("loss_type", "orpo")
        .resolve(&Dpo)
        .expect_err("bad variant");
    assert!(
        matches!(&e, Error::BadVariant { allowed, .. } if allowed.starts_with("Sigmoid, Hinge, Ipo")),
        "{e}"
    );
    let e = ParamSet::new()
        .float("average", 1.0)
        .resolve(&Dpo)
        .expect_err("wrong kind");
    assert!(matches!(e, Error::ParamKind { .. }), "{e}");
    let e = ParamSet::new()
        .float("beta", f32::NAN)
        .resolve(&Dpo)
        .expect_err("nan");
    assert!(matches!(e, Error::BadValue { .. }), "{e}");
    let mut s = ParamSet::new();
    assert!(matches!(
        s.set_str(&Dpo, "beta", "abc"),
        Err(Error::BadValue { .. })
    ));
    assert!(matches!(
        s.set_str(&Dpo, "policy", "1"),
        Err(Error::ParamKind { .. })
    ));
    s.set_str(&Dpo, "beta", "0.25").expect("number");
    s.set_str(&Dpo, "average", "true").expect("flag");
    let r = s.resolve(&Dpo).expect("valid");
    assert_eq!(
        (r.float("beta"), r.variant("average")),
        (Some(0.25), Some("true"))
    );
}

#[test]
fn enum_from_str_is_case_insensitive_and_typed() {
    assert_eq!("HINGE".parse::<DpoType>().ok(), Some(DpoType::Hinge));
    assert!(matches!(
        "orpo".parse::<DpoType>(),
        Err(Error::BadVariant { .. })
    ));
    assert_eq!(
        Reduction::ALL,
        &[Reduction::Mean, Reduction::Sum, Reduction::None]
    );
    // `None` is an arm like any other (not Rust's `Option::None`), in any case.
    assert_eq!("none".parse::<Reduction>().ok(), Some(Reduction::None));
}

#[test]
fn reference_path_input_errors() {
    let x = vec![0.5f32; 2 * 3 * 4];
    let w = vec![0.1f32; 5 * 4];
    let t = vec![1i64; 6];
    let head = || {
        Head::new(
            TensorView::new(&x, &[2, 3, 4]).expect("x"),
            TensorView::new(&w, &[5, 4]).expect("w"),
        )
    };
    let params = ParamSet::new();

    // Missing and unknown inputs.
    let inputs = InputSet::new().head("logits", head());
    assert!(matches!(
        reference::evaluate(&Flce, &inputs, &params, -100),
        Err(Error::Runtime(RtError::MissingInput { .. }))
    ));
    let inputs = InputSet::new()
        .head("logits", head())
        .tensor("target", TensorView::new(&t, &[2, 3]).expect("t"))
        .tensor("weights", TensorView::new(&t, &[2, 3]).expect("t"));
    assert!(matches!(
        reference::evaluate(&Flce, &inputs, &params, -100),
        Err(Error::Runtime(RtError::UnknownInput { .. }))
    ));

    // Shape mismatches name the tensor.
    let inputs = InputSet::new()
        .head("logits", head())
        .tensor("target", TensorView::new(&t, &[3, 2]).expect("t"));
    match reference::evaluate(&Flce, &inputs, &params, -100) {
        Err(Error::Runtime(RtError::Shape { input, .. })) => assert_eq!(input, "target"),
        other => panic!("{other:?}"),
    }
    let w2 = vec![0.1f32; 5 * 3];
    let bad = Head::new(
        TensorView::new(&x, &[2, 3, 4]).expect("x"),
        TensorView::new(&w2, &[5, 3]).expect("w"),
    );
    let inputs = InputSet::new()
        .head("logits", bad)
        .tensor("target", TensorView::new(&t, &[2, 3]).expect("t"));
    match reference::evaluate(&Flce, &inputs, &params, -100) {
        Err(Error::Runtime(RtError::Shape { input, .. })) => assert_eq!(input, "logits.w"),
        other => panic!("{other:?}"),
    }

    // Wrong dtype, target out of range, NaN.
    let tf = vec![1.0f32; 6];
    let inputs = InputSet::new()
        .head("logits", head())
        .tensor("target", TensorView::new(&tf, &[2, 3]).expect("t"));
    assert!(matches!(
        reference::evaluate(&Flce, &inputs, &params, -100),
        Err(Error::Runtime(RtError::InputDType { .. }))
    ));
    let t_bad = vec![1i64, 2, 9, 0, 0, 0];
    let inputs = InputSet::new()
        .head("logits", head())
        .tensor("target", TensorView::new(&t_bad, &[2, 3]).expect("t"));
    assert!(matches!(
        reference::evaluate(&Flce, &inputs, &params, -100),
        Err(Error::Eval(liger::ir::EvalError::TargetOutOfRange {
            value: 9,
            ..
        }))
    ));
    let mut xn = x.clone();
    xn[3] = f32::NAN;
    let nan_head = Head::new(
        TensorView::new(&xn, &[2, 3, 4]).expect("x"),
        TensorView::new(&w, &[5, 4]).expect("w"),
    );
    let inputs = InputSet::new()
        .head("logits", nan_head)
        .tensor("target", TensorView::new(&t, &[2, 3]).expect("t"));
    assert!(matches!(
        reference::evaluate(&Flce, &inputs, &params, -100),
        Err(Error::Eval(liger::ir::EvalError::NonFinite { .. }))
    ));

    // A view whose data does not fit its shape.
    assert!(matches!(
        TensorView::new(&t, &[4, 2]),
        Err(RtError::ViewShape { .. })
    ));
}

#[test]
fn losses_by_name() {
    assert_eq!(liger::losses::by_name("jsd").expect("jsd").name(), "jsd");
    let e = liger::losses::by_name("ipo").expect_err("unknown");
    assert!(
        e.to_string()
            .contains("dpo, cpo, simpo, orpo, kto, grpo, flce, jsd, kl_distill, cosine_distill"),
        "{e}"
    );
}

/// A user loss whose cap is constrained only in the variant that uses it.
#[chunked_loss]
pub fn capped_ce(
    logits: Logits,
    target: Target,
    #[variant] mode: CapMode,
    #[default(30.0)]
    #[range(gt = 0.0, when(mode = Capped))]
    #[range(le = 1000.0)]
    cap: f32,
) -> Loss {
    let z = match mode {
        CapMode::Plain => logits,
        CapMode::Capped => cap * tanh(logits / cap),
    };
    mean(-logprob(z, target))
}

fn range_error(loss: &dyn ChunkedLoss, params: ParamSet) -> Option<(String, f32, String)> {
    match params.resolve(loss) {
        Err(Error::ParamRange {
            name, value, range, ..
        }) => Some((name.to_string(), value, range)),
        Err(e) => panic!("expected a range error, got {e}"),
        Ok(_) => None,
    }
}

#[test]
fn hyperparameter_domains_are_checked_before_running() {
    // JSD: temperature > 0, 0 <= beta <= 1 (both ends allowed: they are the two KLs).
    for (name, v) in [
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("beta", -1.0),
        ("beta", 2.0),
    ] {
        let e = range_error(&Jsd, ParamSet::new().float(name, v));
        let (n, value, range) = e.unwrap_or_else(|| panic!("jsd {name}={v} accepted"));
        assert_eq!((n.as_str(), value), (name, v));
        assert!(!range.is_empty());
    }
    for (name, v) in [("temperature", 1e-3), ("beta", 0.0), ("beta", 1.0)] {
        assert_eq!(
            range_error(&Jsd, ParamSet::new().float(name, v)),
            None,
            "{name}={v}"
        );
    }
    let e = ParamSet::new()
        .float("temperature", 0.0)
        .resolve(&Jsd)
        .expect_err("temperature 0");
    let msg = e.to_string();
    assert!(
        msg.contains("temperature") && msg.contains("> 0.0"),
        "the message names the parameter and its domain: {msg}"
    );

    // FLCE: the softcap value is constrained only when softcap is on.
    let off = ParamSet::new().float("softcap_value", -1.0);
    assert_eq!(range_error(&Flce, off), None);
    let on = ParamSet::new()
        .float("softcap_value", -1.0)
        .variant("softcap", "true");
    let (_, _, range) = range_error(&Flce, on).expect("softcap on, negative cap");
    assert_eq!(range, "> 0.0 when softcap = true");
    assert!(range_error(&Flce, ParamSet::new().float("label_smoothing", 1.5)).is_some());
    assert!(range_error(&Flce, ParamSet::new().float("z_loss_scale", -1e-4)).is_some());

    // DPO: beta > 0, cDPO smoothing at most 0.5.
    assert!(range_error(&Dpo, ParamSet::new().float("beta", 0.0)).is_some());
    assert!(range_error(&Dpo, ParamSet::new().float("label_smoothing", 0.6)).is_some());

    // A user loss: a conditional range on an enum variant plus an unconditional one.
    let p = CappedCe.param("cap").expect("cap");
    assert_eq!(p.ranges.len(), 2);
    assert_eq!(
        range_error(&CappedCe, ParamSet::new().float("cap", -3.0)),
        None
    );
    let capped = || ParamSet::new().variant("mode", "capped");
    assert!(range_error(&CappedCe, capped().float("cap", -3.0)).is_some());
    assert!(range_error(&CappedCe, capped().float("cap", 2000.0)).is_some());
    assert!(range_error(&CappedCe, ParamSet::new().float("cap", 2000.0)).is_some());
    assert_eq!(range_error(&CappedCe, capped().float("cap", 5.0)), None);
}

#[test]
fn variant_names_match_in_snake_case_too() {
    assert_eq!("hinge".parse::<DpoType>().ok(), Some(DpoType::Hinge));
    assert_eq!("Capped".parse::<CapMode>().ok(), Some(CapMode::Capped));
    let r = ParamSet::new()
        .variant("mode", "CAPPED")
        .resolve(&CappedCe)
        .expect("valid");
    assert_eq!(r.variant("mode"), Some("Capped"));
    assert!(liger::params::same_choice("ExoPair", "exo_pair"));
    assert!(!liger::params::same_choice("ExoPair", "exo"));
}

/// DPO's variant-dependent domains: ExoPair needs `label_smoothing > 0`, Robust `< 0.5`, and
/// snake_case spellings of the loss types are accepted.
#[test]
fn dpo_loss_type_domains_and_spellings() {
    let e = ParamSet::new()
        .variant("loss_type", "exo_pair")
        .resolve(&Dpo)
        .expect_err("ExoPair at the default smoothing of 0");
    assert!(
        matches!(&e, Error::ParamRange { name: "label_smoothing", range, .. } if range.contains("loss_type = ExoPair")),
        "{e}"
    );
    ParamSet::new()
        .variant("loss_type", "exo_pair")
        .float("label_smoothing", 1e-3)
        .resolve(&Dpo)
        .expect("ExoPair with smoothing");
    let e = ParamSet::new()
        .variant("loss_type", "Robust")
        .float("label_smoothing", 0.5)
        .resolve(&Dpo)
        .expect_err("Robust at 0.5");
    assert!(matches!(e, Error::ParamRange { .. }), "{e}");
    ParamSet::new()
        .variant("loss_type", "Sigmoid")
        .float("label_smoothing", 0.5)
        .resolve(&Dpo)
        .expect("Sigmoid at 0.5");
    for (given, canonical) in [
        ("ipo", "Ipo"),
        ("sppo_hard", "SppoHard"),
        ("APO_ZERO", "ApoZero"),
    ] {
        let r = ParamSet::new()
            .variant("loss_type", given)
            .resolve(&Dpo)
            .expect("spelling");
        assert_eq!(r.variant("loss_type"), Some(canonical));
    }
}
