//! Collectives across ranks, for losses over a batch split between several processes or
//! devices (data parallel: each rank holds its own sequences).
//!
//! The executor calls a [`Communicator`] at fixed points that every rank reaches in the same
//! order, because every rank runs the same IR under the same strategy:
//!
//! 1. [`agree`]: a fingerprint of the loss, its hyperparameters, the per-sequence shapes and the
//!    options must be equal on every rank, else every rank gets [`Error::Rank`] (never a hang
//!    on a collective some rank never reaches);
//! 2. the strategy: the most conservative of the ranks' plans, forced on all;
//! 3. each whole-batch value (`sum`, `mean`, `sum_all`, `mean_all`, `num_valid`, and the batch
//!    sizes `num_seqs`/`num_pairs`): the ranks' partial sums (and counts) summed, so the loss,
//!    the batch-level metrics and every gradient coefficient are those of the whole batch.
//!
//! A rank that fails (bad input, an empty sequence) calls [`Communicator::abort`]: every
//! collective after it, on every rank, returns [`Error::Rank`] instead of waiting.
//!
//! [`LocalGroup`] simulates ranks as threads of one process (tests, and CPU data parallelism
//! within a process); `nccl::NcclGroup` (cargo feature `nccl`) is the communicator across GPUs.
//! Vocab parallel on CUDA also reduces device buffers ([`Communicator::all_reduce_device`]):
//! through the host by default, as NCCL all-reduces queued on the executor's stream with NCCL.

use std::sync::{Arc, Condvar, Mutex};

use cudarc::driver::{CudaStream, CudaViewMut};

use crate::Error;

/// Collectives over a group of ranks. Every rank calls the same collectives in the same order
/// with vectors of the same length.
pub trait Communicator: Send + Sync {
    /// This rank, `0..world`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// Elementwise sum over every rank, in place (the same bits on every rank).
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), Error>;
    /// Elementwise maximum over every rank, in place.
    fn all_reduce_max(&self, values: &mut [f64]) -> Result<(), Error>;
    /// This rank gives up with `why`: every pending and later collective of every rank fails.
    fn abort(&self, why: &str);

    /// Elementwise `op` over every rank of the `f32` values in device memory `buf`, in place,
    /// queued on `stream` after the work already queued there (vocab parallel: a round's
    /// partials, O(rows) values per chunk, and `dx` once). The ranks call it in the same order
    /// with the same lengths, as the host collectives. The default goes through the host
    /// (waits for the stream, copies, reduces in `f64` with the host collectives, copies
    /// back); NCCL queues its own all-reduce on the stream without waiting.
    fn all_reduce_device(
        &self,
        stream: &Arc<CudaStream>,
        buf: &mut CudaViewMut<'_, f32>,
        op: ReduceOp,
    ) -> Result<(), Error> {
        if buf.is_empty() {
            return Ok(());
        }
        let e = |what: &'static str| {
            let rank = self.rank();
            move |err: cudarc::driver::DriverError| Error::Rank {
                rank,
                why: format!("{what}: {err}"),
            }
        };
        let host = stream
            .clone_dtoh(&*buf)
            .map_err(e("copying device values to the host"))?;
        let mut v: Vec<f64> = host.iter().map(|&x| f64::from(x)).collect();
        match op {
            ReduceOp::Sum => self.all_reduce_sum(&mut v)?,
            ReduceOp::Max => self.all_reduce_max(&mut v)?,
            ReduceOp::Min => {
                v.iter_mut().for_each(|x| *x = -*x);
                self.all_reduce_max(&mut v)?;
                v.iter_mut().for_each(|x| *x = -*x);
            }
        }
        let back: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        stream
            .memcpy_htod(&back, buf)
            .map_err(e("copying reduced values to the device"))
    }

    /// Waits until the device collectives queued on `stream` have run, giving up with
    /// [`Error::Rank`] when a peer never joins them (NCCL: its asynchronous error and
    /// timeout). The default has nothing queued of its own.
    fn settle(&self, stream: &Arc<CudaStream>) -> Result<(), Error> {
        let _ = stream;
        Ok(())
    }
}

/// The elementwise operation of a device all-reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    /// Sum.
    Sum,
    /// Maximum.
    Max,
    /// Minimum.
    Min,
}

/// Checks that every rank runs the same loss on the same kind of batch: `fingerprint` (a hash
/// of what must agree) is compared across ranks, and a rank whose local checks failed
/// (`local` is an error) makes every rank fail.
pub fn agree(
    comm: &dyn Communicator,
    fingerprint: u64,
    local: &Result<(), Error>,
) -> Result<(), Error> {
    // Exact in f64: two 32-bit halves, and their negations for the minimum.
    let (hi, lo) = (
        (fingerprint >> 32) as f64,
        (fingerprint & 0xffff_ffff) as f64,
    );
    let failed = if local.is_err() { 1.0 } else { 0.0 };
    let mut v = [hi, lo, -hi, -lo, failed];
    comm.all_reduce_max(&mut v)?;
    if v[4] > 0.0 {
        return Err(match local {
            Err(e) => Error::Rank {
                rank: comm.rank(),
                why: e.to_string(),
            },
            Ok(()) => Error::Rank {
                rank: comm.rank(),
                why: "another rank refused its inputs (its own error says why)".into(),
            },
        });
    }
    if v[0] != -v[2] || v[1] != -v[3] {
        return Err(Error::Rank {
            rank: comm.rank(),
            why: "the ranks disagree on the loss, its hyperparameters, the options or the \
                  shapes other than the number of sequences (T, H, V, dtypes, inputs given): \
                  every rank must run the same loss on the same kind of batch"
                .into(),
        });
    }
    Ok(())
}

/// Sums `values` over the ranks in place, in f64 pieces of at most [`SUM_PIECE`] elements (a
/// gradient of 128256 x 4096 entries never has a whole f64 copy). Every rank calls it with the
/// same length, so the pieces match.
pub(crate) fn sum_f32(comm: &dyn Communicator, values: &mut [f32]) -> Result<(), Error> {
    let mut buf = Vec::with_capacity(values.len().min(SUM_PIECE));
    for piece in values.chunks_mut(SUM_PIECE) {
        buf.clear();
        buf.extend(piece.iter().map(|&x| f64::from(x)));
        comm.all_reduce_sum(&mut buf)?;
        for (x, s) in piece.iter_mut().zip(&buf) {
            *x = *s as f32;
        }
    }
    Ok(())
}

/// The most elements one collective of [`sum_f32`] carries (32 MiB of f64).
pub(crate) const SUM_PIECE: usize = 1 << 22;

/// What a data-parallel run does with each rank's weight gradients (`dW`, `db`): each rank's
/// are its rows' share of the whole batch's, so their sum over ranks is the single-device
/// gradient. `dx` is always this rank's rows' own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradShare {
    /// Each rank returns its share, for the caller's all-reduce (sum) to add up.
    #[default]
    Share,
    /// Each rank's share times the number of ranks, for frameworks whose all-reduce averages
    /// (PyTorch DDP divides the sum by the world size).
    ForAverage,
    /// Summed over the ranks here: every rank returns the whole batch's `dW` and `db`.
    Summed,
}

/// A fingerprint of what every rank must agree on: the loss's gradient IR, the
/// hyperparameters, each input's name, dtype and shape, and the options that change results.
/// Data parallel (`vocab` false): shapes past the number of sequences (heads' `x`: `[T,H]`,
/// `W`: all of it). Vocab parallel: every shape (every rank holds every row) except the
/// heads' vocabulary rows (`W`'s first dimension, the bias) and per-vocabulary inputs, which
/// are each rank's shard.
pub(crate) fn fingerprint(
    p: &liger_ir::Pipeline,
    inputs: &crate::InputSet<'_>,
    hyper: &std::collections::BTreeMap<String, f32>,
    opts: &crate::RunOptions,
    vocab: bool,
) -> u64 {
    use std::fmt::Write;
    let mut text = String::from(p.canonical());
    for (k, v) in hyper {
        let _ = write!(text, "\n{k}={:08x}", v.to_bits());
    }
    // A shape from dimension `from` on (data parallel: past S; vocab parallel: past V).
    let tail = |t: &crate::TensorView<'_>, from: usize| {
        let sh = t.shape();
        format!("{}{:?}", t.dtype(), &sh[from.min(sh.len())..])
    };
    let kind = |name: &str| {
        p.grad()
            .input_by_name(name)
            .map(|id| p.grad().inputs[id.0 as usize].kind)
    };
    for name in inputs.names() {
        let _ = match inputs.get(name) {
            Some(crate::InputValue::Head(h)) if vocab => write!(
                text,
                "\n{name}: x {} w {} b {}",
                tail(&h.x, 0),
                tail(&h.w, 1),
                if h.b.is_some() { "given" } else { "-" }
            ),
            Some(crate::InputValue::Head(h)) => write!(
                text,
                "\n{name}: x {} w {} b {}",
                tail(&h.x, 1),
                tail(&h.w, 0),
                h.b.as_ref().map_or("-".into(), |b| tail(b, 0))
            ),
            Some(crate::InputValue::Tensor(t)) => {
                let k = kind(name);
                let from = if vocab {
                    // A per-vocabulary input is this rank's shard.
                    if k == Some(liger_ir::InputKind::VocabInput) {
                        1
                    } else {
                        0
                    }
                } else {
                    // Per-sequence inputs lead with S; a scalar or per-vocab input does not.
                    let per_seq = t.shape().len() > 1
                        || matches!(
                            k,
                            Some(liger_ir::InputKind::SeqInput | liger_ir::InputKind::SeqMask)
                        );
                    usize::from(per_seq)
                };
                write!(text, "\n{name}: {}", tail(t, from))
            }
            None => Ok(()),
        };
    }
    let _ = write!(text, "\nmode {}", if vocab { "vocab" } else { "data" });
    let _ = write!(
        text,
        "\nignore {} grads {:?} dtypes {:?} schedule {:?} accum {:?} skip {}",
        opts.ignore_index,
        opts.grads,
        opts.grad_dtypes,
        opts.schedule,
        opts.w_accum,
        opts.skip_dead_rows
    );
    let h = blake3::hash(text.as_bytes());
    let b = h.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Runs `f` as this rank's part of a collective run: a rank that fails (an error or a panic)
/// aborts the group, and a rank that succeeds waits at a last collective for the others, so
/// a failure anywhere, even after every other collective, reaches every rank.
pub(crate) fn guarded<T>(
    comm: &dyn Communicator,
    f: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    /// Aborts the group when dropped armed (an unwinding panic).
    struct Guard<'c>(&'c dyn Communicator, bool);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            if self.1 {
                self.0.abort("a rank panicked");
            }
        }
    }
    let mut guard = Guard(comm, true);
    let out = f();
    guard.1 = false;
    match out {
        Err(e) => {
            comm.abort(&e.to_string());
            Err(e)
        }
        Ok(v) => {
            let mut done = [0.0];
            comm.all_reduce_max(&mut done)?;
            Ok(v)
        }
    }
}

/// Ranks as threads of one process: [`LocalGroup::ranks`] makes `world` communicators, one per
/// thread, that meet at each collective.
#[derive(Debug)]
pub struct LocalGroup;

impl LocalGroup {
    /// `world` communicators of one group (give each to its own thread).
    pub fn ranks(world: usize) -> Vec<LocalRank> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                arrived: 0,
                generation: 0,
                slots: vec![(Reduce::Sum, Vec::new()); world],
                result: Vec::new(),
                aborted: None,
            }),
            cv: Condvar::new(),
        });
        (0..world)
            .map(|rank| LocalRank {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One rank of a [`LocalGroup`].
#[derive(Debug)]
pub struct LocalRank {
    rank: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    world: usize,
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug)]
struct State {
    /// Ranks that have put their values in for the current collective.
    arrived: usize,
    /// Completed collectives (a rank waits for this to move past the one it joined).
    generation: u64,
    /// Each rank's operation and values for the current collective.
    slots: Vec<(Reduce, Vec<f64>)>,
    /// The last collective's result (or an error message when lengths differed).
    result: Vec<f64>,
    /// Why the group was aborted, and by which rank.
    aborted: Option<(usize, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reduce {
    Sum,
    Max,
}

impl LocalRank {
    fn collective(&self, values: &mut [f64], op: Reduce) -> Result<(), Error> {
        let sh = &self.shared;
        let aborted = |st: &State, rank: usize| -> Error {
            let (who, why) = st.aborted.clone().unwrap_or((rank, "aborted".to_string()));
            Error::Rank {
                rank,
                why: format!("rank {who} gave up: {why}"),
            }
        };
        let mut st = sh
            .state
            .lock()
            .map_err(|_| Error::Internal("a rank panicked during a collective".into()))?;
        if st.aborted.is_some() {
            return Err(aborted(&st, self.rank));
        }
        st.slots[self.rank] = (op, values.to_vec());
        st.arrived += 1;
        let generation = st.generation;
        if st.arrived == sh.world {
            // The last to arrive reduces, in rank order (the same bits for everyone).
            let n = st.slots[0].1.len();
            if st.slots.iter().any(|s| s.1.len() != n || s.0 != op) {
                st.aborted = Some((
                    self.rank,
                    "the ranks called different collectives (operation or length): a bug in \
                     liger, or ranks running different losses"
                        .into(),
                ));
            } else {
                let slots = std::mem::take(&mut st.slots);
                let mut out = slots[0].1.clone();
                for s in &slots[1..] {
                    for (o, x) in out.iter_mut().zip(&s.1) {
                        *o = match op {
                            Reduce::Sum => *o + x,
                            Reduce::Max => o.max(*x),
                        };
                    }
                }
                st.slots = vec![(Reduce::Sum, Vec::new()); sh.world];
                st.result = out;
            }
            st.arrived = 0;
            st.generation += 1;
            sh.cv.notify_all();
        } else {
            while st.generation == generation && st.aborted.is_none() {
                st = sh
                    .cv
                    .wait(st)
                    .map_err(|_| Error::Internal("a rank panicked during a collective".into()))?;
            }
        }
        if st.aborted.is_some() {
            return Err(aborted(&st, self.rank));
        }
        values.copy_from_slice(&st.result);
        Ok(())
    }
}

impl Communicator for LocalRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.shared.world
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<(), Error> {
        self.collective(values, Reduce::Sum)
    }
    fn all_reduce_max(&self, values: &mut [f64]) -> Result<(), Error> {
        self.collective(values, Reduce::Max)
    }
    fn abort(&self, why: &str) {
        if let Ok(mut st) = self.shared.state.lock() {
            if st.aborted.is_none() {
                st.aborted = Some((self.rank, why.to_string()));
            }
            self.shared.cv.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_sums_go_in_pieces_that_match_across_ranks() {
        // Two pieces and a rest: every element is the sum of the ranks' values.
        let n = 2 * super::SUM_PIECE + 3;
        let ranks = LocalGroup::ranks(2);
        let outs: Vec<Vec<f32>> = std::thread::scope(|sc| {
            let hs: Vec<_> = ranks
                .iter()
                .enumerate()
                .map(|(r, c)| {
                    sc.spawn(move || {
                        let mut v: Vec<f32> = (0..n)
                            .map(|i| (i % 1000) as f32 * (r as f32 + 1.0))
                            .collect();
                        super::sum_f32(c, &mut v).expect("sum");
                        v
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("rank")).collect()
        });
        for v in &outs {
            for i in [0, 1, super::SUM_PIECE - 1, super::SUM_PIECE, n - 2, n - 1] {
                assert_eq!(v[i], (i % 1000) as f32 * 3.0, "element {i}");
            }
        }
    }

    #[test]
    fn ranks_sum_and_max_and_an_abort_frees_the_others() {
        let ranks = LocalGroup::ranks(3);
        let out: Vec<Vec<f64>> = std::thread::scope(|sc| {
            let hs: Vec<_> = ranks
                .iter()
                .map(|r| {
                    sc.spawn(move || {
                        let mut a = [r.rank() as f64, 1.0];
                        r.all_reduce_sum(&mut a).expect("sum");
                        let mut b = [r.rank() as f64 * 2.0];
                        r.all_reduce_max(&mut b).expect("max");
                        vec![a[0], a[1], b[0]]
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for o in out {
            assert_eq!(o, vec![3.0, 3.0, 4.0]);
        }
        // Rank 2 fails before the collective: the others get an error instead of waiting.
        let ranks = LocalGroup::ranks(3);
        let errs: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = ranks
                .iter()
                .map(|r| {
                    sc.spawn(move || {
                        if r.rank() == 2 {
                            r.abort("bad input");
                            return "aborted".to_string();
                        }
                        let mut a = [1.0];
                        r.all_reduce_sum(&mut a).expect_err("aborted").to_string()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        assert!(errs[0].contains("rank 2 gave up: bad input"), "{}", errs[0]);
        assert!(errs[1].contains("rank 2"), "{}", errs[1]);
        // Different fingerprints: every rank is told, none hangs.
        let ranks = LocalGroup::ranks(2);
        let res: Vec<Result<(), Error>> = std::thread::scope(|sc| {
            let hs: Vec<_> = ranks
                .iter()
                .map(|r| sc.spawn(move || agree(r, 7 + r.rank() as u64, &Ok(()))))
                .collect();
            hs.into_iter().map(|h| h.join().expect("thread")).collect()
        });
        for r in res {
            assert!(matches!(r, Err(Error::Rank { .. })), "{r:?}");
        }
    }
}
