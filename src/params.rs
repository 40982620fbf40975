//! Hyperparameters and variants by name: what the generated params structs convert to and
//! what the CLI builds from flags.
//!
//! [`ParamSet::resolve`] checks every name and value against the loss's parameter table and
//! fills in defaults, so a typo or a bad variant value is an error, never silently ignored.

use std::collections::BTreeMap;

use crate::Error;
use crate::loss::{ChunkedLoss, DefaultValue, ParamKind};

/// Hyperparameter and variant values by name, as given (strings for variants).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamSet {
    floats: BTreeMap<String, f32>,
    variants: BTreeMap<String, String>,
}

impl ParamSet {
    /// An empty set (every parameter at its default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a hyperparameter.
    pub fn float(mut self, name: &str, v: f32) -> Self {
        self.floats.insert(name.into(), v);
        self
    }

    /// Sets a variant (`"true"`/`"false"` for flags, an arm name for enums).
    pub fn variant(mut self, name: &str, v: &str) -> Self {
        self.variants.insert(name.into(), v.into());
        self
    }

    /// Adds every value of `other` (its values win).
    pub fn extend(&mut self, other: ParamSet) {
        self.floats.extend(other.floats);
        self.variants.extend(other.variants);
    }

    /// Sets `name` from a string: a number for hyperparameters, a choice for variants.
    pub fn set_str(
        &mut self,
        loss: &dyn ChunkedLoss,
        name: &str,
        value: &str,
    ) -> Result<(), Error> {
        let p = loss.param(name).ok_or_else(|| unknown(loss, name))?;
        match p.kind {
            ParamKind::Hyper => {
                let v: f32 = value
                    .trim()
                    .parse()
                    .ok()
                    .filter(|v: &f32| v.is_finite())
                    .ok_or_else(|| Error::BadValue {
                        param: name.into(),
                        value: value.into(),
                    })?;
                self.floats.insert(name.into(), v);
            }
            ParamKind::VariantBool | ParamKind::VariantEnum => {
                self.variants.insert(name.into(), value.into());
            }
            _ => {
                return Err(Error::ParamKind {
                    loss: loss.name().into(),
                    name: name.into(),
                    kind: p.kind.name(),
                    hint: "it is an input, passed as a tensor",
                });
            }
        }
        Ok(())
    }

    /// Checks every name and value against `loss` and fills in defaults.
    pub fn resolve(&self, loss: &dyn ChunkedLoss) -> Result<ResolvedParams, Error> {
        let mut out = ResolvedParams::default();
        for (name, v) in &self.floats {
            let p = loss.param(name).ok_or_else(|| unknown(loss, name))?;
            if p.kind != ParamKind::Hyper {
                return Err(Error::ParamKind {
                    loss: loss.name().into(),
                    name: name.clone(),
                    kind: p.kind.name(),
                    hint: if p.kind.is_variant() {
                        "pass it as a variant"
                    } else {
                        "it is an input, passed as a tensor"
                    },
                });
            }
            if !v.is_finite() {
                return Err(Error::BadValue {
                    param: name.clone(),
                    value: v.to_string(),
                });
            }
        }
        for (name, v) in &self.variants {
            let p = loss.param(name).ok_or_else(|| unknown(loss, name))?;
            if !p.kind.is_variant() {
                return Err(Error::ParamKind {
                    loss: loss.name().into(),
                    name: name.clone(),
                    kind: p.kind.name(),
                    hint: "pass a number (a hyperparameter) or a tensor (an input)",
                });
            }
            if !p.choices.iter().any(|c| same_choice(c, v)) {
                return Err(Error::BadVariant {
                    param: name.clone(),
                    value: v.clone(),
                    allowed: p.choices.join(", "),
                });
            }
        }
        for p in loss.params() {
            match p.kind {
                ParamKind::Hyper => {
                    let v = match (self.floats.get(p.name), p.default) {
                        (Some(v), _) => *v,
                        (None, DefaultValue::Float(d)) => d,
                        _ => {
                            return Err(Error::MissingParam {
                                loss: loss.name().into(),
                                name: p.name,
                            });
                        }
                    };
                    out.floats.insert(p.name, v);
                }
                ParamKind::VariantBool | ParamKind::VariantEnum => {
                    let v = match (self.variants.get(p.name), p.default) {
                        (Some(v), _) => p
                            .choices
                            .iter()
                            .find(|c| same_choice(c, v))
                            .copied()
                            .unwrap_or(p.choices[0]),
                        (None, DefaultValue::Bool(b)) => {
                            if b {
                                "true"
                            } else {
                                "false"
                            }
                        }
                        (None, DefaultValue::Variant(v)) => v,
                        (None, _) => match p.choices.first() {
                            Some(c) => c,
                            None => {
                                return Err(Error::MissingParam {
                                    loss: loss.name().into(),
                                    name: p.name,
                                });
                            }
                        },
                    };
                    out.variants.insert(p.name, v);
                }
                _ => {}
            }
        }
        // Domains, with the variants resolved (a range may apply under one variant only).
        for p in loss.params().iter().filter(|p| p.kind == ParamKind::Hyper) {
            let Some(&v) = out.floats.get(p.name) else {
                continue;
            };
            for r in p.ranges {
                let applies = r
                    .when
                    .is_none_or(|(q, want)| out.variants.get(q).is_some_and(|x| *x == want));
                if applies && !r.contains(v) {
                    return Err(Error::ParamRange {
                        loss: loss.name().into(),
                        name: p.name,
                        value: v,
                        range: r.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }
}

/// Whether a variant value given by a caller names choice `choice`: case-insensitive, and
/// snake_case for CamelCase (`exo_pair` for `ExoPair`).
pub fn same_choice(choice: &str, given: &str) -> bool {
    let norm = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    norm(choice) == norm(given)
}

fn unknown(loss: &dyn ChunkedLoss, name: &str) -> Error {
    let known: Vec<&str> = loss
        .params()
        .iter()
        .filter(|p| !p.kind.is_input())
        .map(|p| p.name)
        .collect();
    Error::UnknownParam {
        loss: loss.name().into(),
        name: name.into(),
        known: known.join(", "),
    }
}

/// Every hyperparameter and variant with its value (defaults filled in, names checked).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResolvedParams {
    floats: BTreeMap<&'static str, f32>,
    variants: BTreeMap<&'static str, &'static str>,
}

impl ResolvedParams {
    /// A hyperparameter's value.
    pub fn float(&self, name: &str) -> Option<f32> {
        self.floats.get(name).copied()
    }

    /// A variant's value.
    pub fn variant(&self, name: &str) -> Option<&'static str> {
        self.variants.get(name).copied()
    }

    /// Every hyperparameter.
    pub fn floats(&self) -> impl Iterator<Item = (&'static str, f32)> + '_ {
        self.floats.iter().map(|(k, v)| (*k, *v))
    }
}
