//! One `#[chunked_loss]` fn through the front-end: its signature, its variant enums, every
//! specialisation (variant values x optional-input presence) lowered to verified IR. Both
//! doors call this: the proc macro at compile time and a loss file read at run time, so they
//! give the same IR and the same diagnostics.

use syn::ItemFn;

use crate::errors::Errors;
use crate::lower::{self, Choice, Ctx, Outcome, Spec};
use crate::sig::{self, Kind, Sig};
use crate::variants::{self, Enums};

/// The most specialisations one loss may have.
pub const MAX_SPECS: usize = 1024;

/// A fn through the front-end.
pub struct Compiled {
    /// The analysed signature.
    pub sig: Sig,
    /// The variants of each enum parameter.
    pub enums: Enums,
    /// Every specialisation with its outcome (empty when the signature has errors).
    pub lowered: Vec<(Spec, Outcome)>,
    /// Whether no error was recorded.
    pub ok: bool,
}

/// Every `when(variant = Value)` of a `#[range]` names a variant parameter and one of its
/// values.
fn check_range_conditions(sig: &Sig, enums: &Enums, errs: &mut Errors) {
    for p in &sig.params {
        for r in &p.ranges {
            let Some((name, value)) = &r.when else {
                continue;
            };
            let target = sig
                .params
                .iter()
                .enumerate()
                .find(|(_, q)| q.ident == *name);
            let (ok, values) = match target {
                Some((_, q)) if matches!(q.kind, Kind::Flag) => (
                    value == "true" || value == "false",
                    "true, false".to_string(),
                ),
                Some((i, q)) if matches!(q.kind, Kind::Enum(_)) => {
                    let vs = enums.get(&i).map(|v| v.as_slice()).unwrap_or(&[]);
                    let names: Vec<String> = vs.iter().map(ToString::to_string).collect();
                    (vs.iter().any(|x| x == value), names.join(", "))
                }
                Some(_) => {
                    errs.push(
                        name.span(),
                        format!("`{name}` is not a `#[variant]` parameter: `when` takes a variant"),
                    );
                    continue;
                }
                None => {
                    errs.push(
                        name.span(),
                        format!("no parameter `{name}` to condition on"),
                    );
                    continue;
                }
            };
            if !ok {
                errs.push(
                    value.span(),
                    format!("`{value}` is not a value of `{name}` ({values})"),
                );
            }
        }
    }
}

/// Compiles `item` with the helpers and file of `ctx`, recording every error in `errs`.
pub fn compile_fn(item: &ItemFn, ctx: Ctx<'_>, errs: &mut Errors) -> Compiled {
    let before = errs.len();
    let sig = sig::analyze(item, errs);
    let enums = variants::find(&sig, errs);
    check_range_conditions(&sig, &enums, errs);

    // Every combination of variant values and optional-input presence.
    let mut specs: Vec<Spec> = vec![Spec { choices: vec![] }];
    for (i, p) in sig.params.iter().enumerate() {
        let options: Vec<Choice> = match &p.kind {
            Kind::Flag => vec![Choice::Flag(false), Choice::Flag(true)],
            Kind::Enum(_) => (0..enums.get(&i).map_or(0, Vec::len))
                .map(Choice::Arm)
                .collect(),
            Kind::Input(_) if p.optional => vec![Choice::Present(true), Choice::Present(false)],
            _ => continue,
        };
        if options.is_empty() {
            continue;
        }
        specs = specs
            .into_iter()
            .flat_map(|s| {
                options.iter().map(move |c| {
                    let mut s = s.clone();
                    s.choices.push((i, *c));
                    s
                })
            })
            .collect();
        if specs.len() > MAX_SPECS {
            errs.push(
                sig.ident.span(),
                format!("this loss has more than {MAX_SPECS} specialisations (variants x optional inputs); turn some flags into f32 hyperparameters used with select(…)"),
            );
            specs.truncate(1);
            break;
        }
    }

    let mut lowered = Vec::new();
    if errs.len() == before {
        for spec in specs {
            let outcome = lower::lower(&sig, &enums, &spec, ctx, errs);
            lowered.push((spec, outcome));
        }
        if errs.len() == before
            && lowered
                .iter()
                .all(|(_, o)| matches!(o, Outcome::Refused(_)))
        {
            errs.push(
                sig.ident.span(),
                "every specialisation unwraps an absent input: give each optional input an `if let Some(x) = …` fallback",
            );
        }
    }
    if errs.len() == before {
        check_required_inputs_used(&sig, &enums, &lowered, errs);
    }
    let ok = errs.len() == before;
    Compiled {
        sig,
        enums,
        lowered,
        ok,
    }
}

/// A required (non-`Option`) input must be read by every specialisation that runs: one that
/// ignores it could be neither run (the input is required) nor given it (an input given but not
/// used is refused). The fix is to make it `Option<…>`.
fn check_required_inputs_used(
    sig: &Sig,
    enums: &Enums,
    lowered: &[(Spec, Outcome)],
    errs: &mut Errors,
) {
    let mut reported = std::collections::BTreeSet::new();
    for (spec, outcome) in lowered {
        let Outcome::Ir(f) = outcome else { continue };
        let uses = f.use_counts();
        for p in sig
            .params
            .iter()
            .filter(|p| matches!(p.kind, Kind::Input(_)) && !p.optional)
        {
            let name = p.ident.to_string();
            let used = f
                .input_by_name(&name)
                .and_then(|id| f.input_node(id))
                .is_some_and(|v| uses[v.index()] > 0);
            if !used && reported.insert(name.clone()) {
                let when: Vec<String> = spec
                    .choices
                    .iter()
                    .map(|(i, c)| {
                        let q = &sig.params[*i];
                        let v = match c {
                            Choice::Flag(b) => b.to_string(),
                            Choice::Arm(a) => enums
                                .get(i)
                                .and_then(|v| v.get(*a))
                                .map(ToString::to_string)
                                .unwrap_or_default(),
                            Choice::Present(true) => "present".into(),
                            Choice::Present(false) => "absent".into(),
                        };
                        format!("{}={v}", q.ident)
                    })
                    .collect();
                errs.push(
                    p.ident.span(),
                    format!(
                        "input `{name}` is not used when {}: a required input must be used by every specialisation; make it `Option<{}>` and use it with `if let Some(x) = {name}` where it applies",
                        if when.is_empty() { "the loss runs".to_string() } else { when.join(", ") },
                        p.type_text
                    ),
                );
            }
        }
    }
}
