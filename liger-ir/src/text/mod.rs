//! The canonical text form of the IR (`.lir`).
//!
//! ```text
//! ; liger-ir v1
//! loss dpo {
//!   input policy: logits                  ; @dpo.rs:3:5
//!   input target: target
//!   input beta: param
//!   v0: bool[row] = valid target
//!   v1: f32[row] = logprob policy, target ; @dpo.rs:5:14
//!   v2: f32[seq] = seq_sum v1, v0
//!   ...
//!   metric "chosen_rewards" = v7
//!   loss = v9
//!   grad policy = v20
//! }
//! ```
//!
//! One definition per line; `;` starts a comment; a trailing `; @file:line:col` comment is the
//! node's source location. Inputs are referred to by name, other values by `v<n>`, renumbered
//! densely by the printer (the parser accepts any identifier as a value name, so hand-written
//! files may use `lp`, `rf`, …). Type annotations are optional when parsing and always printed.
//! Floats print in Rust's shortest round-trip form, so parse → print → parse is the identity.

mod parse;
mod print;

pub use parse::{SourceMap, parse, parse_mapped, render_diagnostics, render_excerpt};
pub use print::{canonical_text, print, value_names};

/// The version line every `.lir` file starts with.
pub const HEADER: &str = "; liger-ir v1";
