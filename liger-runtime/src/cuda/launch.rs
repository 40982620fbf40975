//! Launching generated kernels through the ABI table: the argument list is checked against the
//! kernel's parameter list ([`liger_ir::emit::abi`]) before anything is queued, the block size
//! and grid come from the same table, and an empty launch is skipped. A mismatch is
//! [`Error::Internal`]: never a launch with the wrong arguments.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaStream, LaunchConfig, PushKernelArg};
use liger_ir::emit::abi::{BLOCK, Grid, KernelKind, ParamTy};

use crate::Error;
use crate::cuda::drv;

/// One kernel argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arg {
    /// A device address (0: null).
    Ptr(u64),
    /// A 32-bit integer.
    I32(i32),
    /// A 64-bit integer.
    I64(i64),
}

impl Arg {
    fn ty(self) -> ParamTy {
        match self {
            Arg::Ptr(_) => ParamTy::Ptr,
            Arg::I32(_) => ParamTy::I32,
            Arg::I64(_) => ParamTy::I64,
        }
    }
}

/// A size as a kernel's `int`, or an error (no silent truncation).
pub(crate) fn i32_of(what: &str, n: usize) -> Result<i32, Error> {
    i32::try_from(n).map_err(|_| {
        Error::Internal(format!(
            "{what} = {n} does not fit the kernels' 32-bit index"
        ))
    })
}

/// The launch shape of `kind` for `n` rows (`BlockPerRow`) or elements (`PerElement`).
pub(crate) fn config(kind: KernelKind, n: usize) -> LaunchConfig {
    let blocks = match kind.grid() {
        Grid::OneBlock => 1,
        Grid::BlockPerRow => n,
        Grid::PerElement => n.div_ceil(BLOCK as usize),
    };
    LaunchConfig {
        grid_dim: (blocks.min(u32::MAX as usize) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Queues kernel `f` of `kind` on `st` with `args` over `n` rows or elements (ignored for a
/// one-block kernel; `n == 0` queues nothing).
pub(crate) fn launch(
    st: &Arc<CudaStream>,
    f: &CudaFunction,
    kind: KernelKind,
    args: &[Arg],
    n: usize,
) -> Result<(), Error> {
    let params = kind.params();
    if args.len() != params.len() || args.iter().zip(params).any(|(a, p)| a.ty() != p.ty) {
        return Err(Error::Internal(format!(
            "kernel {kind:?} takes ({}), the launch passed {args:?}",
            params
                .iter()
                .map(|p| format!("{} {}", p.c, p.name))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if n == 0 && kind.grid() != Grid::OneBlock {
        return Ok(());
    }
    if kind.grid() == Grid::BlockPerRow && n > u32::MAX as usize {
        return Err(Error::Internal(format!("{n} rows exceed the grid")));
    }
    let mut b = st.launch_builder(f);
    for a in args {
        match a {
            Arg::Ptr(p) => b.arg(p),
            Arg::I32(x) => b.arg(x),
            Arg::I64(x) => b.arg(x),
        };
    }
    // SAFETY: the arguments match the kernel's ABI parameter list in number and type
    // (checked above); every pointer the callers pass is a live allocation of this context
    // sized for the sizes they pass (each call site says how), and the kernels bounds-check
    // every index against those sizes.
    unsafe { b.launch(config(kind, n)) }.map_err(drv("launching a generated kernel"))?;
    Ok(())
}
