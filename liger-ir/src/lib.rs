//! `liger-ir`: the intermediate representation of chunked losses, with no CUDA dependency.
//!
//! ```text
//! #[chunked_loss] fn (liger-macros) ──lower──▶ LossFn (this crate)
//!     parse/print (.lir) ◀──▶ LossFn ──verify──▶ differentiate ──▶ simplify ──▶ schedule/emit
//!                                       └──────── interp (f64 reference) ◀──────┘
//! ```
//!
//! [`Pipeline`] runs those stages in one place; every consumer (executors, command line, kernel
//! cache) goes through it. The op set is defined once, in [`op`].
//!
//! A [`LossFn`] is a pure, control-flow-free DAG in a flat, topologically ordered arena.
//! Every value has a [`Type`]: a [`DType`] (f32, bool, idx) at a [`Level`] (Vocab, Row, Seq,
//! Pair, Batch — fine to coarse). Inputs are the parameter kinds of the loss language; outputs are
//! one Batch-level loss, named metrics and, after [`differentiate`], one Vocab-level `d_<head>`
//! per `logits` head. Source locations are kept per node but are not part of the IR's
//! identity ([`canonical_text`]).
//!
//! Invariants every pass preserves (checked by [`verify()`]; see its module doc for the list):
//! operands precede their uses; types follow [`Op::infer`]; the forward never lets a
//! vocab-level value use a seq/pair/batch value derived from logits; one loss at batch level.

#![forbid(unsafe_code)]

pub mod builder;
pub mod diag;
pub mod emit;
pub mod func;
pub mod interp;
pub mod op;
pub mod passes;
pub mod pipeline;
pub mod rowskip;
pub mod scalar;
pub mod schedule;
pub mod shard;
pub mod stream;
pub mod text;
pub mod types;
pub mod verify;

pub use builder::Builder;
pub use diag::{DiagKind, Diagnostic, Diagnostics, Site};
pub use func::{Input, InputId, InputKind, LossFn, Node, Output, OutputKind, SrcLoc, ValueId};
pub use interp::{EvalError, EvalWarning, Evaluation, HostBatch, HostInput, evaluate};
pub use op::Op;
pub use passes::{differentiate, simplify};
pub use pipeline::Pipeline;
pub use schedule::{Schedule, Strategy};
pub use text::{canonical_text, parse, print};
pub use types::{DType, Level, Type};
pub use verify::verify;

/// Parses a `.lir` text and runs it through the [`Pipeline`].
pub fn pipeline_of(text: &str) -> Result<Pipeline, Diagnostics> {
    Pipeline::new(parse(text)?)
}
