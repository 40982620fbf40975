//! `liger`: chunked, fused post-training losses for language models.
//!
//! The facade of the pipeline (`docs/architecture.md`): the `#[chunked_loss]` macro and the
//! [`ChunkedLoss`] trait it implements, host tensor views, untyped inputs and parameters, the
//! built-in losses written with the macro ([`losses`]), and the f64 reference path
//! ([`mod@reference`]) that evaluates any loss through the liger-ir interpreter. The IR itself is
//! re-exported as [`ir`].
//!
//! ```
//! use liger::prelude::*;
//!
//! /// Cross-entropy, mean over valid rows.
//! #[chunked_loss]
//! pub fn ce(logits: Logits, target: Target) -> Loss {
//!     mean(-logprob(logits, target))
//! }
//!
//! let x = [0.5f32, -1.0, 0.25, 2.0];          // [S=1, T=2, H=2]
//! let w = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];  // [V=3, H=2]
//! let t = [2i64, 0];
//! let out = Ce.reference(
//!     &CeInputs {
//!         logits: Head::new(TensorView::new(&x[..], &[1, 2, 2])?, TensorView::new(&w[..], &[3, 2])?),
//!         target: TensorView::new(&t[..], &[1, 2])?,
//!     },
//!     &CeParams::default(),
//!     -100,
//! )?;
//! assert!(out.loss > 0.0);
//! # Ok::<(), liger::Error>(())
//! ```

extern crate self as liger;

pub mod bench;
#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod dynamic;
mod error;
#[cfg(feature = "io")]
pub mod io;
#[cfg(feature = "cli")]
pub mod sweep;
#[doc = include_str!("../docs/language.md")]
pub mod language {}
pub mod loss;
pub mod losses;
pub mod named;
pub mod params;
pub mod prelude;
pub mod reference;
mod run;

pub use dynamic::{DynLoss, compile_loss, compile_loss_file, pick as pick_loss};
pub use error::Error;
pub use liger_ir as ir;
pub use liger_lang as lang;
pub use liger_macros::{chunked_loss, chunked_losses};
pub use liger_runtime as runtime;
pub use liger_runtime::{
    DType, DeviceGrad, DeviceHead, DeviceHeadGrads, DeviceInput, DeviceInputs, DeviceOutput,
    DeviceTensor, ForcedRows, ForeignBuffer, GradBuf, GradDTypes, GradPart, Head, HeadGrads,
    InputSet, InputValue, LossOutput, MetricOutput, Pipeline, Report, RunOptions, Runtime,
    Strategy, TensorData, TensorView, WAccum, Wanted,
};
pub use loss::{ChunkedLoss, DefaultValue, ParamInfo, ParamKind, ParamRange, SpecInfo};
pub use params::{ParamSet, ResolvedParams};
pub use run::{pipeline, pipeline_for, run, run_data_parallel, run_device, run_vocab_parallel};
