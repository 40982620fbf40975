//! The error type of the whole library (re-exported as `liger::Error`): every variant names
//! what is wrong and how to fix it.

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
    /// A hyperparameter without default and without value.
    #[error("loss `{loss}` needs a value for `{name}` (it has no default)")]
    MissingParam {
        /// The loss.
        loss: String,
        /// The parameter.
        name: &'static str,
    },
    /// A required input not given.
    #[error("loss `{loss}` needs input `{name}` ({kind})")]
    MissingInput {
        /// The loss.
        loss: String,
        /// The input.
        name: String,
        /// Its kind.
        kind: &'static str,
    },
    /// An input the loss has no parameter for.
    #[error("loss `{loss}` has no input `{name}`; its inputs are: {known}")]
    UnknownInput {
        /// The loss.
        loss: String,
        /// The name given.
        name: String,
        /// Its input names.
        known: String,
    },
    /// A head given where a tensor is expected or the reverse.
    #[error("input `{name}` of `{loss}` is {kind}, which takes {want}")]
    InputKind {
        /// The loss.
        loss: String,
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
        loss: String,
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
        loss: String,
        /// The specialisation.
        spec: String,
        /// What is wrong.
        diagnostics: liger_ir::Diagnostics,
    },
    /// The reference interpreter refused the inputs.
    #[error(transparent)]
    Eval(#[from] liger_ir::EvalError),
    /// A token id outside `[0, V)` that is not the ignore index.
    #[error(
        "`{input}`[{seq},{pos}] = {value} is not a token id in [0, {vocab}) nor the ignore_index {ignore_index}"
    )]
    TargetOutOfRange {
        /// The input.
        input: String,
        /// Sequence.
        seq: usize,
        /// Row in the sequence.
        pos: usize,
        /// The id.
        value: i64,
        /// V
        vocab: usize,
        /// The ignore index of the run.
        ignore_index: i64,
    },
    /// NaN or infinity in an input.
    #[error("input `{input}` holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// The input (`policy.x`, …).
        input: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A size of zero.
    #[error("empty batch: {what}; every size must be at least 1")]
    EmptyBatch {
        /// Which size.
        what: String,
    },
    /// A paired loss with an odd number of sequences.
    #[error(
        "the loss pairs sequences (chosen then rejected) but the batch has {num_seqs} sequences, an odd number"
    )]
    OddSequenceCount {
        /// S
        num_seqs: usize,
    },
    /// `seq_mean` over a sequence with no valid row.
    #[error(
        "sequence {seq} has no valid row, so its `seq_mean` is undefined (a data bug for preference losses; use seq_mean_or_zero to allow it)"
    )]
    EmptySequence {
        /// The sequence.
        seq: usize,
    },
    /// A hyperparameter value missing for the IR.
    #[error("no value for hyperparameter `{name}`")]
    MissingHyper {
        /// The parameter.
        name: String,
    },
    /// A memory budget no strategy fits.
    #[error(
        "a memory budget of {budget} bytes is too small: the smallest chunk needs {needed} bytes; raise --chunk-memory"
    )]
    Budget {
        /// The budget.
        budget: usize,
        /// What the cheapest chunk needs.
        needed: usize,
    },
    /// A budget that fits the run only without the f32 working copies of gradients asked for
    /// in bf16/f16.
    #[error(
        "gradients returned in bf16/f16 keep an f32 working copy of {copies} bytes during the run (they are computed and accumulated in f32), and with it the smallest chunk needs {needed} bytes, more than the budget of {budget}; raise the budget or return those gradients in f32"
    )]
    GradBudget {
        /// The budget.
        budget: usize,
        /// What the cheapest chunk needs with the copies.
        needed: usize,
        /// Bytes of the f32 working copies.
        copies: usize,
    },
    /// A forced schedule that does not apply.
    #[error("schedule `{schedule}` cannot run: {why}")]
    Schedule {
        /// The schedule.
        schedule: &'static str,
        /// Why.
        why: String,
    },
    /// A gradient dtype that is not f32, bf16 or f16.
    #[error("gradients can be returned in f32, bf16 or f16; `grad {grad}` was asked for in {got}")]
    GradDType {
        /// `x`, `w` or `b`.
        grad: &'static str,
        /// The dtype asked for.
        got: crate::tensor::DType,
    },
    /// A gradient-dtype spec that does not parse.
    #[error(
        "`{spec}` is not a gradient dtype spec ({why}); use f32, bf16, f16 or x=bf16,w=f32,b=f32"
    )]
    BadGradDType {
        /// The text.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A size string that does not parse.
    #[error("`{value}` is not a size such as 256MiB, 2GiB or 1000000")]
    BadSize {
        /// The text.
        value: String,
    },
    /// A CUDA library that cannot be loaded or used.
    #[error("CUDA library `{lib}` is not available: {why}")]
    Cuda {
        /// Which library.
        lib: &'static str,
        /// Why.
        why: String,
    },
    /// NVRTC rejected generated code (a bug in the emitter).
    #[error("NVRTC could not compile the generated kernels for {arch}:\n{log}")]
    Compile {
        /// The target.
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A device that cannot be used.
    #[error("device `{device}` cannot be used: {why}")]
    Device {
        /// The device asked for.
        device: String,
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
