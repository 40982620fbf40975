//! A CUDA device through cudarc: context, stream, module loading, and running the generated
//! stream kernels on given logits (the GPU side of kernel tests, and the building block of the
//! GPU executor).

use std::collections::BTreeMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaModule, CudaSlice, CudaStream, DevicePtr};
use liger_ir::emit::abi::{self, KernelKind};
use liger_ir::emit::{CudaModule as Generated, GemmDType};
use liger_ir::stream::StreamKind;
use liger_ir::{DType, InputId, InputKind, Level, LossFn, Op, Pipeline, Strategy, ValueId};

use crate::Error;
use crate::cache::Binary;
use crate::cpu::StreamsOut;
use crate::cuda::drv;
use crate::cuda::launch::{Arg, StreamArgs, i32_of, launch};

/// A GPU: its context and a stream.
pub struct Gpu {
    /// The context.
    pub ctx: Arc<CudaContext>,
    /// The stream kernels run on.
    pub stream: Arc<CudaStream>,
}

impl Gpu {
    /// Opens device `ordinal`; a machine without libcuda or without a device gets an error.
    pub fn new(ordinal: usize) -> Result<Gpu, Error> {
        // SAFETY: only tries to open the library by name.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            let lib =
                crate::cuda::libs::find(&["libcuda.so.1", "libcuda.so"]).ok_or_else(|| {
                    Error::Cuda {
                        lib: "cuda",
                        why: "libcuda.so.1 was not found: no NVIDIA driver on this machine".into(),
                    }
                })?;
            crate::cuda::libs::preload_path(&lib)
                .map_err(|why| Error::Cuda { lib: "cuda", why })?;
        }
        let n = CudaContext::device_count().map_err(drv("counting devices"))?;
        if n as usize <= ordinal {
            return Err(Error::Cuda {
                lib: "cuda",
                why: format!("no device {ordinal} ({n} devices)"),
            });
        }
        let ctx = CudaContext::new(ordinal).map_err(drv("creating the context"))?;
        let stream = ctx.default_stream();
        let gpu = Gpu { ctx, stream };
        // Best effort: a device without stream-ordered pools (or a driver that refuses the
        // attribute) runs as before, mapping its working memory on every run.
        let _ = gpu.keep_pool();
        Ok(gpu)
    }

    /// Lets the device's memory pool keep the memory freed by a run for the next one (the
    /// driver's default returns it to the system at every synchronisation, so each run would
    /// map its working memory again, which costs milliseconds per GiB on the host): the
    /// pool then holds at most the largest working set of any run, as PyTorch's caching
    /// allocator does; [`Gpu::trim_pool`] gives it back. The pool is the device's default
    /// one, which other users of stream-ordered allocation in the process share (PyTorch's
    /// own allocator does not use it unless configured to; its `cudaMallocAsync` backend sets
    /// the same threshold).
    fn keep_pool(&self) -> Result<(), Error> {
        let pool = self.pool()?;
        let mut keep: u64 = u64::MAX;
        // SAFETY: `pool` is the device's pool; the attribute takes a u64 through the pointer,
        // which points to a live local.
        unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut keep as *mut u64).cast(),
            )
        }
        .result()
        .map_err(drv("setting the memory pool's release threshold"))
    }

    /// Returns the memory the device's pool holds beyond `keep` bytes to the system (memory
    /// still used by queued work is kept until that work has run: synchronise first to
    /// release everything).
    pub fn trim_pool(&self, keep: usize) -> Result<(), Error> {
        let pool = self.pool()?;
        // SAFETY: `pool` is the device's pool.
        unsafe { cudarc::driver::sys::cuMemPoolTrimTo(pool, keep) }
            .result()
            .map_err(drv("trimming the memory pool"))
    }

    /// A GPU running on a stream the caller owns (kernels are queued on it; nothing else in
    /// the process synchronises it).
    pub fn from_stream(stream: Arc<CudaStream>) -> Gpu {
        Gpu {
            ctx: stream.context().clone(),
            stream,
        }
    }

    /// The driver's CUDA version, `(major, minor)`.
    pub fn driver_version(&self) -> Result<(i32, i32), Error> {
        let mut v = 0i32;
        // SAFETY: the driver library is loaded (a context exists); `v` is a valid out-pointer.
        let rc = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
        rc.result().map_err(drv("querying the device"))?;
        Ok((v / 1000, (v % 1000) / 10))
    }

    /// The device's default memory pool (cudarc allocates from it, stream-ordered): the
    /// device allocator whose high-water mark measures peak memory.
    fn pool(&self) -> Result<cudarc::driver::sys::CUmemoryPool, Error> {
        let mut pool = std::ptr::null_mut();
        // SAFETY: a context exists for this device; `pool` is a valid out-pointer.
        let rc = unsafe {
            cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, self.ctx.cu_device())
        };
        rc.result().map_err(drv("querying the device"))?;
        Ok(pool)
    }

    fn pool_attr(&self, attr: cudarc::driver::sys::CUmemPool_attribute) -> Result<u64, Error> {
        let pool = self.pool()?;
        let mut v = 0u64;
        // SAFETY: the attribute is a u64 one (used-memory counters); `v` is a valid u64.
        let rc = unsafe {
            cudarc::driver::sys::cuMemPoolGetAttribute(
                pool,
                attr,
                &mut v as *mut u64 as *mut std::ffi::c_void,
            )
        };
        rc.result().map_err(drv("querying the device"))?;
        Ok(v)
    }

    /// Bytes the allocator has handed out now.
    pub fn used_bytes(&self) -> Result<u64, Error> {
        self.pool_attr(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }

    /// The allocator's high-water mark since the last [`Gpu::reset_peak`].
    pub fn peak_bytes(&self) -> Result<u64, Error> {
        self.pool_attr(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }

    /// Resets the high-water mark to the current use.
    pub fn reset_peak(&self) -> Result<(), Error> {
        let pool = self.pool()?;
        let mut zero = 0u64;
        // SAFETY: resetting USED_MEM_HIGH takes a u64 zero.
        let rc = unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                pool,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut std::ffi::c_void,
            )
        };
        rc.result().map_err(drv("querying the device"))?;
        Ok(())
    }

    /// `sm_XY` of the device.
    pub fn arch(&self) -> Result<String, Error> {
        let (a, b) = self
            .ctx
            .compute_capability()
            .map_err(drv("querying the compute capability"))?;
        Ok(format!("sm_{a}{b}"))
    }

    /// The device's name.
    pub fn name(&self) -> String {
        self.ctx.name().unwrap_or_default()
    }

    /// Loads a compiled module (PTX newer than the driver accepts is refused, not JIT-failed).
    pub fn load(&self, b: &Binary) -> Result<Arc<CudaModule>, Error> {
        if b.is_ptx {
            let driver = self.driver_version()?;
            ptx_fits_driver(&String::from_utf8_lossy(&b.bytes), driver).map_err(|why| {
                Error::Device {
                    device: "cuda".into(),
                    why,
                }
            })?;
        }
        let ptx = if b.is_ptx {
            cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(&b.bytes).into_owned())
        } else {
            cudarc::nvrtc::Ptx::from_binary(b.bytes.clone())
        };
        self.ctx
            .load_module(ptx)
            .map_err(drv("loading a compiled module"))
    }
}

/// The newest PTX ISA a driver of CUDA version `(major, minor)` JITs.
pub fn max_ptx_isa((major, minor): (i32, i32)) -> (i32, i32) {
    match major {
        m if m >= 13 => (9, minor),
        12 => (
            8,
            match minor {
                0..=5 => minor,
                6 | 7 => 5,
                8 => 7,
                _ => 8,
            },
        ),
        11 => (7, minor.min(8)),
        _ => (6, 0),
    }
}

/// Checks the `.version` of a PTX text against a driver: an error names both.
pub fn ptx_fits_driver(ptx: &str, driver: (i32, i32)) -> Result<(), String> {
    let v = ptx
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version "))
        .ok_or("the PTX has no .version line")?;
    let mut it = v.trim().split('.').map(|x| x.parse::<i32>().unwrap_or(0));
    let have = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    let max = max_ptx_isa(driver);
    if have > max {
        return Err(format!(
            "PTX ISA {}.{} is newer than the CUDA {}.{} driver accepts ({}.{}); compile CUBIN for the device's sm_XX or use NVRTC 13.0",
            have.0, have.1, driver.0, driver.1, max.0, max.1
        ));
    }
    Ok(())
}

fn ptr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (p, _sync) = s.device_ptr(stream);
    p
}

/// Uploads the value table of `g` for a batch of `s` sequences of `t` tokens over a vocabulary
/// of `v`: one 4-byte array per node that is not vocab-level (vocab inputs included), holding
/// `input(node)` where it gives data and zeros otherwise; `None` for vocab-level nodes, which
/// live only inside the stream kernels.
pub(crate) fn upload_values(
    st: &Arc<CudaStream>,
    g: &LossFn,
    (s, t, v): (usize, usize, usize),
    input: impl Fn(ValueId) -> Option<Vec<u32>>,
) -> Result<Vec<Option<CudaSlice<u32>>>, Error> {
    let len = |l: Level| match l {
        Level::Vocab => v,
        Level::Row => s * t,
        Level::Seq => s,
        Level::Pair => (s / 2).max(1),
        Level::Batch => 1,
    };
    let e = drv("allocating the value table");
    let mut bufs = Vec::with_capacity(g.nodes.len());
    for id in g.ids() {
        let node = g.node(id);
        let is_vocab_input =
            matches!(node.op, Op::Input(i) if g.inputs[i.index()].kind == InputKind::VocabInput);
        if node.ty.level == Level::Vocab && !is_vocab_input {
            bufs.push(None);
            continue;
        }
        // Given words are copied; every other array is zeroed on the device (a memset queued
        // on the stream: no host buffer, no copy).
        bufs.push(Some(match input(id) {
            Some(data) => st.clone_htod(&data).map_err(&e)?,
            None => st.alloc_zeros(len(node.ty.level)).map_err(&e)?,
        }));
    }
    Ok(bufs)
}

/// Runs the stream kernels of `strategy` on the GPU with the inputs of `host` (from
/// [`crate::cpu::streams_on_logits`]) and the given logits; returns the same row values and
/// vocab outputs. `generated` is the module `module` was loaded from.
#[allow(clippy::too_many_arguments)]
pub fn streams_on_gpu(
    gpu: &Gpu,
    module: &Arc<CudaModule>,
    generated: &Generated,
    p: &Pipeline,
    strategy: Strategy,
    dtype: GemmDType,
    host: &StreamsOut,
    logits: &BTreeMap<InputId, Vec<f32>>,
    (s, t, v): (usize, usize, usize),
) -> Result<StreamsOut, Error> {
    let (g, sched) = (p.grad(), p.schedule());
    let st = &gpu.stream;
    let r = s * t;
    let e = drv("running the stream kernels");
    let bufs = upload_values(st, g, (s, t, v), |i| {
        host.inputs
            .iter()
            .find(|(n, _)| *n == i)
            .map(|(_, a)| a.words())
    })?;
    let table: Vec<u64> = bufs
        .iter()
        .map(|b| b.as_ref().map_or(0, |b| ptr(b, st)))
        .collect();
    let table_d = st.clone_htod(&table).map_err(&e)?;
    let mut zbufs = Vec::new();
    let mut ztable = vec![0u64; g.inputs.len().max(1)];
    for (k, z) in logits {
        let d = st.clone_htod(z).map_err(&e)?;
        ztable[k.index()] = ptr(&d, st);
        zbufs.push(d);
    }
    let ztable_d = st.clone_htod(&ztable).map_err(&e)?;
    let streams = sched.streams(g, strategy);
    let mut obufs: BTreeMap<InputId, CudaSlice<u8>> = BTreeMap::new();
    let mut otable = vec![0u64; g.inputs.len().max(1)];
    for plan in &streams {
        for (h, _) in &plan.outputs {
            let d: CudaSlice<u8> = st.alloc_zeros(r * v * dtype.size()).map_err(&e)?;
            otable[h.index()] = ptr(&d, st);
            obufs.insert(*h, d);
        }
    }
    let otable_d = st.clone_htod(&otable).map_err(&e)?;
    let status: CudaSlice<i32> = st.clone_htod(&abi::status::INIT).map_err(&e)?;
    let (si, ti, vi, ri) = (
        i32_of("S", s)?,
        i32_of("T", t)?,
        i32_of("V", v)?,
        i32_of("rows", r)?,
    );
    let f = |kind: KernelKind| -> Result<cudarc::driver::CudaFunction, Error> {
        let k = generated
            .kernel(kind, None)
            .ok_or_else(|| Error::Internal(format!("no {kind:?} kernel in the module")))?;
        module
            .load_function(&k.name)
            .map_err(drv("loading a generated kernel"))
    };
    let array = |kind: KernelKind| -> Result<(), Error> {
        let args = [
            Arg::Ptr(ptr(&table_d, st)),
            Arg::I32(si),
            Arg::I32(ti),
            Arg::I32(vi),
            Arg::Ptr(ptr(&status, st)),
        ];
        // Every array the kernel indexes was allocated above with its level's element count.
        launch(st, &f(kind)?, kind, &args, 1)
    };
    let stream_k = |kind: KernelKind| -> Result<(), Error> {
        let args = StreamArgs {
            vals: ptr(&table_d, st),
            logits: ptr(&ztable_d, st),
            rows: 0,
            row0: 0,
            nrows: ri,
            sizes: (si, ti, vi),
            ld: v as i64,
            outs: ptr(&otable_d, st),
            shard: (vi, 0, 0, 0),
        }
        .list();
        // Logits and outputs hold `r` rows of `v` entries with row stride `v`.
        launch(st, &f(kind)?, kind, &args, r)
    };
    array(KernelKind::Pre)?;
    if sched.pre_stream_plan(g).is_some() {
        stream_k(KernelKind::PreStream)?;
        array(KernelKind::PreLate)?;
    }
    for (k, plan) in streams.iter().enumerate() {
        if k > 0 {
            // Between the forward and backward streams: the group values the backward needs
            // (two passes run the whole group stage there).
            array(if strategy == Strategy::TwoPass {
                KernelKind::Group
            } else {
                KernelKind::GroupNeeded
            })?;
        }
        stream_k(match plan.kind {
            StreamKind::Pre => KernelKind::PreStream,
            StreamKind::Forward => KernelKind::Forward,
            StreamKind::Fused => KernelKind::Fused,
            StreamKind::Unit => KernelKind::Unit,
            StreamKind::Backward => KernelKind::Backward,
        })?;
    }
    st.synchronize().map_err(&e)?;
    let stat = st.clone_dtoh(&status).map_err(&e)?;
    crate::policy::Findings::from_status(&stat).outcome()?;
    let mut out = StreamsOut::default();
    for (k, d) in &obufs {
        let bytes = st.clone_dtoh(d).map_err(&e)?;
        let vals: Vec<f32> = match dtype {
            GemmDType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            GemmDType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
            GemmDType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32())
                .collect(),
        };
        out.outs.insert(*k, vals);
    }
    for id in host.rows.keys() {
        if g.ty(*id).dtype != DType::F32 {
            continue;
        }
        if let Some(b) = &bufs[id.index()] {
            let raw = st.clone_dtoh(b).map_err(&e)?;
            out.rows
                .insert(*id, raw.into_iter().map(f32::from_bits).collect());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{max_ptx_isa, ptx_fits_driver};

    #[test]
    fn ptx_newer_than_the_driver_is_refused() {
        assert_eq!(max_ptx_isa((13, 0)), (9, 0));
        assert!(ptx_fits_driver(".version 9.0\n.target sm_90", (13, 0)).is_ok());
        let e = ptx_fits_driver("//\n.version 9.5\n.target sm_90", (13, 0)).expect_err("too new");
        assert!(e.contains("9.5") && e.contains("13.0"), "{e}");
        assert!(ptx_fits_driver(".version 8.8", (12, 9)).is_ok());
        assert!(ptx_fits_driver(".version 9.0", (12, 9)).is_err());
        assert!(ptx_fits_driver("no version", (13, 0)).is_err());
    }
}
