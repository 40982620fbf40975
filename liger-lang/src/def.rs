//! A compiled loss as owned data: what both doors turn into the tables of [`crate::table`]
//! (the proc macro as `static` items, the run-time door as leaked slices), so a loss is
//! described identically whichever door it came through.

use liger_ir::InputKind;

use crate::compile::Compiled;
use crate::lower::{Choice, Outcome};
use crate::sig::{DefaultVal, Kind};
use crate::table::ParamKind;

/// A parameter's default, owned.
#[derive(Clone, Debug, PartialEq)]
pub enum DefaultDef {
    /// None: the caller gives a value.
    None,
    /// A hyperparameter default.
    Float(f32),
    /// A flag default.
    Bool(bool),
    /// An enum default (variant name).
    Variant(String),
}

/// A `#[range(..)]` domain, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeDef {
    /// Lower bound `(value, inclusive)`.
    pub lo: Option<(f32, bool)>,
    /// Upper bound `(value, inclusive)`.
    pub hi: Option<(f32, bool)>,
    /// `(variant parameter, value)` under which it applies.
    pub when: Option<(String, String)>,
}

/// One parameter, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamDef {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ParamKind,
    /// `Option<…>`.
    pub optional: bool,
    /// Its default.
    pub default: DefaultDef,
    /// Variant choices (`false`/`true` for a flag, arms for an enum).
    pub choices: Vec<String>,
    /// The Rust type as written.
    pub type_text: String,
    /// Its domains.
    pub ranges: Vec<RangeDef>,
}

/// One specialisation, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecDef {
    /// `(parameter, value)` choices.
    pub choices: Vec<(String, String)>,
    /// The canonical IR text, unless refused.
    pub ir: Option<String>,
    /// The input whose absence refuses it.
    pub refused: Option<String>,
}

/// A compiled loss, owned.
#[derive(Clone, Debug, PartialEq)]
pub struct LossDef {
    /// The fn's name.
    pub name: String,
    /// Its doc comment (or a default line).
    pub doc: String,
    /// Its parameters, in declaration order.
    pub params: Vec<ParamDef>,
    /// Every specialisation (empty when the loss has errors).
    pub specs: Vec<SpecDef>,
}

/// The table kind of a parameter kind.
pub fn param_kind(k: &Kind) -> ParamKind {
    match k {
        Kind::Hyper => ParamKind::Hyper,
        Kind::Flag => ParamKind::VariantBool,
        Kind::Enum(_) => ParamKind::VariantEnum,
        Kind::Input(i) => match i {
            InputKind::Logits => ParamKind::Logits,
            InputKind::Frozen => ParamKind::Frozen,
            InputKind::Target => ParamKind::Target,
            InputKind::Tokens => ParamKind::Tokens,
            InputKind::RowInput => ParamKind::RowInput,
            InputKind::RowMask => ParamKind::RowMask,
            InputKind::SeqInput => ParamKind::SeqInput,
            InputKind::SeqMask => ParamKind::SeqMask,
            InputKind::VocabInput => ParamKind::VocabInput,
            InputKind::ScalarInput | InputKind::Param => ParamKind::ScalarInput,
        },
    }
}

impl Compiled {
    /// The owned description.
    pub fn def(&self) -> LossDef {
        let sig = &self.sig;
        let name = sig.ident.to_string();
        let doc = if sig.doc.is_empty() {
            format!("The `{name}` loss.")
        } else {
            sig.doc.clone()
        };
        let params = sig
            .params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let arms = self.enums.get(&i);
                let default = match (&p.default, &p.kind) {
                    (Some(DefaultVal::Float(x)), _) => DefaultDef::Float(*x as f32),
                    (Some(DefaultVal::Bool(b)), _) => DefaultDef::Bool(*b),
                    (None, Kind::Flag) => DefaultDef::Bool(false),
                    (Some(DefaultVal::Variant(v)), _) => DefaultDef::Variant(v.to_string()),
                    (None, Kind::Enum(_)) => match arms.and_then(|v| v.first()) {
                        Some(v) => DefaultDef::Variant(v.to_string()),
                        None => DefaultDef::None,
                    },
                    _ => DefaultDef::None,
                };
                let choices = match &p.kind {
                    Kind::Flag => vec!["false".into(), "true".into()],
                    Kind::Enum(_) => arms
                        .map(|v| v.iter().map(ToString::to_string).collect())
                        .unwrap_or_default(),
                    _ => vec![],
                };
                let ranges = p
                    .ranges
                    .iter()
                    .map(|r| RangeDef {
                        lo: r.lo.map(|(x, inc)| (x as f32, inc)),
                        hi: r.hi.map(|(x, inc)| (x as f32, inc)),
                        when: r.when.as_ref().map(|(n, v)| (n.to_string(), v.to_string())),
                    })
                    .collect();
                ParamDef {
                    name: p.ident.to_string(),
                    kind: param_kind(&p.kind),
                    optional: p.optional,
                    default,
                    choices,
                    type_text: p.type_text.clone(),
                    ranges,
                }
            })
            .collect();
        let specs = if self.ok {
            self.lowered
                .iter()
                .map(|(spec, outcome)| {
                    let choices = spec
                        .choices
                        .iter()
                        .map(|(i, c)| {
                            let value = match c {
                                Choice::Flag(b) => b.to_string(),
                                Choice::Arm(a) => self
                                    .enums
                                    .get(i)
                                    .and_then(|v| v.get(*a))
                                    .map(ToString::to_string)
                                    .unwrap_or_default(),
                                Choice::Present(true) => "present".into(),
                                Choice::Present(false) => "absent".into(),
                            };
                            (sig.params[*i].ident.to_string(), value)
                        })
                        .collect();
                    let (ir, refused) = match outcome {
                        Outcome::Ir(f) => (Some(liger_ir::print(f)), None),
                        Outcome::Refused(input) => (None, Some(input.clone())),
                        Outcome::Failed => (None, None),
                    };
                    SpecDef {
                        choices,
                        ir,
                        refused,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        LossDef {
            name,
            doc,
            params,
            specs,
        }
    }
}
