//! The CUDA C emitter: a scheduled gradient IR → one module of kernels.
//!
//! Kernels (names are stable; the module's source is deterministic):
//! - `liger_pre`, `liger_pre_late`, `liger_group`, `liger_group_needed`: *array programs* run
//!   by one block over whole-batch values (`Row`, `Seq`, `Pair`, `Batch`), one node after
//!   another (`array`);
//! - `liger_pre_stream`: the row reductions of head-free vocab values (a vocab stream with no
//!   logits, every row, before the chunk loop), when the loss has any;
//! - `liger_fwd` / `liger_fused` / `liger_unit` / `liger_bwd`: *vocab streams*, one block per
//!   row of a chunk, following the schedule's [`crate::stream::StreamPlan`] pass by pass
//!   (`stream`);
//! - `liger_add_bias`, `liger_bias`, `liger_coef_<head>`, `liger_scale_rows`,
//!   `liger_scaled_copy`: the bias add, the bias gradient and the deferred-scaling pieces
//!   (`aux`).
//!
//! Every kernel's signature comes from the ABI table ([`abi`]), which the executors launch
//! against. True sizes (`S`, `T`, `V`, rows of the chunk) are kernel arguments and every index
//! is bounds-checked, so nothing in the code depends on a size: the module is a function of
//! the gradient IR, the strategy and [`EmitOptions`] only. bf16/f16 need no CUDA headers:
//! stores round in PTX.

pub mod abi;
mod array;
mod aux;
mod expr;
mod stream;

use std::fmt::Write;

pub use abi::KernelKind;

use crate::func::{InputId, LossFn};
use crate::schedule::{Schedule, Strategy};
use crate::stream::StreamKind;

const PRELUDE: &str = include_str!("prelude.cu");

/// The emitter's version: bump on any change of the generated code's shape.
pub const EMITTER_VERSION: &str = "cuda-emitter-6";

/// What identifies the code generator in cache keys: its version, the ABI constants and the
/// prelude.
pub fn codegen_fingerprint() -> String {
    format!("{EMITTER_VERSION}\n{}{PRELUDE}", abi::c_defines())
}

/// A bug in the emitter (an op it has no form for where the schedule placed it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("internal error in the CUDA emitter: {0}")]
pub struct EmitError(pub String);

/// The dtype of GEMM inputs (and of `dlogits` written for the backward GEMMs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmDType {
    /// fp32.
    F32,
    /// bfloat16.
    BF16,
    /// IEEE half.
    F16,
}

impl GemmDType {
    /// Every GEMM dtype.
    pub const ALL: [GemmDType; 3] = [GemmDType::F32, GemmDType::BF16, GemmDType::F16];

    /// The name used in keys and reports.
    pub fn name(self) -> &'static str {
        match self {
            GemmDType::F32 => "f32",
            GemmDType::BF16 => "bf16",
            GemmDType::F16 => "f16",
        }
    }

    /// Parses a name.
    pub fn from_name(s: &str) -> Option<GemmDType> {
        GemmDType::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            GemmDType::F32 => 4,
            GemmDType::BF16 | GemmDType::F16 => 2,
        }
    }

    fn c_type(self) -> &'static str {
        match self {
            GemmDType::F32 => "float",
            GemmDType::BF16 | GemmDType::F16 => "unsigned short",
        }
    }
    fn store(self, x: &str) -> String {
        match self {
            GemmDType::F32 => x.to_string(),
            GemmDType::BF16 => format!("liger_f2bf({x})"),
            GemmDType::F16 => format!("liger_f2h({x})"),
        }
    }
    fn load(self, x: &str) -> String {
        match self {
            GemmDType::F32 => x.to_string(),
            GemmDType::BF16 => format!("__uint_as_float(((unsigned int){x}) << 16)"),
            GemmDType::F16 => format!("liger_h2f({x})"),
        }
    }
}

/// Codegen-affecting options: with the gradient IR and the strategy, everything the generated
/// code depends on (so, with the target and compiler, the kernel-cache key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EmitOptions {
    /// GEMM input dtype.
    pub gemm_dtype: GemmDType,
    /// Vocab parallel: the stream kernels run one round of their [`crate::shard::ShardPlan`]
    /// per launch over a shard of the vocabulary, and the module has `liger_shard_fix`.
    pub vocab_shards: bool,
}

impl EmitOptions {
    /// The options of a whole-vocabulary module with GEMM dtype `gemm_dtype`.
    pub fn new(gemm_dtype: GemmDType) -> Self {
        EmitOptions {
            gemm_dtype,
            vocab_shards: false,
        }
    }

    /// The options as named kernel-cache key components (every field: a new option enters
    /// the key by being listed here, which the destructuring below enforces).
    pub fn key_components(&self) -> Vec<(&'static str, String)> {
        let EmitOptions {
            gemm_dtype,
            vocab_shards,
        } = *self;
        let mut key = vec![("dtype", gemm_dtype.name().to_string())];
        // Listed only when set, so a whole-vocabulary module keeps its key.
        if vocab_shards {
            key.push(("vocab", "shards".to_string()));
        }
        key
    }
}

/// One kernel of a module.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelInfo {
    /// Its `extern "C"` name.
    pub name: String,
    /// What it does (and so its parameters, see [`KernelKind::params`]).
    pub kind: KernelKind,
    /// For `Coef`: the head.
    pub head: Option<InputId>,
}

/// A generated module.
#[derive(Clone, Debug, PartialEq)]
pub struct CudaModule {
    /// CUDA C source (ABI defines, prelude and kernels).
    pub source: String,
    /// Its kernels, in source order.
    pub kernels: Vec<KernelInfo>,
    /// The strategy the module implements.
    pub strategy: Strategy,
}

impl CudaModule {
    /// The kernel of `kind` (for `Coef`: of `head`).
    pub fn kernel(&self, kind: KernelKind, head: Option<InputId>) -> Option<&KernelInfo> {
        self.kernels
            .iter()
            .find(|k| k.kind == kind && (head.is_none() || k.head == head))
    }
}

fn stream_kernel_kind(k: StreamKind) -> (KernelKind, &'static str) {
    match k {
        StreamKind::Pre => (KernelKind::PreStream, "liger_pre_stream"),
        StreamKind::Forward => (KernelKind::Forward, "liger_fwd"),
        StreamKind::Fused => (KernelKind::Fused, "liger_fused"),
        StreamKind::Unit => (KernelKind::Unit, "liger_unit"),
        StreamKind::Backward => (KernelKind::Backward, "liger_bwd"),
    }
}

/// A stream kernel for the whole vocabulary, or its vocab-parallel rounds.
fn stream_text(
    g: &LossFn,
    name: &str,
    kind: KernelKind,
    plan: &crate::stream::StreamPlan,
    opts: &EmitOptions,
) -> Result<String, EmitError> {
    if opts.vocab_shards {
        stream::shard_kernel(g, name, kind, plan, opts)
    } else {
        stream::stream_kernel(g, name, kind, plan, opts)
    }
}

/// Emits the module of `strategy` for the scheduled gradient IR `g`.
pub fn emit_cuda(
    g: &LossFn,
    sched: &Schedule,
    strategy: Strategy,
    opts: &EmitOptions,
) -> Result<CudaModule, EmitError> {
    if !sched.candidates.contains(&strategy) {
        return Err(EmitError(format!(
            "strategy {strategy} does not apply to this loss"
        )));
    }
    let mut src = String::new();
    let _ = writeln!(
        src,
        "// liger kernels: {} ({}), gemm dtype {}{}",
        if g.name.is_empty() { "_" } else { &g.name },
        strategy.name(),
        opts.gemm_dtype.name(),
        if opts.vocab_shards {
            ", vocabulary in shards"
        } else {
            ""
        }
    );
    src += &abi::c_defines();
    src += PRELUDE;
    if opts.gemm_dtype == GemmDType::F16 {
        src += "__device__ __forceinline__ float liger_h2f(unsigned short h) {\n    float f;\n    asm(\"cvt.f32.f16 %0, %1;\" : \"=f\"(f) : \"h\"(h));\n    return f;\n}\n";
    }
    let mut kernels = Vec::new();
    let mut push = |src: &mut String, name: &str, kind: KernelKind, text: String| {
        src.push('\n');
        src.push_str(&text);
        kernels.push(KernelInfo {
            name: name.into(),
            kind,
            head: None,
        });
    };
    push(
        &mut src,
        "liger_add_bias",
        KernelKind::AddBias,
        aux::add_bias_kernel(),
    );
    push(
        &mut src,
        "liger_move_rows",
        KernelKind::MoveRows,
        aux::move_rows_kernel(),
    );
    push(
        &mut src,
        "liger_pre",
        KernelKind::Pre,
        array::array_kernel(g, "liger_pre", KernelKind::Pre, &sched.pre)?,
    );
    if let Some(plan) = sched.pre_stream_plan(g) {
        let (kind, name) = stream_kernel_kind(plan.kind);
        push(
            &mut src,
            name,
            kind,
            stream_text(g, name, kind, &plan, opts)?,
        );
        push(
            &mut src,
            "liger_pre_late",
            KernelKind::PreLate,
            array::array_kernel(g, "liger_pre_late", KernelKind::PreLate, &sched.pre_late)?,
        );
    }
    let streams = sched.streams(g, strategy);
    for (k, plan) in streams.iter().enumerate() {
        let (kind, name) = stream_kernel_kind(plan.kind);
        push(
            &mut src,
            name,
            kind,
            stream_text(g, name, kind, plan, opts)?,
        );
        // The group values the backward (or the deferred coefficients) need come between a
        // forward stream and what follows it.
        let needs_group = matches!(strategy, Strategy::GroupAligned | Strategy::Deferred);
        if k == 0 && needs_group {
            push(
                &mut src,
                "liger_group_needed",
                KernelKind::GroupNeeded,
                array::array_kernel(
                    g,
                    "liger_group_needed",
                    KernelKind::GroupNeeded,
                    &sched.group_needed,
                )?,
            );
        }
    }
    push(
        &mut src,
        "liger_group",
        KernelKind::Group,
        array::array_kernel(g, "liger_group", KernelKind::Group, &sched.group)?,
    );
    push(
        &mut src,
        "liger_bias",
        KernelKind::Bias,
        aux::bias_kernel(opts),
    );
    if opts.vocab_shards {
        push(
            &mut src,
            "liger_shard_fix",
            KernelKind::ShardFix,
            aux::shard_fix_kernel(),
        );
    }
    if strategy == Strategy::Deferred {
        src.push('\n');
        src += &aux::deferred_kernels(g, sched, opts, &mut kernels);
    }
    Ok(CudaModule {
        source: src,
        kernels,
        strategy,
    })
}
