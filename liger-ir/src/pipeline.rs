//! The pipeline object (in the manner of Cranelift's `Context`): the one place a loss becomes
//! its gradient IR, its schedule and, per strategy, its CUDA module.
//!
//! ```text
//! surface IR ──verify──▶ differentiate ──▶ simplify ──▶ Schedule::of ──▶ emit_cuda(strategy, opts)
//! ```
//!
//! The executors, the command line's `ir` and `cache` commands and the kernel cache all go
//! through a [`Pipeline`], so they see the same gradient IR, schedule and module; what
//! identifies a module is [`Pipeline::canonical`] (the gradient IR without names and source
//! locations), the strategy and the [`EmitOptions`] — nothing else reaches the generated code.

use crate::diag::{DiagKind, Diagnostic, Diagnostics, Site};
use crate::emit::{CudaModule, EmitError, EmitOptions, emit_cuda};
use crate::func::LossFn;
use crate::schedule::{Cost, Dims, Schedule, Strategy};

/// A loss through every stage of the compiler.
#[derive(Clone, Debug, PartialEq)]
pub struct Pipeline {
    surface: Option<LossFn>,
    grad: LossFn,
    schedule: Schedule,
    canonical: String,
}

impl Pipeline {
    /// Verifies, differentiates, simplifies and schedules the surface IR `surface`.
    pub fn new(surface: LossFn) -> Result<Pipeline, Diagnostics> {
        crate::verify(&surface)?;
        let grad = crate::simplify(&crate::differentiate(&surface)?);
        let mut p = Pipeline::from_gradient(grad)?;
        p.surface = Some(surface);
        Ok(p)
    }

    /// Schedules a gradient IR (already differentiated and simplified).
    pub fn from_gradient(grad: LossFn) -> Result<Pipeline, Diagnostics> {
        crate::verify(&grad)?;
        if grad.grads().next().is_none()
            && grad
                .inputs
                .iter()
                .any(|i| i.kind == crate::InputKind::Logits)
        {
            return Err(Diagnostics(vec![Diagnostic::new(
                DiagKind::Internal,
                Site::Function,
                "a gradient IR has one `grad` output per logits head: differentiate the loss first",
            )]));
        }
        let schedule = Schedule::of(&grad);
        if let Some(why) = schedule.unschedulable(&grad) {
            return Err(Diagnostics(vec![Diagnostic::new(
                DiagKind::Unschedulable,
                Site::Function,
                why,
            )]));
        }
        let canonical = crate::canonical_text(&grad);
        Ok(Pipeline {
            surface: None,
            grad,
            schedule,
            canonical,
        })
    }

    /// The surface IR, when the pipeline started from one.
    pub fn surface(&self) -> Option<&LossFn> {
        self.surface.as_ref()
    }

    /// The simplified gradient IR.
    pub fn grad(&self) -> &LossFn {
        &self.grad
    }

    /// Its schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The canonical text of the gradient IR: the loss's identity in kernel-cache keys.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// `force` if it applies to this loss, else the first candidate (the cheapest in GEMM
    /// work); an inapplicable strategy is an error saying why and what applies.
    pub fn strategy(&self, force: Option<Strategy>) -> Result<Strategy, String> {
        let s = &self.schedule;
        match force {
            None => Ok(s.candidates[0]),
            Some(f) if s.candidates.contains(&f) => Ok(f),
            Some(f) => {
                let names: Vec<&str> = s.candidates.iter().map(|c| c.name()).collect();
                let why = match (f, s.row_local) {
                    (Strategy::Fused, false) => format!(
                        "the loss is not row-local: a row's gradient waits for its {}",
                        s.group_level
                            .map_or("group".to_string(), |l| l.name().to_string())
                    ),
                    (Strategy::Deferred, false) => {
                        "the gradient does not factor as c_row * U".to_string()
                    }
                    (_, true) => "the loss is row-local: it runs fused".to_string(),
                    _ => "it does not apply".to_string(),
                };
                Err(format!("{why}; applicable: {}", names.join(", ")))
            }
        }
    }

    /// The work of strategy `s` at sizes `d`.
    pub fn cost(&self, s: Strategy, d: &Dims) -> Cost {
        self.schedule.cost(&self.grad, s, d)
    }

    /// The CUDA module of strategy `s`.
    pub fn module(&self, s: Strategy, opts: &EmitOptions) -> Result<CudaModule, EmitError> {
        emit_cuda(&self.grad, &self.schedule, s, opts)
    }
}
