//! The device API: a loss on tensors that already live on the GPU, queued on the caller's
//! stream, with the loss, metrics and gradients returned as device buffers.
//!
//! - Inputs are borrowed cudarc buffers ([`CudaSlice`] or [`CudaView`]) wrapped with a shape in
//!   [`DeviceTensor`]s; heads are [`DeviceHead`]s (`x [S,T,H]`, `W [V,H]`, optional `b [V]`).
//!   Shapes, dtypes and names are checked on the host before anything is queued.
//! - Everything runs on the stream the caller passes; nothing synchronises it, and no other
//!   stream is touched (cudarc's event tracking orders the caller's buffers written on other
//!   streams before our reads, stream-side). The call returns as soon as the work is queued.
//! - Values are checked on the device (token ids in range, non-finite floats in every float
//!   input): a failed check (or a sequence with no valid token) makes the loss NaN and is
//!   reported, as the same typed error the host API gives, by [`DeviceOutput::check`]. The
//!   metrics and gradients of a failed run are not defined. `check`, `to_host`, `device_ms`
//!   and `profile` wait for the work; nothing else does.
//! - Gradients come back in the dtypes of [`crate::RunOptions::grad_dtypes`] (f32 by default;
//!   `grad W` is accumulated in f32 across chunks either way).
//! - Host words reach the device as a few small copies (the value table, hyperparameters),
//!   every other array is zeroed by a memset on the stream.
//!
//! The first run on a stream creates the stream's cuBLAS handle and workspace, and the first
//! run of a shape bucket may compile and load kernels; later runs do neither. Handles are kept
//! for the 8 most recently used streams (see [`crate::cuda::engine`]); release a borrowed
//! stream with `Runtime::release_stream` before its owner destroys it.

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DeviceSlice, SyncOnDrop};
use liger_ir::{InputKind, Level, LossFn, OutputKind, Pipeline};

use crate::Error;
use crate::check;
use crate::cuda::backend::{DevHead, DeviceHeadGrads, GradInto, Job, Ran, enqueue};
use crate::cuda::checks::{Checker, DevSide, SideKind};
use crate::cuda::engine::Engine;
use crate::output::{LossOutput, Report};
use crate::plan::RunOptions;
use crate::tensor::DType;

mod sealed {
    /// Only the element types listed in this module implement [`super::DeviceElem`]: their
    /// dtype and byte size are what the kernels read, so no other type may claim one.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for half::f16 {}
    impl Sealed for i64 {}
    impl Sealed for i32 {}
    impl Sealed for bool {}
    impl Sealed for u8 {}
}

/// Element types a device tensor may hold (sealed: f32, bf16, f16, i64, i32, and bool or u8
/// for masks).
pub trait DeviceElem: cudarc::driver::DeviceRepr + sealed::Sealed {
    /// Its dtype (`u8` and `bool` are masks: [`DType::Bool`]).
    const DTYPE: DType;
}

impl DeviceElem for f32 {
    const DTYPE: DType = DType::F32;
}
impl DeviceElem for half::bf16 {
    const DTYPE: DType = DType::BF16;
}
impl DeviceElem for half::f16 {
    const DTYPE: DType = DType::F16;
}
impl DeviceElem for i64 {
    const DTYPE: DType = DType::I64;
}
impl DeviceElem for i32 {
    const DTYPE: DType = DType::I32;
}
impl DeviceElem for bool {
    const DTYPE: DType = DType::Bool;
}
impl DeviceElem for u8 {
    const DTYPE: DType = DType::Bool;
}

/// A borrowed device buffer with its element type erased.
trait Erased {
    fn ptr<'s>(&'s self, st: &'s CudaStream) -> (u64, SyncOnDrop<'s>);
    fn context(&self) -> &Arc<cudarc::driver::CudaContext>;
}

impl<T: DeviceElem> Erased for CudaSlice<T> {
    fn ptr<'s>(&'s self, st: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        self.device_ptr(st)
    }
    fn context(&self) -> &Arc<cudarc::driver::CudaContext> {
        DeviceSlice::stream(self).context()
    }
}

impl<T: DeviceElem> Erased for CudaView<'_, T> {
    fn ptr<'s>(&'s self, st: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        self.device_ptr(st)
    }
    fn context(&self) -> &Arc<cudarc::driver::CudaContext> {
        DeviceSlice::stream(self).context()
    }
}

/// Device memory that another library owns (a PyTorch tensor's storage, a framework's
/// allocation), borrowed by address for one call: the runtime reads it as an input or writes
/// a gradient into it ([`DeviceInputs::grad_into`]), and never frees it.
///
/// Ordering is the caller's: the work runs on the stream passed to the call, so memory
/// written or freed by its owner on that same stream (PyTorch's current stream and caching
/// allocator) is ordered with ours; on another stream the caller makes the streams wait.
#[derive(Debug)]
pub struct ForeignBuffer {
    ptr: u64,
    bytes: usize,
    ctx: Arc<cudarc::driver::CudaContext>,
}

impl ForeignBuffer {
    /// `bytes` bytes at device address `ptr` in context `ctx`.
    ///
    /// # Safety
    /// `ptr` must be the address of a device allocation in `ctx` (or memory mapped into it)
    /// with at least `bytes` bytes from `ptr`, and it must stay allocated until the work of
    /// every call that uses this buffer has run on the call's stream (its owner frees it
    /// stream-ordered on that stream, or after synchronising).
    pub unsafe fn new(ctx: &Arc<cudarc::driver::CudaContext>, ptr: u64, bytes: usize) -> Self {
        ForeignBuffer {
            ptr,
            bytes,
            ctx: ctx.clone(),
        }
    }

    /// Its device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Its length in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Erased for ForeignBuffer {
    fn ptr<'s>(&'s self, _st: &'s CudaStream) -> (u64, SyncOnDrop<'s>) {
        // No event to record: the owner orders its uses with ours (see the type's docs).
        (self.ptr, SyncOnDrop::Record(None))
    }
    fn context(&self) -> &Arc<cudarc::driver::CudaContext> {
        &self.ctx
    }
}

/// A device buffer with a shape: an input of the device API.
#[derive(Clone, Copy)]
pub struct DeviceTensor<'a> {
    buf: &'a dyn Erased,
    dtype: DType,
    shape: &'a [usize],
}

impl std::fmt::Debug for DeviceTensor<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceTensor({} {:?})", self.dtype, self.shape)
    }
}

impl<'a> DeviceTensor<'a> {
    /// `slice` seen as `shape` (its length must be the shape's element count).
    pub fn new<T: DeviceElem>(slice: &'a CudaSlice<T>, shape: &'a [usize]) -> Result<Self, Error> {
        Self::checked(slice, slice.len(), T::DTYPE, shape)
    }

    /// `view` seen as `shape` (its length must be the shape's element count).
    pub fn from_view<T: DeviceElem>(
        view: &'a CudaView<'a, T>,
        shape: &'a [usize],
    ) -> Result<Self, Error> {
        Self::checked(view, view.len(), T::DTYPE, shape)
    }

    /// `buf` seen as `shape` of `dtype` (its byte length must be the shape's element count
    /// times the dtype's size, and its address aligned for the dtype).
    pub fn foreign(
        buf: &'a ForeignBuffer,
        dtype: DType,
        shape: &'a [usize],
    ) -> Result<Self, Error> {
        let size = dtype.size();
        if !buf.ptr.is_multiple_of(size as u64) {
            return Err(Error::Device {
                device: "cuda".into(),
                why: format!(
                    "a {dtype} buffer at {:#x} is not aligned to {size} bytes",
                    buf.ptr
                ),
            });
        }
        if !buf.bytes.is_multiple_of(size) {
            return Err(Error::ViewShape {
                shape: shape.to_vec(),
                elements: buf.bytes / size,
            });
        }
        Self::checked(buf, buf.bytes / size, dtype, shape)
    }

    fn checked(
        buf: &'a dyn Erased,
        len: usize,
        dtype: DType,
        shape: &'a [usize],
    ) -> Result<Self, Error> {
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Error::ViewShape {
                shape: shape.to_vec(),
                elements: len,
            })?;
        if count != len {
            return Err(Error::ViewShape {
                shape: shape.to_vec(),
                elements: len,
            });
        }
        Ok(DeviceTensor { buf, dtype, shape })
    }

    /// Its dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Its shape.
    pub fn shape(&self) -> &[usize] {
        self.shape
    }

    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An lm head on the device: hidden states, weight, optional bias.
#[derive(Clone, Copy, Debug)]
pub struct DeviceHead<'a> {
    /// `x [S,T,H]` (f32, bf16 or f16; every head's x and W share one dtype).
    pub x: DeviceTensor<'a>,
    /// `W [V,H]`.
    pub w: DeviceTensor<'a>,
    /// `b [V]` (any float dtype).
    pub b: Option<DeviceTensor<'a>>,
}

/// A device input: a head or a tensor.
#[derive(Clone, Copy, Debug)]
pub enum DeviceInput<'a> {
    /// An lm head.
    Head(DeviceHead<'a>),
    /// Any other input.
    Tensor(DeviceTensor<'a>),
}

/// A part of a head's gradient: `dL/dx`, `dL/dW` or `dL/db`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum GradPart {
    /// `dL/dx`, `[S,T,H]`.
    X,
    /// `dL/dW`, `[V,H]`.
    W,
    /// `dL/db`, `[V]`.
    B,
}

impl GradPart {
    /// `x`, `w` or `b`, as inputs and results are named (`policy.w`, `grad.policy.w`).
    pub fn name(self) -> &'static str {
        match self {
            GradPart::X => "x",
            GradPart::W => "w",
            GradPart::B => "b",
        }
    }

    /// The part called `name` (`x`, `w` or `b`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "x" => Some(GradPart::X),
            "w" => Some(GradPart::W),
            "b" => Some(GradPart::B),
            _ => None,
        }
    }
}

/// Device inputs by parameter name, and the caller's buffers that gradients are written into.
#[derive(Clone, Debug, Default)]
pub struct DeviceInputs<'a> {
    map: BTreeMap<String, DeviceInput<'a>>,
    into: BTreeMap<(String, GradPart), (&'a ForeignBuffer, DType)>,
}

impl<'a> DeviceInputs<'a> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a head.
    pub fn head(mut self, name: &str, head: DeviceHead<'a>) -> Self {
        self.map.insert(name.into(), DeviceInput::Head(head));
        self
    }

    /// Adds a tensor.
    pub fn tensor(mut self, name: &str, t: DeviceTensor<'a>) -> Self {
        self.map.insert(name.into(), DeviceInput::Tensor(t));
        self
    }

    /// Writes gradient `part` of head `head` into the caller's buffer `target`, as `dtype`
    /// (f32, bf16 or f16; it sets that gradient's dtype instead of
    /// [`crate::RunOptions::grad_dtypes`]; `target` holds exactly the input's elements in
    /// it). The gradient is then not returned in [`DeviceOutput::grads`]. It is accumulated
    /// in the runtime's f32 buffer as always and written into `target` at the end of the
    /// queued work (a copy for f32, a rounding kernel otherwise). The run refuses a target for
    /// a gradient it does not compute (a frozen head, a part left out of
    /// [`crate::RunOptions::grads`], a head without bias).
    pub fn grad_into(
        mut self,
        head: &str,
        part: GradPart,
        target: &'a ForeignBuffer,
        dtype: DType,
    ) -> Self {
        self.into.insert((head.into(), part), (target, dtype));
        self
    }

    /// Whether `name` is given.
    pub fn contains(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Names given.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    fn get(&self, name: &str) -> Option<&DeviceInput<'a>> {
        self.map.get(name)
    }
}

/// What a device run returns: device buffers on the caller's stream (see the module docs).
pub struct DeviceOutput {
    ran: Ran,
    g: LossFn,
    stream: Arc<CudaStream>,
}

impl std::fmt::Debug for DeviceOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceOutput")
            .field("loss", &self.g.name)
            .field("report", &self.ran.report)
            .finish()
    }
}

impl DeviceOutput {
    fn value(&self, id: liger_ir::ValueId) -> Option<CudaView<'_, f32>> {
        let b = self.ran.vals[id.index()].as_ref()?;
        // SAFETY: value arrays hold 4-byte words; f32 nodes hold f32 bits, and every u32 bit
        // pattern is a valid f32.
        unsafe { b.transmute::<f32>(b.len()) }
    }

    /// The loss, one f32 on the device (NaN when an input check failed).
    pub fn loss(&self) -> Option<CudaView<'_, f32>> {
        let o = self.g.outputs.iter().find(|o| o.kind == OutputKind::Loss)?;
        self.value(o.value)
    }

    /// The names of the loss's metrics, in its order.
    pub fn metric_names(&self) -> impl Iterator<Item = &str> {
        self.g.metrics().map(|(n, _)| n)
    }

    /// Metric `name` on the device: one f32 (batch), `[P]`, `[S]` or `[S,T]`, with its level.
    pub fn metric(&self, name: &str) -> Option<(Level, CudaView<'_, f32>)> {
        let o = self
            .g
            .outputs
            .iter()
            .find(|o| matches!(&o.kind, OutputKind::Metric(n) if n == name))?;
        Some((self.g.ty(o.value).level, self.value(o.value)?))
    }

    /// Queues a copy of result `name` (`loss` or `metric.<name>`, f32) into the caller's
    /// buffer `dst` on the run's stream (no synchronisation); `dst` must hold exactly the
    /// result's f32 values.
    pub fn copy_into(&self, name: &str, dst: &ForeignBuffer) -> Result<(), Error> {
        let view = match name.strip_prefix("metric.") {
            Some(m) => self.metric(m).map(|(_, v)| v),
            None if name == "loss" => self.loss(),
            None => None,
        };
        let refuse = |why: String| Error::Target {
            target: name.into(),
            why,
        };
        let Some(view) = view else {
            return Err(refuse(format!(
                "no result of this name (results: loss, {})",
                self.g
                    .metrics()
                    .map(|(m, _)| format!("metric.{m}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if dst.bytes != view.len() * 4 || !dst.ptr.is_multiple_of(4) {
            return Err(refuse(format!(
                "the buffer holds {} bytes at {:#x}; the result is {} aligned f32 values",
                dst.bytes,
                dst.ptr,
                view.len()
            )));
        }
        if dst.ctx.cu_ctx() != self.stream.context().cu_ctx() {
            return Err(refuse("the buffer lives in another CUDA context".into()));
        }
        let st = &self.stream;
        let (src, _read) = view.device_ptr(st);
        // SAFETY: both buffers hold view.len() f32 values in the stream's context (checked
        // above); the copy is queued on the run's stream after the work that wrote the source.
        unsafe {
            cudarc::driver::result::memcpy_dtod_async(dst.ptr, src, dst.bytes, st.cu_stream())
        }
        .map_err(crate::cuda::drv(
            "copying a result into the caller's buffer",
        ))
    }

    /// Gradients of every head that has them.
    pub fn grads(&self) -> &[DeviceHeadGrads] {
        &self.ran.grads
    }

    /// Gradients of head `name`.
    pub fn grad(&self, name: &str) -> Option<&DeviceHeadGrads> {
        self.ran.grads.iter().find(|g| g.head == name)
    }

    /// Takes the gradient buffers (the loss and metrics stay readable).
    pub fn take_grads(&mut self) -> Vec<DeviceHeadGrads> {
        std::mem::take(&mut self.ran.grads)
    }

    /// The plan: strategy, chunk rows, chunks, budget, estimate, GEMM flops (no device time
    /// or peak: see [`DeviceOutput::device_ms`]).
    pub fn report(&self) -> &Report {
        &self.ran.report
    }

    /// The stream the work was queued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits for the work (synchronises the stream) and reads the status: a failed device
    /// input check or an empty sequence is its typed error; otherwise the warnings.
    pub fn check(&self) -> Result<Vec<String>, Error> {
        self.ran.status(&self.stream)
    }

    /// Device time of the compute in ms (waits for the work's end event).
    pub fn device_ms(&self) -> Result<f64, Error> {
        let (t0, t1) = &self.ran.events;
        t0.elapsed_ms(t1)
            .map(f64::from)
            .map_err(crate::cuda::drv("timing the run"))
    }

    /// Device time per phase when the run was profiled (`RunOptions::profile`; waits for
    /// the work), else empty.
    pub fn profile(&self) -> Result<Vec<crate::output::PhaseTime>, Error> {
        crate::cuda::profile::summarize(&self.ran.marks)
    }

    /// Checks the status and copies loss, metrics and gradients to the host (synchronises).
    pub fn to_host(&self) -> Result<LossOutput, Error> {
        let warnings = self.check()?;
        let (loss, metrics, grads) = self.ran.to_host(&self.g, &self.stream)?;
        Ok(LossOutput {
            loss,
            metrics,
            grads,
            report: Report {
                warnings,
                device_ms: self.device_ms().ok(),
                profile: self.profile()?,
                ..self.ran.report.clone()
            },
        })
    }
}

/// Runs the gradient IR of `p` on device inputs, queued on `stream` (see the module docs).
pub fn run_device(
    engine: &Engine,
    p: &Pipeline,
    inputs: &DeviceInputs<'_>,
    hyper: &BTreeMap<String, f32>,
    opts: &RunOptions,
    stream: &Arc<CudaStream>,
) -> Result<DeviceOutput, Error> {
    opts.grad_dtypes.check()?;
    if stream.context().cu_ctx() != engine.gpu.ctx.cu_ctx() {
        return Err(Error::Device {
            device: "cuda".into(),
            why: "the stream belongs to another CUDA context than the runtime's; make it with \
                  `Runtime::cuda_context()`"
                .into(),
        });
    }
    let (g, sched) = (p.grad(), p.schedule());
    let loss = g.name.clone();
    let st = stream;
    // Heads: shapes and dtypes on the host.
    let mut dims: Option<(usize, usize, usize)> = None;
    let mut gemm_dtype: Option<DType> = None;
    let mut found = Vec::new();
    // Every buffer must live in the runtime's context.
    let same_context = |t: &DeviceTensor<'_>, input: &str| -> Result<(), Error> {
        if t.buf.context().cu_ctx() == engine.gpu.ctx.cu_ctx() {
            return Ok(());
        }
        Err(Error::Device {
            device: "cuda".into(),
            why: format!("input `{input}` lives in another CUDA context"),
        })
    };
    let gemm_float = |d: DType| matches!(d, DType::F32 | DType::BF16 | DType::F16);
    for hp in &sched.heads {
        let name = hp.name.as_str();
        let head = match inputs.get(name) {
            Some(DeviceInput::Head(h)) => *h,
            other => {
                return Err(check::head_missing(
                    &loss,
                    name,
                    matches!(other, Some(DeviceInput::Tensor(_))),
                ));
            }
        };
        let (_, _, _, h) = check::head_shapes(
            name,
            head.x.shape(),
            head.w.shape(),
            head.b.as_ref().map(DeviceTensor::shape),
            &mut dims,
            check::VocabRule {
                prefix: opts.vocab_prefix,
                trainable: hp.grad.is_some(),
            },
        )?;
        let parts = [
            ("x", Some(&head.x)),
            ("w", Some(&head.w)),
            ("b", head.b.as_ref()),
        ];
        for (part, tns) in parts.iter().filter_map(|(p, t)| Some((*p, (*t)?))) {
            same_context(tns, &format!("{name}.{part}"))?;
            let d = tns.dtype();
            if !gemm_float(d) {
                return Err(Error::InputDType {
                    input: format!("{name}.{part}"),
                    expected: "f32, bf16 or f16 on the device",
                    got: d,
                });
            }
            // The bias may be any float dtype; x and W of every head share the GEMM dtype.
            if part != "b" && *gemm_dtype.get_or_insert(d) != d {
                return Err(Error::InputDType {
                    input: format!("{name}.{part}"),
                    expected: "the dtype of every head's x and w",
                    got: d,
                });
            }
        }
        found.push((hp, head, h));
    }
    let Some((s, t, v)) = dims else {
        return Err(Error::MissingInput {
            loss,
            name: "a head".into(),
            kind: "logits",
        });
    };
    check::names_and_pairs(g, sched, inputs.names(), s)?;
    let into = grad_targets(inputs, &found, (s, t, v), opts)?;

    // Side inputs: shapes and dtypes on the host; hyperparameters as host words.
    let mut words = BTreeMap::new();
    let mut side_t: Vec<(String, liger_ir::ValueId, SideKind, DeviceTensor<'_>)> = Vec::new();
    for (k, input) in g.inputs.iter().enumerate() {
        if input.kind.is_head() {
            continue;
        }
        let name = input.name.as_str();
        let Some(node) = g.input_node(liger_ir::InputId(k as u32)) else {
            continue;
        };
        if input.kind == InputKind::Param {
            let x = hyper
                .get(name)
                .copied()
                .ok_or_else(|| Error::MissingHyper { name: name.into() })?;
            words.insert(node, vec![x.to_bits()]);
            continue;
        }
        let tv = match inputs.get(name) {
            Some(DeviceInput::Tensor(t)) => *t,
            other => {
                return Err(check::tensor_missing(
                    &loss,
                    input,
                    matches!(other, Some(DeviceInput::Head(_))),
                ));
            }
        };
        check::side_shape(input, tv.shape(), (s, t, v))?;
        let (kind, ok, expected) = match input.kind {
            InputKind::Target | InputKind::Tokens => (
                SideKind::Tokens {
                    target: input.kind == InputKind::Target,
                },
                matches!(tv.dtype(), DType::I64 | DType::I32),
                "token ids (i64 or i32)",
            ),
            InputKind::RowMask | InputKind::SeqMask => (
                SideKind::Mask,
                matches!(tv.dtype(), DType::Bool | DType::I64 | DType::I32),
                "a mask (bool or u8, or 0/1 integers)",
            ),
            _ => (
                SideKind::Float,
                gemm_float(tv.dtype()),
                "f32, bf16 or f16 on the device",
            ),
        };
        if !ok {
            return Err(Error::InputDType {
                input: name.into(),
                expected,
                got: tv.dtype(),
            });
        }
        same_context(&tv, name)?;
        side_t.push((name.to_string(), node, kind, tv));
    }

    // Addresses on the caller's stream; the guards record our reads when the work is queued.
    let mut guards: Vec<SyncOnDrop<'_>> = Vec::new();
    // Inputs: x, w, b per head and every side input; results: the loss, every metric and
    // x, w, b of every gradient head.
    let n_checks = found.len() * 3 + side_t.len() + 1 + g.metrics().count() + found.len() * 3;
    let mut checker = Checker::new(st, n_checks)?;
    let mut bias_bufs: Vec<CudaSlice<f32>> = Vec::new();
    let mut heads = Vec::new();
    for (hp, head, h) in &found {
        let name = hp.name.as_str();
        let x = addr(head.x.buf, st, &mut guards);
        let w = addr(head.w.buf, st, &mut guards);
        checker.finite(
            engine,
            st,
            &format!("{name}.x"),
            (x, head.x.dtype(), head.x.len()),
        )?;
        checker.finite(
            engine,
            st,
            &format!("{name}.w"),
            // Only the first `v` rows are read (all of them unless `vocab_prefix` cut a
            // frozen head's larger vocabulary).
            (w, head.w.dtype(), v * h),
        )?;
        let b = match &head.b {
            Some(b) => {
                let bp = addr(b.buf, st, &mut guards);
                let out = checker.bias_f32(engine, st, &format!("{name}.b"), (bp, b.dtype(), v))?;
                let bp = crate::cuda::checks::dptr(&out, st);
                bias_bufs.push(out);
                Some(bp)
            }
            None => None,
        };
        heads.push(DevHead {
            name: name.into(),
            input: hp.input,
            x,
            w,
            b,
            h: *h,
            grad: hp.grad.is_some(),
        });
    }
    let mut side = Vec::new();
    for (name, node, kind, tv) in &side_t {
        side.push(DevSide {
            name: name.clone(),
            node: *node,
            kind: *kind,
            ptr: addr(tv.buf, st, &mut guards),
            dtype: tv.dtype(),
            len: tv.len(),
        });
    }
    let ran = enqueue(
        engine,
        st,
        Job {
            p,
            dims: (s, t, v),
            heads,
            dtype: gemm_dtype.unwrap_or(DType::F32),
            words,
            side,
            checker: Some(checker),
            opts,
            // The masks stay on the device: every row runs (no hidden synchronisation).
            live: None,
            into,
            ranked: None,
        },
    )?;
    drop(guards);
    // The f32 bias copies are freed stream-ordered after the queued work.
    drop(bias_bufs);
    Ok(DeviceOutput {
        ran,
        g: g.clone(),
        stream: st.clone(),
    })
}

/// The caller's gradient buffers ([`DeviceInputs::grad_into`]), each checked against the
/// gradient it receives: a head with a gradient, a part the run computes, the input's element
/// count in a float dtype, the runtime's context.
fn grad_targets(
    inputs: &DeviceInputs<'_>,
    found: &[(&liger_ir::schedule::HeadPlan, DeviceHead<'_>, usize)],
    (s, t, v): (usize, usize, usize),
    opts: &RunOptions,
) -> Result<Vec<GradInto>, Error> {
    let mut out = Vec::new();
    for ((head, part), (buf, dtype)) in &inputs.into {
        let target = format!("grad.{head}.{}", part.name());
        let refuse = |why: String| Error::Target {
            target: target.clone(),
            why,
        };
        let Some((hp, dh, h)) = found.iter().find(|(hp, _, _)| hp.name == *head) else {
            return Err(refuse(format!("the loss has no head `{head}`")));
        };
        if hp.grad.is_none() {
            return Err(refuse(format!(
                "head `{head}` is frozen in this loss (no gradient)"
            )));
        }
        let (wanted, len) = match part {
            GradPart::X => (opts.grads.x, s * t * h),
            GradPart::W => (opts.grads.w, v * h),
            GradPart::B => (opts.grads.b && dh.b.is_some(), v),
        };
        if !wanted {
            return Err(refuse(
                "this run does not compute it (RunOptions::grads leaves it out, or the head has \
                 no bias)"
                    .into(),
            ));
        }
        if !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            return Err(refuse(format!(
                "gradients are f32, bf16 or f16, not {dtype}"
            )));
        }
        if !buf.ptr.is_multiple_of(dtype.size() as u64) {
            return Err(refuse(format!(
                "the buffer at {:#x} is not aligned for {dtype}",
                buf.ptr
            )));
        }
        if buf.bytes != len * dtype.size() {
            return Err(refuse(format!(
                "it holds {} bytes; {len} {dtype} elements take {}",
                buf.bytes,
                len * dtype.size()
            )));
        }
        if let Some((_, d0, _)) = found.first()
            && buf.ctx.cu_ctx() != d0.x.buf.context().cu_ctx()
        {
            return Err(refuse("the buffer lives in another CUDA context".into()));
        }
        out.push(GradInto {
            head: head.clone(),
            part: *part,
            ptr: buf.ptr,
            dtype: *dtype,
            len,
        });
    }
    Ok(out)
}

/// The address of `buf` for work on `st`; its guard (which records our read when dropped,
/// after the work is queued) goes to `guards`.
fn addr<'x>(buf: &'x dyn Erased, st: &'x CudaStream, guards: &mut Vec<SyncOnDrop<'x>>) -> u64 {
    let (p, g) = buf.ptr(st);
    guards.push(g);
    p
}
