//! `liger ir`: the IR stages of a loss (surface, gradient, schedule, CUDA).

use super::target::{dtype_of, pipeline_of, strategy_for};
use super::{IrCommand, out};
use crate::Error;
use crate::ir::emit::EmitOptions;

pub(crate) fn ir(what: IrCommand) -> Result<(), Error> {
    match what {
        IrCommand::Check(t) => {
            let (p, _) = pipeline_of(&t)?;
            let f = p.surface().unwrap_or(p.grad());
            out(&liger_ir::print(f));
            out(&format!(
                "; ok: {} nodes, {} inputs, {} outputs; differentiable; {}\n",
                f.nodes.len(),
                f.inputs.len(),
                f.outputs.len(),
                if p.schedule().row_local {
                    "row-local"
                } else {
                    "not row-local"
                }
            ));
        }
        IrCommand::Grad(t) => out(&liger_ir::print(pipeline_of(&t)?.0.grad())),
        IrCommand::Schedule(t) => {
            let (p, _) = pipeline_of(&t)?;
            out(&p.schedule().render(p.grad()));
        }
        IrCommand::Emit { target, arch } => {
            let (p, _) = pipeline_of(&target)?;
            let strategy = strategy_for(&p, &target)?;
            let opts = EmitOptions::new(dtype_of(&target.dtype)?);
            let module = p
                .module(strategy, &opts)
                .map_err(|e| crate::runtime::Error::Internal(e.to_string()))?;
            out(&format!(
                "// target {arch}, schedule {strategy}\n{}",
                module.source
            ));
        }
    }
    Ok(())
}
