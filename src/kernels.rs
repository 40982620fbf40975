//! From a loss to cached CUDA kernels: the IR stages, the emitted module, its cache key, and
//! NVRTC through the kernel cache (see `liger_runtime::cache`).

use std::sync::Arc;

use liger_ir::emit::{CudaModule, EmitOptions, GemmDType, emit_cuda};
use liger_ir::{LossFn, Schedule, Strategy};
use liger_runtime::cache::{Artifacts, Binary, Cache, KeyParts, Origin, bucket, hash_text};

use crate::Error;
use crate::loss::{ChunkedLoss, SpecInfo};

/// What to compile.
#[derive(Clone, Debug)]
pub struct KernelRequest {
    /// The schedule (`None`: the first candidate).
    pub strategy: Option<Strategy>,
    /// GEMM input dtype.
    pub gemm_dtype: GemmDType,
    /// `V`.
    pub vocab: usize,
    /// `H` of every head.
    pub hidden: Vec<usize>,
    /// Rows per chunk (bucketed).
    pub chunk_rows: usize,
    /// `T` (bucketed).
    pub seq_len: usize,
    /// Target (`sm_90`; `compute_90` for PTX).
    pub arch: String,
    /// Driver version (`None` without a GPU).
    pub driver: Option<String>,
}

impl Default for KernelRequest {
    fn default() -> Self {
        KernelRequest {
            strategy: None,
            gemm_dtype: GemmDType::BF16,
            vocab: 128256,
            hidden: vec![4096],
            chunk_rows: 1024,
            seq_len: 1024,
            arch: "sm_90".into(),
            driver: None,
        }
    }
}

/// Every stage of one specialisation, and its module.
#[derive(Clone, Debug)]
pub struct Stages {
    /// The surface IR (as lowered by the macro).
    pub surface: LossFn,
    /// The simplified gradient IR.
    pub grad: LossFn,
    /// Its schedule.
    pub schedule: Schedule,
    /// The strategy emitted.
    pub strategy: Strategy,
    /// The CUDA module.
    pub module: CudaModule,
}

/// The IR stages and CUDA of `spec`.
pub fn stages(
    loss: &dyn ChunkedLoss,
    spec: &SpecInfo,
    strategy: Option<Strategy>,
    dtype: GemmDType,
) -> Result<Stages, Error> {
    let surface = loss.ir(spec)?;
    let g = liger_ir::differentiate(&surface).map_err(|diagnostics| Error::InvalidIr {
        loss: loss.name().into(),
        spec: spec.describe(),
        diagnostics,
    })?;
    stages_of(surface, liger_ir::simplify(&g), strategy, dtype)
}

/// The stages of a surface IR and its simplified gradient.
pub fn stages_of(
    surface: LossFn,
    grad: LossFn,
    strategy: Option<Strategy>,
    dtype: GemmDType,
) -> Result<Stages, Error> {
    let schedule = Schedule::of(&grad);
    let strategy = match strategy {
        Some(s) if !schedule.candidates.contains(&s) => {
            let names: Vec<&str> = schedule.candidates.iter().map(|c| c.name()).collect();
            return Err(Error::Schedule {
                schedule: s.name(),
                why: format!("applicable: {}", names.join(", ")),
            });
        }
        Some(s) => s,
        None => schedule.candidates[0],
    };
    let module = emit_cuda(
        &grad,
        &schedule,
        strategy,
        &EmitOptions { gemm_dtype: dtype },
    );
    Ok(Stages {
        surface,
        grad,
        schedule,
        strategy,
        module,
    })
}

/// The named components of the cache key of `stages` for `req`.
pub fn key_parts(
    stages: &Stages,
    spec: &SpecInfo,
    req: &KernelRequest,
    nvrtc: (i32, i32),
) -> KeyParts {
    let values: Vec<&str> = spec.choices.iter().map(|(_, v)| *v).collect();
    KeyParts::new()
        .with(
            "compiler",
            format!(
                "liger {} codegen {}",
                env!("CARGO_PKG_VERSION"),
                hash_text(&liger_ir::emit::cuda::codegen_fingerprint())
            ),
        )
        .with("ir", hash_text(&liger_ir::canonical_text(&stages.grad)))
        .with("specialization", values.join(","))
        .with("schedule", stages.strategy.name())
        .with("dtype", req.gemm_dtype.name())
        .with("vocab", req.vocab.to_string())
        .with(
            "hidden",
            req.hidden
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .with(
            "bucket",
            format!(
                "rows {} seq {}",
                bucket(req.chunk_rows),
                bucket(req.seq_len)
            ),
        )
        .with("arch", req.arch.clone())
        .with("nvrtc", format!("{}.{}", nvrtc.0, nvrtc.1))
        .with(
            "driver",
            req.driver.clone().unwrap_or_else(|| "none".into()),
        )
        .with(
            "options",
            format!(
                "{:?}",
                EmitOptions {
                    gemm_dtype: req.gemm_dtype
                }
            ),
        )
}

/// A compiled module and where it came from.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The stages.
    pub stages: Stages,
    /// The key.
    pub key: KeyParts,
    /// CUBIN or PTX.
    pub binary: Arc<Binary>,
    /// Memory, disk or NVRTC.
    pub origin: Origin,
}

/// Compiles `spec` of `loss` for `req` through `cache`.
pub fn compile(
    loss: &dyn ChunkedLoss,
    spec: &SpecInfo,
    req: &KernelRequest,
    cache: &Cache,
) -> Result<Compiled, Error> {
    let st = stages(loss, spec, req.strategy, req.gemm_dtype)?;
    compile_stages(st, spec, req, cache)
}

/// Compiles already derived stages through `cache`.
pub fn compile_stages(
    st: Stages,
    spec: &SpecInfo,
    req: &KernelRequest,
    cache: &Cache,
) -> Result<Compiled, Error> {
    let nv = liger_runtime::cuda::libs::nvrtc()?;
    let parts = key_parts(&st, spec, req, nv.version);
    let artifacts = Artifacts {
        surface: liger_ir::print(&st.surface),
        grad: liger_ir::print(&st.grad),
        schedule: st.schedule.render(&st.grad),
        cuda: st.module.source.clone(),
    };
    let arch = req.arch.clone();
    let source = st.module.source.clone();
    let (binary, origin) = cache.get_or_compile(&parts, &artifacts, || {
        let c = liger_runtime::cuda::nvrtc::compile(&source, "liger.cu", &arch)?;
        let spills = c.spills();
        if let Some(k) = spills.first() {
            return Err(Error::Compile {
                arch: arch.clone(),
                log: format!("kernel {} spills registers:\n{}", k.name, c.log),
            });
        }
        let registers = c
            .kernels
            .iter()
            .map(|k| (k.name.clone(), k.registers))
            .collect();
        let (bytes, is_ptx) = match (c.cubin, c.ptx) {
            (Some(b), _) => (b, false),
            (None, Some(p)) => (p.into_bytes(), true),
            (None, None) => {
                return Err(Error::Compile {
                    arch: arch.clone(),
                    log: format!("NVRTC produced no binary\n{}", c.log),
                });
            }
        };
        Ok(Binary {
            arch: c.arch,
            bytes,
            is_ptx,
            registers,
            log: c.log,
            compile_ms: c.millis,
        })
    })?;
    Ok(Compiled {
        stages: st,
        key: parts,
        binary,
        origin,
    })
}
