//! The built-in losses, written with `#[chunked_loss]` like any user loss.

mod cpo;
mod distill;
mod dpo;
mod flce;
mod grpo;
mod jsd;
mod kto;
mod orpo;
mod simpo;

pub use cpo::*;
pub use distill::*;
pub use dpo::*;
pub use flce::*;
pub use grpo::*;
pub use jsd::*;
pub use kto::*;
pub use orpo::*;
pub use simpo::*;

use crate::ChunkedLoss;

/// Every built-in loss.
pub fn builtin() -> Vec<&'static dyn ChunkedLoss> {
    vec![
        &Dpo,
        &Cpo,
        &Simpo,
        &Orpo,
        &Kto,
        &Grpo,
        &Flce,
        &Jsd,
        &KlDistill,
        &CosineDistill,
    ]
}

/// The built-in loss called `name`.
pub fn by_name(name: &str) -> Result<&'static dyn ChunkedLoss, crate::Error> {
    builtin()
        .into_iter()
        .find(|l| l.name() == name)
        .ok_or_else(|| crate::Error::UnknownLoss {
            name: name.into(),
            known: format!(
                "{} (the built-in losses; a loss of your own runs from its file with --loss FILE)",
                builtin()
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
}
