//! `liger-lang`: the front-end of the loss language, one library behind two doors.
//!
//! A loss is a Rust `fn` marked `#[chunked_loss]`, written with the functions of the loss
//! language (the reference: `docs/language.md`, also the `liger::language` rustdoc). This
//! crate parses it with syn, analyses the signature ([`sig`]) and the variant enums
//! ([`variants`]), lowers the body once per specialisation to verified liger-ir ([`lower`],
//! through [`compile::compile_fn`]), inlining helper fns ([`helpers`]), and describes the
//! result as owned data ([`def::LossDef`]) from which both doors build the same tables
//! ([`table`]):
//!
//! - the proc macro (`liger-macros`) at compile time, reporting errors as `compile_error!`s on
//!   the user's tokens;
//! - [`source::compile_source`] at run time, for a loss file read by `liger run --loss` or
//!   `liger::compile_loss`, reporting the same errors rendered against the file.
//!
//! Every error is recorded on its token and lowering continues, so one pass reports every
//! independent mistake.

pub mod compile;
pub mod def;
pub mod errors;
pub mod helpers;
pub mod lower;
pub mod sig;
pub mod source;
pub mod table;
pub mod variants;

pub use compile::{Compiled, compile_fn};
pub use def::{DefaultDef, LossDef, ParamDef, RangeDef, SpecDef};
pub use errors::Errors;
pub use helpers::Helpers;
pub use lower::Ctx;
pub use source::{SourceDiagnostic, SourceErrors, compile_source};
