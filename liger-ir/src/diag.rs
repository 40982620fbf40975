//! Diagnostics: what is wrong, where, and how to fix it.
//!
//! The parser and the verifier collect every problem they find as a [`Diagnostic`] instead of
//! stopping at the first. A diagnostic points at a [`Site`] of the IR (a node, an input, an
//! output, or a line of `.lir` text); rendering maps sites back to source locations.

use std::fmt;

use crate::func::{InputId, ValueId};

/// The class of a diagnostic (stable: tests and tools match on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiagKind {
    /// Malformed text.
    Syntax,
    /// Missing or unsupported `; liger-ir vN` header.
    Version,
    /// A name (value, input, op, kind, level, dtype) that is not defined.
    UnknownName,
    /// A name defined twice.
    DuplicateName,
    /// A value used before its definition.
    UseBeforeDef,
    /// Wrong number of operands.
    Arity,
    /// A value at the wrong level for its use (e.g. `chosen` of a row value).
    LevelMisuse,
    /// A value of the wrong dtype for its use.
    DTypeMismatch,
    /// A type annotation that differs from the inferred type.
    TypeAnnotation,
    /// A forward vocab-level value using a seq/pair/batch value derived from logits.
    GroupDependency,
    /// A loss or metric at vocab level, or a loss not at batch level.
    OutputLevel,
    /// No loss output.
    MissingLoss,
    /// More than one loss output.
    MultipleLoss,
    /// Two outputs with the same name.
    DuplicateOutput,
    /// A gradient demanded for a `frozen` head or a non-head input.
    FrozenGradient,
    /// A `logits` head the loss does not depend on differentiably.
    NotDifferentiable,
    /// An input declared inconsistently (e.g. two nodes for one input).
    BadInput,
    /// A loss the chunked schedule cannot run (the message says what to change).
    Unschedulable,
    /// A broken internal invariant (a bug in a pass, not in the user's loss).
    Internal,
}

/// Where a diagnostic points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    /// A node of the arena.
    Node(ValueId),
    /// An input declaration.
    Input(InputId),
    /// The output at this index of `LossFn::outputs`.
    Output(usize),
    /// A 1-based line of the text form (parse errors).
    Line(u32),
    /// The function as a whole.
    Function,
}

/// One problem found in an IR function.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// The class of problem.
    pub kind: DiagKind,
    /// Where it is.
    pub site: Site,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl DiagKind {
    /// A stable kebab-case name, shown in rendered diagnostics.
    pub fn name(self) -> &'static str {
        match self {
            DiagKind::Syntax => "syntax",
            DiagKind::Version => "version",
            DiagKind::UnknownName => "unknown-name",
            DiagKind::DuplicateName => "duplicate-name",
            DiagKind::UseBeforeDef => "use-before-def",
            DiagKind::Arity => "arity",
            DiagKind::LevelMisuse => "level-misuse",
            DiagKind::DTypeMismatch => "dtype-mismatch",
            DiagKind::TypeAnnotation => "type-annotation",
            DiagKind::GroupDependency => "group-dependency",
            DiagKind::OutputLevel => "output-level",
            DiagKind::MissingLoss => "missing-loss",
            DiagKind::MultipleLoss => "multiple-loss",
            DiagKind::DuplicateOutput => "duplicate-output",
            DiagKind::FrozenGradient => "frozen-gradient",
            DiagKind::NotDifferentiable => "not-differentiable",
            DiagKind::BadInput => "bad-input",
            DiagKind::Unschedulable => "unschedulable",
            DiagKind::Internal => "internal",
        }
    }
}

impl Diagnostic {
    /// A new diagnostic.
    pub fn new(kind: DiagKind, site: Site, message: impl Into<String>) -> Self {
        Diagnostic {
            kind,
            site,
            message: message.into(),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.site {
            Site::Node(v) => write!(f, "at {v}: {}", self.message),
            Site::Input(i) => write!(f, "at input #{}: {}", i.index(), self.message),
            Site::Output(o) => write!(f, "at output #{o}: {}", self.message),
            Site::Line(l) => write!(f, "line {l}: {}", self.message),
            Site::Function => f.write_str(&self.message),
        }
    }
}

/// A non-empty list of diagnostics (the error type of parsing and verification).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Whether some diagnostic has this kind.
    pub fn has(&self, kind: DiagKind) -> bool {
        self.0.iter().any(|d| d.kind == kind)
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}
