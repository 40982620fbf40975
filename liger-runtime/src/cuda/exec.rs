//! The CUDA executor: the schedule's streams on the GPU, with cuBLAS GEMMs (GEMM-dtype
//! inputs, fp32 logits, fp32 `dx` and `dW` accumulators) and the generated kernels, for every
//! strategy (fused, two passes, group-aligned, deferred row scaling).
//!
//! `enqueue` is the core: given device pointers to the heads and the side inputs (as host
//! words or device tensors the I/O kernels convert and check), it plans the chunks under the
//! budget and queues every copy, GEMM and kernel on one stream, never synchronising it; the
//! result (`Ran`) holds the device buffers of the loss, metrics and gradients (in the dtypes
//! asked for), the status words and two events. The host API ([`run`]) checks host tensors,
//! uploads them to the engine's stream, enqueues, synchronises and reads back; the device API
//! ([`crate::cuda::api`]) enqueues on the caller's stream and returns the buffers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use half::{bf16, f16};
use liger_ir::emit::{EmitOptions, GemmDType, KernelKind, emit_cuda};
use liger_ir::{DType, Level, LossFn, Op, OutputKind, Schedule, Strategy};

use crate::cache::{Artifacts, Binary, Cache, KeyParts, bucket, hash_text};
use crate::cpu::eval::Arr;
use crate::cpu::{Prepared, prepare};
use crate::cuda::device::upload_values;
use crate::cuda::engine::{Engine, lock};
use crate::cuda::gemm::Gemm;
use crate::cuda::profile::{Marks, Profiler, summarize};
use crate::output::{GradBuf, HeadGrads, LossOutput, MetricOutput, Report};
use crate::plan::{GradDTypes, RunOptions};
use crate::tensor::{DType as HDType, TensorData};
use crate::{Error, InputSet};

fn derr(e: impl std::fmt::Debug) -> Error {
    Error::Cuda {
        lib: "cuda",
        why: format!("{e:?}"),
    }
}

/// The device address of `s` for work queued on `st` (stream-ordered after its last write).
pub(crate) fn dptr<T>(s: &CudaSlice<T>, st: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(st);
    p
}

/// Uploads a float tensor in its own dtype as raw bytes.
fn upload_raw(st: &Arc<CudaStream>, data: TensorData<'_>) -> Result<CudaSlice<u8>, Error> {
    let bytes: Vec<u8> = match data {
        TensorData::F32(x) => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        TensorData::BF16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        TensorData::F16(x) => x.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect(),
        TensorData::F64(x) => x.iter().flat_map(|v| (*v as f32).to_le_bytes()).collect(),
        _ => Vec::new(),
    };
    st.clone_htod(&bytes).map_err(derr)
}

/// The compiled module of `strategy` for `g`, through `cache`: its cache key, binary and
/// kernel list.
#[allow(clippy::too_many_arguments)]
pub fn module_for(
    g: &LossFn,
    sched: &Schedule,
    strategy: Strategy,
    dtype: GemmDType,
    (vocab, hidden, rows, seq): (usize, &[usize], usize, usize),
    arch: &str,
    driver: (i32, i32),
    cache: &Cache,
) -> Result<(String, Arc<Binary>, Vec<liger_ir::emit::KernelInfo>), Error> {
    let module = emit_cuda(g, sched, strategy, &EmitOptions { gemm_dtype: dtype });
    let nv = crate::cuda::libs::nvrtc()?;
    let parts = KeyParts::new()
        .with(
            "compiler",
            format!(
                "liger {} codegen {}",
                env!("CARGO_PKG_VERSION"),
                hash_text(&liger_ir::emit::cuda::codegen_fingerprint())
            ),
        )
        .with("ir", hash_text(&liger_ir::canonical_text(g)))
        .with("schedule", strategy.name())
        .with("dtype", dtype.name())
        .with("vocab", vocab.to_string())
        .with(
            "hidden",
            hidden
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(","),
        )
        .with(
            "bucket",
            format!("rows {} seq {}", bucket(rows), bucket(seq)),
        )
        .with("arch", arch)
        .with("nvrtc", format!("{}.{}", nv.version.0, nv.version.1))
        .with("driver", format!("{}.{}", driver.0, driver.1))
        .with(
            "options",
            format!("{:?}", EmitOptions { gemm_dtype: dtype }),
        );
    let artifacts = Artifacts {
        surface: String::new(),
        grad: liger_ir::print(g),
        schedule: sched.render(g),
        cuda: module.source.clone(),
    };
    let (b, _) = cache.get_or_compile(&parts, &artifacts, || {
        crate::cuda::nvrtc::cubin(&module.source, "liger.cu", arch)
    })?;
    Ok((parts.key(), b, module.kernels))
}

/// One lm head on the device, as raw addresses valid until the queued work has run.
pub(crate) struct DevHead {
    /// The head's name.
    pub name: String,
    /// Its input index in the IR.
    pub input: usize,
    /// `x [S,T,H]` in the GEMM dtype.
    pub x: u64,
    /// `W [V,H]` in the GEMM dtype.
    pub w: u64,
    /// `b [V]` in f32.
    pub b: Option<u64>,
    /// Hidden size.
    pub h: usize,
    /// Whether its gradients are computed.
    pub grad: bool,
}

/// What a device input becomes in the value table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SideKind {
    /// Float data to f32 words, checked finite.
    Float,
    /// Token ids to int32 words, checked in `[0, V)`; targets map `ignore_index` to -1.
    Tokens { target: bool },
    /// A mask to 1.0 / 0.0 words.
    Mask,
}

/// A side input that lives on the device: converted (and checked) by the I/O kernels.
pub(crate) struct DevSide {
    /// The input's name.
    pub name: String,
    /// Its IR node.
    pub node: usize,
    /// What it becomes.
    pub kind: SideKind,
    /// Its address.
    pub ptr: u64,
    /// Its dtype.
    pub dtype: HDType,
    /// Elements.
    pub len: usize,
}

/// What a check slot checks (for its error).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CheckWhat {
    /// Every value finite.
    Finite,
    /// Token ids in `[0, vocab)` (targets: or `ignore_index`) in a `[S,T]` tensor.
    Tokens { vocab: usize, t: usize, ignore: i64 },
}

/// Device-side input checks: two u64 per check, `[first bad index or u64::MAX, value bits]`.
pub(crate) struct Checker {
    /// The slots.
    pub slots: CudaSlice<u64>,
    /// What each slot checks, by input name.
    pub meta: Vec<(String, CheckWhat)>,
    cap: usize,
}

/// Launch shape of an elementwise I/O kernel over `n` elements (grid-stride).
fn io_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(256).clamp(1, 8192) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn io_suffix(d: HDType) -> &'static str {
    match d {
        HDType::F32 => "f32",
        HDType::BF16 => "bf16",
        HDType::F16 => "f16",
        HDType::I64 => "i64",
        HDType::I32 => "i32",
        HDType::Bool => "u8",
        HDType::F64 => "f64",
    }
}

impl Checker {
    /// Room for `cap` checks, all clear.
    pub fn new(st: &Arc<CudaStream>, cap: usize) -> Result<Checker, Error> {
        let init: Vec<u64> = (0..cap.max(1)).flat_map(|_| [u64::MAX, 0]).collect();
        Ok(Checker {
            slots: st.clone_htod(&init).map_err(derr)?,
            meta: Vec::new(),
            cap: cap.max(1),
        })
    }

    /// A new slot for `input`; its device address.
    fn slot(&mut self, st: &CudaStream, input: &str, what: CheckWhat) -> Result<u64, Error> {
        if self.meta.len() >= self.cap {
            return Err(Error::Cuda {
                lib: "cuda",
                why: "internal: more input checks than slots".into(),
            });
        }
        self.meta.push((input.into(), what));
        Ok(dptr(&self.slots, st) + ((self.meta.len() - 1) * 16) as u64)
    }

    /// Queues the non-finite check of float tensor `ptr` (`n` elements of `dtype`).
    pub fn finite(
        &mut self,
        engine: &Engine,
        st: &Arc<CudaStream>,
        input: &str,
        (ptr, dtype, n): (u64, HDType, usize),
    ) -> Result<(), Error> {
        let slot = self.slot(st, input, CheckWhat::Finite)?;
        let f = engine.io_fn(&format!("liger_check_finite_{}", io_suffix(dtype)))?;
        let nn = n as i64;
        let mut b = st.launch_builder(&f);
        b.arg(&ptr).arg(&nn).arg(&slot);
        // SAFETY: ptr holds n elements of dtype (checked by the caller); slot is a live u64 pair.
        unsafe { b.launch(io_cfg(n)) }.map_err(derr)?;
        fetch(engine, st, ptr, dtype, slot)
    }

    /// Queues the conversion of bias `ptr` (`n` elements of a float dtype) to a new f32
    /// buffer, with the non-finite check.
    pub fn bias_f32(
        &mut self,
        engine: &Engine,
        st: &Arc<CudaStream>,
        input: &str,
        (ptr, dtype, n): (u64, HDType, usize),
    ) -> Result<CudaSlice<f32>, Error> {
        let slot = self.slot(st, input, CheckWhat::Finite)?;
        let f = engine.io_fn(&format!("liger_in_float_{}", io_suffix(dtype)))?;
        let mut out: CudaSlice<f32> = st.alloc_zeros(n).map_err(derr)?;
        let nn = n as i64;
        let mut b = st.launch_builder(&f);
        b.arg(&ptr).arg(&nn).arg(&mut out).arg(&slot);
        // SAFETY: ptr holds n elements of dtype; out holds n floats; slot is a live u64 pair.
        unsafe { b.launch(io_cfg(n)) }.map_err(derr)?;
        fetch(engine, st, ptr, dtype, slot)?;
        Ok(out)
    }

    /// The error of the first slot that fired, from the slots' host copy.
    pub fn error(&self, host: &[u64]) -> Option<Error> {
        for (k, (input, what)) in self.meta.iter().enumerate() {
            let index = host.get(2 * k).copied().unwrap_or(u64::MAX);
            if index == u64::MAX {
                continue;
            }
            let value = f64::from_bits(host.get(2 * k + 1).copied().unwrap_or(0));
            let index = index as usize;
            return Some(match what {
                CheckWhat::Finite => Error::NonFinite {
                    input: input.clone(),
                    index,
                    value,
                },
                CheckWhat::Tokens { vocab, t, ignore } => Error::TargetOutOfRange {
                    input: input.clone(),
                    seq: index / t.max(&1),
                    pos: index % t.max(&1),
                    value: value as i64,
                    vocab: *vocab,
                    ignore_index: *ignore,
                },
            });
        }
        None
    }
}

/// Queues the copy of the first bad element's value into `slot[1]`.
fn fetch(
    engine: &Engine,
    st: &Arc<CudaStream>,
    ptr: u64,
    dtype: HDType,
    slot: u64,
) -> Result<(), Error> {
    let f = engine.io_fn(&format!("liger_fetch_{}", io_suffix(dtype)))?;
    let mut b = st.launch_builder(&f);
    b.arg(&ptr).arg(&slot);
    // SAFETY: one thread reads element slot[0] of ptr only when the check recorded it (an
    // index < n); slot is a live u64 pair.
    unsafe { b.launch(io_cfg(1)) }.map_err(derr)?;
    Ok(())
}

/// A gradient on the device, in the dtype asked for.
#[derive(Debug)]
pub enum DeviceGrad {
    /// f32.
    F32(CudaSlice<f32>),
    /// bfloat16.
    BF16(CudaSlice<bf16>),
    /// IEEE half.
    F16(CudaSlice<f16>),
}

impl DeviceGrad {
    /// Its dtype.
    pub fn dtype(&self) -> HDType {
        match self {
            DeviceGrad::F32(_) => HDType::F32,
            DeviceGrad::BF16(_) => HDType::BF16,
            DeviceGrad::F16(_) => HDType::F16,
        }
    }

    /// Elements.
    pub fn len(&self) -> usize {
        match self {
            DeviceGrad::F32(x) => x.len(),
            DeviceGrad::BF16(x) => x.len(),
            DeviceGrad::F16(x) => x.len(),
        }
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes.
    pub fn num_bytes(&self) -> usize {
        self.len() * if self.dtype() == HDType::F32 { 4 } else { 2 }
    }

    /// The f32 buffer, when it is f32.
    pub fn as_f32(&self) -> Option<&CudaSlice<f32>> {
        match self {
            DeviceGrad::F32(x) => Some(x),
            _ => None,
        }
    }

    /// The bf16 buffer, when it is bf16.
    pub fn as_bf16(&self) -> Option<&CudaSlice<bf16>> {
        match self {
            DeviceGrad::BF16(x) => Some(x),
            _ => None,
        }
    }

    /// The f16 buffer, when it is f16.
    pub fn as_f16(&self) -> Option<&CudaSlice<f16>> {
        match self {
            DeviceGrad::F16(x) => Some(x),
            _ => None,
        }
    }

    /// Records "all work queued on `st` so far" as this buffer's last write.
    fn mark_written(&mut self, st: &CudaStream) {
        match self {
            DeviceGrad::F32(x) => drop(x.device_ptr_mut(st)),
            DeviceGrad::BF16(x) => drop(x.device_ptr_mut(st)),
            DeviceGrad::F16(x) => drop(x.device_ptr_mut(st)),
        }
    }

    /// Copies to the host (synchronises `st`).
    pub fn to_host(&self, st: &Arc<CudaStream>) -> Result<GradBuf, Error> {
        Ok(match self {
            DeviceGrad::F32(x) => GradBuf::F32(st.clone_dtoh(x).map_err(derr)?),
            DeviceGrad::BF16(x) => GradBuf::BF16(st.clone_dtoh(x).map_err(derr)?),
            DeviceGrad::F16(x) => GradBuf::F16(st.clone_dtoh(x).map_err(derr)?),
        })
    }
}

/// The gradients of one head on the device.
#[derive(Debug)]
pub struct DeviceHeadGrads {
    /// The head's name.
    pub head: String,
    /// `dL/dx`, `[S,T,H]`.
    pub x: DeviceGrad,
    /// `dL/dW`, `[V,H]` (accumulated in f32 across chunks).
    pub w: DeviceGrad,
    /// `dL/db`, `[V]`, when the head has a bias.
    pub b: Option<DeviceGrad>,
}

/// Queued work and the device buffers it fills.
pub(crate) struct Ran {
    /// One 4-byte array per non-vocab node (loss and metrics among them).
    pub vals: Vec<Option<CudaSlice<u32>>>,
    /// The generated kernels' status word: `[empty seq flag, seq, no-valid-row flag, _]`.
    pub status: CudaSlice<i32>,
    /// Device-side input checks, when the inputs were not checked on the host.
    pub checker: Option<Checker>,
    /// Gradients.
    pub grads: Vec<DeviceHeadGrads>,
    /// Events around the compute.
    pub events: (CudaEvent, CudaEvent),
    /// The plan and sizes (no device time or peak: those need a synchronisation).
    pub report: Report,
    /// Bytes of the value arrays of input nodes and of the returned gradients (what the
    /// peak rule counts as allocated before the call).
    pub io_bytes: usize,
    /// Bytes the executor allocated for work (value arrays, tables, chunk buffers).
    pub work_bytes: usize,
    /// Phase events, when profiled.
    pub marks: Marks,
}

impl Ran {
    /// Reads the status words after `st` has run the work (synchronises `st`): the first
    /// failed input check or empty sequence is an error; otherwise the warnings.
    pub fn status(&self, st: &Arc<CudaStream>) -> Result<Vec<String>, Error> {
        if let Some(c) = &self.checker {
            let host = st.clone_dtoh(&c.slots).map_err(derr)?;
            if let Some(e) = c.error(&host) {
                return Err(e);
            }
        }
        let stat = st.clone_dtoh(&self.status).map_err(derr)?;
        if stat[0] != 0 {
            return Err(Error::EmptySequence {
                seq: stat[1].max(0) as usize,
            });
        }
        Ok(if stat[2] != 0 {
            vec!["a row-level mean selects no row in the batch: it is 0, with no gradient".into()]
        } else {
            vec![]
        })
    }

    /// The f32 values of node `id` (synchronises `st`).
    pub fn read(
        &self,
        g: &LossFn,
        st: &Arc<CudaStream>,
        id: liger_ir::ValueId,
    ) -> Result<Vec<f32>, Error> {
        match &self.vals[id.index()] {
            Some(b) if g.ty(id).dtype == DType::F32 => Ok(st
                .clone_dtoh(b)
                .map_err(derr)?
                .into_iter()
                .map(f32::from_bits)
                .collect()),
            _ => Ok(Vec::new()),
        }
    }

    /// Loss, metrics and gradients on the host (synchronises `st`).
    pub fn to_host(
        &self,
        g: &LossFn,
        st: &Arc<CudaStream>,
    ) -> Result<(f32, Vec<MetricOutput>, Vec<HeadGrads>), Error> {
        let mut loss = f32::NAN;
        let mut metrics = Vec::new();
        for o in &g.outputs {
            match &o.kind {
                OutputKind::Loss => {
                    loss = self
                        .read(g, st, o.value)?
                        .first()
                        .copied()
                        .unwrap_or(f32::NAN)
                }
                OutputKind::Metric(n) => metrics.push(MetricOutput {
                    name: n.clone(),
                    level: g.ty(o.value).level,
                    values: self.read(g, st, o.value)?,
                }),
                OutputKind::Grad(_) => {}
            }
        }
        let mut grads = Vec::new();
        for d in &self.grads {
            grads.push(HeadGrads {
                head: d.head.clone(),
                x: d.x.to_host(st)?,
                w: d.w.to_host(st)?,
                b: match &d.b {
                    Some(b) => Some(b.to_host(st)?),
                    None => None,
                },
            });
        }
        Ok((loss, metrics, grads))
    }
}

/// Everything [`enqueue`] needs.
pub(crate) struct Job<'a> {
    /// The gradient IR.
    pub g: &'a LossFn,
    /// Its schedule.
    pub sched: &'a Schedule,
    /// `(S, T, V)`.
    pub dims: (usize, usize, usize),
    /// The heads, in schedule order.
    pub heads: Vec<DevHead>,
    /// The GEMM dtype of every head's x and W.
    pub dtype: HDType,
    /// Value-table words given on the host, by node (host inputs and hyperparameters).
    pub words: BTreeMap<usize, Vec<u32>>,
    /// Side inputs on the device.
    pub side: Vec<DevSide>,
    /// Device-side checks (the device API), or none (inputs checked on the host).
    pub checker: Option<Checker>,
    /// The options.
    pub opts: &'a RunOptions,
}

/// The strategy and chunk rows of a run under `opts.chunk_memory`.
struct Planned {
    strategy: Strategy,
    chunk: usize,
    group_rows: usize,
    deferred_fixed: usize,
    estimate: usize,
}

fn plan_run(
    sched: &Schedule,
    heads: &[DevHead],
    (s, t, v): (usize, usize, usize),
    esz: usize,
    opts: &RunOptions,
) -> Result<Planned, Error> {
    let r = s * t;
    // Chunk rows from the budget: fp32 logits per head, dz per gradient head, x/dx rows; a
    // deferred group keeps its units (GEMM dtype) and the scaled x rows; gradients returned
    // in bf16/f16 keep an f32 working copy.
    let hsum: usize = heads.iter().map(|h| h.h).sum();
    let n_grad = heads.iter().filter(|h| h.grad).count();
    let per_row = v * 4 * heads.len() + v * esz * n_grad + hsum * 4 + 8;
    let grad_work: usize = heads
        .iter()
        .filter(|h| h.grad)
        .map(|h| opts.grad_dtypes.working_bytes(r, h.h, v, h.b.is_some()))
        .sum();
    let fixed = r * 4 * (sched.row_values + 8) + (4 << 20) + grad_work;
    let group_rows = match sched.group_level {
        Some(Level::Seq) => t,
        Some(Level::Pair) => 2 * t,
        Some(_) => r,
        None => 1,
    };
    let n_units = sched.factors.as_ref().map_or(0, Vec::len);
    let deferred_fixed = group_rows * (v * esz * n_units + hsum * esz + 8);
    let needed = |s: Strategy| -> usize {
        match s {
            Strategy::GroupAligned => fixed + per_row * group_rows,
            Strategy::Deferred => fixed + deferred_fixed + per_row,
            _ => fixed + per_row,
        }
    };
    let budget = opts.chunk_memory;
    let fits = |s: Strategy| needed(s) <= budget;
    let strategy = match opts.schedule {
        Some(s) if !sched.candidates.contains(&s) => {
            return Err(Error::Schedule {
                schedule: s.name(),
                why: "it does not apply to this loss".into(),
            });
        }
        Some(s) => s,
        None if sched.row_local => Strategy::Fused,
        None if fits(Strategy::GroupAligned) => Strategy::GroupAligned,
        None if sched.factors.is_some() && fits(Strategy::Deferred) => Strategy::Deferred,
        None => Strategy::TwoPass,
    };
    if !fits(strategy) {
        let needed = needed(strategy);
        if grad_work > 0 && needed - grad_work <= budget {
            return Err(Error::GradBudget {
                budget,
                needed,
                copies: grad_work,
            });
        }
        return Err(Error::Budget { budget, needed });
    }
    let chunk = match strategy {
        Strategy::GroupAligned => {
            let c = ((budget - fixed) / per_row).clamp(group_rows, r.max(group_rows));
            (c / group_rows).max(1) * group_rows
        }
        Strategy::Deferred => ((budget - fixed - deferred_fixed) / per_row).clamp(1, r),
        _ => ((budget - fixed) / per_row).clamp(1, r),
    };
    Ok(Planned {
        strategy,
        chunk,
        group_rows,
        deferred_fixed,
        estimate: fixed + per_row * chunk,
    })
}

/// Queues the whole run on `st` (see the module docs); nothing here synchronises `st`.
pub(crate) fn enqueue(engine: &Engine, st: &Arc<CudaStream>, job: Job<'_>) -> Result<Ran, Error> {
    let Job {
        g,
        sched,
        dims: (s, t, v),
        heads,
        dtype: hd,
        words,
        side,
        mut checker,
        opts,
    } = job;
    opts.grad_dtypes.check()?;
    let r = s * t;
    let (dtype, cdt, esz) = match hd {
        HDType::BF16 => (GemmDType::BF16, cudaDataType::CUDA_R_16BF, 2usize),
        HDType::F16 => (GemmDType::F16, cudaDataType::CUDA_R_16F, 2),
        _ => (GemmDType::F32, cudaDataType::CUDA_R_32F, 4),
    };
    let Planned {
        strategy,
        chunk,
        group_rows,
        deferred_fixed,
        estimate,
    } = plan_run(sched, &heads, (s, t, v), esz, opts)?;
    let gpu = &engine.gpu;
    let arch = gpu.arch()?;
    let driver = gpu.driver_version()?;
    let hidden: Vec<usize> = heads.iter().map(|h| h.h).collect();
    let (key, bin, kinfo) = module_for(
        g,
        sched,
        strategy,
        dtype,
        (v, &hidden, chunk, t),
        &arch,
        driver,
        &engine.cache,
    )?;
    let module = engine.module(&key, &bin)?;
    let func = |kind: KernelKind| -> Result<cudarc::driver::CudaFunction, Error> {
        let k = kinfo
            .iter()
            .find(|k| k.kind == kind)
            .ok_or_else(|| Error::Cuda {
                lib: "cuda",
                why: format!("no {kind:?} kernel"),
            })?;
        module.load_function(&k.name).map_err(derr)
    };
    let add_bias = module.load_function("liger_add_bias").map_err(derr)?;
    let blas = engine.blas(st)?;
    let blas = lock(&blas)?;
    let gemm = Gemm {
        blas: &blas.handle,
        ab: cdt,
        c: cudaDataType::CUDA_R_32F,
    };
    let p = |x: &CudaSlice<f32>| dptr(x, st);
    let prof = Profiler::new(st, opts.profile);

    // Values: one array per non-vocab node; host words uploaded, device inputs converted.
    let vals = upload_values(st, g, (s, t, v), |i| words.get(&i).cloned())?;
    for d in &side {
        let Some(out) = &vals[d.node] else { continue };
        let outp = dptr(out, st);
        let n = d.len as i64;
        let cfg = io_cfg(d.len);
        let null = 0u64;
        match d.kind {
            SideKind::Float => {
                let slot = match checker.as_mut() {
                    Some(c) => c.slot(st, &d.name, CheckWhat::Finite)?,
                    None => null,
                };
                let f = engine.io_fn(&format!("liger_in_float_{}", io_suffix(d.dtype)))?;
                let mut b = st.launch_builder(&f);
                b.arg(&d.ptr).arg(&n).arg(&outp).arg(&slot);
                // SAFETY: d.ptr holds d.len elements of its float dtype, out d.len words.
                unsafe { b.launch(cfg) }.map_err(derr)?;
                if slot != null {
                    fetch(engine, st, d.ptr, d.dtype, slot)?;
                }
            }
            SideKind::Tokens { target } => {
                let what = CheckWhat::Tokens {
                    vocab: v,
                    t,
                    ignore: opts.ignore_index,
                };
                let Some(c) = checker.as_mut() else {
                    return Err(Error::Cuda {
                        lib: "cuda",
                        why: "internal: device token ids need a checker".into(),
                    });
                };
                let slot = c.slot(st, &d.name, what)?;
                let f = engine.io_fn(&format!("liger_in_tokens_{}", io_suffix(d.dtype)))?;
                let (ign, use_ign, vi) = (opts.ignore_index, i32::from(target), v as i32);
                let mut b = st.launch_builder(&f);
                b.arg(&d.ptr)
                    .arg(&n)
                    .arg(&ign)
                    .arg(&use_ign)
                    .arg(&vi)
                    .arg(&outp)
                    .arg(&slot);
                // SAFETY: d.ptr holds d.len ids of its integer dtype, out d.len words.
                unsafe { b.launch(cfg) }.map_err(derr)?;
                fetch(engine, st, d.ptr, d.dtype, slot)?;
            }
            SideKind::Mask => {
                let f = engine.io_fn(&format!("liger_in_mask_{}", io_suffix(d.dtype)))?;
                let mut b = st.launch_builder(&f);
                b.arg(&d.ptr).arg(&n).arg(&outp);
                // SAFETY: d.ptr holds d.len mask elements of its dtype, out d.len words.
                unsafe { b.launch(cfg) }.map_err(derr)?;
            }
        }
    }
    let table: Vec<u64> = vals
        .iter()
        .map(|b| b.as_ref().map_or(0, |b| dptr(b, st)))
        .collect();
    let table_d = st.clone_htod(&table).map_err(derr)?;
    let status: CudaSlice<i32> = st.clone_htod(&[0i32, -1, 0, 0]).map_err(derr)?;

    // Per head: chunk logits, dlogits, f32 gradient accumulators.
    struct Dev<'h> {
        head: &'h DevHead,
        z: CudaSlice<f32>,
        dz: Option<CudaSlice<u8>>,
        dx: Option<CudaSlice<f32>>,
        dw: Option<CudaSlice<f32>>,
        db: Option<CudaSlice<f32>>,
    }
    let mut dev = Vec::new();
    for h in &heads {
        let grad = h.grad;
        dev.push(Dev {
            head: h,
            z: st.alloc_zeros(chunk * v).map_err(derr)?,
            dz: if grad && strategy != Strategy::Deferred {
                Some(st.alloc_zeros(chunk * v * esz).map_err(derr)?)
            } else {
                None
            },
            dx: if grad {
                Some(st.alloc_zeros(r * h.h).map_err(derr)?)
            } else {
                None
            },
            dw: if grad {
                Some(st.alloc_zeros(v * h.h).map_err(derr)?)
            } else {
                None
            },
            db: if grad && h.b.is_some() {
                Some(st.alloc_zeros(v).map_err(derr)?)
            } else {
                None
            },
        });
    }
    let mut ztab = vec![0u64; g.inputs.len().max(1)];
    let mut otab = vec![0u64; g.inputs.len().max(1)];
    for d in &dev {
        ztab[d.head.input] = p(&d.z);
        if let Some(dz) = &d.dz {
            otab[d.head.input] = dptr(dz, st);
        }
    }
    let ztab_d = st.clone_htod(&ztab).map_err(derr)?;
    let otab_d = st.clone_htod(&otab).map_err(derr)?;
    let (si, ti, vi) = (s as i32, t as i32, v as i32);
    let (ld, ldo) = (v as i64, v as i64);
    let single = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    let array = |kind: KernelKind| -> Result<(), Error> {
        prof.time("pre/group kernels", || {
            let f = func(kind)?;
            let mut b = st.launch_builder(&f);
            b.arg(&table_d).arg(&si).arg(&ti).arg(&vi).arg(&status);
            // SAFETY: arguments match the emitted array-kernel signature; arrays are sized per
            // level.
            unsafe { b.launch(single) }.map_err(derr)?;
            Ok(())
        })
    };
    // Logits of x rows [r0, r0+len) into z rows [off, off+len).
    let logits = |dev: &Dev, r0: usize, len: usize, off: usize| -> Result<(), Error> {
        let h = dev.head;
        let xp = h.x + (r0 * h.h * esz) as u64;
        let zp = p(&dev.z) + (off * v * 4) as u64;
        prof.time("logits GEMM", || {
            gemm.run(true, false, v, len, h.h, h.w, h.h, xp, h.h, 0.0, zp, v)
        })?;
        if let Some(b) = h.b {
            let (ci, vi2, ld2) = (len as i32, v as i32, v as i64);
            let mut lb = st.launch_builder(&add_bias);
            lb.arg(&zp).arg(&b).arg(&ci).arg(&vi2).arg(&ld2);
            let cfg = LaunchConfig {
                grid_dim: ((len * v).div_ceil(256) as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: z holds at least off+len rows of v floats; b holds v floats.
            prof.time("bias add", || unsafe { lb.launch(cfg) }.map_err(derr))?;
        }
        Ok(())
    };
    // A stream kernel over c chunk rows; `rows` is 0 (contiguous from r0) or a device map.
    let stream_kernel =
        |kind: KernelKind, rows: u64, r0: usize, c: usize, outs: u64| -> Result<(), Error> {
            let f = func(kind)?;
            let (r0i, ci) = (r0 as i32, c as i32);
            let ztab_p = dptr(&ztab_d, st);
            let mut b = st.launch_builder(&f);
            b.arg(&table_d)
                .arg(&ztab_p)
                .arg(&rows)
                .arg(&r0i)
                .arg(&ci)
                .arg(&si)
                .arg(&ti)
                .arg(&vi)
                .arg(&ld)
                .arg(&outs)
                .arg(&ldo);
            let cfg = LaunchConfig {
                grid_dim: (c as u32, 1, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: arguments match the emitted stream signature; logits and outputs hold c rows;
            // a row map holds c valid row indices.
            prof.time("stream kernels", || unsafe { b.launch(cfg) }.map_err(derr))?;
            Ok(())
        };
    let bias_k = func(KernelKind::Bias)?;
    let bias = |dz: u64, c: usize, coef: u64, db: &CudaSlice<f32>| -> Result<(), Error> {
        let (ci, vi2, ldz) = (c as i32, v as i32, v as i64);
        let mut lb = st.launch_builder(&bias_k);
        lb.arg(&dz).arg(&ci).arg(&vi2).arg(&ldz).arg(&coef).arg(db);
        let cfg = LaunchConfig {
            grid_dim: (v.div_ceil(256) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: dz holds c rows of v GEMM-dtype entries; coef is null or holds c floats.
        prof.time("bias gradient", || unsafe { lb.launch(cfg) }.map_err(derr))?;
        Ok(())
    };
    // dx rows [r0, r0+len) = dz rows [off, ..) W; dW += dz^T x (column-major views).
    let grads = |dev: &Dev, r0: usize, len: usize, off: usize| -> Result<(), Error> {
        let (Some(dz), Some(dx), Some(dw)) = (&dev.dz, &dev.dx, &dev.dw) else {
            return Ok(());
        };
        let h = dev.head;
        let dzp = dptr(dz, st) + (off * v * esz) as u64;
        let dxp = p(dx) + (r0 * h.h * 4) as u64;
        let xp = h.x + (r0 * h.h * esz) as u64;
        prof.time("dx GEMM", || {
            gemm.run(false, false, h.h, len, v, h.w, h.h, dzp, v, 0.0, dxp, h.h)
        })?;
        prof.time("dW GEMM", || {
            gemm.run(false, true, h.h, v, len, xp, h.h, dzp, v, 1.0, p(dw), h.h)
        })?;
        Ok(())
    };

    // Working memory: value arrays of non-input nodes, tables, logits and dlogits buffers.
    let input_node = |i: usize| matches!(g.nodes[i].op, Op::Input(_));
    let work_bytes: usize = vals
        .iter()
        .enumerate()
        .filter(|(i, b)| b.is_some() && !input_node(*i))
        .map(|(_, b)| b.as_ref().map_or(0, |b| b.len() * 4))
        .sum::<usize>()
        + table.len() * 8
        + ztab.len() * 16
        + 16
        + dev
            .iter()
            .map(|d| d.z.len() * 4 + d.dz.as_ref().map_or(0, |x| x.len()))
            .sum::<usize>()
        + if strategy == Strategy::Deferred {
            deferred_fixed
        } else {
            0
        };
    let t0 = st
        .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(derr)?;
    array(KernelKind::Pre)?;
    let fwd = sched.forward_program(g, strategy);
    let read_fwd = sched.heads_read(g, &fwd);
    let bwd = sched.backward_program(g, strategy);
    let read_bwd = sched.heads_read(g, &bwd);
    let otab_p = dptr(&otab_d, st);
    let mut chunks = 0;
    // Groups as contiguous row segments.
    let groups: Vec<Vec<(usize, usize)>> = match sched.group_level {
        Some(Level::Seq) => (0..s).map(|q| vec![(q * t, t)]).collect(),
        Some(Level::Pair) => (0..s / 2)
            .map(|i| vec![(i * t, t), ((s / 2 + i) * t, t)])
            .collect(),
        _ => vec![vec![(0, r)]],
    };
    let row_map = |segs: &[(usize, usize)]| -> Result<CudaSlice<i32>, Error> {
        let m: Vec<i32> = segs
            .iter()
            .flat_map(|(a, l)| (*a..a + l).map(|x| x as i32))
            .collect();
        st.clone_htod(&m).map_err(derr)
    };
    match strategy {
        Strategy::Fused => {
            for r0 in (0..r).step_by(chunk) {
                let c = chunk.min(r - r0);
                for d in &dev {
                    logits(d, r0, c, 0)?;
                }
                stream_kernel(KernelKind::Fused, 0, r0, c, otab_p)?;
                for d in &dev {
                    grads(d, r0, c, 0)?;
                    if let (Some(dz), Some(db)) = (&d.dz, &d.db) {
                        bias(dptr(dz, st), c, 0, db)?;
                    }
                }
                chunks += 1;
            }
        }
        Strategy::TwoPass => {
            for r0 in (0..r).step_by(chunk) {
                let c = chunk.min(r - r0);
                for (k, d) in dev.iter().enumerate() {
                    if read_fwd.get(k).copied().unwrap_or(false) {
                        logits(d, r0, c, 0)?;
                    }
                }
                stream_kernel(KernelKind::Forward, 0, r0, c, otab_p)?;
                chunks += 1;
            }
            array(KernelKind::Group)?;
            for r0 in (0..r).step_by(chunk) {
                let c = chunk.min(r - r0);
                for (k, d) in dev.iter().enumerate() {
                    if read_bwd.get(k).copied().unwrap_or(false) {
                        logits(d, r0, c, 0)?;
                    }
                }
                stream_kernel(KernelKind::Backward, 0, r0, c, otab_p)?;
                for d in &dev {
                    grads(d, r0, c, 0)?;
                    if let (Some(dz), Some(db)) = (&d.dz, &d.db) {
                        bias(dptr(dz, st), c, 0, db)?;
                    }
                }
                chunks += 1;
            }
        }
        Strategy::GroupAligned => {
            let per = (chunk / group_rows.max(1)).max(1);
            for gs in groups.chunks(per) {
                let segs: Vec<(usize, usize)> = gs.iter().flatten().copied().collect();
                let c: usize = segs.iter().map(|x| x.1).sum();
                let map = row_map(&segs)?;
                let mp = dptr(&map, st);
                for (k, d) in dev.iter().enumerate() {
                    if read_fwd.get(k).copied().unwrap_or(false)
                        || read_bwd.get(k).copied().unwrap_or(false)
                    {
                        let mut off = 0;
                        for (a, l) in &segs {
                            logits(d, *a, *l, off)?;
                            off += l;
                        }
                    }
                }
                stream_kernel(KernelKind::Forward, mp, 0, c, otab_p)?;
                array(KernelKind::GroupNeeded)?;
                stream_kernel(KernelKind::Backward, mp, 0, c, otab_p)?;
                for d in &dev {
                    let mut off = 0;
                    for (a, l) in &segs {
                        grads(d, *a, *l, off)?;
                        off += l;
                    }
                    if let (Some(dz), Some(db)) = (&d.dz, &d.db) {
                        bias(dptr(dz, st), c, 0, db)?;
                    }
                }
                chunks += 1;
            }
        }
        Strategy::Deferred => {
            let factors = sched.factors.clone().unwrap_or_default();
            let scale_rows = module.load_function("liger_scale_rows").map_err(derr)?;
            let scaled_copy = module.load_function("liger_scaled_copy").map_err(derr)?;
            // Per factor: the group's units, its coefficients and the scaled x rows.
            let mut units = Vec::new();
            for f in &factors {
                let d = dev
                    .iter()
                    .position(|d| d.head.input == f.head.index())
                    .ok_or_else(|| Error::Cuda {
                        lib: "cuda",
                        why: "deferred head".into(),
                    })?;
                let coef_fn = module
                    .load_function(&format!("liger_coef_{}", f.head.index()))
                    .map_err(derr)?;
                let u: CudaSlice<u8> = st.alloc_zeros(group_rows * v * esz).map_err(derr)?;
                let xs: CudaSlice<u8> = st
                    .alloc_zeros(group_rows * dev[d].head.h * esz)
                    .map_err(derr)?;
                let cf: CudaSlice<f32> = st.alloc_zeros(group_rows).map_err(derr)?;
                units.push((d, coef_fn, u, xs, cf));
            }
            for segs in &groups {
                let gr: usize = segs.iter().map(|x| x.1).sum();
                let mut goff = 0;
                for (a, l) in segs {
                    let mut p0 = *a;
                    while p0 < a + l {
                        let pl = chunk.min(a + l - p0);
                        for (k, d) in dev.iter().enumerate() {
                            if read_fwd.get(k).copied().unwrap_or(false) {
                                logits(d, p0, pl, 0)?;
                            }
                        }
                        let mut ot = vec![0u64; g.inputs.len().max(1)];
                        for (d, _, u, _, _) in &units {
                            ot[dev[*d].head.input] = dptr(u, st) + (goff * v * esz) as u64;
                        }
                        let ot_d = st.clone_htod(&ot).map_err(derr)?;
                        stream_kernel(KernelKind::Unit, 0, p0, pl, dptr(&ot_d, st))?;
                        // dx rows = U W, unscaled.
                        for (d, _, u, _, _) in &units {
                            let dv = &dev[*d];
                            if let Some(dx) = &dv.dx {
                                let h = dv.head;
                                let up = dptr(u, st) + (goff * v * esz) as u64;
                                let dxp = p(dx) + (p0 * h.h * 4) as u64;
                                prof.time("dx GEMM", || {
                                    gemm.run(
                                        false, false, h.h, pl, v, h.w, h.h, up, v, 0.0, dxp, h.h,
                                    )
                                })?;
                            }
                        }
                        goff += pl;
                        p0 += pl;
                        chunks += 1;
                    }
                }
                array(KernelKind::GroupNeeded)?;
                let map = row_map(segs)?;
                let (gri, zero) = (gr as i32, 0i32);
                for (d, coef_fn, u, xs, cf) in &units {
                    let dv = &dev[*d];
                    let h = dv.head;
                    let mut b = st.launch_builder(coef_fn);
                    b.arg(&table_d)
                        .arg(&map)
                        .arg(&zero)
                        .arg(&gri)
                        .arg(&si)
                        .arg(&ti)
                        .arg(cf);
                    let cfg = LaunchConfig {
                        grid_dim: (gr.div_ceil(256) as u32, 1, 1),
                        block_dim: (256, 1, 1),
                        shared_mem_bytes: 0,
                    };
                    // SAFETY: the coefficient kernel reads the value table and writes gr floats.
                    prof.time("deferred scaling", || {
                        unsafe { b.launch(cfg) }.map_err(derr)
                    })?;
                    let mut off = 0;
                    for (a, l) in segs {
                        let hi = h.h as i32;
                        let (li, ldx) = (*l as i32, h.h as i64);
                        let cp = p(cf) + (off * 4) as u64;
                        let n = (l * h.h).div_ceil(256) as u32;
                        let cfg = LaunchConfig {
                            grid_dim: (n, 1, 1),
                            block_dim: (256, 1, 1),
                            shared_mem_bytes: 0,
                        };
                        if let Some(dx) = &dv.dx {
                            let dxp = p(dx) + (a * h.h * 4) as u64;
                            let mut b = st.launch_builder(&scale_rows);
                            b.arg(&dxp).arg(&ldx).arg(&li).arg(&hi).arg(&cp);
                            prof.time("deferred scaling", || {
                                // SAFETY: dx holds these l rows of h floats; c holds l floats.
                                unsafe { b.launch(cfg) }.map_err(derr)
                            })?;
                        }
                        let xp = h.x + (a * h.h * esz) as u64;
                        let xsp = dptr(xs, st) + (off * h.h * esz) as u64;
                        let mut b = st.launch_builder(&scaled_copy);
                        b.arg(&xp).arg(&ldx).arg(&li).arg(&hi).arg(&cp).arg(&xsp);
                        // SAFETY: x holds these l rows; xs has room for them at this offset.
                        prof.time("deferred scaling", || {
                            unsafe { b.launch(cfg) }.map_err(derr)
                        })?;
                        off += l;
                    }
                    if let Some(dw) = &dv.dw {
                        let (xsp, up) = (dptr(xs, st), dptr(u, st));
                        prof.time("dW GEMM", || {
                            gemm.run(false, true, h.h, v, gr, xsp, h.h, up, v, 1.0, p(dw), h.h)
                        })?;
                    }
                    if let Some(db) = &dv.db {
                        bias(dptr(u, st), gr, p(cf), db)?;
                    }
                }
            }
        }
    }
    array(KernelKind::Group)?;

    // Gradients into the dtypes asked for.
    let cast = |x: CudaSlice<f32>, to: HDType| -> Result<DeviceGrad, Error> {
        Ok(match to {
            HDType::BF16 => DeviceGrad::BF16(prof.time("gradient casts", || {
                cast_to(engine, st, &x, "liger_cast_bf16")
            })?),
            HDType::F16 => DeviceGrad::F16(prof.time("gradient casts", || {
                cast_to(engine, st, &x, "liger_cast_f16")
            })?),
            _ => DeviceGrad::F32(x),
        })
    };
    let GradDTypes {
        x: xdt,
        w: wdt,
        b: bdt,
    } = opts.grad_dtypes;
    let mut grads_out = Vec::new();
    for d in dev {
        if let (Some(dx), Some(dw)) = (d.dx, d.dw) {
            grads_out.push(DeviceHeadGrads {
                head: d.head.name.clone(),
                x: cast(dx, xdt)?,
                w: cast(dw, wdt)?,
                b: match d.db {
                    Some(b) => Some(cast(b, bdt)?),
                    None => None,
                },
            });
        }
    }
    let t1 = st
        .record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(derr)?;
    // Returned buffers: their last write is all the work queued above (so a consumer on
    // another stream waits for it, through cudarc's event tracking).
    for gr in &mut grads_out {
        gr.x.mark_written(st);
        gr.w.mark_written(st);
        if let Some(b) = &mut gr.b {
            b.mark_written(st);
        }
    }
    // A failed input check poisons the loss.
    let loss_buf = g
        .outputs
        .iter()
        .find(|o| o.kind == OutputKind::Loss)
        .and_then(|o| vals[o.value.index()].as_ref());
    if let (Some(c), Some(loss)) = (&checker, loss_buf) {
        let f = engine.io_fn("liger_poison")?;
        let n = c.meta.len() as i32;
        let mut b = st.launch_builder(&f);
        b.arg(&c.slots).arg(&n).arg(&status).arg(loss);
        // SAFETY: slots holds at least n pairs; status holds 4 ints; loss is a live 4-byte word.
        unsafe { b.launch(io_cfg(1)) }.map_err(derr)?;
    }
    let io_bytes: usize = vals
        .iter()
        .enumerate()
        .filter(|(i, b)| b.is_some() && input_node(*i))
        .map(|(_, b)| b.as_ref().map_or(0, |b| b.len() * 4))
        .sum::<usize>()
        + grads_out
            .iter()
            .map(|g| {
                g.x.num_bytes() + g.w.num_bytes() + g.b.as_ref().map_or(0, DeviceGrad::num_bytes)
            })
            .sum::<usize>();
    let report = Report {
        device: "cuda",
        strategy,
        forced: opts.schedule.is_some(),
        chunk_rows: chunk,
        chunks,
        budget: opts.chunk_memory,
        estimate,
        gemm_flops: {
            let mut hidden4 = [0usize; 4];
            for (k, h) in heads.iter().enumerate().take(4) {
                hidden4[k] = h.h;
            }
            sched
                .cost(
                    strategy,
                    &liger_ir::schedule::Dims {
                        rows: r,
                        vocab: v,
                        hidden: hidden4,
                        group_rows,
                    },
                )
                .gemm_flops
        },
        seconds: 0.0,
        warnings: vec![],
        device_ms: None,
        peak_extra_bytes: None,
        profile: Vec::new(),
    };
    let mut vals = vals;
    for b in vals.iter_mut().flatten() {
        let (_, _written) = b.device_ptr_mut(st);
    }
    Ok(Ran {
        vals,
        status,
        checker,
        grads: grads_out,
        events: (t0, t1),
        report,
        io_bytes,
        work_bytes,
        marks: prof.into_marks(),
    })
}

/// `x` rounded to a 16-bit float type by I/O kernel `kernel`.
fn cast_to<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    engine: &Engine,
    st: &Arc<CudaStream>,
    x: &CudaSlice<f32>,
    kernel: &str,
) -> Result<CudaSlice<T>, Error> {
    let n = x.len();
    let nn = n as i64;
    let f = engine.io_fn(kernel)?;
    let mut out: CudaSlice<T> = st.alloc_zeros(n).map_err(derr)?;
    let mut b = st.launch_builder(&f);
    b.arg(x).arg(&nn).arg(&mut out);
    // SAFETY: x holds n floats; out holds n 16-bit elements, which the kernel writes.
    unsafe { b.launch(io_cfg(n)) }.map_err(derr)?;
    Ok(out)
}

/// The value-table words of a host-loaded input.
fn words_of(a: &Arr) -> Vec<u32> {
    match a {
        Arr::F(x) => x.iter().map(|f| f.to_bits()).collect(),
        Arr::B(x) => x
            .iter()
            .map(|&b| if b { 1f32 } else { 0f32 }.to_bits())
            .collect(),
        Arr::I(x) => x
            .iter()
            .map(|k| k.map_or(-1i32, |u| u as i32) as u32)
            .collect(),
    }
}

/// Runs the gradient IR `g` on host tensors (the host API): inputs are checked on the host,
/// uploaded to the engine's stream, run, and read back; the report carries the device time
/// and the allocator-measured peak.
pub fn run(
    engine: &Engine,
    g: &LossFn,
    inputs: &InputSet<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
) -> Result<LossOutput, Error> {
    let start = Instant::now();
    opts.grad_dtypes.check()?;
    let sched = Schedule::of(g);
    let Prepared {
        heads,
        ev,
        dims: (s, t, v),
    } = prepare(g, &sched, inputs, hyper, opts, false)?;
    // GEMM dtype: every head's x and W share one float dtype.
    let hd = heads.first().map(|h| h.x.dtype()).unwrap_or(HDType::F32);
    for h in &heads {
        if h.x.dtype() != hd || h.w_view.dtype() != hd {
            return Err(Error::InputDType {
                input: format!("{}.w", h.name),
                expected: "the dtype of every head's x",
                got: h.w_view.dtype(),
            });
        }
    }
    let hd = if hd == HDType::F64 { HDType::F32 } else { hd };
    let st = engine.gpu.stream.clone();
    engine.blas(&st)?;
    // Inputs on the device (before the peak is measured: the rule counts them as there).
    let mut bufs = Vec::new();
    for h in &heads {
        let x = upload_raw(&st, h.x.data())?;
        let w = upload_raw(&st, h.w_view.data())?;
        let b = match &h.b {
            Some(b) => Some(st.clone_htod(b).map_err(derr)?),
            None => None,
        };
        bufs.push((x, w, b));
    }
    let dev_heads: Vec<DevHead> = heads
        .iter()
        .zip(&bufs)
        .map(|(h, (x, w, b))| DevHead {
            name: h.name.clone(),
            input: match g.node(h.node).op {
                Op::Input(id) => id.index(),
                _ => 0,
            },
            x: dptr(x, &st),
            w: dptr(w, &st),
            b: b.as_ref().map(|b| dptr(b, &st)),
            h: h.h,
            grad: h.grad.is_some(),
        })
        .collect();
    let words: BTreeMap<usize, Vec<u32>> = (0..g.nodes.len())
        .filter(|&i| matches!(g.nodes[i].op, Op::Input(_)))
        .filter_map(|i| ev.vals[i].as_ref().map(|a| (i, words_of(a))))
        .collect();
    // The allocator's view: use before this call, and its high-water mark from here on.
    st.synchronize().map_err(derr)?;
    let base_used = engine.gpu.used_bytes().ok();
    if base_used.is_some() {
        let _ = engine.gpu.reset_peak();
    }
    let ran = enqueue(
        engine,
        &st,
        Job {
            g,
            sched: &sched,
            dims: (s, t, v),
            heads: dev_heads,
            dtype: hd,
            words,
            side: Vec::new(),
            checker: None,
            opts,
        },
    )?;
    let device_ms = f64::from(ran.events.0.elapsed_ms(&ran.events.1).map_err(derr)?);
    st.synchronize().map_err(derr)?;
    // Peak extra memory (DESIGN.md "Measuring"): the allocator's peak during the call minus
    // what was in use before it, minus the value arrays of the inputs and the returned
    // gradients (the rule counts them as allocated before the call).
    let measured = match (base_used, engine.gpu.peak_bytes()) {
        (Some(base), Ok(high)) => {
            Some((high.saturating_sub(base) as usize).saturating_sub(ran.io_bytes))
        }
        _ => None,
    };
    let mut warnings = ran.status(&st)?;
    if measured.is_none() {
        warnings.push(format!(
            "the device allocator reports no peak; the executor's own allocations were {} B",
            ran.work_bytes
        ));
    }
    let (loss, metrics, grads) = ran.to_host(g, &st)?;
    let report = Report {
        profile: summarize(&ran.marks)?,
        seconds: start.elapsed().as_secs_f64(),
        device_ms: Some(device_ms),
        peak_extra_bytes: measured,
        warnings,
        ..ran.report.clone()
    };
    Ok(LossOutput {
        loss,
        metrics,
        grads,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::{DevHead, plan_run};
    use crate::plan::{GradDTypes, RunOptions};
    use crate::tensor::DType;
    use crate::{Error, Strategy};

    fn flce() -> (liger_ir::LossFn, liger_ir::Schedule) {
        let f = liger_ir::parse(include_str!("../../../liger-ir/tests/losses/flce.lir"))
            .expect("parses");
        let g = liger_ir::simplify(&liger_ir::differentiate(&f).expect("differentiates"));
        let s = liger_ir::Schedule::of(&g);
        (g, s)
    }

    fn head(h: usize) -> Vec<DevHead> {
        vec![DevHead {
            name: "logits".into(),
            input: 0,
            x: 0,
            w: 0,
            b: None,
            h,
            grad: true,
        }]
    }

    #[test]
    fn gradient_copies_count_in_the_budget_and_say_so() {
        let (_, sched) = flce();
        let (s, t, h, v) = (4, 512, 1024, 32000);
        let f32_run = RunOptions {
            chunk_memory: 64 << 20,
            ..RunOptions::default()
        };
        let p = plan_run(&sched, &head(h), (s, t, v), 2, &f32_run).expect("fits in f32");
        assert_eq!(p.strategy, Strategy::Fused);
        // A bf16 grad W keeps its f32 accumulator (v*h*4 = 125 MiB): more than 64 MiB.
        let bf16_w = RunOptions {
            grad_dtypes: GradDTypes {
                w: DType::BF16,
                ..GradDTypes::default()
            },
            ..f32_run
        };
        match plan_run(&sched, &head(h), (s, t, v), 2, &bf16_w) {
            Err(e @ Error::GradBudget { copies, .. }) => {
                assert_eq!(copies, v * h * 4);
                assert!(
                    e.to_string().contains("return those gradients in f32"),
                    "{e}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a bf16 grad W cannot fit in 64 MiB with its f32 accumulator"),
        }
        // With room for the copy the chunk is what is left, and never larger than in f32.
        let roomy = RunOptions {
            chunk_memory: 256 << 20,
            ..bf16_w
        };
        let q = plan_run(&sched, &head(h), (s, t, v), 2, &roomy).expect("fits");
        let q32 = plan_run(
            &sched,
            &head(h),
            (s, t, v),
            2,
            &RunOptions {
                chunk_memory: 256 << 20,
                ..RunOptions::default()
            },
        )
        .expect("fits");
        assert!(q.chunk < q32.chunk, "{} vs {}", q.chunk, q32.chunk);
        assert!(q.estimate <= 256 << 20);
    }
}

#[cfg(test)]
mod thread_tests {
    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn a_runtime_and_its_outputs_cross_threads() {
        send_sync::<crate::Runtime>();
        send_sync::<crate::cuda::engine::Engine>();
        fn send<T: Send>() {}
        send::<crate::DeviceOutput>();
        send::<super::DeviceHeadGrads>();
    }
}
