//! The tables a loss describes itself with: its parameters ([`ParamInfo`]: kind, optionality,
//! default, variant choices, domains) and its specialisations ([`SpecInfo`]: one per
//! combination of variant values and optional-input presence, each with the canonical IR text
//! lowered and verified from the source, or the input whose absence refuses it).
//!
//! The proc macro writes them as `static` data; a loss compiled from source at run time builds
//! the same tables from the same [`crate::LossDef`]. Both doors describe a loss identically.

use std::fmt;

/// What kind of parameter a loss parameter is (the language reference, "Parameters").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A head with gradients.
    Logits,
    /// A forward-only head.
    Frozen,
    /// Token ids with `ignore_index`.
    Target,
    /// Token ids, every row valid.
    Tokens,
    /// f32 per row.
    RowInput,
    /// bool per row.
    RowMask,
    /// f32 per sequence.
    SeqInput,
    /// bool per sequence.
    SeqMask,
    /// f32 per vocab entry.
    VocabInput,
    /// An f32 scalar tensor.
    ScalarInput,
    /// An f32 hyperparameter (kernel argument).
    Hyper,
    /// A compile-time flag.
    VariantBool,
    /// A compile-time enum choice.
    VariantEnum,
}

impl ParamKind {
    /// The name used in tables and errors.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Logits => "logits",
            ParamKind::Frozen => "frozen logits",
            ParamKind::Target => "target",
            ParamKind::Tokens => "tokens",
            ParamKind::RowInput => "row input",
            ParamKind::RowMask => "row mask",
            ParamKind::SeqInput => "seq input",
            ParamKind::SeqMask => "seq mask",
            ParamKind::VocabInput => "vocab input",
            ParamKind::ScalarInput => "scalar input",
            ParamKind::Hyper => "hyperparameter",
            ParamKind::VariantBool => "variant flag",
            ParamKind::VariantEnum => "variant choice",
        }
    }

    /// Whether the caller passes it as an input (a tensor or a head).
    pub fn is_input(self) -> bool {
        !matches!(
            self,
            ParamKind::Hyper | ParamKind::VariantBool | ParamKind::VariantEnum
        )
    }

    /// Whether it is a head.
    pub fn is_head(self) -> bool {
        matches!(self, ParamKind::Logits | ParamKind::Frozen)
    }

    /// Whether it is a compile-time variant.
    pub fn is_variant(self) -> bool {
        matches!(self, ParamKind::VariantBool | ParamKind::VariantEnum)
    }
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parameter's default.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DefaultValue {
    /// No default: the caller must give a value.
    None,
    /// A hyperparameter default.
    Float(f32),
    /// A flag default.
    Bool(bool),
    /// An enum default (variant name).
    Variant(&'static str),
}

impl fmt::Display for DefaultValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DefaultValue::None => f.write_str("-"),
            DefaultValue::Float(x) => write!(f, "{x:?}"),
            DefaultValue::Bool(b) => write!(f, "{b}"),
            DefaultValue::Variant(v) => f.write_str(v),
        }
    }
}

/// A hyperparameter's domain (`#[range(..)]`): bounds `(value, inclusive)` and, optionally,
/// the variant value under which it applies (`when(loss_type = ExoPair)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamRange {
    /// Lower bound.
    pub lo: Option<(f32, bool)>,
    /// Upper bound.
    pub hi: Option<(f32, bool)>,
    /// `(variant parameter, value)` under which the range applies.
    pub when: Option<(&'static str, &'static str)>,
}

impl ParamRange {
    /// Whether `x` is inside.
    pub fn contains(&self, x: f32) -> bool {
        self.lo
            .is_none_or(|(lo, inc)| if inc { x >= lo } else { x > lo })
            && self
                .hi
                .is_none_or(|(hi, inc)| if inc { x <= hi } else { x < hi })
    }
}

impl fmt::Display for ParamRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.lo, self.hi) {
            (Some((lo, li)), Some((hi, hi_inc))) => write!(
                f,
                "in {}{lo:?}, {hi:?}{}",
                if li { "[" } else { "(" },
                if hi_inc { "]" } else { ")" }
            ),
            (Some((lo, true)), None) => write!(f, ">= {lo:?}"),
            (Some((lo, false)), None) => write!(f, "> {lo:?}"),
            (None, Some((hi, true))) => write!(f, "<= {hi:?}"),
            (None, Some((hi, false))) => write!(f, "< {hi:?}"),
            (None, None) => f.write_str("any value"),
        }?;
        if let Some((p, v)) = self.when {
            write!(f, " when {p} = {v}")?;
        }
        Ok(())
    }
}

/// One parameter of a loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ParamInfo {
    /// Its name.
    pub name: &'static str,
    /// Its kind.
    pub kind: ParamKind,
    /// Whether it is an `Option<…>` input.
    pub optional: bool,
    /// Its default.
    pub default: DefaultValue,
    /// The choices of a variant (`["false", "true"]` for a flag, arm names for an enum).
    pub choices: &'static [&'static str],
    /// The Rust type the user wrote (`Frozen<Logits>`, `DpoType`, …).
    pub type_name: &'static str,
    /// The hyperparameter's domains, checked before every run.
    pub ranges: &'static [ParamRange],
}

/// One specialisation: a value for every variant, presence for every optional input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpecInfo {
    /// `(parameter, value)`: `"true"`/`"false"`, an enum arm, `"present"`/`"absent"`.
    pub choices: &'static [(&'static str, &'static str)],
    /// The canonical IR text, when the specialisation is not refused.
    pub ir: Option<&'static str>,
    /// The input whose absence refuses it.
    pub refused: Option<&'static str>,
}

impl SpecInfo {
    /// `name=value, …`.
    pub fn describe(&self) -> String {
        let parts: Vec<String> = self
            .choices
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if parts.is_empty() {
            "the only specialisation".into()
        } else {
            parts.join(", ")
        }
    }
}
