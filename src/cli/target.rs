//! The loss a subcommand names: a built-in (with `--variant` selecting the specialisation) or
//! a `.lir` file, taken through the [`Pipeline`].

use super::{Target, split_kv};
use crate::loss::ChunkedLoss;
use crate::runtime::Error as RtError;
use crate::runtime::Pipeline;
use crate::{Error, ParamSet, Strategy};

pub(crate) fn dtype_of(s: &str) -> Result<liger_ir::emit::GemmDType, Error> {
    use liger_ir::emit::GemmDType;
    GemmDType::from_name(s).ok_or_else(|| Error::BadVariant {
        param: "--dtype".into(),
        value: s.into(),
        allowed: "bf16, f16, f32".into(),
    })
}

pub(crate) fn strategy_of(s: &Option<String>) -> Result<Option<Strategy>, Error> {
    match s.as_deref() {
        None | Some("auto") => Ok(None),
        Some(x) => Strategy::from_name(x)
            .map(Some)
            .ok_or_else(|| Error::BadVariant {
                param: "--schedule".into(),
                value: x.into(),
                allowed: "auto, fused, group-aligned, deferred, two-pass".into(),
            }),
    }
}

/// The specialisations of a built-in loss the `--variant` flags allow: variants at the given
/// values (defaults elsewhere), optional inputs as given (`name=present|absent`) or either way
/// when not given; refused specialisations left out. A loss's run uses one of these, whatever
/// inputs it is given.
fn matching_specs(
    loss: &dyn ChunkedLoss,
    variants: &[String],
) -> Result<Vec<&'static crate::SpecInfo>, Error> {
    let mut ps = ParamSet::new();
    let mut presence: Vec<(String, String)> = Vec::new();
    for kv in variants {
        let (k, v) = split_kv(kv)?;
        match loss.param(k) {
            Some(p) if p.kind.is_input() && p.optional => {
                if v != "present" && v != "absent" {
                    return Err(Error::BadVariant {
                        param: k.into(),
                        value: v.into(),
                        allowed: "present, absent".into(),
                    });
                }
                presence.push((k.into(), v.into()));
            }
            _ => ps.set_str(loss, k, v)?,
        }
    }
    let resolved = ps.resolve(loss)?;
    let matching: Vec<&'static crate::SpecInfo> = loss
        .specializations()
        .iter()
        .filter(|s| {
            s.choices.iter().all(|(k, v)| {
                let Some(p) = loss.param(k) else { return false };
                if p.kind.is_variant() {
                    resolved.variant(k) == Some(*v)
                } else {
                    presence
                        .iter()
                        .find(|(n, _)| n == k)
                        .is_none_or(|(_, want)| want == v)
                }
            })
        })
        .collect();
    let specs: Vec<&'static crate::SpecInfo> = matching
        .iter()
        .copied()
        .filter(|s| s.ir.is_some())
        .collect();
    match (specs.is_empty(), matching.first()) {
        (false, _) => Ok(specs),
        (true, Some(refused)) => Err(Error::Refused {
            loss: loss.name().into(),
            spec: refused.describe(),
            input: refused.refused.unwrap_or("?"),
        }),
        (true, None) => Err(crate::runtime::Error::Internal(format!(
            "no specialisation of `{}` matches {}",
            loss.name(),
            variants.join(", ")
        ))
        .into()),
    }
}

/// The one specialisation for commands that show a single one: the matching specialisation
/// with the fewest optional inputs present (then the loss's table order).
fn select_spec(
    loss: &dyn ChunkedLoss,
    variants: &[String],
) -> Result<&'static crate::SpecInfo, Error> {
    let specs = matching_specs(loss, variants)?;
    let present = |s: &crate::SpecInfo| s.choices.iter().filter(|(_, v)| *v == "present").count();
    specs
        .into_iter()
        .min_by_key(|s| present(s))
        .ok_or_else(|| crate::runtime::Error::Internal("no specialisation".into()).into())
}

/// What a subcommand's loss argument names.
pub(crate) enum Loaded {
    /// A built-in loss and the specialisation the `--variant` flags select.
    Builtin(&'static dyn ChunkedLoss, &'static crate::SpecInfo),
    /// A verified `.lir` file.
    File(liger_ir::LossFn),
}

pub(crate) fn load_target(t: &Target) -> Result<Loaded, Error> {
    if t.target.ends_with(".lir") {
        let text = std::fs::read_to_string(&t.target).map_err(|e| Error::File {
            path: t.target.clone(),
            why: e.to_string(),
        })?;
        let (f, map) = liger_ir::text::parse_mapped(&text).map_err(|d| Error::File {
            path: t.target.clone(),
            why: format!(
                "does not parse:\n{}",
                liger_ir::text::render_excerpt(&text, &Default::default(), &d.0, 20)
            ),
        })?;
        liger_ir::verify(&f).map_err(|d| Error::File {
            path: t.target.clone(),
            why: format!(
                "does not verify:\n{}",
                liger_ir::text::render_excerpt(&text, &map, &d.0, 20)
            ),
        })?;
        return Ok(Loaded::File(f));
    }
    let loss = crate::losses::by_name(&t.target)?;
    Ok(Loaded::Builtin(loss, select_spec(loss, &t.variants)?))
}

/// Every pipeline a run of the loss `t` names may use (see [`matching_specs`]), each with a
/// label for messages (`dpo [loss_type=Hinge, …]`).
pub(crate) fn pipelines_of(t: &Target) -> Result<Vec<(Pipeline, String)>, Error> {
    if t.target.ends_with(".lir") {
        return Ok(vec![pipeline_of(t)?]);
    }
    let loss = crate::losses::by_name(&t.target)?;
    matching_specs(loss, &t.variants)?
        .into_iter()
        .map(|spec| {
            Ok((
                crate::pipeline(loss, spec)?,
                format!("{} [{}]", loss.name(), spec.describe()),
            ))
        })
        .collect()
}

/// The pipeline of the loss `t` names, with a label for messages (`dpo [loss_type=Hinge]`).
pub(crate) fn pipeline_of(t: &Target) -> Result<(Pipeline, String), Error> {
    match load_target(t)? {
        Loaded::Builtin(loss, spec) => Ok((
            crate::pipeline(loss, spec)?,
            format!("{} [{}]", loss.name(), spec.describe()),
        )),
        Loaded::File(f) => {
            let p = Pipeline::new(f).map_err(|d| Error::File {
                path: t.target.clone(),
                why: d.to_string(),
            })?;
            Ok((p, t.target.clone()))
        }
    }
}

/// The strategy `--schedule` asks for, checked against the loss (default: the first
/// candidate).
pub(crate) fn strategy_for(p: &Pipeline, t: &Target) -> Result<Strategy, Error> {
    let force = strategy_of(&t.schedule)?;
    p.strategy(force).map_err(|why| {
        RtError::Schedule {
            schedule: force.map_or("?", Strategy::name),
            why,
        }
        .into()
    })
}
