//! NCCL as a [`Communicator`] (cargo feature `nccl`): one rank per process and GPU, the
//! collectives of data- and vocab-parallel runs ([`crate::comm`]) as NCCL all-reduces.
//!
//! A group is made the usual NCCL way: one rank (rank 0) calls [`unique_id`] and hands the 128
//! bytes to every other rank (through the launcher: a file, an environment variable, a TCP
//! store), then every rank calls [`NcclGroup::new`] with a stream of its GPU, its rank and the
//! world size. A caller whose launcher already made an NCCL communicator hands it in with
//! [`NcclGroup::from_raw`]; any other transport (MPI, `torch.distributed`) can implement
//! [`Communicator`] itself.
//!
//! libnccl is opened at run time by path (`libnccl.so.2`, searched like the other CUDA
//! libraries, pip's `nvidia/nccl/lib` included) and only the seven functions used here are
//! bound, so a machine without it gets a typed error from every call, never a panic.
//!
//! **Failures.** NCCL cannot cancel a peer's pending collective, so each collective here is
//! two all-reduces: a five-word status (a failure flag, the payload's length and operation,
//! each with its negation: one maximum-reduce tells whether any rank gave up and whether all
//! ranks called the same collective) and then the payload, only when every rank joined with
//! the same one. [`Communicator::abort`] is the status all-reduce alone with the flag set: it
//! meets the peers in their next collective (every ranked run ends with one, see
//! `comm::guarded`), which they then leave with [`Error::Rank`]. Every wait polls the stream
//! and NCCL's asynchronous error, with a timeout ([`NcclGroup::with_timeout`], 10 minutes by
//! default): a peer that crashed or was killed, or an NCCL error, ends in `ncclCommAbort` and
//! an [`Error::Rank`] on this rank, never an endless wait. After an abort the group is
//! unusable (as [`crate::comm::LocalGroup`]'s): make a new one.
//!
//! The values are `f64` on the host (whole-batch sums and counts, O(rows) per call; gradients
//! in 32 MiB pieces): each collective copies them to the device, reduces on the group's stream
//! and copies them back. NCCL's summation order is its own, so sums may differ in the last
//! bits between runs.

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaStream, CudaViewMut, DevicePtrMut};

use crate::Error;
use crate::comm::{Communicator, ReduceOp};

type NcclResult = c_int;
type NcclComm = *mut c_void;

/// `ncclUniqueId`: 128 opaque bytes.
#[repr(C)]
#[derive(Clone, Copy)]
struct UniqueId {
    internal: [c_char; 128],
}

const NCCL_SUCCESS: NcclResult = 0;
const NCCL_IN_PROGRESS: NcclResult = 7;
const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
const NCCL_SUM: c_int = 0;
const NCCL_MAX: c_int = 2;
const NCCL_MIN: c_int = 3;

/// The functions used, bound from libnccl.
struct Lib {
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> NcclResult,
    comm_init_rank: unsafe extern "C" fn(*mut NcclComm, c_int, UniqueId, c_int) -> NcclResult,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        NcclComm,
        *mut c_void,
    ) -> NcclResult,
    comm_get_async_error: unsafe extern "C" fn(NcclComm, *mut NcclResult) -> NcclResult,
    comm_abort: unsafe extern "C" fn(NcclComm) -> NcclResult,
    comm_destroy: unsafe extern "C" fn(NcclComm) -> NcclResult,
    get_error_string: unsafe extern "C" fn(NcclResult) -> *const c_char,
}

static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();

fn open() -> Result<Lib, String> {
    let names = ["libnccl.so.2", "libnccl.so"];
    let mut dirs = crate::cuda::libs::search_dirs();
    let wheels: Vec<_> = dirs
        .iter()
        .filter(|d| d.ends_with("nvidia/cu13/lib"))
        .filter_map(|d| d.parent()?.parent().map(|n| n.join("nccl/lib")))
        .collect();
    dirs.extend(wheels);
    let path = dirs
        .iter()
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "libnccl.so.2 was not found (install NCCL, e.g. `pip install nvidia-nccl-cu13`, or \
             set LIGER_CUDA_LIB_DIR to its directory)"
                .to_string()
        })?;
    // SAFETY: opening NVIDIA's NCCL runs its initialisers; it is loaded once per process and
    // never unloaded (the handle is leaked below, so the bound functions stay valid).
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let lib: &'static libloading::Library = Box::leak(Box::new(lib));
    macro_rules! bind {
        ($name:literal) => {
            // SAFETY: the symbol is NCCL's C function of this name, and the field it is
            // assigned to has that function's C signature (nccl.h, NCCL 2.x).
            *unsafe { lib.get($name) }.map_err(|e| {
                format!(
                    "{}: {} missing ({e}); NCCL 2.12 or newer is needed",
                    path.display(),
                    String::from_utf8_lossy(&$name[..$name.len() - 1])
                )
            })?
        };
    }
    Ok(Lib {
        get_unique_id: bind!(b"ncclGetUniqueId\0"),
        comm_init_rank: bind!(b"ncclCommInitRank\0"),
        all_reduce: bind!(b"ncclAllReduce\0"),
        comm_get_async_error: bind!(b"ncclCommGetAsyncError\0"),
        comm_abort: bind!(b"ncclCommAbort\0"),
        comm_destroy: bind!(b"ncclCommDestroy\0"),
        get_error_string: bind!(b"ncclGetErrorString\0"),
    })
}

/// libnccl, opened once (see the module docs).
fn lib() -> Result<&'static Lib, Error> {
    LIB.get_or_init(open).as_ref().map_err(|why| Error::Cuda {
        lib: "nccl",
        why: why.clone(),
    })
}

/// NCCL's description of `rc`.
fn describe(l: &Lib, rc: NcclResult) -> String {
    // SAFETY: ncclGetErrorString returns a static NUL-terminated string for any code.
    let p = unsafe { (l.get_error_string)(rc) };
    if p.is_null() {
        return format!("NCCL error {rc}");
    }
    // SAFETY: non-null, NUL-terminated, static (above).
    let s = unsafe { std::ffi::CStr::from_ptr(p) };
    format!("{} (NCCL error {rc})", s.to_string_lossy())
}

/// Whether libnccl can be opened (and if not, why).
pub fn load() -> Result<(), Error> {
    lib().map(|_| ())
}

/// A new NCCL unique id (on one rank; every rank of the group passes the same id to
/// [`NcclGroup::new`]).
pub fn unique_id() -> Result<[u8; 128], Error> {
    let l = lib()?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: `id` is a valid out-pointer to a 128-byte ncclUniqueId.
    let rc = unsafe { (l.get_unique_id)(&mut id) };
    if rc != NCCL_SUCCESS {
        return Err(Error::Cuda {
            lib: "nccl",
            why: format!("ncclGetUniqueId: {}", describe(l, rc)),
        });
    }
    Ok(id.internal.map(|c| c as u8))
}

/// The communicator, and whether this group destroys it.
struct Handle {
    comm: NcclComm,
    owned: bool,
}

/// One rank of an NCCL group (see the module docs).
pub struct NcclGroup {
    lib: &'static Lib,
    /// Every NCCL call and the status/payload pair of a collective hold this lock; null once
    /// the communicator was aborted.
    handle: Mutex<Handle>,
    stream: Arc<CudaStream>,
    rank: usize,
    world: usize,
    timeout: Duration,
    /// Set once this rank gave up or saw another rank give up: no collective runs after it.
    aborted: AtomicBool,
}

// SAFETY: the raw communicator is used only under the mutex (NCCL allows any thread to use a
// communicator as long as calls on it are not concurrent); the stream is cudarc's `Send +
// Sync` stream.
unsafe impl Send for NcclGroup {}
// SAFETY: as above.
unsafe impl Sync for NcclGroup {}

impl NcclGroup {
    /// Rank `rank` of `world` ranks, its collectives on `stream` (of the rank's GPU); `id` from
    /// [`unique_id`] on one rank, the same on every rank. Blocks until every rank has joined.
    pub fn new(
        stream: Arc<CudaStream>,
        rank: usize,
        world: usize,
        id: &[u8; 128],
    ) -> Result<Self, Error> {
        let l = lib()?;
        let refuse = |why: String| Error::Rank { rank, why };
        if world == 0 || rank >= world {
            return Err(refuse(format!(
                "rank {rank} of a group of {world}: give 0 <= rank < world"
            )));
        }
        let (n, r) = (
            c_int::try_from(world).map_err(|_| refuse(format!("a group of {world} ranks")))?,
            c_int::try_from(rank).map_err(|_| refuse(format!("rank {rank}")))?,
        );
        // NCCL takes the device from the calling thread's current context.
        stream
            .context()
            .bind_to_thread()
            .map_err(|e| refuse(format!("binding the stream's context: {e}")))?;
        let uid = UniqueId {
            internal: id.map(|b| b as c_char),
        };
        let mut comm: NcclComm = std::ptr::null_mut();
        // SAFETY: `comm` is a valid out-pointer; `uid` is the 128-byte id by value.
        let rc = unsafe { (l.comm_init_rank)(&mut comm, n, uid, r) };
        if rc != NCCL_SUCCESS || comm.is_null() {
            return Err(refuse(format!("ncclCommInitRank: {}", describe(l, rc))));
        }
        Ok(NcclGroup {
            lib: l,
            handle: Mutex::new(Handle { comm, owned: true }),
            stream,
            rank,
            world,
            timeout: Duration::from_secs(600),
            aborted: AtomicBool::new(false),
        })
    }

    /// A group over a communicator the caller's launcher made (it stays the caller's: it is
    /// aborted on a failure but never destroyed here).
    ///
    /// # Safety
    /// `comm` must be a live `ncclComm_t` of `world` ranks in which this process is `rank`,
    /// on the device of `stream`, not used by anything else while this group is.
    pub unsafe fn from_raw(
        comm: *mut c_void,
        stream: Arc<CudaStream>,
        rank: usize,
        world: usize,
    ) -> Result<Self, Error> {
        Ok(NcclGroup {
            lib: lib()?,
            handle: Mutex::new(Handle { comm, owned: false }),
            stream,
            rank,
            world,
            timeout: Duration::from_secs(600),
            aborted: AtomicBool::new(false),
        })
    }

    /// How long one collective may wait for the peers before this rank gives up.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The communicator, under its lock.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Handle>, Error> {
        self.handle
            .lock()
            .map_err(|_| self.fail("a thread panicked while holding the communicator".into()))
    }

    fn fail(&self, why: String) -> Error {
        Error::Rank {
            rank: self.rank,
            why: format!("NCCL: {why}"),
        }
    }

    /// Aborts the communicator after an error inside a collective (the peers then see a
    /// remote error or time out).
    fn give_up(&self, h: &mut Handle, why: String) -> Error {
        self.aborted.store(true, Ordering::SeqCst);
        if !h.comm.is_null() {
            // SAFETY: the communicator is live (not null) and used under the lock held by
            // the caller; it is never used again (set to null).
            unsafe { (self.lib.comm_abort)(h.comm) };
            h.comm = std::ptr::null_mut();
        }
        self.fail(why)
    }

    /// Waits for the work queued on `st` by polling it, NCCL's asynchronous error and the
    /// timeout (an error or a timeout aborts the communicator).
    fn wait(&self, h: &mut Handle, st: &Arc<CudaStream>) -> Result<(), Error> {
        let done = st
            .record_event(None)
            .map_err(|e| self.fail(format!("recording an event: {e}")))?;
        let start = Instant::now();
        while !done.is_complete() {
            let mut async_rc: NcclResult = NCCL_SUCCESS;
            // SAFETY: live communicator under the lock; `async_rc` is a valid out-pointer.
            let rc = unsafe { (self.lib.comm_get_async_error)(h.comm, &mut async_rc) };
            if rc != NCCL_SUCCESS || (async_rc != NCCL_SUCCESS && async_rc != NCCL_IN_PROGRESS) {
                let code = if rc != NCCL_SUCCESS { rc } else { async_rc };
                let why = format!("all-reduce failed: {}", describe(self.lib, code));
                return Err(self.give_up(h, why));
            }
            if start.elapsed() > self.timeout {
                let why = format!(
                    "no peer answered within {:?} (a rank crashed, was killed, or never \
                     reached this collective)",
                    self.timeout
                );
                return Err(self.give_up(h, why));
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        Ok(())
    }

    /// One all-reduce of `values` in place: queued on the group's stream, then waited for
    /// by polling (the stream, NCCL's asynchronous error, the timeout).
    fn reduce(&self, h: &mut Handle, values: &mut [f64], op: c_int) -> Result<(), Error> {
        if h.comm.is_null() {
            return Err(self.fail("the communicator was aborted".into()));
        }
        let st = &self.stream;
        st.context()
            .bind_to_thread()
            .map_err(|e| self.fail(format!("binding the stream's context: {e}")))?;
        let mut buf = st
            .clone_htod(values)
            .map_err(|e| self.fail(format!("copying to the device: {e}")))?;
        let rc = {
            let (ptr, _guard) = buf.device_ptr_mut(st);
            // SAFETY: `ptr` holds `values.len()` f64 on the stream's device (in place: send and
            // receive buffers are the same); the communicator is live under the lock; the
            // stream handle is cudarc's live stream.
            unsafe {
                (self.lib.all_reduce)(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    values.len(),
                    NCCL_FLOAT64,
                    op,
                    h.comm,
                    st.cu_stream() as *mut c_void,
                )
            }
        };
        if rc != NCCL_SUCCESS && rc != NCCL_IN_PROGRESS {
            let why = format!("ncclAllReduce: {}", describe(self.lib, rc));
            return Err(self.give_up(h, why));
        }
        self.wait(h, st)?;
        let out = st
            .clone_dtoh(&buf)
            .map_err(|e| self.fail(format!("copying to the host: {e}")))?;
        values.copy_from_slice(&out);
        Ok(())
    }

    /// The status word, then the payload (see the module docs).
    fn collective(&self, values: &mut [f64], op: c_int) -> Result<(), Error> {
        let mut h = self.lock()?;
        if self.aborted.load(Ordering::SeqCst) {
            return Err(self.fail("the group was aborted earlier (a rank failed)".into()));
        }
        let (len, code) = (values.len() as f64, f64::from(op) + 1.0);
        let mut status = [0.0, len, -len, code, -code];
        self.reduce(&mut h, &mut status, NCCL_MAX)?;
        if status[0] > 0.0 {
            self.aborted.store(true, Ordering::SeqCst);
            return Err(Error::Rank {
                rank: self.rank,
                why: "another rank failed (its own error says why)".into(),
            });
        }
        if status[1] != -status[2] || status[3] != -status[4] {
            let why = "the ranks called different collectives (lengths or operations differ)";
            return Err(self.give_up(&mut h, why.into()));
        }
        if values.is_empty() {
            return Ok(());
        }
        self.reduce(&mut h, values, op)
    }
}

impl Communicator for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), Error> {
        self.collective(values, NCCL_SUM)
    }

    fn all_reduce_max(&self, values: &mut [f64]) -> Result<(), Error> {
        self.collective(values, NCCL_MAX)
    }

    /// An NCCL all-reduce of `f32` device values queued on the executor's `stream` (no
    /// status word and no wait: the ranks agreed on the loss, shapes and plan before the run,
    /// so they queue the same device collectives; [`Communicator::settle`] waits for them).
    fn all_reduce_device(
        &self,
        stream: &Arc<CudaStream>,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let mut h = self.lock()?;
        if self.aborted.load(Ordering::SeqCst) || h.comm.is_null() {
            return Err(self.fail("the group was aborted earlier (a rank failed)".into()));
        }
        let code = match op {
            ReduceOp::Sum => NCCL_SUM,
            ReduceOp::Max => NCCL_MAX,
            ReduceOp::Min => NCCL_MIN,
        };
        let n = buf.len();
        let rc = {
            let (ptr, _guard) = buf.device_ptr_mut(stream);
            // SAFETY: `ptr` holds `n` f32 on the stream's device, reduced in place (send and
            // receive buffers the same); the communicator is live under the lock; the stream
            // is cudarc's live stream of the communicator's device (the caller's runtime).
            unsafe {
                (self.lib.all_reduce)(
                    ptr as *const c_void,
                    ptr as *mut c_void,
                    n,
                    NCCL_FLOAT32,
                    code,
                    h.comm,
                    stream.cu_stream() as *mut c_void,
                )
            }
        };
        if rc != NCCL_SUCCESS && rc != NCCL_IN_PROGRESS {
            let why = format!("ncclAllReduce: {}", describe(self.lib, rc));
            return Err(self.give_up(&mut h, why));
        }
        Ok(())
    }

    fn settle(&self, stream: &Arc<CudaStream>) -> Result<(), Error> {
        let mut h = self.lock()?;
        if h.comm.is_null() {
            return Err(self.fail("the communicator was aborted".into()));
        }
        self.wait(&mut h, stream)
    }

    fn abort(&self, _why: &str) {
        let Ok(mut h) = self.handle.lock() else {
            return;
        };
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        // Meets the peers' next status word; a failure here leaves nothing else to do.
        let mut status = [1.0, 0.0, 0.0, 0.0, 0.0];
        let _ = self.reduce(&mut h, &mut status, NCCL_MAX);
    }
}

impl Drop for NcclGroup {
    fn drop(&mut self) {
        let h = match self.handle.get_mut() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        if h.comm.is_null() {
            return;
        }
        // SAFETY: the communicator is live and nothing else uses it (we hold `&mut self`);
        // an aborted group's is aborted, an owned one destroyed, a caller's left alone.
        unsafe {
            if self.aborted.load(Ordering::SeqCst) {
                (self.lib.comm_abort)(h.comm);
            } else if h.owned {
                (self.lib.comm_destroy)(h.comm);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn without_nccl_or_a_gpu_the_calls_are_typed_errors() {
        // This machine may or may not have libnccl; either way nothing panics, and a missing
        // library is named.
        match super::unique_id() {
            Ok(id) => assert_eq!(id.len(), 128),
            Err(crate::Error::Cuda { lib, why }) => {
                assert_eq!(lib, "nccl");
                assert!(why.contains("libnccl"), "{why}");
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}
