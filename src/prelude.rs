//! `use liger::prelude::*;` — what a loss author and a caller need.
//!
//! The parameter kinds below are markers: the macro reads the types as written and replaces
//! the fn, so they are never instantiated; they exist so that the names resolve and have docs.

pub use crate::losses::*;
pub use crate::{
    ChunkedLoss, Error, Head, InputSet, ParamSet, TensorView, chunked_loss, chunked_losses,
    reference,
};

/// An lm-head output that receives gradients (`x [S,T,H]`, `W [V,H]`, optional `b [V]`).
pub struct Logits;
/// A forward-only head (reference, teacher): `Frozen<Logits>`.
pub struct Frozen<T>(std::marker::PhantomData<T>);
/// Token ids `[S,T]`; rows equal to `ignore_index` are invalid.
pub struct Target;
/// Token ids `[S,T]` with no ignore value: every row valid.
pub struct Tokens;
/// An f32 per row, `[S,T]`.
pub struct RowInput;
/// A bool per row, `[S,T]`.
pub struct RowMask;
/// An f32 per sequence, `[S]`.
pub struct SeqInput;
/// A bool per sequence, `[S]`.
pub struct SeqMask;
/// An f32 per vocab entry, `[V]`, broadcast over rows.
pub struct VocabInput;
/// An f32 scalar tensor computed elsewhere.
pub struct ScalarInput;
/// The return type of a `#[chunked_loss]` fn: the batch-level loss.
pub struct Loss;

/// A helper parameter or result of any level (helpers: `docs/language.md`).
pub struct Value;
/// A helper parameter or result at vocab level (per row and vocabulary entry).
pub struct Vocab;
/// A helper parameter or result at row level (per token).
pub struct Row;
/// A helper parameter or result at sequence level.
pub struct Seq;
/// A helper parameter or result at pair level (chosen/rejected pairs).
pub struct Pair;
/// A helper parameter or result at batch level (a scalar).
pub struct Batch;
