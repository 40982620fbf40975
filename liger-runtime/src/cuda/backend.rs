//! The CUDA backend of the strategy driver: cuBLAS GEMMs (GEMM-dtype inputs, fp32 logits, fp32
//! `dx` and `dW` accumulators) and the generated kernels, for every strategy.
//!
//! `enqueue` is the core: given device addresses of the heads and the side inputs (as host
//! words or device tensors the I/O kernels convert and check), it plans the chunks under the
//! budget with this backend's [`MemoryModel`], queues every copy, GEMM and kernel on one
//! stream through the driver (`crate::driver::drive`) and never synchronises it; the result
//! (`Ran`) holds the device buffers of the loss, metrics and gradients (in the dtypes asked
//! for), the status words and two events. The host API ([`crate::cuda::host`]) and the device
//! API ([`crate::cuda::api`]) are the two ways in.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::cublas::sys::cudaDataType;
use cudarc::driver::{CudaEvent, CudaFunction, CudaSlice, CudaStream, DevicePtrMut};
use half::{bf16, f16};
use liger_ir::emit::abi::{self, KernelKind};
use liger_ir::emit::{EmitOptions, GemmDType};
use liger_ir::schedule::Dims;
use liger_ir::stream::{StreamKind, StreamPlan};
use liger_ir::{DType, InputId, LossFn, Op, OutputKind, Pipeline, Strategy, ValueId};

use crate::Error;
use crate::cuda::api::GradPart;
use crate::cuda::checks::{
    CheckWhat, Checker, DevSide, SideKind, cast_to, dptr, fetch, io_cfg, io_suffix, write_into,
};
use crate::cuda::device::upload_values;
use crate::cuda::drv;
use crate::cuda::engine::{Engine, lock};
use crate::cuda::gemm::Gemm;
use crate::cuda::launch::{Arg, StreamArgs, i32_of, launch};
use crate::cuda::profile::{Marks, Profiler};
use crate::driver::{self, ArrayStage, Backend, Rows};
use crate::output::{GradBuf, HeadGrads, MetricOutput, Report};
use crate::plan::{Footprint, GradDTypes, MemoryModel, RunOptions, Staging};
use crate::tensor::DType as HDType;

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
        let e = drv("copying a gradient to the host");
        Ok(match self {
            DeviceGrad::F32(x) => GradBuf::F32(st.clone_dtoh(x).map_err(e)?),
            DeviceGrad::BF16(x) => GradBuf::BF16(st.clone_dtoh(x).map_err(e)?),
            DeviceGrad::F16(x) => GradBuf::F16(st.clone_dtoh(x).map_err(e)?),
        })
    }
}

/// The gradients of one head on the device.
#[derive(Debug)]
pub struct DeviceHeadGrads {
    /// The head's name.
    pub head: String,
    /// `dL/dx`, `[S,T,H]` (`None` when not asked for, `RunOptions::grads`).
    pub x: Option<DeviceGrad>,
    /// `dL/dW`, `[V,H]` (accumulated in f32 across chunks; `None` when not asked for).
    pub w: Option<DeviceGrad>,
    /// `dL/db`, `[V]`, when the head has a bias and it was asked for.
    pub b: Option<DeviceGrad>,
}

impl DeviceHeadGrads {
    /// The gradient buffers as `(x, w, b)`, each when computed.
    pub fn parts(
        &self,
    ) -> (
        Option<&DeviceGrad>,
        Option<&DeviceGrad>,
        Option<&DeviceGrad>,
    ) {
        (self.x.as_ref(), self.w.as_ref(), self.b.as_ref())
    }

    /// Every buffer computed, with its part's name.
    fn buffers_mut(&mut self) -> impl Iterator<Item = &mut DeviceGrad> {
        [self.x.as_mut(), self.w.as_mut(), self.b.as_mut()]
            .into_iter()
            .flatten()
    }
}

/// Queued work and the device buffers it fills.
pub(crate) struct Ran {
    /// One 4-byte array per non-vocab node (loss and metrics among them), by node.
    pub vals: Vec<Option<CudaSlice<u32>>>,
    /// The generated kernels' status words (layout: [`abi::status`]).
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
    /// What array stages evaluated on the host found ([`HostArrays`]).
    pub findings: crate::policy::Findings,
}

impl Ran {
    /// Reads the status words after `st` has run the work (synchronises `st`): the first
    /// failed input check or empty sequence is an error; otherwise the warnings.
    pub fn status(&self, st: &Arc<CudaStream>) -> Result<Vec<String>, Error> {
        if let Some(c) = &self.checker {
            let host = st
                .clone_dtoh(&c.slots)
                .map_err(drv("reading the input checks"))?;
            if let Some(e) = c.error(&host) {
                return Err(e);
            }
        }
        let stat = st
            .clone_dtoh(&self.status)
            .map_err(drv("reading the status words"))?;
        let mut found = crate::policy::Findings::from_status(&stat);
        found.merge(self.findings);
        found.outcome()
    }

    /// The f32 values of node `id` (synchronises `st`).
    pub fn read(&self, g: &LossFn, st: &Arc<CudaStream>, id: ValueId) -> Result<Vec<f32>, Error> {
        match &self.vals[id.index()] {
            Some(b) if g.ty(id).dtype == DType::F32 => Ok(st
                .clone_dtoh(b)
                .map_err(drv("copying a result to the host"))?
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
            let host = |g: &Option<DeviceGrad>| g.as_ref().map(|g| g.to_host(st)).transpose();
            grads.push(HeadGrads {
                head: d.head.clone(),
                x: host(&d.x)?,
                w: host(&d.w)?,
                b: host(&d.b)?,
            });
        }
        Ok((loss, metrics, grads))
    }
}

/// One lm head on the device, as raw addresses valid until the queued work has run.
pub(crate) struct DevHead {
    /// The head's name.
    pub name: String,
    /// Its input.
    pub input: InputId,
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

/// Everything [`enqueue`] needs.
pub(crate) struct Job<'a> {
    /// The loss through the pipeline.
    pub p: &'a Pipeline,
    /// `(S, T, V)`.
    pub dims: (usize, usize, usize),
    /// The heads, in schedule order.
    pub heads: Vec<DevHead>,
    /// The GEMM dtype of every head's x and W.
    pub dtype: HDType,
    /// Value-table words given on the host, by node (host inputs and hyperparameters).
    pub words: BTreeMap<ValueId, Vec<u32>>,
    /// Side inputs on the device.
    pub side: Vec<DevSide>,
    /// Device-side checks (the device API), or none (inputs checked on the host).
    pub checker: Option<Checker>,
    /// The options.
    pub opts: &'a RunOptions,
    /// The rows the chunk loop runs (`None`: every row), from the host's masks.
    pub live: Option<Vec<bool>>,
    /// Gradients written into the caller's buffers instead of returned (checked by the
    /// device API).
    pub into: Vec<GradInto>,
    /// This rank's group: data parallel ([`HostArrays`]) or vocab parallel ([`Shards`]);
    /// `None` for a single device.
    pub ranked: Option<crate::cpu::Ranked<'a>>,
}

/// A caller's buffer that one gradient is written into (`DeviceInputs::grad_into`): checked
/// to hold `len` elements of `dtype` (f32, bf16 or f16) in the runtime's context.
#[derive(Clone, Debug)]
pub(crate) struct GradInto {
    /// The head.
    pub head: String,
    /// Which gradient of it.
    pub part: GradPart,
    /// The buffer's device address.
    pub ptr: u64,
    /// Its dtype.
    pub dtype: HDType,
    /// Its element count.
    pub len: usize,
}

/// How the CUDA executor counts working memory: per chunk row the fp32 logits of every head,
/// `dlogits` in the GEMM dtype per gradient head and the chunk's x/dx rows, and where chunks
/// gather rows from several places ([`gathers`]) a contiguous copy of every head's x rows (GEMM
/// dtype) and of the gradient heads' dx rows (f32); whole-batch value arrays and tables; a
/// deferred group's units (GEMM dtype) and scaled x rows; f32 working copies of gradients
/// returned in bf16/f16; 4 MiB of slack.
struct CudaMemory {
    rows: usize,
    vocab: usize,
    hidden: Vec<usize>,
    grads: usize,
    row_values: usize,
    group_rows: usize,
    units: usize,
    esz: usize,
    grad_copies: usize,
    /// Whether dead rows are left out (chunks then gather their rows: [`gathers`]), and the
    /// summed hidden sizes of the gradient heads whose dx rows are gathered too.
    skipping: bool,
    dx_hidden: usize,
}

impl CudaMemory {
    /// Bytes per chunk row: every head's f32 logits.
    fn chunk_row(&self) -> usize {
        let hsum: usize = self.hidden.iter().sum();
        self.vocab * 4 * self.hidden.len() + hsum * 4 + 8
    }

    /// Bytes per gradient-stage row: `dlogits` per gradient head and the gathered rows.
    fn stage_row(&self, s: Strategy) -> usize {
        let hsum: usize = self.hidden.iter().sum();
        let gathered = if gathers(s, self.skipping) {
            hsum * self.esz + self.dx_hidden * 4
        } else {
            0
        };
        self.vocab * self.esz * self.grads + gathered
    }

    fn deferred_fixed(&self) -> usize {
        let hsum: usize = self.hidden.iter().sum();
        self.group_rows * (self.vocab * self.esz * self.units + hsum * self.esz + 8)
    }
}

impl MemoryModel for CudaMemory {
    fn footprint(&self, s: Strategy) -> Footprint {
        let fixed = self.rows * 4 * (self.row_values + 8) + (4 << 20) + self.grad_copies;
        let (fixed, min_rows) = match s {
            Strategy::Fused | Strategy::TwoPass => (fixed, 1),
            Strategy::GroupAligned => (fixed, self.group_rows),
            Strategy::Deferred => (fixed + self.deferred_fixed(), 1),
        };
        // The fused and two-pass gradient GEMMs run over stages of several chunks.
        let (per_row, stage) = match s {
            Strategy::Fused | Strategy::TwoPass => (
                self.chunk_row(),
                Some(Staging {
                    per_row: self.stage_row(s),
                    gemm_bytes: self.esz,
                }),
            ),
            Strategy::GroupAligned | Strategy::Deferred => {
                (self.chunk_row() + self.stage_row(s), None)
            }
        };
        Footprint {
            fixed,
            per_row,
            min_rows,
            grad_copies: self.grad_copies,
            stage,
        }
    }
}

/// An f32 gradient accumulator: the runtime's own allocation, or a caller's f32 buffer
/// (`DeviceInputs::grad_into`) zeroed and accumulated in place, which is never freed here
/// (dropping it leaks the address back to its owner).
pub(crate) struct Acc {
    slice: std::mem::ManuallyDrop<CudaSlice<f32>>,
    borrowed: bool,
}

impl Acc {
    /// `n` zeroed f32 of the runtime's own, on `st`.
    fn own(st: &Arc<CudaStream>, n: usize) -> Result<Self, Error> {
        Ok(Acc {
            slice: std::mem::ManuallyDrop::new(
                st.alloc_zeros(n)
                    .map_err(drv("allocating a gradient accumulator"))?,
            ),
            borrowed: false,
        })
    }

    /// The caller's buffer `t` (f32, `t.len` elements, checked by the device API), zeroed on
    /// `st`.
    fn borrowed(st: &Arc<CudaStream>, t: &GradInto) -> Result<Self, Error> {
        // SAFETY: the device API checked that `t.ptr` addresses `t.len` f32 in this stream's
        // context, and the caller keeps it allocated for the queued work; the slice is never
        // freed here (`Drop` and `into_owned` leak it) and is zeroed before any read.
        let mut slice = unsafe { st.upgrade_device_ptr::<f32>(t.ptr, t.len) };
        let zeroed = st.memset_zeros(&mut slice);
        let acc = Acc {
            slice: std::mem::ManuallyDrop::new(slice),
            borrowed: true,
        };
        zeroed.map_err(drv("zeroing a gradient buffer"))?;
        Ok(acc)
    }

    /// The runtime's own buffer, or `None` for a caller's buffer (left to its owner).
    fn into_owned(self) -> Option<CudaSlice<f32>> {
        let mut me = std::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never used or dropped again, so the slice is taken exactly once.
        let s = unsafe { std::mem::ManuallyDrop::take(&mut me.slice) };
        if me.borrowed {
            s.leak();
            None
        } else {
            Some(s)
        }
    }
}

impl std::ops::Deref for Acc {
    type Target = CudaSlice<f32>;
    fn deref(&self) -> &CudaSlice<f32> {
        &self.slice
    }
}

impl std::ops::DerefMut for Acc {
    fn deref_mut(&mut self) -> &mut CudaSlice<f32> {
        &mut self.slice
    }
}

impl Drop for Acc {
    fn drop(&mut self) {
        // SAFETY: `drop` runs once and the slice is not used after it.
        let s = unsafe { std::mem::ManuallyDrop::take(&mut self.slice) };
        if self.borrowed {
            s.leak();
        }
    }
}

/// `grad W`'s accumulator: f32 (an [`Acc`]), or with [`crate::WAccum::Output`] a bf16/f16
/// buffer in the dtype it is returned in (the runtime's own, or a caller's target zeroed and
/// accumulated in place), which each dW GEMM adds into and rounds.
enum WAcc {
    /// f32.
    F32(Acc),
    /// 16-bit: the address, its dtype, and the runtime's own buffer (`None`: a caller's).
    Half {
        ptr: u64,
        dtype: HDType,
        own: Option<DeviceGrad>,
    },
}

impl WAcc {
    /// Whether a `grad W` returned in `dtype` is accumulated in it under `accum`, for GEMMs
    /// whose inputs are `gemm`: cuBLAS writes a 16-bit `C` only of its inputs' dtype, so
    /// another pair (f32 inputs, or f16 inputs with a bf16 gradient) accumulates in f32.
    fn in_output(accum: crate::WAccum, dtype: HDType, gemm: HDType) -> bool {
        accum == crate::WAccum::Output && dtype != HDType::F32 && dtype == gemm
    }

    /// The accumulator for `n` elements of a gradient returned in `dtype` into `target` (if
    /// any) under `accum` with GEMM inputs in `gemm`, zeroed on `st`.
    fn new(
        st: &Arc<CudaStream>,
        n: usize,
        (dtype, gemm): (HDType, HDType),
        accum: crate::WAccum,
        target: Option<&GradInto>,
    ) -> Result<Self, Error> {
        let half = Self::in_output(accum, dtype, gemm);
        let alloc = drv("allocating a gradient accumulator");
        match (half, target) {
            (false, Some(t)) if t.dtype == HDType::F32 => Ok(WAcc::F32(Acc::borrowed(st, t)?)),
            (false, _) => Ok(WAcc::F32(Acc::own(st, n)?)),
            (true, Some(t)) => {
                // SAFETY: the device API checked that `t.ptr` addresses `t.len` elements of
                // `t.dtype` in this stream's context, alive for the queued work.
                unsafe {
                    cudarc::driver::result::memset_d8_async(
                        t.ptr,
                        0,
                        t.len * t.dtype.size(),
                        st.cu_stream(),
                    )
                }
                .map_err(drv("zeroing a gradient buffer"))?;
                Ok(WAcc::Half {
                    ptr: t.ptr,
                    dtype: t.dtype,
                    own: None,
                })
            }
            (true, None) => {
                let g = if dtype == HDType::F16 {
                    DeviceGrad::F16(st.alloc_zeros(n).map_err(&alloc)?)
                } else {
                    DeviceGrad::BF16(st.alloc_zeros(n).map_err(&alloc)?)
                };
                let ptr = match &g {
                    DeviceGrad::F16(x) => dptr(x, st),
                    DeviceGrad::BF16(x) => dptr(x, st),
                    DeviceGrad::F32(x) => dptr(x, st),
                };
                Ok(WAcc::Half {
                    ptr,
                    dtype,
                    own: Some(g),
                })
            }
        }
    }

    /// Its device address.
    fn ptr(&self, st: &CudaStream) -> u64 {
        match self {
            WAcc::F32(a) => dptr(a, st),
            WAcc::Half { ptr, .. } => *ptr,
        }
    }

    /// The cuBLAS dtype of the GEMMs' `C`.
    fn c_type(&self) -> cudaDataType {
        match self {
            WAcc::Half {
                dtype: HDType::F16, ..
            } => cudaDataType::CUDA_R_16F,
            WAcc::Half { .. } => cudaDataType::CUDA_R_16BF,
            WAcc::F32(_) => cudaDataType::CUDA_R_32F,
        }
    }
}

/// A head's device state: its chunk logits, `dlogits` and f32 gradient accumulators.
struct DevState<'h> {
    head: &'h DevHead,
    z: CudaSlice<f32>,
    dz: Option<CudaSlice<u8>>,
    dx: Option<Acc>,
    dw: Option<WAcc>,
    db: Option<Acc>,
    /// A chunk's or gradient stage's x rows gathered into one block (GEMM dtype, stage rows)
    /// and the stage's dx rows before they are scattered (f32), where chunks can span several
    /// segments ([`gathers`]).
    xg: Option<CudaSlice<u8>>,
    dxg: Option<CudaSlice<f32>>,
    /// The rows `xg` holds (empty: none).
    xg_rows: Vec<(usize, usize)>,
}

/// A deferred factor's group buffers.
struct Units {
    /// Index into the device states.
    dev: usize,
    coef_fn: CudaFunction,
    /// The group's unit rows, `[group rows, V]` in the GEMM dtype.
    u: CudaSlice<u8>,
    /// The group's scaled x rows, `[group rows, H]` in the GEMM dtype.
    xs: CudaSlice<u8>,
    /// The group's coefficients.
    cf: CudaSlice<f32>,
}

/// Data parallel on CUDA: the array stages (whole-batch values over O(rows) elements) run on
/// the host through the CPU executor's evaluator, whose whole-batch values combine every
/// rank's partial sums ([`crate::comm`]), so the device needs no collective of its own. The
/// host inputs are loaded once; the values a stage reads from the streams come from the
/// device, and what it computes goes back before the next kernel reads it: a few small
/// blocking copies per stage. The stream kernels and GEMMs run as on one device.
struct HostArrays<'a> {
    g: &'a LossFn,
    sched: &'a liger_ir::Schedule,
    ev: crate::cpu::eval::Eval<'a>,
    vals: &'a mut [Option<CudaSlice<u32>>],
    /// The nodes whose host values are exact: the host inputs, and every node evaluated here
    /// (no kernel writes either).
    done: std::collections::BTreeSet<ValueId>,
}

/// Value-table words (the kernel ABI's layout) as the evaluator's array of `dtype`.
fn arr_of_words(dtype: DType, words: &[u32]) -> crate::host::Arr {
    use crate::host::Arr;
    match dtype {
        DType::F32 => Arr::F(words.iter().map(|&w| f32::from_bits(w)).collect()),
        DType::Bool => Arr::B(words.iter().map(|&w| f32::from_bits(w) != 0.0).collect()),
        DType::Idx => Arr::I(
            words
                .iter()
                .map(|&w| u32::try_from(w as i32).ok())
                .collect(),
        ),
    }
}

impl<'a> HostArrays<'a> {
    fn new(
        g: &'a LossFn,
        sched: &'a liger_ir::Schedule,
        (s, t, v): (usize, usize, usize),
        comm: &'a dyn crate::comm::Communicator,
        words: &BTreeMap<ValueId, Vec<u32>>,
        vals: &'a mut [Option<CudaSlice<u32>>],
    ) -> Self {
        let mut ev = crate::cpu::eval::Eval::new(g, s, t, v);
        ev.comm = Some(comm);
        let mut done = std::collections::BTreeSet::new();
        for (&id, w) in words {
            ev.load(id, arr_of_words(g.ty(id).dtype, w));
            done.insert(id);
        }
        HostArrays {
            g,
            sched,
            ev,
            vals,
            done,
        }
    }

    /// Evaluates array stage `stage` on the host, reading its nodes' other arguments from
    /// the device and writing their values back.
    fn stage(&mut self, st: &Arc<CudaStream>, stage: ArrayStage) -> Result<(), Error> {
        let ids = stage.nodes(self.sched);
        let e = drv("moving a whole-batch value between the device and the host");
        let g = self.g;
        let input = |v: ValueId| matches!(g.node(v).op, Op::Input(_));
        // Arguments not computed in this stage and not exact on the host: the streams' values
        // (read afresh: a stream may have written them since the last stage), device inputs.
        let mut read = std::collections::BTreeSet::new();
        for &id in ids {
            for &a in &g.node(id).args {
                if !self.done.contains(&a) && (input(a) || !ids.contains(&a)) {
                    read.insert(a);
                }
            }
        }
        for a in read {
            if matches!(g.node(a).op, Op::Const(_) | Op::Size(_)) {
                self.ev.eval_array(a)?;
                self.done.insert(a);
                continue;
            }
            let Some(buf) = &self.vals[a.index()] else {
                return Err(Error::Internal(format!(
                    "an array stage reads value {} that has no device array",
                    a.0
                )));
            };
            let words = st.clone_dtoh(buf).map_err(&e)?;
            self.ev.load(a, arr_of_words(g.ty(a).dtype, &words));
        }
        for &id in ids {
            if !input(id) {
                self.ev.eval_array(id)?;
                self.done.insert(id);
            }
        }
        for &id in ids.iter().filter(|&&id| !input(id)) {
            let (Some(arr), Some(buf)) = (&self.ev.vals[id.index()], &mut self.vals[id.index()])
            else {
                continue;
            };
            let words = arr.words();
            // The device keeps one word for an empty pair level (`upload_values`).
            let pair_pad = g.ty(id).level == liger_ir::Level::Pair && words.is_empty();
            if words.len() != buf.len() && !(pair_pad && buf.len() == 1) {
                return Err(Error::Internal(format!(
                    "value {} has {} words on the host and {} on the device",
                    id.0,
                    words.len(),
                    buf.len()
                )));
            }
            if words.is_empty() {
                continue;
            }
            let mut dst = buf.slice_mut(0..words.len());
            st.memcpy_htod(&words, &mut dst).map_err(&e)?;
        }
        Ok(())
    }
}

/// Vocab parallel on CUDA: this rank's shard of the vocabulary and the buffer of the rounds'
/// partials ([`liger_ir::shard`]). Each stream kernel runs once per round; between rounds the
/// partials are combined over the ranks with device all-reduces
/// ([`crate::comm::Communicator::all_reduce_device`]) queued on the stream.
struct Shards<'a> {
    comm: &'a dyn crate::comm::Communicator,
    /// The shard's first vocabulary entry.
    offset: usize,
    /// The whole vocabulary.
    vocab: usize,
    /// The rounds of each stream kernel.
    plans: BTreeMap<StreamKind, liger_ir::shard::ShardPlan>,
    /// Partials, `slots · rows` floats (grown to the largest stream and chunk).
    part: Option<CudaSlice<f32>>,
}

/// The CUDA backend of the strategy driver.
struct Cuda<'a> {
    g: &'a LossFn,
    /// Data parallel: the array stages on the host.
    host: Option<HostArrays<'a>>,
    /// Vocab parallel: the shard and its rounds.
    shards: Option<Shards<'a>>,
    st: &'a Arc<CudaStream>,
    gemm: Gemm<'a>,
    prof: &'a Profiler<'a>,
    funcs: BTreeMap<(KernelKind, Option<InputId>), CudaFunction>,
    dev: Vec<DevState<'a>>,
    units: Vec<Units>,
    table: u64,
    ztab: u64,
    otab: u64,
    status: u64,
    dims: (usize, usize, usize),
    esz: usize,
    /// The current chunk's rows.
    chunk: RowSet,
    /// Small per-chunk tables kept alive until the work that reads them is queued.
    scratch: Vec<CudaSlice<u64>>,
}

/// Rows of a chunk or gradient stage: segments (adjacent ones merged) and, for more than one,
/// the device row map the kernels index them by.
#[derive(Default)]
struct RowSet {
    segs: Vec<(usize, usize)>,
    map: Option<CudaSlice<i32>>,
}

impl RowSet {
    fn rows(&self) -> usize {
        self.segs.iter().map(|s| s.1).sum()
    }

    fn first(&self) -> usize {
        self.segs.first().map_or(0, |s| s.0)
    }
}

impl Cuda<'_> {
    fn func(&self, kind: KernelKind, head: Option<InputId>) -> Result<&CudaFunction, Error> {
        self.funcs.get(&(kind, head)).ok_or_else(|| {
            Error::Internal(format!("the module has no {kind:?} kernel for {head:?}"))
        })
    }

    /// `(S, T, V)` as the generated kernels take them: `V` is the whole vocabulary (a shard's
    /// own entries are `dims.2`).
    fn sizes(&self) -> Result<(i32, i32, i32), Error> {
        let (s, t, v) = self.dims;
        let v = self.shards.as_ref().map_or(v, |sh| sh.vocab);
        Ok((i32_of("S", s)?, i32_of("T", t)?, i32_of("V", v)?))
    }

    /// `(rows pointer or 0, row0)` of the current chunk for a stream or coefficient kernel.
    fn row_args(&self) -> (u64, i32) {
        match &self.chunk.map {
            Some(m) => (dptr(m, self.st), 0),
            None => (0, self.chunk.first() as i32),
        }
    }

    /// `rows` as a [`RowSet`] (the map uploaded when there are several segments).
    fn row_set(&self, rows: &Rows) -> Result<RowSet, Error> {
        i32_of("row", rows.iter().map(|&(a, l)| a + l).max().unwrap_or(0))?;
        let mut segs: Vec<(usize, usize)> = Vec::new();
        for &(a, l) in rows {
            match segs.last_mut() {
                Some(last) if last.0 + last.1 == a => last.1 += l,
                _ => segs.push((a, l)),
            }
        }
        let map = if segs.len() > 1 {
            let m: Vec<i32> = segs
                .iter()
                .flat_map(|&(a, l)| (a..a + l).map(|x| x as i32))
                .collect();
            Some(
                self.st
                    .clone_htod(&m)
                    .map_err(drv("uploading a chunk's row map"))?,
            )
        } else {
            None
        };
        Ok(RowSet { segs, map })
    }

    /// A device table of output addresses by head input (`at`; 0 for the others), kept alive
    /// in `scratch` until the run ends.
    fn out_table(&mut self, at: &[(InputId, u64)]) -> Result<u64, Error> {
        let n = self
            .dev
            .iter()
            .map(|d| d.head.input.index() + 1)
            .max()
            .unwrap_or(1);
        let mut ot = vec![0u64; n];
        for &(input, p) in at {
            ot[input.index()] = p;
        }
        let t = self
            .st
            .clone_htod(&ot)
            .map_err(drv("uploading an output table"))?;
        let p = dptr(&t, self.st);
        self.scratch.push(t);
        Ok(p)
    }

    fn set_rows(&mut self, rows: &Rows) -> Result<(), Error> {
        self.chunk = self.row_set(rows)?;
        Ok(())
    }

    fn chunk_rows(&self) -> usize {
        self.chunk.rows()
    }

    /// The device address of head `k`'s x rows `set`: in place for one segment, else
    /// gathered into the head's contiguous block (unless it holds them already).
    fn rows_x(&mut self, k: usize, set: &RowSet) -> Result<u64, Error> {
        let d = &self.dev[k];
        let h = d.head;
        let Some(m) = &set.map else {
            return Ok(h.x + (set.first() * h.h * self.esz) as u64);
        };
        let Some(xg) = &d.xg else {
            return Err(no_gather_buffer());
        };
        let xgp = dptr(xg, self.st);
        if d.xg_rows != set.segs {
            // x holds S·T rows of h entries; xg has room for a stage's rows (at least a
            // chunk's); the map names set.rows() rows below S·T.
            self.move_rows(h.x, dptr(m, self.st), xgp, 0, set.rows(), h.h * self.esz)?;
            self.dev[k].xg_rows.clone_from(&set.segs);
        }
        Ok(xgp)
    }

    /// Queues `dst[dmap[i]] = src[smap[i]]` for `n` rows of `row_bytes` bytes (a zero map:
    /// row `i`); the rows are packed (the leading dimension is the row).
    fn move_rows(
        &self,
        src: u64,
        smap: u64,
        dst: u64,
        dmap: u64,
        n: usize,
        row_bytes: usize,
    ) -> Result<(), Error> {
        let wide = row_bytes.is_multiple_of(4) && src.is_multiple_of(4) && dst.is_multiple_of(4);
        let words = row_bytes / if wide { 4 } else { 2 };
        let f = self.func(KernelKind::MoveRows, None)?;
        let args = [
            Arg::Ptr(src),
            Arg::I64(words as i64),
            Arg::Ptr(smap),
            Arg::Ptr(dst),
            Arg::I64(words as i64),
            Arg::Ptr(dmap),
            Arg::I32(i32_of("rows", n)?),
            Arg::I32(i32_of("row words", words)?),
            Arg::I32(i32::from(wide)),
        ];
        // The callers say which buffers hold the n rows each map names.
        self.prof.time("row gather/scatter", || {
            launch(self.st, f, KernelKind::MoveRows, &args, n * words)
        })
    }

    fn bias_grad(&self, dz: u64, c: usize, coef: u64, db: &CudaSlice<f32>) -> Result<(), Error> {
        let v = self.dims.2;
        let f = self.func(KernelKind::Bias, None)?;
        let args = [
            Arg::Ptr(dz),
            Arg::I32(i32_of("rows", c)?),
            Arg::I32(i32_of("V", v)?),
            Arg::I64(v as i64),
            Arg::Ptr(coef),
            Arg::Ptr(dptr(db, self.st)),
        ];
        // dz holds c rows of v GEMM-dtype entries; coef is null or holds c floats; db v floats.
        self.prof.time("bias gradient", || {
            launch(self.st, f, KernelKind::Bias, &args, v)
        })
    }
}

impl Backend for Cuda<'_> {
    fn array(&mut self, stage: ArrayStage) -> Result<(), Error> {
        if let Some(h) = self.host.as_mut() {
            let st = self.st;
            return self
                .prof
                .time("pre/group stages on the host", || h.stage(st, stage));
        }
        let kind = match stage {
            ArrayStage::Pre => KernelKind::Pre,
            ArrayStage::PreLate => KernelKind::PreLate,
            ArrayStage::GroupNeeded => KernelKind::GroupNeeded,
            ArrayStage::Group => KernelKind::Group,
        };
        let (si, ti, vi) = self.sizes()?;
        let f = self.func(kind, None)?;
        let args = [
            Arg::Ptr(self.table),
            Arg::I32(si),
            Arg::I32(ti),
            Arg::I32(vi),
            Arg::Ptr(self.status),
        ];
        // The value table holds one array per non-vocab node, sized for its level.
        self.prof
            .time("pre/group kernels", || launch(self.st, f, kind, &args, 1))
    }

    fn logits(&mut self, heads: &[InputId], rows: &Rows) -> Result<(), Error> {
        self.set_rows(rows)?;
        let v = self.dims.2;
        let c = self.chunk_rows();
        for k in 0..self.dev.len() {
            if !heads.contains(&self.dev[k].head.input) {
                continue;
            }
            let set = std::mem::take(&mut self.chunk);
            let xp = self.rows_x(k, &set);
            self.chunk = set;
            let xp = xp?;
            let d = &self.dev[k];
            let h = d.head;
            let zp = dptr(&d.z, self.st);
            self.prof.time("logits GEMM", || {
                self.gemm
                    .run(true, false, v, c, h.h, h.w, h.h, xp, h.h, 0.0, zp, v)
            })?;
            if let Some(b) = h.b {
                let f = self.func(KernelKind::AddBias, None)?;
                let args = [
                    Arg::Ptr(zp),
                    Arg::Ptr(b),
                    Arg::I32(i32_of("rows", c)?),
                    Arg::I32(i32_of("V", v)?),
                    Arg::I64(v as i64),
                ];
                // z holds the chunk's c rows of v floats; b holds v floats.
                self.prof.time("bias add", || {
                    launch(self.st, f, KernelKind::AddBias, &args, c * v)
                })?;
            }
        }
        Ok(())
    }

    fn stream(&mut self, plan: &StreamPlan, _rows: &Rows, out_offset: usize) -> Result<(), Error> {
        let v = self.dims.2;
        let (kind, outs) = match plan.kind {
            StreamKind::Pre => (KernelKind::PreStream, self.otab),
            StreamKind::Forward => (KernelKind::Forward, self.otab),
            StreamKind::Fused | StreamKind::Backward => {
                let kind = if plan.kind == StreamKind::Fused {
                    KernelKind::Fused
                } else {
                    KernelKind::Backward
                };
                if out_offset == 0 {
                    (kind, self.otab)
                } else {
                    // The chunk's dlogits go to its rows of the gradient stage.
                    let at: Vec<(InputId, u64)> = self
                        .dev
                        .iter()
                        .filter_map(|d| {
                            let dz = d.dz.as_ref()?;
                            Some((
                                d.head.input,
                                dptr(dz, self.st) + (out_offset * v * self.esz) as u64,
                            ))
                        })
                        .collect();
                    (kind, self.out_table(&at)?)
                }
            }
            StreamKind::Unit => {
                let at: Vec<(InputId, u64)> = self
                    .units
                    .iter()
                    .map(|u| {
                        (
                            self.dev[u.dev].head.input,
                            dptr(&u.u, self.st) + (out_offset * v * self.esz) as u64,
                        )
                    })
                    .collect();
                (KernelKind::Unit, self.out_table(&at)?)
            }
        };
        let (si, ti, vi) = self.sizes()?;
        let (rows, row0) = self.row_args();
        let c = self.chunk_rows();
        let vl = i32_of("V", v)?;
        let f = self.func(kind, None)?.clone();
        let args = |part: u64, voff: i32, round: i32| {
            StreamArgs {
                vals: self.table,
                logits: self.ztab,
                rows,
                row0,
                nrows: c as i32,
                sizes: (si, ti, vi),
                ld: v as i64,
                outs,
                shard: (vl, voff, part, round),
            }
            .list()
        };
        i32_of("rows", c)?;
        let fix = match self.shards {
            Some(_) => Some(self.func(KernelKind::ShardFix, None)?.clone()),
            None => None,
        };
        let (Some(sh), Some(fix)) = (self.shards.as_mut(), fix) else {
            // The logits and output tables point at chunk buffers of at least c rows of V
            // entries; a row map holds c row indices below S·T.
            let a = args(0, 0, 0);
            return self
                .prof
                .time("stream kernels", || launch(self.st, &f, kind, &a, c));
        };
        // Vocab parallel: the rounds, their partials combined between them.
        let sp = sh
            .plans
            .entry(plan.kind)
            .or_insert_with(|| liger_ir::shard::ShardPlan::new(self.g, plan))
            .clone();
        let need = sp.slots().max(1) * c;
        if sh.part.as_ref().is_none_or(|p| p.len() < need) {
            sh.part = None;
            sh.part = Some(
                self.st
                    .alloc_zeros(need)
                    .map_err(drv("allocating the shards' partials"))?,
            );
        }
        let voff = i32_of("vocabulary offset", sh.offset)?;
        let comm = sh.comm;
        let Some(part) = sh.part.as_mut() else {
            return Err(Error::Internal("no partials buffer".into()));
        };
        let pp = dptr(part, self.st);
        for k in 1..=sp.partial_rounds() + 1 {
            let a = args(pp, voff, k as i32);
            // As above; part holds slots · c floats, the round's at its base.
            self.prof
                .time("stream kernels", || launch(self.st, &f, kind, &a, c))?;
            let Some(lay) = sp.rounds.get(k - 1) else {
                break;
            };
            let base = sp.base(k) * c;
            let (m0, _, s0, n0) = lay.blocks();
            let (nm, ns, nn) = (lay.nm(), lay.ns(), lay.nn());
            self.prof.time("shard all-reduces", || {
                let mut view = part.slice_mut(base + m0 * c..base + (m0 + nm) * c);
                comm.all_reduce_device(self.st, &mut view, crate::comm::ReduceOp::Max)
            })?;
            let (nl, na) = (lay.lse.len(), lay.argmax.len());
            if nl + na > 0 {
                let fa = [
                    Arg::Ptr(pp + (base * 4) as u64),
                    Arg::I32(c as i32),
                    Arg::I32(i32_of("slots", nm)?),
                    Arg::I32(i32_of("slots", ns)?),
                    Arg::I32(i32_of("slots", nl)?),
                    Arg::I32(i32_of("slots", na)?),
                ];
                // The round's slots start at base and hold (2·nm + ns + nn)·c floats.
                self.prof.time("shard all-reduces", || {
                    launch(self.st, &fix, KernelKind::ShardFix, &fa, (nl + na) * c)
                })?;
            }
            self.prof.time("shard all-reduces", || {
                let mut view = part.slice_mut(base + s0 * c..base + (s0 + ns) * c);
                comm.all_reduce_device(self.st, &mut view, crate::comm::ReduceOp::Sum)?;
                let mut view = part.slice_mut(base + n0 * c..base + (n0 + nn) * c);
                comm.all_reduce_device(self.st, &mut view, crate::comm::ReduceOp::Min)
            })?;
        }
        Ok(())
    }

    fn grads(&mut self, rows: &Rows) -> Result<(), Error> {
        let v = self.dims.2;
        // The stage: the chunks whose dlogits the stream kernels wrote, in order.
        let stage = self.row_set(rows)?;
        let c = stage.rows();
        for k in 0..self.dev.len() {
            // A gradient head whose dlogits exist; each GEMM runs only for a gradient asked
            // for (`RunOptions::grads`: its accumulator exists).
            if self.dev[k].dz.is_none() {
                continue;
            }
            let xp = if self.dev[k].dw.is_some() {
                self.rows_x(k, &stage)?
            } else {
                0
            };
            let d = &self.dev[k];
            let h = d.head;
            let Some(dz) = &d.dz else { continue };
            let dzp = dptr(dz, self.st);
            if let Some(dx) = &d.dx {
                // One segment: dx rows in place; several: into the gathered block, then
                // scattered to their rows.
                let dxp = match (&stage.map, &d.dxg) {
                    (None, _) => dptr(dx, self.st) + (stage.first() * h.h * 4) as u64,
                    (Some(_), Some(g)) => dptr(g, self.st),
                    (Some(_), None) => return Err(no_gather_buffer()),
                };
                self.prof.time("dx GEMM", || {
                    self.gemm
                        .run(false, false, h.h, c, v, h.w, h.h, dzp, v, 0.0, dxp, h.h)
                })?;
                if let Some(m) = &stage.map {
                    // dxg holds c rows of h floats; the map names c distinct rows of dx.
                    self.move_rows(dxp, 0, dptr(dx, self.st), dptr(m, self.st), c, h.h * 4)?;
                }
            }
            if let Some(dw) = &d.dw {
                let gemm = self.gemm.with_c(dw.c_type());
                self.prof.time("dW GEMM", || {
                    gemm.run(
                        false,
                        true,
                        h.h,
                        v,
                        c,
                        xp,
                        h.h,
                        dzp,
                        v,
                        1.0,
                        dw.ptr(self.st),
                        h.h,
                    )
                })?;
            }
            if let Some(db) = &d.db {
                self.bias_grad(dzp, c, 0, db)?;
            }
        }
        Ok(())
    }

    fn unit_dx(&mut self, _rows: &Rows, unit_offset: usize) -> Result<(), Error> {
        let v = self.dims.2;
        let c = self.chunk_rows();
        let r0 = self.chunk.first();
        for u in &self.units {
            let d = &self.dev[u.dev];
            let Some(dx) = &d.dx else { continue };
            let h = d.head;
            let up = dptr(&u.u, self.st) + (unit_offset * v * self.esz) as u64;
            let dxp = dptr(dx, self.st) + (r0 * h.h * 4) as u64;
            self.prof.time("dx GEMM", || {
                self.gemm
                    .run(false, false, h.h, c, v, h.w, h.h, up, v, 0.0, dxp, h.h)
            })?;
        }
        Ok(())
    }

    fn finish_group(&mut self, group: &Rows) -> Result<(), Error> {
        self.set_rows(group)?;
        let v = self.dims.2;
        let gr = self.chunk_rows();
        let (si, ti, _) = self.sizes()?;
        let (rows, row0) = self.row_args();
        for u in &self.units {
            let d = &self.dev[u.dev];
            let h = d.head;
            let args = [
                Arg::Ptr(self.table),
                Arg::Ptr(rows),
                Arg::I32(row0),
                Arg::I32(i32_of("rows", gr)?),
                Arg::I32(si),
                Arg::I32(ti),
                Arg::Ptr(dptr(&u.cf, self.st)),
            ];
            // The coefficient kernel reads the value table and writes gr floats into cf.
            self.prof.time("deferred scaling", || {
                launch(self.st, &u.coef_fn, KernelKind::Coef, &args, gr)
            })?;
            let mut off = 0;
            for &(a, l) in &self.chunk.segs {
                let (li, hi, ldx) = (i32_of("rows", l)?, i32_of("H", h.h)?, h.h as i64);
                let cp = dptr(&u.cf, self.st) + (off * 4) as u64;
                if let Some(dx) = &d.dx {
                    let dxp = dptr(dx, self.st) + (a * h.h * 4) as u64;
                    let f = self.func(KernelKind::ScaleRows, None)?;
                    let args = [
                        Arg::Ptr(dxp),
                        Arg::I64(ldx),
                        Arg::I32(li),
                        Arg::I32(hi),
                        Arg::Ptr(cp),
                    ];
                    // dx holds these l rows of h floats; cf holds l floats from cp.
                    self.prof.time("deferred scaling", || {
                        launch(self.st, f, KernelKind::ScaleRows, &args, l * h.h)
                    })?;
                }
                let xp = h.x + (a * h.h * self.esz) as u64;
                let xsp = dptr(&u.xs, self.st) + (off * h.h * self.esz) as u64;
                let f = self.func(KernelKind::ScaledCopy, None)?;
                let args = [
                    Arg::Ptr(xp),
                    Arg::I64(ldx),
                    Arg::I32(li),
                    Arg::I32(hi),
                    Arg::Ptr(cp),
                    Arg::Ptr(xsp),
                ];
                // x holds these l rows; xs has room for them at this offset.
                self.prof.time("deferred scaling", || {
                    launch(self.st, f, KernelKind::ScaledCopy, &args, l * h.h)
                })?;
                off += l;
            }
            if let Some(dw) = &d.dw {
                let (xsp, up) = (dptr(&u.xs, self.st), dptr(&u.u, self.st));
                let gemm = self.gemm.with_c(dw.c_type());
                self.prof.time("dW GEMM", || {
                    gemm.run(
                        false,
                        true,
                        h.h,
                        v,
                        gr,
                        xsp,
                        h.h,
                        up,
                        v,
                        1.0,
                        dw.ptr(self.st),
                        h.h,
                    )
                })?;
            }
            if let Some(db) = &d.db {
                self.bias_grad(dptr(&u.u, self.st), gr, dptr(&u.cf, self.st), db)?;
            }
        }
        Ok(())
    }
}

/// A chunk of several segments without the buffers to gather it (the planner and the driver
/// disagree on [`gathers`]).
fn no_gather_buffer() -> Error {
    Error::Internal("a chunk spans several row segments but its rows have no gather buffer".into())
}

/// Whether the chunks of `strategy` can span several row segments and so gather their rows
/// into contiguous blocks (one GEMM per chunk): packs of whole groups (a pair's two sequences
/// lie apart), and chunks of live rows when dead rows are left out. Deferred chunks are
/// pieces of one segment.
fn gathers(strategy: Strategy, skipping: bool) -> bool {
    match strategy {
        Strategy::Deferred => false,
        Strategy::GroupAligned => true,
        Strategy::Fused | Strategy::TwoPass => skipping,
    }
}

/// Queues the conversion (and, with a checker, the check) of device side input `d` into its
/// value-table array `out`.
fn convert_side(
    engine: &Engine,
    st: &Arc<CudaStream>,
    d: &DevSide,
    out: u64,
    checker: Option<&mut Checker>,
    (t, v, ignore): (usize, usize, i64),
) -> Result<(), Error> {
    use cudarc::driver::PushKernelArg;
    let n = d.len as i64;
    let cfg = io_cfg(d.len);
    let null = 0u64;
    let e = drv("converting a device input");
    match d.kind {
        SideKind::Float => {
            let slot = match checker {
                Some(c) => c.slot(st, &d.name, CheckWhat::Finite)?,
                None => null,
            };
            let f = engine.io_fn(&format!("liger_in_float_{}", io_suffix(d.dtype)))?;
            let mut b = st.launch_builder(&f);
            b.arg(&d.ptr).arg(&n).arg(&out).arg(&slot);
            // SAFETY: d.ptr holds d.len elements of its float dtype, out d.len words; slot is
            // null or a live u64 pair.
            unsafe { b.launch(cfg) }.map_err(e)?;
            if slot != null {
                fetch(engine, st, d.ptr, d.dtype, slot)?;
            }
        }
        SideKind::Tokens { target } => {
            let Some(c) = checker else {
                return Err(Error::Internal("device token ids need a checker".into()));
            };
            let what = CheckWhat::Tokens {
                vocab: v,
                t,
                ignore,
            };
            let slot = c.slot(st, &d.name, what)?;
            let f = engine.io_fn(&format!("liger_in_tokens_{}", io_suffix(d.dtype)))?;
            let (use_ign, vi) = (i32::from(target), i32_of("V", v)?);
            let mut b = st.launch_builder(&f);
            b.arg(&d.ptr)
                .arg(&n)
                .arg(&ignore)
                .arg(&use_ign)
                .arg(&vi)
                .arg(&out)
                .arg(&slot);
            // SAFETY: d.ptr holds d.len ids of its integer dtype, out d.len words; slot is a
            // live u64 pair.
            unsafe { b.launch(cfg) }.map_err(e)?;
            fetch(engine, st, d.ptr, d.dtype, slot)?;
        }
        SideKind::Mask => {
            let f = engine.io_fn(&format!("liger_in_mask_{}", io_suffix(d.dtype)))?;
            let mut b = st.launch_builder(&f);
            b.arg(&d.ptr).arg(&n).arg(&out);
            // SAFETY: d.ptr holds d.len mask elements of its dtype, out d.len words.
            unsafe { b.launch(cfg) }.map_err(e)?;
        }
    }
    Ok(())
}

fn event(st: &CudaStream) -> Result<CudaEvent, Error> {
    st.record_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
        .map_err(drv("recording an event"))
}

/// Queues the whole run on `st` (see the module docs); nothing here synchronises `st`.
pub(crate) fn enqueue(engine: &Engine, st: &Arc<CudaStream>, job: Job<'_>) -> Result<Ran, Error> {
    let Job {
        p,
        dims: (s, t, v),
        heads,
        dtype: hd,
        words,
        side,
        mut checker,
        opts,
        live,
        into,
        ranked,
    } = job;
    let (comm, shard) = match ranked {
        Some(crate::cpu::Ranked::Data(c)) => (Some(c), None),
        Some(crate::cpu::Ranked::Vocab {
            comm,
            offset,
            vocab,
        }) => (None, Some((comm, offset, vocab))),
        None => (None, None),
    };
    if let Some((_, _, vocab)) = shard {
        // A round's argmax index travels as an f32 (exact below 2^24).
        if vocab > 1 << 24 {
            return Err(Error::Device {
                device: "cuda".into(),
                why: format!(
                    "vocab parallel on CUDA takes vocabularies of up to 2^24 entries, not {vocab}"
                ),
            });
        }
    }
    opts.grad_dtypes.check()?;
    let (g, sched) = (p.grad(), p.schedule());
    if comm.is_some() {
        batch_sizes_only_in_arrays(g, sched)?;
    }
    let r = s * t;
    let (dtype, cdt) = match hd {
        HDType::BF16 => (GemmDType::BF16, cudaDataType::CUDA_R_16BF),
        HDType::F16 => (GemmDType::F16, cudaDataType::CUDA_R_16F),
        _ => (GemmDType::F32, cudaDataType::CUDA_R_32F),
    };
    let esz = dtype.size();
    let dims = Dims {
        num_seqs: s,
        seq_len: t,
        vocab: v,
        hidden: heads.iter().map(|h| h.h).collect(),
        dx: opts.grads.x,
        dw: opts.grads.w,
        live_rows: live.as_ref().map(|l| l.iter().filter(|&&x| x).count()),
    };
    let group_rows = sched.group_rows(r, t);
    let target =
        |head: &str, part: GradPart| into.iter().find(|t| t.head == head && t.part == part);
    let mem = CudaMemory {
        rows: r,
        vocab: v,
        hidden: dims.hidden.clone(),
        grads: heads.iter().filter(|h| h.grad).count(),
        row_values: sched.row_values,
        group_rows,
        units: sched.factors.as_ref().map_or(0, Vec::len),
        esz,
        grad_copies: heads
            .iter()
            .filter(|h| h.grad)
            .map(|h| {
                // A gradient written into a caller's buffer takes that buffer's dtype.
                let of = |part: GradPart, default: HDType| {
                    target(&h.name, part).map_or(default, |t| t.dtype)
                };
                let d = &opts.grad_dtypes;
                // `grad W` accumulated in its returned dtype keeps no f32 copy.
                let w = of(GradPart::W, d.w);
                let w = if WAcc::in_output(opts.w_accum, w, hd) {
                    HDType::F32
                } else {
                    w
                };
                crate::plan::GradDTypes {
                    x: of(GradPart::X, d.x),
                    w,
                    b: of(GradPart::B, d.b),
                }
                .working_bytes(r, h.h, v, h.b.is_some(), opts.grads)
            })
            .sum(),
        skipping: live.is_some(),
        dx_hidden: heads
            .iter()
            .filter(|h| h.grad && opts.grads.x)
            .map(|h| h.h)
            .sum(),
    };
    let ranks = match (comm, shard) {
        (Some(c), _) => Some(crate::plan::Ranks::Data(c)),
        (None, Some((c, _, _))) => Some(crate::plan::Ranks::Vocab(c)),
        (None, None) => None,
    };
    let pl = crate::plan::plan_ranked(p, &dims, opts, &mem, ranks)?;
    let strategy = pl.strategy;
    let chunk = pl.chunk_rows;
    let stage = pl.stage_rows.max(chunk);
    let arch = engine.gpu.arch()?;
    let compiled = crate::cuda::compile::compile(
        p,
        strategy,
        &EmitOptions {
            gemm_dtype: dtype,
            vocab_shards: shard.is_some(),
        },
        &arch,
        &engine.cache,
    )?;
    let module = engine.module(&compiled.key.key(), &compiled.binary)?;
    let mut funcs = BTreeMap::new();
    for k in &compiled.module.kernels {
        funcs.insert(
            (k.kind, k.head),
            module
                .load_function(&k.name)
                .map_err(drv("loading a generated kernel"))?,
        );
    }
    let blas_h = engine.blas(st)?;
    let blas = lock(&blas_h)?;
    let prof = Profiler::new(st, opts.profile);
    let alloc = drv("allocating working memory");

    // Values: one array per non-vocab node; host words uploaded, device inputs converted.
    let vals = upload_values(st, g, (s, t, v), |i| words.get(&i).cloned())?;
    for d in &side {
        let Some(out) = &vals[d.node.index()] else {
            continue;
        };
        convert_side(
            engine,
            st,
            d,
            dptr(out, st),
            checker.as_mut(),
            (t, v, opts.ignore_index),
        )?;
    }
    let table: Vec<u64> = vals
        .iter()
        .map(|b| b.as_ref().map_or(0, |b| dptr(b, st)))
        .collect();
    let table_d = st.clone_htod(&table).map_err(&alloc)?;
    let status: CudaSlice<i32> = st.clone_htod(&abi::status::INIT).map_err(&alloc)?;

    // Per head: chunk logits, dlogits, f32 gradient accumulators, gathered rows.
    let gather = gathers(strategy, live.is_some());
    let mut dev = Vec::new();
    for h in &heads {
        let grad = h.grad;
        // A caller's f32 buffer is the accumulator itself; others are the runtime's.
        let accumulator = |part: GradPart, n: usize| -> Result<Acc, Error> {
            match target(&h.name, part) {
                Some(t) if t.dtype == HDType::F32 => Acc::borrowed(st, t),
                _ => Acc::own(st, n),
            }
        };
        dev.push(DevState {
            head: h,
            z: st.alloc_zeros(chunk * v).map_err(&alloc)?,
            dz: if grad && strategy != Strategy::Deferred {
                Some(st.alloc_zeros(stage * v * esz).map_err(&alloc)?)
            } else {
                None
            },
            dx: if grad && opts.grads.x {
                Some(accumulator(GradPart::X, r * h.h)?)
            } else {
                None
            },
            dw: if grad && opts.grads.w {
                let t = target(&h.name, GradPart::W);
                let dtype = t.map_or(opts.grad_dtypes.w, |t| t.dtype);
                Some(WAcc::new(st, v * h.h, (dtype, hd), opts.w_accum, t)?)
            } else {
                None
            },
            db: if grad && opts.grads.b && h.b.is_some() {
                Some(accumulator(GradPart::B, v)?)
            } else {
                None
            },
            xg: if gather {
                Some(st.alloc_zeros(stage * h.h * esz).map_err(&alloc)?)
            } else {
                None
            },
            dxg: if gather && grad && opts.grads.x {
                Some(st.alloc_zeros(stage * h.h).map_err(&alloc)?)
            } else {
                None
            },
            xg_rows: Vec::new(),
        });
    }
    let slots = g.inputs.len().max(1);
    let mut ztab = vec![0u64; slots];
    let mut otab = vec![0u64; slots];
    for d in &dev {
        ztab[d.head.input.index()] = dptr(&d.z, st);
        if let Some(dz) = &d.dz {
            otab[d.head.input.index()] = dptr(dz, st);
        }
    }
    let ztab_d = st.clone_htod(&ztab).map_err(&alloc)?;
    let otab_d = st.clone_htod(&otab).map_err(&alloc)?;
    let mut units = Vec::new();
    if strategy == Strategy::Deferred {
        for f in sched.factors.iter().flatten() {
            let d = dev
                .iter()
                .position(|d| d.head.input == f.head)
                .ok_or_else(|| Error::Internal("a deferred factor of no head".into()))?;
            let coef_fn = module
                .load_function(
                    &compiled
                        .module
                        .kernel(KernelKind::Coef, Some(f.head))
                        .ok_or_else(|| Error::Internal("no coefficient kernel".into()))?
                        .name,
                )
                .map_err(drv("loading a generated kernel"))?;
            units.push(Units {
                dev: d,
                coef_fn,
                u: st.alloc_zeros(group_rows * v * esz).map_err(&alloc)?,
                xs: st
                    .alloc_zeros(group_rows * dev[d].head.h * esz)
                    .map_err(&alloc)?,
                cf: st.alloc_zeros(group_rows).map_err(&alloc)?,
            });
        }
    }

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
        + abi::status::WORDS * 4
        + dev
            .iter()
            .map(|d| {
                d.z.len() * 4
                    + d.dz.as_ref().map_or(0, |x| x.len())
                    + d.xg.as_ref().map_or(0, |x| x.len())
                    + d.dxg.as_ref().map_or(0, |x| x.len() * 4)
            })
            .sum::<usize>()
        + units
            .iter()
            .map(|u| u.u.len() + u.xs.len() + u.cf.len() * 4)
            .sum::<usize>();

    let t0 = event(st)?;
    let mut vals = vals;
    let findings;
    let streams = sched.streams(g, strategy);
    let groups = sched.groups(s, t);
    let driven = {
        let host = comm.map(|c| HostArrays::new(g, sched, (s, t, v), c, &words, &mut vals));
        let mut cuda = Cuda {
            g,
            host,
            shards: shard.map(|(comm, offset, vocab)| Shards {
                comm,
                offset,
                vocab,
                plans: BTreeMap::new(),
                part: None,
            }),
            st,
            gemm: Gemm {
                blas: &blas.handle,
                ab: cdt,
                c: cudaDataType::CUDA_R_32F,
            },
            prof: &prof,
            funcs,
            dev,
            units,
            table: dptr(&table_d, st),
            ztab: dptr(&ztab_d, st),
            otab: dptr(&otab_d, st),
            status: dptr(&status, st),
            dims: (s, t, v),
            esz,
            chunk: RowSet::default(),
            scratch: Vec::new(),
        };
        let pre = sched.pre_stream_plan(g);
        let driven = driver::drive(
            &mut cuda,
            &pl,
            pre.as_ref(),
            &streams,
            &groups,
            r,
            live.as_deref(),
        )?;
        dev = std::mem::take(&mut cuda.dev);
        // Vocab parallel: dx = Σ_r dz_r W_r, the ranks' partial products summed (in f32,
        // before any rounding to the dtype asked for).
        if let Some(sh) = &cuda.shards {
            for d in dev.iter_mut() {
                if let Some(dx) = d.dx.as_mut() {
                    let n = dx.len();
                    let mut view = dx.slice_mut(0..n);
                    prof.time("shard all-reduces", || {
                        sh.comm
                            .all_reduce_device(st, &mut view, crate::comm::ReduceOp::Sum)
                    })?;
                }
            }
        }
        findings = cuda
            .host
            .as_ref()
            .map(|h| h.ev.findings)
            .unwrap_or_default();
        driven
    };

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
    // Gradients written into the caller's buffers: (name, address, dtype, elements).
    let mut written: Vec<(String, u64, HDType, usize)> = Vec::new();
    for d in dev.into_iter().filter(|d| d.head.grad) {
        let name = d.head.name.clone();
        let mut parts: [Option<DeviceGrad>; 3] = [None, None, None];
        // A 16-bit `grad W` accumulator holds the result already: returned, or in the target.
        let dw = match d.dw {
            Some(WAcc::Half { ptr, dtype, own }) => {
                match (own, target(&name, GradPart::W)) {
                    (Some(g), None) => parts[1] = Some(g),
                    (None, Some(t)) => written.push((format!("grad {name}.w"), ptr, dtype, t.len)),
                    _ => {
                        return Err(Error::Internal(format!(
                            "gradient {name}.w: a 16-bit accumulator without its buffer"
                        )));
                    }
                }
                None
            }
            Some(WAcc::F32(a)) => Some(a),
            None => None,
        };
        let accs = [
            (GradPart::X, d.dx, xdt),
            (GradPart::W, dw, wdt),
            (GradPart::B, d.db, bdt),
        ];
        for (slot, (part, acc, to)) in parts.iter_mut().zip(accs) {
            let Some(acc) = acc else { continue };
            match target(&name, part) {
                Some(t) => {
                    // An f32 target was the accumulator; others get the rounded values.
                    if !acc.borrowed {
                        prof.time("gradient casts", || write_into(engine, st, &acc, t))?;
                    }
                    written.push((
                        format!("grad {name}.{}", part.name()),
                        t.ptr,
                        t.dtype,
                        t.len,
                    ));
                    // Dropped: the runtime's accumulator is freed stream-ordered after the
                    // write; a caller's buffer is left to its owner.
                    drop(acc);
                }
                None => match acc.into_owned() {
                    Some(x) => *slot = Some(cast(x, to)?),
                    None => {
                        return Err(Error::Internal(format!(
                            "gradient {name}.{}: a caller's buffer without its target",
                            part.name()
                        )));
                    }
                },
            }
        }
        let [x, w, b] = parts;
        grads_out.push(DeviceHeadGrads {
            head: name,
            x,
            w,
            b,
        });
    }
    let t1 = event(st)?;
    // Returned buffers: their last write is all the work queued above (so a consumer on
    // another stream waits for it, through cudarc's event tracking).
    for gr in &mut grads_out {
        for b in gr.buffers_mut() {
            b.mark_written(st);
        }
    }
    // Results checked finite on the device (the device API reports them in `check`).
    if let Some(c) = checker.as_mut() {
        for o in &g.outputs {
            let what = match &o.kind {
                OutputKind::Loss => "the loss".to_string(),
                OutputKind::Metric(m) => format!("metric `{m}`"),
                OutputKind::Grad(_) => continue,
            };
            if let Some(b) = &vals[o.value.index()] {
                c.result(engine, st, &what, (dptr(b, st), HDType::F32, b.len()))?;
            }
        }
        for gr in &grads_out {
            for (part, buf) in [
                ("x", gr.x.as_ref()),
                ("w", gr.w.as_ref()),
                ("b", gr.b.as_ref()),
            ] {
                let Some(buf) = buf else { continue };
                let ptr = match buf {
                    DeviceGrad::F32(x) => dptr(x, st),
                    DeviceGrad::BF16(x) => dptr(x, st),
                    DeviceGrad::F16(x) => dptr(x, st),
                };
                c.result(
                    engine,
                    st,
                    &format!("grad {}.{part}", gr.head),
                    (ptr, buf.dtype(), buf.len()),
                )?;
            }
        }
        for (what, ptr, dtype, len) in &written {
            c.result(engine, st, what, (*ptr, *dtype, *len))?;
        }
    }
    // A failed input check poisons the loss.
    let loss_buf = g
        .outputs
        .iter()
        .find(|o| o.kind == OutputKind::Loss)
        .and_then(|o| vals[o.value.index()].as_ref());
    if let (Some(c), Some(loss)) = (&checker, loss_buf) {
        use cudarc::driver::PushKernelArg;
        let f = engine.io_fn("liger_poison")?;
        let n = i32_of("checks", c.meta.len())?;
        let mut b = st.launch_builder(&f);
        b.arg(&c.slots).arg(&n).arg(&status).arg(loss);
        // SAFETY: slots holds at least n pairs; status holds the status words; loss is a live
        // 4-byte word.
        unsafe { b.launch(io_cfg(1)) }.map_err(drv("poisoning the loss"))?;
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
                let (x, w, b) = g.parts();
                [x, w, b]
                    .into_iter()
                    .flatten()
                    .map(DeviceGrad::num_bytes)
                    .sum::<usize>()
            })
            .sum::<usize>();
    let report = Report {
        device: "cuda",
        strategy,
        forced: pl.forced,
        chunk_rows: chunk,
        stage_rows: stage,
        chunks: driven.chunks,
        skipped_rows: live
            .as_ref()
            .map_or(0, |l| l.iter().filter(|&&x| !x).count()),
        budget: opts.chunk_memory,
        estimate: pl.estimate,
        gemm_flops: pl.cost.gemm_flops,
        seconds: 0.0,
        warnings: vec![],
        device_ms: None,
        peak_extra_bytes: None,
        profile: Vec::new(),
    };
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
        findings,
    })
}

/// Whether the CUDA executor can run `p` data-parallel: its array stages run on the host,
/// where the batch sizes (`num_seqs`, `num_pairs`) are the whole batch's, but the generated
/// kernels inline them as this rank's `S`, so a loss whose vocabulary streams read a batch size
/// directly is refused with a typed error (no built-in loss does: their streams read
/// whole-batch values from the array stages).
pub fn data_parallel_ready(p: &Pipeline) -> Result<(), Error> {
    batch_sizes_only_in_arrays(p.grad(), p.schedule())
}

fn batch_sizes_only_in_arrays(g: &LossFn, sched: &liger_ir::Schedule) -> Result<(), Error> {
    use liger_ir::op::Size;
    let in_arrays = |v: ValueId| {
        [
            &sched.pre,
            &sched.pre_late,
            &sched.group_needed,
            &sched.group,
        ]
        .iter()
        .any(|l| l.contains(&v))
    };
    // The nodes some output needs (a dead node is never computed).
    let mut live = std::collections::BTreeSet::new();
    let mut stack: Vec<ValueId> = g.outputs.iter().map(|o| o.value).collect();
    while let Some(v) = stack.pop() {
        if live.insert(v) {
            stack.extend(g.node(v).args.iter().copied());
        }
    }
    for v in live {
        let node = g.node(v);
        if in_arrays(v) || matches!(node.op, Op::Input(_) | Op::Const(_) | Op::Size(_)) {
            continue;
        }
        for &a in &node.args {
            if matches!(g.node(a).op, Op::Size(Size::NumSeqs | Size::NumPairs)) {
                return Err(Error::Device {
                    device: "cuda".into(),
                    why: format!(
                        "data parallel: value {} is computed in a vocabulary stream from the \
                         batch's number of sequences or pairs, which the CUDA executor's \
                         streams know only for this rank; run this loss data-parallel on the CPU",
                        v.0
                    ),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::CudaMemory;
    use crate::plan::{Footprint, MemoryModel};
    use crate::{Error, Strategy};

    fn flce() -> liger_ir::Pipeline {
        liger_ir::pipeline_of(include_str!("../../../liger-ir/tests/losses/flce.lir"))
            .expect("the FLCE file compiles")
    }

    fn mem(h: usize, (s, t, v): (usize, usize, usize), copies: usize) -> CudaMemory {
        CudaMemory {
            rows: s * t,
            vocab: v,
            hidden: vec![h],
            grads: 1,
            row_values: flce().schedule().row_values,
            group_rows: 1,
            units: 0,
            esz: 2,
            grad_copies: copies,
            skipping: false,
            dx_hidden: h,
        }
    }

    fn plan_with(
        m: &CudaMemory,
        sizes: (usize, usize, usize),
        budget: usize,
    ) -> Result<crate::plan::Plan, Error> {
        plan_forced(m, sizes, budget, None, None)
    }

    /// FLCE's plan under `m` with chunk and stage sizes `forced` (or the planner's).
    fn plan_forced(
        m: &CudaMemory,
        (s, t, v): (usize, usize, usize),
        budget: usize,
        forced: Option<crate::plan::ForcedRows>,
        live_rows: Option<usize>,
    ) -> Result<crate::plan::Plan, Error> {
        let p = flce();
        let dims = liger_ir::schedule::Dims {
            num_seqs: s,
            seq_len: t,
            vocab: v,
            hidden: m.hidden.clone(),
            dx: true,
            dw: true,
            live_rows,
        };
        crate::plan::plan(&p, &dims, budget, None, forced, m)
    }

    #[test]
    fn small_budgets_stage_the_gradient_gemms_deeper_than_a_chunk() {
        // FLCE at S1 (8 x 1024 rows, H 4096, V 128256, bf16).
        let (s, t, h, v) = (8, 1024, 4096, 128256);
        let m = mem(h, (s, t, v), 0);
        let mut last_stage = 0;
        for budget in [256usize << 20, 512 << 20, 1 << 30, 2 << 30, 64 << 30] {
            let p = plan_with(&m, (s, t, v), budget).expect("fits");
            eprintln!(
                "budget {} MiB: chunk {} stage {} estimate {} MiB",
                budget >> 20,
                p.chunk_rows,
                p.stage_rows,
                p.estimate >> 20
            );
            assert!(p.estimate <= budget, "{p:?}");
            assert_eq!(p.stage_rows % p.chunk_rows, 0, "{p:?}");
            assert!(p.stage_rows >= last_stage, "{p:?}");
            last_stage = p.stage_rows;
            let fp = m.footprint(p.strategy);
            // Without staging the chunk (and so each dW GEMM's depth) would be this.
            let plain = (budget - fp.fixed) / (fp.per_row + fp.stage.map_or(0, |x| x.per_row));
            if plain < s * t {
                assert!(p.stage_rows > plain, "{p:?} vs {plain} unstaged rows");
            } else {
                assert_eq!((p.chunk_rows, p.stage_rows), (s * t, s * t));
            }
        }
    }

    #[test]
    fn a_masked_batch_is_planned_over_its_live_rows() {
        // FLCE at S1 with half the rows masked: chunks and stages are sized for the 4096
        // rows the loop runs, not for 8192.
        let (s, t, h, v) = (8, 1024, 4096, 128256);
        let m = CudaMemory {
            skipping: true,
            ..mem(h, (s, t, v), 0)
        };
        let live = s * t / 2;
        let roomy = plan_forced(&m, (s, t, v), 64 << 30, None, Some(live)).expect("fits");
        assert_eq!(
            (roomy.chunk_rows, roomy.stage_rows),
            (live, live),
            "{roomy:?}"
        );
        for budget in [512usize << 20, 1 << 30, 2 << 30] {
            let all = plan_with(&m, (s, t, v), budget).expect("fits");
            let half = plan_forced(&m, (s, t, v), budget, None, Some(live)).expect("fits");
            eprintln!(
                "{} MiB: every row {}/{}, half live {}/{}",
                budget >> 20,
                all.chunk_rows,
                all.stage_rows,
                half.chunk_rows,
                half.stage_rows
            );
            assert!(half.estimate <= budget, "{half:?}");
            assert!(
                half.stage_rows <= live.next_multiple_of(half.chunk_rows),
                "{half:?}"
            );
            assert!(
                half.cost.gemm_flops < all.cost.gemm_flops * 0.51,
                "{half:?} {all:?}"
            );
        }
    }

    #[test]
    fn forced_chunk_and_stage_sizes_are_checked_then_used() {
        let (s, t, h, v) = (8, 1024, 4096, 128256);
        let m = mem(h, (s, t, v), 0);
        let plan = |chunk, stage| {
            let f = crate::plan::ForcedRows {
                chunk,
                stage: Some(stage),
            };
            plan_forced(&m, (s, t, v), 1 << 30, Some(f), None)
        };
        let pl = plan(512, 2048).expect("fits");
        assert_eq!((pl.chunk_rows, pl.stage_rows), (512, 2048));
        assert!(pl.estimate <= 1 << 30);
        match plan(512, 1000) {
            Err(e @ Error::Rows { .. }) => assert!(e.to_string().contains("whole number"), "{e}"),
            other => panic!("{other:?}"),
        }
        match plan(2048, 8192) {
            Err(Error::Budget { needed, .. }) => assert!(needed > 1 << 30, "{needed}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gradient_copies_count_in_the_budget_and_say_so() {
        let (s, t, h, v) = (4, 512, 1024, 32000);
        let p = plan_with(&mem(h, (s, t, v), 0), (s, t, v), 64 << 20).expect("fits in f32");
        assert_eq!(p.strategy, Strategy::Fused);
        // A bf16 grad W keeps its f32 accumulator (v*h*4 = 125 MiB): more than 64 MiB.
        let copies = v * h * 4;
        match plan_with(&mem(h, (s, t, v), copies), (s, t, v), 64 << 20) {
            Err(e @ Error::GradBudget { copies: c, .. }) => {
                assert_eq!(c, copies);
                assert!(
                    e.to_string().contains("return those gradients in f32"),
                    "{e}"
                );
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a bf16 grad W cannot fit in 64 MiB with its f32 accumulator"),
        }
        // With room for the copy the chunk is what is left, and never larger than in f32.
        let q = plan_with(&mem(h, (s, t, v), copies), (s, t, v), 256 << 20).expect("fits");
        let q32 = plan_with(&mem(h, (s, t, v), 0), (s, t, v), 256 << 20).expect("fits");
        assert!(
            q.chunk_rows < q32.chunk_rows,
            "{} vs {}",
            q.chunk_rows,
            q32.chunk_rows
        );
        assert!(q.estimate <= 256 << 20);
        let fp: Footprint = mem(h, (s, t, v), copies).footprint(Strategy::Fused);
        assert_eq!(fp.grad_copies, copies);
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
