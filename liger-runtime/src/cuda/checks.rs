//! Device-side input checks and conversions (the runtime's I/O kernels, `io.cu`): device
//! inputs into the value table (float side inputs to f32 words, token ids to int32 with -1
//! for an ignored target, masks to 1.0/0.0), the non-finite and token-range checks of the
//! device API, and the casts of gradients to bf16/f16.
//!
//! A check slot is two u64 on the device: `[first bad index or u64::MAX, the bad value as f64
//! bits]`; [`Checker::error`] maps the first slot that fired to the same typed error the host
//! checks give.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use liger_ir::emit::abi::BLOCK;

use crate::Error;
use crate::cuda::drv;
use crate::cuda::engine::Engine;
use crate::tensor::DType as HDType;

/// The device address of `s` for work queued on `st` (stream-ordered after its last write).
pub(crate) fn dptr<T>(s: &CudaSlice<T>, st: &CudaStream) -> u64 {
    use cudarc::driver::DevicePtr;
    let (p, _sync) = s.device_ptr(st);
    p
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
    pub node: liger_ir::ValueId,
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
    /// Every value of a result finite (the loss, a metric, a gradient).
    Result,
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

/// Launch shape of an elementwise I/O kernel over `n` elements (grid-stride loops, so any
/// grid covers them).
pub(crate) fn io_cfg(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK as usize).clamp(1, 8192) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(crate) fn io_suffix(d: HDType) -> &'static str {
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
            slots: st
                .clone_htod(&init)
                .map_err(drv("allocating the input checks"))?,
            meta: Vec::new(),
            cap: cap.max(1),
        })
    }

    /// A new slot for `input`; its device address.
    pub(crate) fn slot(
        &mut self,
        st: &CudaStream,
        input: &str,
        what: CheckWhat,
    ) -> Result<u64, Error> {
        if self.meta.len() >= self.cap {
            return Err(Error::Internal("more input checks than slots".into()));
        }
        self.meta.push((input.into(), what));
        Ok(dptr(&self.slots, st) + ((self.meta.len() - 1) * 16) as u64)
    }

    /// Queues the non-finite check of float input `ptr` (`n` elements of `dtype`).
    pub fn finite(
        &mut self,
        engine: &Engine,
        st: &Arc<CudaStream>,
        input: &str,
        tensor: (u64, HDType, usize),
    ) -> Result<(), Error> {
        self.check_finite(engine, st, input, CheckWhat::Finite, tensor)
    }

    /// Queues the non-finite check of result `ptr` (`n` elements of `dtype`), named `what`.
    pub fn result(
        &mut self,
        engine: &Engine,
        st: &Arc<CudaStream>,
        what: &str,
        tensor: (u64, HDType, usize),
    ) -> Result<(), Error> {
        self.check_finite(engine, st, what, CheckWhat::Result, tensor)
    }

    fn check_finite(
        &mut self,
        engine: &Engine,
        st: &Arc<CudaStream>,
        input: &str,
        what: CheckWhat,
        (ptr, dtype, n): (u64, HDType, usize),
    ) -> Result<(), Error> {
        let slot = self.slot(st, input, what)?;
        let f = engine.io_fn(&format!("liger_check_finite_{}", io_suffix(dtype)))?;
        let nn = n as i64;
        let mut b = st.launch_builder(&f);
        b.arg(&ptr).arg(&nn).arg(&slot);
        // SAFETY: ptr holds n elements of dtype (checked by the caller); slot is a live u64 pair.
        unsafe { b.launch(io_cfg(n)) }.map_err(drv("launching an input check"))?;
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
        let mut out: CudaSlice<f32> = st.alloc_zeros(n).map_err(drv("allocating the f32 bias"))?;
        let nn = n as i64;
        let mut b = st.launch_builder(&f);
        b.arg(&ptr).arg(&nn).arg(&mut out).arg(&slot);
        // SAFETY: ptr holds n elements of dtype; out holds n floats; slot is a live u64 pair.
        unsafe { b.launch(io_cfg(n)) }.map_err(drv("launching an input check"))?;
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
                CheckWhat::Result => Error::NonFiniteResult {
                    what: input.clone(),
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
pub(crate) fn fetch(
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
    unsafe { b.launch(io_cfg(1)) }.map_err(drv("launching an input check"))?;
    Ok(())
}

/// `x` rounded to a 16-bit float type by I/O kernel `kernel`.
pub(crate) fn cast_to<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    engine: &Engine,
    st: &Arc<CudaStream>,
    x: &CudaSlice<f32>,
    kernel: &str,
) -> Result<CudaSlice<T>, Error> {
    let n = x.len();
    let nn = n as i64;
    let f = engine.io_fn(kernel)?;
    let mut out: CudaSlice<T> = st.alloc_zeros(n).map_err(drv("allocating a gradient"))?;
    let mut b = st.launch_builder(&f);
    b.arg(x).arg(&nn).arg(&mut out);
    // SAFETY: x holds n floats; out holds n 16-bit elements, which the kernel writes.
    unsafe { b.launch(io_cfg(n)) }.map_err(drv("casting a gradient"))?;
    Ok(out)
}

/// Writes the f32 gradient `x` into the caller's buffer `t`: a device copy for f32, the
/// rounding kernel of `t`'s dtype otherwise (queued on `st`).
pub(crate) fn write_into(
    engine: &Engine,
    st: &Arc<CudaStream>,
    x: &CudaSlice<f32>,
    t: &crate::cuda::backend::GradInto,
) -> Result<(), Error> {
    let n = x.len();
    if n != t.len {
        return Err(Error::Internal(format!(
            "gradient {}.{}: {n} elements for a target of {}",
            t.head,
            t.part.name(),
            t.len
        )));
    }
    let kernel = match t.dtype {
        HDType::BF16 => "liger_cast_bf16",
        HDType::F16 => "liger_cast_f16",
        _ => {
            let src = dptr(x, st);
            // SAFETY: the target holds n f32 elements (checked by the device API against the
            // gradient's shape), the source n f32 elements; both live in this stream's
            // context and the copy is queued on `st` after the work that wrote the source.
            unsafe { cudarc::driver::result::memcpy_dtod_async(t.ptr, src, n * 4, st.cu_stream()) }
                .map_err(drv("copying a gradient into the caller's buffer"))?;
            return Ok(());
        }
    };
    let nn = n as i64;
    let f = engine.io_fn(kernel)?;
    let mut b = st.launch_builder(&f);
    b.arg(x).arg(&nn).arg(&t.ptr);
    // SAFETY: x holds n floats; the target holds n 16-bit elements of the kernel's type
    // (checked by the device API), which the kernel writes.
    unsafe { b.launch(io_cfg(n)) }.map_err(drv("writing a gradient into the caller's buffer"))?;
    Ok(())
}
