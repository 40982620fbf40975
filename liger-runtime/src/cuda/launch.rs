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

/// The arguments of a stream kernel ([`liger_ir::emit::abi`]'s stream parameters), in order.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StreamArgs {
    pub vals: u64,
    pub logits: u64,
    pub rows: u64,
    pub row0: i32,
    pub nrows: i32,
    /// `(S, T, V)`, `V` the whole vocabulary.
    pub sizes: (i32, i32, i32),
    /// Row stride of the logits and of the outputs.
    pub ld: i64,
    pub outs: u64,
    /// Vocab parallel: the shard's entries, its first entry, the partials and the round
    /// (`(V, 0, 0, 0)` for the whole vocabulary).
    pub shard: (i32, i32, u64, i32),
}

impl StreamArgs {
    /// The checked argument list of [`launch`].
    pub(crate) fn list(&self) -> [Arg; 15] {
        let (s, t, v) = self.sizes;
        let (vl, voff, part, round) = self.shard;
        [
            Arg::Ptr(self.vals),
            Arg::Ptr(self.logits),
            Arg::Ptr(self.rows),
            Arg::I32(self.row0),
            Arg::I32(self.nrows),
            Arg::I32(s),
            Arg::I32(t),
            Arg::I32(v),
            Arg::I64(self.ld),
            Arg::Ptr(self.outs),
            Arg::I64(self.ld),
            Arg::I32(vl),
            Arg::I32(voff),
            Arg::Ptr(part),
            Arg::I32(round),
        ]
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
