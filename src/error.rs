//! The library's error type: every variant names what is wrong and how to fix it.

use crate::tensor::DType;

/// An error of the `liger` API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor view's shape does not match its element count.
    #[error("a tensor of shape {shape:?} needs {} elements, the data has {elements}", shape.iter().product::<usize>())]
    ViewShape {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Elements given.
        elements: usize,
    },
    /// No built-in loss of that name.
    #[error("unknown loss `{name}`; the built-in losses are: {known}")]
    UnknownLoss {
        /// The name asked for.
        name: String,
        /// The built-in names.
        known: String,
    },
    /// A parameter name the loss does not have.
    #[error("loss `{loss}` has no parameter `{name}`; its parameters are: {known}")]
    UnknownParam {
        /// The loss.
        loss: &'static str,
        /// The name given.
        name: String,
        /// Its parameter names.
        known: String,
    },
    /// A value given for a parameter of the wrong kind (e.g. a variant for a hyperparameter).
    #[error("parameter `{name}` of `{loss}` is {kind}: {hint}")]
    ParamKind {
        /// The loss.
        loss: &'static str,
        /// The parameter.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// How to pass it.
        hint: &'static str,
    },
    /// A variant value outside the parameter's choices.
    #[error("`{value}` is not a choice of `{param}` (choices: {allowed})")]
    BadVariant {
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
        /// The choices.
        allowed: String,
    },
    /// A hyperparameter value that does not parse or is not finite.
    #[error("hyperparameter `{param}` = `{value}` is not a finite number")]
    BadValue {
        /// The parameter.
        param: String,
        /// The value given.
        value: String,
    },
    /// A hyperparameter without default and without value.
    #[error("loss `{loss}` needs a value for `{name}` (it has no default)")]
    MissingParam {
        /// The loss.
        loss: &'static str,
        /// The parameter.
        name: &'static str,
    },
    /// A required input not given.
    #[error("loss `{loss}` needs input `{name}` ({kind})")]
    MissingInput {
        /// The loss.
        loss: &'static str,
        /// The input.
        name: String,
        /// Its kind.
        kind: &'static str,
    },
    /// An input the loss has no parameter for.
    #[error("loss `{loss}` has no input `{name}`; its inputs are: {known}")]
    UnknownInput {
        /// The loss.
        loss: &'static str,
        /// The name given.
        name: String,
        /// Its input names.
        known: String,
    },
    /// A head given where a tensor is expected or the reverse.
    #[error("input `{name}` of `{loss}` is {kind}, which takes {want}")]
    InputKind {
        /// The loss.
        loss: &'static str,
        /// The input.
        name: String,
        /// Its kind.
        kind: &'static str,
        /// What it takes.
        want: &'static str,
    },
    /// The specialisation the call needs has no IR: the body unwraps an absent input.
    #[error("loss `{loss}` cannot run with {spec}: it needs input `{input}`")]
    Refused {
        /// The loss.
        loss: &'static str,
        /// The specialisation (`name=value, …`).
        spec: String,
        /// The input its body unwraps.
        input: &'static str,
    },
    /// A shape that does not fit the others.
    #[error("input `{input}` has shape {got:?}, expected {expected}")]
    Shape {
        /// The input (`policy.x`, `target`, …).
        input: String,
        /// The expected shape, with the names of its dims.
        expected: String,
        /// The shape given.
        got: Vec<usize>,
    },
    /// A dtype the input cannot take.
    #[error("input `{input}` is {got}, expected {expected}")]
    InputDType {
        /// The input.
        input: String,
        /// What it takes.
        expected: &'static str,
        /// The dtype given.
        got: DType,
    },
    /// The stored IR of a specialisation does not parse or verify (a bug in the macro).
    #[error("the IR of `{loss}` ({spec}) is invalid:\n{diagnostics}")]
    InvalidIr {
        /// The loss.
        loss: &'static str,
        /// The specialisation.
        spec: String,
        /// What is wrong.
        diagnostics: liger_ir::Diagnostics,
    },
    /// The reference interpreter refused the inputs.
    #[error(transparent)]
    Eval(#[from] liger_ir::EvalError),
}
