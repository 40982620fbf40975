//! `liger`: chunked, fused post-training losses for language models.
//!
//! This is the facade crate: it re-exports the pipeline's crates. Today that is the IR
//! (`liger-ir`: levels, text form, verifier, autodiff, simplification and the f64 reference
//! interpreter); the `#[chunked_loss]` macro, the built-in losses, the executors and the
//! `liger` binary arrive with their issues.

pub use liger_ir as ir;
