//! NCCL as a [`Communicator`] (cargo feature `nccl`): one rank per process and GPU, the
//! collectives of data- and vocab-parallel runs ([`crate::comm`]) as NCCL all-reduces.
//!
//! A group is made the usual NCCL way: one rank (rank 0) calls [`unique_id`] and hands the 128
//! bytes to every other rank (through the launcher: a file, an environment variable, a TCP
//! store), then every rank calls [`NcclGroup::new`] with its stream, rank and the world size.
//! A caller whose launcher already made a cudarc [`Comm`] hands it in with
//! [`NcclGroup::from_comm`]; any other transport (MPI, `torch.distributed`) can implement
//! [`Communicator`] itself.
//!
//! **No rank waits forever.** NCCL cannot cancel a peer's pending collective, so every
//! collective here is two all-reduces: a one-word status (the maximum over the ranks; a rank
//! that gives up joins with 1) and then the payload, only when every rank joined with 0.
//! [`Communicator::abort`] is the status all-reduce alone: it meets the peers in their next
//! collective (every ranked run ends with one, see `comm::guarded`), which they then leave
//! with [`Error::Rank`]. A failure inside NCCL itself is an [`Error::Rank`] too.
//!
//! The values are `f64` on the host (whole-batch sums and counts, O(rows) per call): each
//! collective copies them to the device, reduces on the group's stream and copies them back,
//! synchronising that stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::CudaStream;
pub use cudarc::nccl::safe::Comm;
use cudarc::nccl::safe::{Id, ReduceOp};

use crate::Error;
use crate::comm::Communicator;

static NCCL: OnceLock<Result<(), String>> = OnceLock::new();

/// Makes libnccl loadable (searching the CUDA library directories and pip's `nvidia/nccl/lib`
/// beside `nvidia/cu13/lib`, then preloading it) so that no NCCL call can panic for want of
/// the library.
pub fn load() -> Result<(), Error> {
    NCCL.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries to open the library by name.
        if unsafe { cudarc::nccl::sys::is_culib_present() } {
            return Ok(());
        }
        let names = ["libnccl.so.2", "libnccl.so"];
        let mut dirs = crate::cuda::libs::search_dirs();
        let wheels: Vec<_> = dirs
            .iter()
            .filter(|d| d.ends_with("nvidia/cu13/lib"))
            .filter_map(|d| d.parent()?.parent().map(|n| n.join("nccl/lib")))
            .collect();
        dirs.extend(wheels);
        let lib = dirs
            .iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                "libnccl.so.2 was not found (install NCCL, e.g. `pip install nvidia-nccl-cu13`, \
                 or set LIGER_CUDA_LIB_DIR to its directory)"
                    .to_string()
            })?;
        crate::cuda::libs::preload_path(&lib)?;
        // SAFETY: as above.
        if unsafe { cudarc::nccl::sys::is_culib_present() } {
            Ok(())
        } else {
            Err(format!(
                "{} was loaded but NCCL is still not usable",
                lib.display()
            ))
        }
    })
    .clone()
    .map_err(|why| Error::Cuda { lib: "nccl", why })
}

/// A new NCCL unique id (on one rank; every rank of the group passes the same id to
/// [`NcclGroup::new`]).
pub fn unique_id() -> Result<[u8; 128], Error> {
    load()?;
    let id = Id::new().map_err(|e| Error::Cuda {
        lib: "nccl",
        why: format!("ncclGetUniqueId failed: {:?}", e.0),
    })?;
    Ok(id.internal().map(|c| c as u8))
}

/// One rank of an NCCL group (see the module docs).
pub struct NcclGroup {
    /// NCCL communicators are not thread-safe: every call goes through this lock.
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
    /// Set once this rank gave up or saw another rank give up: no collective runs after it.
    aborted: AtomicBool,
}

// SAFETY: `Comm` holds a raw `ncclComm_t`, which NCCL allows any thread to use as long as
// calls on it are not concurrent; every use goes through the mutex.
unsafe impl Send for NcclGroup {}
// SAFETY: as above: shared references reach the communicator only through the mutex.
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
        load()?;
        if world == 0 || rank >= world {
            return Err(Error::Rank {
                rank,
                why: format!("rank {rank} of a group of {world}: give 0 <= rank < world"),
            });
        }
        let id = Id::uninit(id.map(|b| b as std::ffi::c_char));
        let comm = Comm::from_rank(stream, rank, world, id).map_err(|e| Error::Rank {
            rank,
            why: format!("ncclCommInitRank failed: {:?}", e.0),
        })?;
        Ok(Self::from_comm(comm))
    }

    /// A group over a communicator the caller's launcher made.
    pub fn from_comm(comm: Comm) -> Self {
        NcclGroup {
            rank: comm.rank(),
            world: comm.world_size(),
            comm: Mutex::new(comm),
            aborted: AtomicBool::new(false),
        }
    }

    /// One NCCL all-reduce of `values` in place, waited for.
    fn reduce(&self, values: &mut [f64], op: ReduceOp) -> Result<(), Error> {
        if values.is_empty() {
            return Ok(());
        }
        let fail = |what: &str, why: String| Error::Rank {
            rank: self.rank,
            why: format!("NCCL {what}: {why}"),
        };
        let comm = self
            .comm
            .lock()
            .map_err(|_| fail("communicator", "a thread panicked while holding it".into()))?;
        let st = comm.stream();
        let mut buf = st
            .clone_htod(values)
            .map_err(|e| fail("copy to the device", e.to_string()))?;
        comm.all_reduce_in_place(&mut buf, &op)
            .map_err(|e| fail("all-reduce", format!("{:?}", e.0)))?;
        st.memcpy_dtoh(&buf, values)
            .map_err(|e| fail("copy to the host", e.to_string()))?;
        st.synchronize()
            .map_err(|e| fail("all-reduce", e.to_string()))
    }

    /// The status word, then the payload (see the module docs).
    fn collective(&self, values: &mut [f64], op: ReduceOp) -> Result<(), Error> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err(Error::Rank {
                rank: self.rank,
                why: "the group was aborted earlier (a rank failed)".into(),
            });
        }
        let mut status = [0.0];
        self.reduce(&mut status, ReduceOp::Max)?;
        if status[0] > 0.0 {
            self.aborted.store(true, Ordering::SeqCst);
            return Err(Error::Rank {
                rank: self.rank,
                why: "another rank failed (its own error says why)".into(),
            });
        }
        self.reduce(values, op)
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
        self.collective(values, ReduceOp::Sum)
    }

    fn all_reduce_max(&self, values: &mut [f64]) -> Result<(), Error> {
        self.collective(values, ReduceOp::Max)
    }

    fn abort(&self, _why: &str) {
        if self.aborted.swap(true, Ordering::SeqCst) {
            return;
        }
        // Meets the peers' next status word; a failure here leaves nothing else to do.
        let mut status = [1.0];
        let _ = self.reduce(&mut status, ReduceOp::Max);
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
                assert!(why.contains("nccl") || why.contains("NCCL"), "{why}");
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
}
