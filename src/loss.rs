//! The [`ChunkedLoss`] trait every `#[chunked_loss]` fn implements, with its parameter table
//! and its specialisations.
//!
//! A loss's identity is its name, its parameters ([`ParamInfo`]: kind, optionality, default,
//! variant choices) and its specialisations ([`SpecInfo`]): one per combination of variant
//! values and optional-input presence, each with the canonical IR text the macro lowered and
//! verified at compile time, or the input whose absence refuses it.

use std::fmt;

use crate::Error;
use crate::params::ResolvedParams;

pub use liger_lang::table::{DefaultValue, ParamInfo, ParamKind, ParamRange, SpecInfo};

/// A loss written with `#[chunked_loss]` (or by hand with the same tables).
pub trait ChunkedLoss {
    /// The loss's name (the fn name).
    fn name(&self) -> &'static str;
    /// Its documentation (the fn's doc comment).
    fn doc(&self) -> &'static str;
    /// Its parameters, in declaration order.
    fn params(&self) -> &'static [ParamInfo];
    /// Every specialisation.
    fn specializations(&self) -> &'static [SpecInfo];

    /// The parameter called `name`.
    fn param(&self, name: &str) -> Option<&'static ParamInfo> {
        self.params().iter().find(|p| p.name == name)
    }

    /// The specialisation for these variant values and optional inputs; a refused one is an
    /// error naming the input it needs.
    fn specialization(
        &self,
        params: &ResolvedParams,
        present: &dyn Fn(&str) -> bool,
    ) -> Result<&'static SpecInfo, Error> {
        let want = |k: &str| -> Option<String> {
            let p = self.param(k)?;
            Some(if p.kind.is_variant() {
                params.variant(k)?.to_string()
            } else if present(k) {
                "present".into()
            } else {
                "absent".into()
            })
        };
        let spec = self
            .specializations()
            .iter()
            .find(|s| {
                s.choices
                    .iter()
                    .all(|(k, v)| want(k).as_deref() == Some(*v))
            })
            .ok_or_else(|| Error::Refused {
                loss: self.name().into(),
                spec: "these variant values".into(),
                input: "?",
            })?;
        match spec.refused {
            Some(input) => Err(Error::Refused {
                loss: self.name().into(),
                spec: spec.describe(),
                input,
            }),
            None => Ok(spec),
        }
    }

    /// The parsed, verified IR of a specialisation.
    fn ir(&self, spec: &SpecInfo) -> Result<liger_ir::LossFn, Error> {
        let text = spec.ir.ok_or(Error::Refused {
            loss: self.name().into(),
            spec: spec.describe(),
            input: spec.refused.unwrap_or("?"),
        })?;
        let invalid = |diagnostics| Error::InvalidIr {
            loss: self.name().into(),
            spec: spec.describe(),
            diagnostics,
        };
        let f = liger_ir::parse(text).map_err(invalid)?;
        liger_ir::verify(&f).map_err(invalid)?;
        Ok(f)
    }
}

impl fmt::Debug for dyn ChunkedLoss + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkedLoss({})", self.name())
    }
}
