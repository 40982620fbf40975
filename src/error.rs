//! The facade's error type: what the runtime reports ([`Error::Runtime`]), plus the errors of
//! losses and their parameters, the reference interpreter, files and the command line — every
//! variant names what is wrong and how to fix it.

/// An error of the `liger` API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error of the runtime: bad inputs, budgets, schedules, devices.
    #[error(transparent)]
    Runtime(#[from] liger_runtime::Error),
    /// No loss of that name (built in, or in the loss file given).
    #[error("unknown loss `{name}`; known: {known}")]
    UnknownLoss {
        /// The name asked for.
        name: String,
        /// The names there are, and where.
        known: String,
    },
    /// A command line that does not say what to do.
    #[error("{0}")]
    Usage(String),
    /// A loss file that does not compile: every error, rendered against the file.
    #[error("{0}")]
    LossSource(liger_lang::SourceErrors),
    /// A parameter name the loss does not have.
    #[error("loss `{loss}` has no parameter `{name}`; its parameters are: {known}")]
    UnknownParam {
        /// The loss.
        loss: String,
        /// The name given.
        name: String,
        /// Its parameter names.
        known: String,
    },
    /// A value given for a parameter of the wrong kind (e.g. a variant for a hyperparameter).
    #[error("parameter `{name}` of `{loss}` is {kind}: {hint}")]
    ParamKind {
        /// The loss.
        loss: String,
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
    /// A hyperparameter value outside its declared domain.
    #[error("hyperparameter `{name}` of `{loss}` is {value}, but it must be {range}")]
    ParamRange {
        /// The loss.
        loss: String,
        /// The parameter.
        name: &'static str,
        /// The value given (or its default).
        value: f32,
        /// The domain (`in [0.0, 1.0]`, `> 0.0 when loss_type = ExoPair`).
        range: String,
    },
    /// A hyperparameter without default and without value.
    #[error("loss `{loss}` needs a value for `{name}` (it has no default)")]
    MissingParam {
        /// The loss.
        loss: String,
        /// The parameter.
        name: &'static str,
    },
    /// The specialisation the call needs has no IR: the body unwraps an absent input.
    #[error("loss `{loss}` cannot run with {spec}: it needs input `{input}`")]
    Refused {
        /// The loss.
        loss: String,
        /// The specialisation (`name=value, …`).
        spec: String,
        /// The input its body unwraps.
        input: &'static str,
    },
    /// The stored IR of a specialisation does not parse or verify (a bug in the macro).
    #[error("the IR of `{loss}` ({spec}) is invalid:\n{diagnostics}")]
    InvalidIr {
        /// The loss.
        loss: String,
        /// The specialisation.
        spec: String,
        /// What is wrong.
        diagnostics: liger_ir::Diagnostics,
    },
    /// The reference interpreter refused the inputs.
    #[error(transparent)]
    Eval(#[from] liger_ir::EvalError),
    /// An input given that the selected specialisation does not use (an alternative to
    /// another input given, or an input the loss ignores with these variants).
    #[error(
        "input `{name}` of `{loss}` is given but not used with {spec}{instead}; remove it, or choose variants that use it"
    )]
    UnusedInput {
        /// The loss.
        loss: String,
        /// The input.
        name: String,
        /// The specialisation.
        spec: String,
        /// Which inputs are used in its place (` (it uses `x` instead: …)`), or empty.
        instead: String,
    },
    /// A benchmark that cannot be measured or drawn.
    #[error("bench: {0}")]
    Bench(String),
    /// A candle tensor that cannot be used (feature `candle`).
    #[error("candle tensor `{input}`: {why}")]
    Candle {
        /// The input's name (`policy.x`, …).
        input: String,
        /// Why.
        why: String,
    },
    /// A file that cannot be read or written, or that is malformed.
    #[error("{path}: {why}")]
    File {
        /// The path.
        path: String,
        /// What went wrong.
        why: String,
    },
}

impl Error {
    /// The runtime error inside, if this is one.
    pub fn runtime(&self) -> Option<&liger_runtime::Error> {
        match self {
            Error::Runtime(e) => Some(e),
            _ => None,
        }
    }
}
