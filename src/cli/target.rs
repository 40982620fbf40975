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
    let (ps, presence) = split_variants(loss, variants)?;
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

/// The `--variant name=value` flags, one rule for every subcommand: variants into a
/// [`ParamSet`], an optional input's presence (`name=present|absent`) apart; a hyperparameter
/// is refused (it goes with `--param`).
pub(crate) fn split_variants(
    loss: &dyn ChunkedLoss,
    variants: &[String],
) -> Result<(ParamSet, Vec<(String, String)>), Error> {
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
            Some(p) if p.kind == crate::ParamKind::Hyper => {
                return Err(Error::ParamKind {
                    loss: loss.name().into(),
                    name: k.into(),
                    kind: "a hyperparameter",
                    hint: "pass it with --param",
                });
            }
            _ => ps.set_str(loss, k, v)?,
        }
    }
    Ok((ps, presence))
}

/// The loss a subcommand names: a built-in by `name`, or with `file` the fn `func` (else
/// `name`, else the only one) of that loss file, compiled at run time.
pub(crate) fn resolve(
    name: Option<&str>,
    file: Option<&str>,
    func: Option<&str>,
) -> Result<&'static dyn ChunkedLoss, Error> {
    match (file, name, func) {
        (Some(path), n, f) => {
            if let (Some(n), Some(f)) = (n, f)
                && n != f
            {
                return Err(Error::File {
                    path: path.into(),
                    why: format!("two loss names given: `{n}` and `--fn {f}`; give one"),
                });
            }
            let losses = crate::compile_loss_file(path)?;
            let l = *crate::pick_loss(&losses, f.or(n), path)?;
            Ok(Box::leak(Box::new(l)))
        }
        (None, Some(n), None) => crate::losses::by_name(n),
        (None, _, Some(_)) => Err(Error::Usage(
            "`--fn NAME` picks a fn of a loss file: give the file with --loss FILE".into(),
        )),
        (None, None, None) => Err(Error::Usage(
            "no loss given: name a built-in loss (`liger losses` lists them) or a loss file with --loss FILE".into(),
        )),
    }
}

impl Target {
    /// The `.lir` file the target names, if it names one.
    fn lir(&self) -> Option<&str> {
        self.target
            .as_deref()
            .filter(|t| self.loss_file.is_none() && t.ends_with(".lir"))
    }

    /// The loss the target names (a built-in, or a fn of the loss file).
    fn loss(&self) -> Result<&'static dyn ChunkedLoss, Error> {
        resolve(
            self.target.as_deref(),
            self.loss_file.as_deref(),
            self.func.as_deref(),
        )
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
    if let Some(path) = t.lir() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.into(),
            why: e.to_string(),
        })?;
        let (f, map) = liger_ir::text::parse_mapped(&text).map_err(|d| Error::File {
            path: path.into(),
            why: format!(
                "does not parse:\n{}",
                liger_ir::text::render_excerpt(&text, &Default::default(), &d.0, 20)
            ),
        })?;
        liger_ir::verify(&f).map_err(|d| Error::File {
            path: path.into(),
            why: format!(
                "does not verify:\n{}",
                liger_ir::text::render_excerpt(&text, &map, &d.0, 20)
            ),
        })?;
        return Ok(Loaded::File(f));
    }
    let loss = t.loss()?;
    Ok(Loaded::Builtin(loss, select_spec(loss, &t.variants)?))
}

/// Every pipeline a run of the loss `t` names may use (see [`matching_specs`]), each with a
/// label for messages (`dpo [loss_type=Hinge, …]`).
pub(crate) fn pipelines_of(t: &Target) -> Result<Vec<(Pipeline, String)>, Error> {
    if t.lir().is_some() {
        return Ok(vec![pipeline_of(t)?]);
    }
    let loss = t.loss()?;
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
            let path = t.lir().unwrap_or_default().to_string();
            let p = Pipeline::new(f).map_err(|d| Error::File {
                path: path.clone(),
                why: d.to_string(),
            })?;
            Ok((p, path))
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
