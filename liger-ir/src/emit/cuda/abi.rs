//! The kernel ABI, defined once: the block size, the status words, and every kernel's
//! parameter list. The emitter writes each kernel's C signature from [`KernelKind::params`];
//! the executors launch through a checked argument list built against the same table (a
//! launch whose arguments do not match is an internal error, never undefined behaviour).
//!
//! Value table. Non-vocab values live in device arrays, one per IR node, in a table `vals`
//! indexed by the node's arena index ([`crate::ValueId::index`]): floats and masks as f32
//! words (masks 1.0/0.0), indices as i32 with -1 for an invalid row. Hyperparameters are
//! batch-level entries of that table, written per call, so changing one never recompiles.
//! `logits[k]` and `outs[k]` are indexed by the head's input index ([`crate::InputId`]).

/// Threads per block of every generated kernel (the prelude's `LIGER_BLOCK`).
pub const BLOCK: u32 = 256;

/// Vocabulary positions per thread and loop trip whose logits are loaded together (the
/// prelude's `LIGER_UNROLL`).
pub const UNROLL: u32 = 4;

/// The status words the array kernels write (`int[WORDS]`, initialised to [`status::INIT`]).
pub mod status {
    /// 1 when a `seq_mean` found a sequence with no row under its mask.
    pub const EMPTY_SEQ: usize = 0;
    /// The first such sequence (`atomicMin`).
    pub const EMPTY_SEQ_INDEX: usize = 1;
    /// 1 when a row-level `mean` selected no row in the batch (the result is 0).
    pub const MEAN_NO_ROWS: usize = 2;
    /// 1 when a masked `seq_sum` found a sequence with no row under its mask (the sum is 0).
    pub const EMPTY_SUM: usize = 3;
    /// The first such sequence (`atomicMin`).
    pub const EMPTY_SUM_INDEX: usize = 4;
    /// Words in the status array.
    pub const WORDS: usize = 5;
    /// The initial words (the index words start at `i32::MAX` for `atomicMin`).
    pub const INIT: [i32; WORDS] = [0, i32::MAX, 0, 0, i32::MAX];
}

/// The type of a kernel parameter, as the launcher passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamTy {
    /// A device address (any pointer; 0 for a null pointer where the kernel allows one).
    Ptr,
    /// A 32-bit integer.
    I32,
    /// A 64-bit integer.
    I64,
}

/// One kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// Its name in the kernel.
    pub name: &'static str,
    /// Its type.
    pub ty: ParamTy,
    /// Its C declaration type.
    pub c: &'static str,
}

const fn p(name: &'static str, ty: ParamTy, c: &'static str) -> Param {
    Param { name, ty, c }
}

/// How a kernel is launched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Grid {
    /// One block of [`BLOCK`] threads.
    OneBlock,
    /// One block of [`BLOCK`] threads per row of the chunk (`nrows`).
    BlockPerRow,
    /// One thread per element of a count the launcher gives (blocks of [`BLOCK`]).
    PerElement,
}

/// What a kernel does (how the executor launches it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KernelKind {
    /// Whole-batch values before the chunk loop.
    Pre,
    /// Row reductions of head-free vocab values, every row, before the chunk loop.
    PreStream,
    /// Whole-batch values after the pre stream.
    PreLate,
    /// Forward vocab stream.
    Forward,
    /// Forward and backward fused, writing gradients.
    Fused,
    /// Forward stream writing the deferred units.
    Unit,
    /// The group values the backward needs.
    GroupNeeded,
    /// The whole group stage.
    Group,
    /// Backward vocab stream writing gradients.
    Backward,
    /// Bias gradient column sums (one thread per vocab entry).
    Bias,
    /// Per-row deferred coefficient of one head (one thread per row).
    Coef,
    /// Scales rows of an f32 matrix (one thread per element).
    ScaleRows,
    /// Writes `c_r · x_r` in the GEMM dtype (one thread per element).
    ScaledCopy,
    /// Adds the bias to fp32 logits after the lm-head GEMM (one thread per element).
    AddBias,
    /// Copies rows through row maps (one thread per 2- or 4-byte word): gathers a chunk's
    /// rows of `x` into one contiguous block, scatters its `dx` rows back.
    MoveRows,
    /// Vocab parallel: rescales a round's partials between its all-reduces (one thread per
    /// slot and row).
    ShardFix,
}

const ARRAY: &[Param] = &[
    p("vals", ParamTy::Ptr, "void* const* __restrict__"),
    p("S", ParamTy::I32, "int"),
    p("T", ParamTy::I32, "int"),
    p("V", ParamTy::I32, "int"),
    p("status", ParamTy::Ptr, "int* __restrict__"),
];

const STREAM: &[Param] = &[
    p("vals", ParamTy::Ptr, "void* const* __restrict__"),
    p("logits", ParamTy::Ptr, "const float* const* __restrict__"),
    p("rows", ParamTy::Ptr, "const int* __restrict__"),
    p("row0", ParamTy::I32, "int"),
    p("nrows", ParamTy::I32, "int"),
    p("S", ParamTy::I32, "int"),
    p("T", ParamTy::I32, "int"),
    p("V", ParamTy::I32, "int"),
    p("ld", ParamTy::I64, "long long"),
    p("outs", ParamTy::Ptr, "void* const* __restrict__"),
    p("ldo", ParamTy::I64, "long long"),
    // Vocab parallel (see `crate::shard`): the shard's entries and first entry, the rounds'
    // partials and the round to run. A module for the whole vocabulary reads none of them
    // (`Vl = V`, `voff = 0`, `part` null, `round` 0).
    p("Vl", ParamTy::I32, "int"),
    p("voff", ParamTy::I32, "int"),
    p("part", ParamTy::Ptr, "float* __restrict__"),
    p("round", ParamTy::I32, "int"),
];

const SHARD_FIX: &[Param] = &[
    p("part", ParamTy::Ptr, "float* __restrict__"),
    p("nrows", ParamTy::I32, "int"),
    p("nm", ParamTy::I32, "int"),
    p("ns", ParamTy::I32, "int"),
    p("nl", ParamTy::I32, "int"),
    p("na", ParamTy::I32, "int"),
];

const BIAS: &[Param] = &[
    p("dz", ParamTy::Ptr, "const void* __restrict__"),
    p("nrows", ParamTy::I32, "int"),
    p("V", ParamTy::I32, "int"),
    p("ldz", ParamTy::I64, "long long"),
    p("coef", ParamTy::Ptr, "const float* __restrict__"),
    p("db", ParamTy::Ptr, "float* __restrict__"),
];

const COEF: &[Param] = &[
    p("vals", ParamTy::Ptr, "void* const* __restrict__"),
    p("rows", ParamTy::Ptr, "const int* __restrict__"),
    p("row0", ParamTy::I32, "int"),
    p("nrows", ParamTy::I32, "int"),
    p("S", ParamTy::I32, "int"),
    p("T", ParamTy::I32, "int"),
    p("out", ParamTy::Ptr, "float* __restrict__"),
];

const SCALE_ROWS: &[Param] = &[
    p("x", ParamTy::Ptr, "float* __restrict__"),
    p("ldx", ParamTy::I64, "long long"),
    p("nrows", ParamTy::I32, "int"),
    p("h", ParamTy::I32, "int"),
    p("c", ParamTy::Ptr, "const float* __restrict__"),
];

const SCALED_COPY: &[Param] = &[
    p("x", ParamTy::Ptr, "const void* __restrict__"),
    p("ldx", ParamTy::I64, "long long"),
    p("nrows", ParamTy::I32, "int"),
    p("h", ParamTy::I32, "int"),
    p("c", ParamTy::Ptr, "const float* __restrict__"),
    p("out", ParamTy::Ptr, "void* __restrict__"),
];

const MOVE_ROWS: &[Param] = &[
    p("src", ParamTy::Ptr, "const void* __restrict__"),
    p("lds", ParamTy::I64, "long long"),
    p("smap", ParamTy::Ptr, "const int* __restrict__"),
    p("dst", ParamTy::Ptr, "void* __restrict__"),
    p("ldd", ParamTy::I64, "long long"),
    p("dmap", ParamTy::Ptr, "const int* __restrict__"),
    p("nrows", ParamTy::I32, "int"),
    p("words", ParamTy::I32, "int"),
    p("wide", ParamTy::I32, "int"),
];

const ADD_BIAS: &[Param] = &[
    p("z", ParamTy::Ptr, "float* __restrict__"),
    p("b", ParamTy::Ptr, "const float* __restrict__"),
    p("rows", ParamTy::I32, "int"),
    p("V", ParamTy::I32, "int"),
    p("ld", ParamTy::I64, "long long"),
];

impl KernelKind {
    /// Every kind.
    pub const ALL: [KernelKind; 16] = [
        KernelKind::Pre,
        KernelKind::PreStream,
        KernelKind::PreLate,
        KernelKind::Forward,
        KernelKind::Fused,
        KernelKind::Unit,
        KernelKind::GroupNeeded,
        KernelKind::Group,
        KernelKind::Backward,
        KernelKind::Bias,
        KernelKind::Coef,
        KernelKind::ScaleRows,
        KernelKind::ScaledCopy,
        KernelKind::AddBias,
        KernelKind::MoveRows,
        KernelKind::ShardFix,
    ];

    /// The parameter list, in order.
    pub fn params(self) -> &'static [Param] {
        match self {
            KernelKind::Pre | KernelKind::PreLate | KernelKind::Group | KernelKind::GroupNeeded => {
                ARRAY
            }
            KernelKind::PreStream
            | KernelKind::Forward
            | KernelKind::Fused
            | KernelKind::Unit
            | KernelKind::Backward => STREAM,
            KernelKind::Bias => BIAS,
            KernelKind::Coef => COEF,
            KernelKind::ScaleRows => SCALE_ROWS,
            KernelKind::ScaledCopy => SCALED_COPY,
            KernelKind::AddBias => ADD_BIAS,
            KernelKind::MoveRows => MOVE_ROWS,
            KernelKind::ShardFix => SHARD_FIX,
        }
    }

    /// How it is launched.
    pub fn grid(self) -> Grid {
        match self {
            KernelKind::Pre | KernelKind::PreLate | KernelKind::Group | KernelKind::GroupNeeded => {
                Grid::OneBlock
            }
            KernelKind::PreStream
            | KernelKind::Forward
            | KernelKind::Fused
            | KernelKind::Unit
            | KernelKind::Backward => Grid::BlockPerRow,
            KernelKind::Bias
            | KernelKind::Coef
            | KernelKind::ScaleRows
            | KernelKind::ScaledCopy
            | KernelKind::AddBias
            | KernelKind::MoveRows
            | KernelKind::ShardFix => Grid::PerElement,
        }
    }

    /// Whether the kernel requires exactly [`BLOCK`] threads (it uses block reductions).
    pub fn needs_full_block(self) -> bool {
        matches!(self.grid(), Grid::OneBlock | Grid::BlockPerRow)
    }
}

/// The C signature of kernel `name` of `kind`: `extern "C" __global__ void …(…)`.
pub fn c_signature(kind: KernelKind, name: &str) -> String {
    let params: Vec<String> = kind
        .params()
        .iter()
        .map(|p| format!("{} {}", p.c, p.name))
        .collect();
    let bounds = if kind.needs_full_block() {
        "__launch_bounds__(LIGER_BLOCK, 1) "
    } else {
        ""
    };
    format!(
        "extern \"C\" __global__ void {bounds}{name}(\n    {})",
        params.join(", ")
    )
}

/// The `#define`s of the ABI constants, written at the top of every module.
pub fn c_defines() -> String {
    format!(
        "#define LIGER_BLOCK {BLOCK}\n#define LIGER_UNROLL {UNROLL}\n#define LIGER_STATUS_EMPTY_SEQ {}\n#define LIGER_STATUS_EMPTY_SEQ_INDEX {}\n#define LIGER_STATUS_MEAN_NO_ROWS {}\n#define LIGER_STATUS_EMPTY_SUM {}\n#define LIGER_STATUS_EMPTY_SUM_INDEX {}\n",
        status::EMPTY_SEQ,
        status::EMPTY_SEQ_INDEX,
        status::MEAN_NO_ROWS,
        status::EMPTY_SUM,
        status::EMPTY_SUM_INDEX
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_signature_with_its_params() {
        for k in KernelKind::ALL {
            let sig = c_signature(k, "k");
            for p in k.params() {
                assert!(sig.contains(&format!("{} {}", p.c, p.name)), "{k:?}: {sig}");
            }
        }
        assert!(status::INIT.len() == status::WORDS);
    }
}
