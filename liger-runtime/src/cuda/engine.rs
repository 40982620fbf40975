//! The CUDA engine: one device, the kernel cache, the modules loaded on it, and a cuBLAS
//! handle with its workspace for every stream the executor has run on.
//!
//! Invariants: everything here is created once and kept, so a run after the first with the
//! same shape bucket loads no module, creates no handle and frees nothing (destroying a cuBLAS
//! handle or unloading a module may synchronise the device, which a run on the caller's stream
//! must not do). Handles are kept for the 8 most recently used streams; a ninth evicts the
//! least recently used (its destruction may synchronise; [`Engine::release_stream`] lets the
//! caller choose the moment). The cuBLAS workspace is allocated from the device's memory pool
//! on the stream it serves, so the allocator counts it (it is held by the engine, like the
//! kernels, not by one run).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr};

use crate::Error;
use crate::cache::{Binary, Cache};
use crate::cuda::device::Gpu;
use crate::cuda::{blas as blas_err, drv};

/// Bytes of cuBLAS workspace per stream (NVIDIA's recommendation for Hopper).
pub const CUBLAS_WORKSPACE: usize = 32 << 20;

/// Streams whose cuBLAS handles are kept; a new stream beyond this evicts the least recently
/// used one.
const MAX_STREAMS: usize = 8;

/// The runtime's I/O kernels (device inputs into the value table, checks, gradient casts).
pub const IO_SOURCE: &str = include_str!("io.cu");

/// A cuBLAS handle bound to one stream, with a workspace the engine owns.
pub(crate) struct Blas {
    pub(crate) handle: CudaBlas,
    _workspace: CudaSlice<u8>,
}

/// One device with its caches; see the module docs.
pub struct Engine {
    /// The device and the engine's own stream (the host API runs on it).
    pub gpu: Gpu,
    /// The kernel cache.
    pub cache: Cache,
    modules: Mutex<HashMap<String, Arc<CudaModule>>>,
    /// The I/O module's kernels by name, once loaded (every run launches several).
    io: Mutex<HashMap<String, CudaFunction>>,
    blas: Mutex<Vec<(usize, Arc<Mutex<Blas>>)>>,
}

impl Engine {
    /// An engine on `gpu` with `cache`.
    pub fn new(gpu: Gpu, cache: Cache) -> Engine {
        Engine {
            gpu,
            cache,
            modules: Mutex::new(HashMap::new()),
            io: Mutex::new(HashMap::new()),
            blas: Mutex::new(Vec::new()),
        }
    }

    /// The module of cache key `key`, loading `binary` the first time.
    pub(crate) fn module(&self, key: &str, binary: &Binary) -> Result<Arc<CudaModule>, Error> {
        let mut m = self.modules.lock().map_err(|_| {
            Error::Internal("the module table was poisoned by a panic in another thread".into())
        })?;
        if let Some(x) = m.get(key) {
            return Ok(x.clone());
        }
        let loaded = self.gpu.load(binary)?;
        m.insert(key.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// A function of the runtime's I/O module (compiled once per arch through the cache).
    pub(crate) fn io_fn(&self, name: &str) -> Result<CudaFunction, Error> {
        if let Some(f) = self.io.lock().ok().and_then(|m| m.get(name).cloned()) {
            return Ok(f);
        }
        let (parts, bin, _) = crate::cuda::compile::io_module(&self.gpu.arch()?, &self.cache)?;
        let module = self.module(&parts.key(), &bin)?;
        let f = module
            .load_function(name)
            .map_err(drv("loading an I/O kernel"))?;
        if let Ok(mut m) = self.io.lock() {
            m.insert(name.to_string(), f.clone());
        }
        Ok(f)
    }

    /// The cuBLAS handle of `stream` (created with its workspace the first time). Lock it
    /// for the duration of a run.
    pub(crate) fn blas(&self, stream: &Arc<CudaStream>) -> Result<Arc<Mutex<Blas>>, Error> {
        let id = stream.cu_stream() as usize;
        let mut list = self.blas.lock().map_err(|_| {
            Error::Internal(
                "the cuBLAS handle table was poisoned by a panic in another thread".into(),
            )
        })?;
        if let Some(k) = list.iter().position(|(k, _)| *k == id) {
            // Most recently used last.
            let e = list.remove(k);
            let b = e.1.clone();
            list.push(e);
            return Ok(b);
        }
        let handle = CudaBlas::new(stream.clone()).map_err(blas_err("creating a handle"))?;
        let workspace: CudaSlice<u8> = stream
            .alloc_zeros(CUBLAS_WORKSPACE)
            .map_err(drv("allocating the cuBLAS workspace"))?;
        {
            let (p, _sync) = workspace.device_ptr(stream);
            // SAFETY: the handle is live; the workspace is a live allocation of
            // CUBLAS_WORKSPACE bytes on the handle's stream, kept alive with the handle.
            let rc = unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *handle.handle(),
                    p as *mut std::ffi::c_void,
                    CUBLAS_WORKSPACE,
                )
            };
            rc.result().map_err(blas_err("setting the workspace"))?;
        }
        let b = Arc::new(Mutex::new(Blas {
            handle,
            _workspace: workspace,
        }));
        if list.len() >= MAX_STREAMS {
            // The least recently used stream's handle goes (destroying a handle may
            // synchronise the device: see `release_stream` to choose when).
            list.remove(0);
        }
        list.push((id, b.clone()));
        Ok(b)
    }

    /// Drops the cuBLAS handle and workspace kept for `stream` (destroying a handle may
    /// synchronise the device). Call it before destroying a stream borrowed from another
    /// library (`wrap_borrowed_stream`): the engine keys handles by the raw stream.
    pub fn release_stream(&self, stream: &CudaStream) {
        let id = stream.cu_stream() as usize;
        if let Ok(mut list) = self.blas.lock() {
            list.retain(|(k, _)| *k != id);
        }
    }
}

/// Locks a handle (a poisoned lock is an error, not a panic).
pub(crate) fn lock(b: &Mutex<Blas>) -> Result<MutexGuard<'_, Blas>, Error> {
    b.lock().map_err(|_| {
        Error::Internal("a cuBLAS handle was poisoned by a panic in another thread".into())
    })
}
