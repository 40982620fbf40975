//! The runtime's error type: bad inputs, budgets, schedules, and device failures — every
//! variant names what is wrong and how to fix it. Driver and cuBLAS failures keep the library's
//! error as their `source` (an out-of-memory reads as one); a broken invariant is
//! [`Error::Internal`], never dressed up as a user error. The facade (`liger`) wraps this type
//! in its own, which adds loss, parameter and file errors.

use crate::tensor::DType;

/// An error of the runtime.
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
    /// A gradient selection that cannot be parsed.
    #[error("bad gradient selection `{spec}`: {why}")]
    BadGrads {
        /// The text given.
        spec: String,
        /// What is wrong.
        why: String,
    },
    /// A head whose weight has more vocabulary rows than the loss's vocabulary (set by its
    /// first head), without the option that allows using its first rows.
    #[error(
        "head `{head}` has a vocabulary of {got} rows, the loss's vocabulary (its first head's) has {v}; {}",
        if *.trainable {
            "a trained head must have exactly that vocabulary (give its first rows yourself if that is meant)"
        } else {
            "set `RunOptions::vocab_prefix` to use its first rows (its tokens beyond them are dropped), or give heads of one vocabulary"
        }
    )]
    HeadVocab {
        /// The head.
        head: String,
        /// Its vocabulary rows.
        got: usize,
        /// The loss's vocabulary.
        v: usize,
        /// Whether the head is trained (a prefix is never taken of a trained head).
        trainable: bool,
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
    /// NaN or infinity in an input (or an f64 value beyond f32's range: the executors compute
    /// in f32).
    #[error(
        "input `{input}` holds a value that is not finite in f32 ({value}) at flat index {index}; the executors compute in f32"
    )]
    NonFinite {
        /// The input (`policy.x`, …).
        input: String,
        /// Flat index.
        index: usize,
        /// The value.
        value: f64,
    },
    /// A result that is not finite although every input was: the computation overflowed f32
    /// (logits beyond f32's range, a hyperparameter outside its domain, …).
    #[error(
        "{what} is not finite ({value}) at flat index {index} although every input is: the computation overflowed f32 (logits x·Wᵀ beyond ±3.4e38, or a hyperparameter outside the loss's domain); scale the inputs down"
    )]
    NonFiniteResult {
        /// Which result (`the loss`, `metric m`, `grad policy.w`).
        what: String,
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
        "a memory budget of {budget} bytes is too small: the smallest chunk needs {needed} bytes; raise `RunOptions::chunk_memory`"
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
        "gradients returned in bf16/f16 keep an f32 working copy of {copies} bytes during the run (they are computed and accumulated in f32), and with it the smallest chunk needs {needed} bytes, more than the budget of {budget}; raise `RunOptions::chunk_memory` or return those gradients in f32 (`RunOptions::grad_dtypes`)"
    )]
    GradBudget {
        /// The budget.
        budget: usize,
        /// What the cheapest chunk needs with the copies.
        needed: usize,
        /// Bytes of the f32 working copies.
        copies: usize,
    },
    /// Forced chunk and stage sizes (`RunOptions::rows`) no schedule can take.
    #[error("a chunk of {chunk} rows with a gradient stage of {stage} rows cannot run: {why}")]
    Rows {
        /// Rows per chunk.
        chunk: usize,
        /// Rows per stage.
        stage: usize,
        /// Why.
        why: String,
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
    /// A caller's buffer that a result cannot be written into (device API:
    /// `DeviceInputs::grad_into`, `DeviceOutput::copy_into`).
    #[error("result `{target}` cannot be written into the buffer given: {why}")]
    Target {
        /// `grad.policy.w`, `loss`, `metric.chosen_rewards`, …
        target: String,
        /// Why.
        why: String,
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
    /// A CUDA library that cannot be found or loaded.
    #[error("CUDA library `{lib}` is not available: {why}")]
    Cuda {
        /// Which library.
        lib: &'static str,
        /// Why.
        why: String,
    },
    /// A CUDA driver call failed (out of memory, a failed launch, a context error, …).
    #[error("the CUDA driver failed while {during}: {source}")]
    Driver {
        /// What the runtime was doing.
        during: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// A cuBLAS call failed.
    #[error("cuBLAS failed while {during}: {source}")]
    Cublas {
        /// What the runtime was doing.
        during: &'static str,
        /// cuBLAS' status.
        #[source]
        source: cudarc::cublas::result::CublasError,
    },
    /// A file of the runtime (the kernel cache) that cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A run over several ranks that cannot go on ([`crate::comm`]): the ranks disagree on
    /// the loss or its inputs, or a rank failed.
    #[error("rank {rank}: {why}")]
    Rank {
        /// This rank.
        rank: usize,
        /// Why.
        why: String,
    },
    /// A broken invariant: a bug in liger, not in the caller's input.
    #[error("internal error (a bug in liger; please report it with the loss and the command): {0}")]
    Internal(String),
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
}
