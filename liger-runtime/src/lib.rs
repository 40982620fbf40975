//! `liger-runtime`: running a differentiated loss on real tensors.
//!
//! - [`tensor`] / [`inputs`]: borrowed host tensors and inputs by name;
//! - [`plan`]: the planner — picks a [`Strategy`] of the IR's schedule and the chunk size from
//!   a memory budget (or the strategy an option forces), with each backend's memory model;
//! - `driver`: the four strategies written once, over the primitives a backend provides;
//! - [`cpu`]: the CPU backend — GEMMs through `matrixmultiply`, the vocab streams in f32 with
//!   rayon across rows; returns the loss, metrics, `grad x`, `grad W` (f32 accumulated),
//!   `grad b` and a report;
//! - [`cuda`]: the CUDA backend (cuBLAS GEMMs and the generated kernels) with a host API
//!   ([`Runtime::run`]) and a device API ([`Runtime::run_device`]: cudarc buffers in and out
//!   on the caller's stream, no hidden synchronisation).
//!
//! Every entry takes a [`Pipeline`] (the loss's gradient IR and schedule, from liger-ir).
//!
//! CUDA libraries are loaded at run time, so this crate builds and its CPU path runs anywhere.

pub mod cache;
mod check;
pub mod comm;
pub mod cpu;
pub mod cuda;
mod driver;
pub mod error;
mod host;
pub use host::MIN_DEAD_RUN;
pub mod inputs;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod output;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod tensor;

pub use cuda::api::{
    DeviceHead, DeviceInput, DeviceInputs, DeviceOutput, DeviceTensor, ForeignBuffer, GradPart,
};
pub use cuda::backend::{DeviceGrad, DeviceHeadGrads};
/// The cudarc this crate is built against (device buffers and streams of the device API).
pub use cudarc;
pub use error::Error;
pub use host::Arr;
pub use inputs::{InputSet, InputValue};
pub use liger_ir::{Pipeline, Strategy};
pub use output::{GradBuf, HeadGrads, LossOutput, MetricOutput, PhaseTime, Report};
pub use plan::{Footprint, ForcedRows, GradDTypes, MemoryModel, Plan, RunOptions, WAccum, Wanted};
pub use tensor::{DType, Head, TensorData, TensorView};

use std::collections::BTreeMap;

/// Where a loss runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU executor.
    Cpu,
    /// The CUDA executor.
    Cuda,
}

impl Device {
    /// The name used in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
        }
    }
}

/// An execution context: the device and its resources.
#[derive(Clone)]
pub struct Runtime {
    device: Device,
    cuda: Option<std::sync::Arc<cuda::engine::Engine>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Runtime({})", self.device.name())
    }
}

impl Runtime {
    /// The CPU runtime.
    pub fn cpu() -> Self {
        Runtime {
            device: Device::Cpu,
            cuda: None,
        }
    }

    /// The CUDA runtime on device `ordinal`, with the kernel cache from the environment.
    pub fn cuda(ordinal: usize) -> Result<Self, Error> {
        let gpu = cuda::device::Gpu::new(ordinal)?;
        Ok(Runtime {
            device: Device::Cuda,
            cuda: Some(std::sync::Arc::new(cuda::engine::Engine::new(
                gpu,
                cache::Cache::from_env(),
            ))),
        })
    }

    /// A runtime for `device`: `"cpu"`, `"cuda"` (device 0), `"cuda:N"` (device N), or `"auto"`
    /// (the GPU when one works, else the CPU).
    pub fn for_device(device: &str) -> Result<Self, Error> {
        match device {
            "cpu" => Ok(Self::cpu()),
            "cuda" => Self::cuda(0).map_err(|e| Error::Device {
                device: device.into(),
                why: e.to_string(),
            }),
            "auto" => Ok(Self::cuda(0).unwrap_or_else(|_| Self::cpu())),
            other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) => Self::cuda(n).map_err(|e| Error::Device {
                    device: device.into(),
                    why: e.to_string(),
                }),
                _ => Err(Error::Device {
                    device: other.into(),
                    why: "devices are: cpu, cuda, cuda:<ordinal>, auto".into(),
                }),
            },
        }
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The CUDA context of a CUDA runtime: make the streams and buffers of
    /// [`Runtime::run_device`] with it.
    pub fn cuda_context(&self) -> Option<&std::sync::Arc<cudarc::driver::CudaContext>> {
        self.cuda.as_ref().map(|e| &e.gpu.ctx)
    }

    /// Runs the gradient IR of `p` as rank `comm.rank()` of a data-parallel group: `inputs`
    /// hold this rank's sequences (every rank the same `T`, heads, vocabulary and options;
    /// pairs as usual, chosen first), and every whole-batch value (token and sequence counts,
    /// the loss's means and sums, batch-level metrics) is the whole batch's, summed over the
    /// ranks before use ([`comm`]). Each rank gets the global loss and batch-level metrics,
    /// its own rows' row/sequence/pair metrics and `dx`, and `dW`/`db` as `share` says (by
    /// default its share: their sum over ranks is the single-device gradient). A user-given
    /// whole-batch input (a scalar such as GRPO's `num_items_in_batch`) is taken as global
    /// and not summed. Ranks that disagree on the loss or inputs, or a rank that fails, make
    /// every rank return [`Error::Rank`] (no rank waits forever). On a CUDA runtime the
    /// GEMMs and vocabulary streams run on the GPU as for one device and the whole-batch
    /// array stages (O(rows) values) on the host, where the ranks' values are combined (a few
    /// small blocking copies per stage).
    pub fn run_data_parallel(
        &self,
        p: &Pipeline,
        inputs: &InputSet<'_>,
        hyper: &BTreeMap<String, f32>,
        options: &RunOptions,
        comm: &dyn comm::Communicator,
        share: comm::GradShare,
    ) -> Result<LossOutput, Error> {
        self.agree_ranks(p, inputs, hyper, options, comm, false)?;
        let run = || -> Result<LossOutput, Error> {
            let mut out = match (&self.device, &self.cuda) {
                (Device::Cuda, Some(e)) => cuda::host::run_ranked(
                    e,
                    p,
                    inputs,
                    hyper,
                    options,
                    Some(cpu::Ranked::Data(comm)),
                )?,
                _ => cpu::run_ranked(p, inputs, hyper, options, Some(cpu::Ranked::Data(comm)))?,
            };
            let scale = match share {
                comm::GradShare::Share => return Ok(out),
                comm::GradShare::ForAverage => comm.world() as f32,
                comm::GradShare::Summed => 1.0,
            };
            for g in &mut out.grads {
                for buf in [g.w.as_mut(), g.b.as_mut()].into_iter().flatten() {
                    let mut f = buf.to_f32();
                    if share == comm::GradShare::Summed {
                        comm::sum_f32(comm, &mut f)?;
                    }
                    if scale != 1.0 {
                        f.iter_mut().for_each(|x| *x *= scale);
                    }
                    *buf = GradBuf::from_f32(f, buf.dtype());
                }
            }
            Ok(out)
        };
        comm::guarded(comm, run)
    }

    /// Runs the gradient IR of `p` as rank `comm.rank()` of a vocab-parallel group (the
    /// lm heads sharded by vocabulary rows, as tensor-parallel training does): every rank
    /// holds every row (`x`, targets and other inputs the same on every rank) and its own
    /// shard of each head's `W` (and `b`, and any per-vocabulary input), rank 0 the first
    /// entries, rank 1 the next, and so on (shards of any sizes, at least one entry each).
    /// Each stream's Vocab → Row reductions (`max`, `sum`, `logsumexp`, target logits,
    /// log-probabilities, `argmax`) and the normalisers of `log_softmax`/`softmax` combine
    /// the ranks' partial results chunk by chunk, so no rank ever holds the whole
    /// vocabulary's logits; which reductions those are comes from the IR, for every built-in
    /// and custom loss. Every rank returns the loss and metrics, the whole `dx` (summed over
    /// the ranks' partial products), and its shard's `dW`/`db`. Disagreeing ranks or a failing
    /// rank make every rank return [`Error::Rank`]. On a CUDA runtime each stream kernel runs
    /// once per round of partials ([`liger_ir::shard`]), the rounds combined with device
    /// all-reduces ([`comm::Communicator::all_reduce_device`]: NCCL's own, or through the
    /// host), and `dx` is summed on the device in f32.
    pub fn run_vocab_parallel(
        &self,
        p: &Pipeline,
        inputs: &InputSet<'_>,
        hyper: &BTreeMap<String, f32>,
        options: &RunOptions,
        comm: &dyn comm::Communicator,
    ) -> Result<LossOutput, Error> {
        self.agree_ranks(p, inputs, hyper, options, comm, true)?;
        // This rank's vocabulary rows (its first head's W), and every rank's, for the offsets.
        let v_r = p
            .schedule()
            .heads
            .first()
            .and_then(|h| match inputs.get(&h.name) {
                Some(InputValue::Head(head)) => head.w.shape().first().copied(),
                _ => None,
            })
            .unwrap_or(0);
        let run = || -> Result<LossOutput, Error> {
            let mut sizes = vec![0.0; comm.world()];
            if let Some(s) = sizes.get_mut(comm.rank()) {
                *s = v_r as f64;
            }
            comm.all_reduce_sum(&mut sizes)?;
            let offset = sizes[..comm.rank()].iter().sum::<f64>() as usize;
            let vocab = sizes.iter().sum::<f64>() as usize;
            if sizes.iter().any(|&n| n < 1.0) {
                return Err(Error::Rank {
                    rank: comm.rank(),
                    why: format!(
                        "every rank needs at least one vocabulary entry; the shards are {sizes:?}"
                    ),
                });
            }
            let ranked = cpu::Ranked::Vocab {
                comm,
                offset,
                vocab,
            };
            if let (Device::Cuda, Some(e)) = (&self.device, &self.cuda) {
                // dx is summed over the ranks on the device, in f32.
                return cuda::host::run_ranked(e, p, inputs, hyper, options, Some(ranked));
            }
            // dx is summed over the ranks in f32, then rounded to the dtype asked for.
            let want_x = options.grad_dtypes.x;
            let mut opts = *options;
            opts.grad_dtypes.x = tensor::DType::F32;
            let mut out = cpu::run_ranked(p, inputs, hyper, &opts, Some(ranked))?;
            // dx = Σ_r dz_r W_r: the ranks' partial products summed.
            for g in &mut out.grads {
                if let Some(x) = g.x.as_mut() {
                    let mut f = x.to_f32();
                    comm::sum_f32(comm, &mut f)?;
                    *x = GradBuf::from_f32(f, want_x);
                }
            }
            Ok(out)
        };
        comm::guarded(comm, run)
    }

    /// The ranks' first collective ([`comm::agree`]): the same loss, options and shapes on
    /// every rank (past `S` for data parallel, past `V` for vocab parallel), and a runtime
    /// that can take part.
    fn agree_ranks(
        &self,
        p: &Pipeline,
        inputs: &InputSet<'_>,
        hyper: &BTreeMap<String, f32>,
        options: &RunOptions,
        comm: &dyn comm::Communicator,
        vocab: bool,
    ) -> Result<(), Error> {
        let local = match (&self.device, &self.cuda) {
            (Device::Cuda, Some(_)) if vocab => Ok(()),
            (Device::Cuda, Some(_)) => cuda::backend::data_parallel_ready(p),
            _ => Ok(()),
        };
        let fp = comm::fingerprint(p, inputs, hyper, options, vocab);
        comm::agree(comm, fp, &local)
    }

    /// Returns the working memory a CUDA runtime's device pool keeps between runs to the
    /// system (the pool keeps what runs freed, so the next run maps nothing; memory of work
    /// still queued is released once it has run). Nothing to do on the CPU.
    pub fn trim_memory(&self) -> Result<(), Error> {
        match &self.cuda {
            Some(e) => e.gpu.trim_pool(0),
            None => Ok(()),
        }
    }

    /// Drops what the runtime keeps for `stream` (its cuBLAS handle and workspace); call it
    /// before destroying a stream borrowed from another library. May synchronise the device.
    pub fn release_stream(&self, stream: &cudarc::driver::CudaStream) {
        if let Some(e) = &self.cuda {
            e.release_stream(stream);
        }
    }

    /// Runs the loss of `p` on device inputs, queued on `stream` (a stream of
    /// [`Runtime::cuda_context`]); returns device buffers without synchronising the stream.
    /// See [`cuda::api`].
    pub fn run_device(
        &self,
        p: &Pipeline,
        inputs: &DeviceInputs<'_>,
        hyper: &BTreeMap<String, f32>,
        options: &RunOptions,
        stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    ) -> Result<DeviceOutput, Error> {
        match &self.cuda {
            Some(e) => cuda::api::run_device(e, p, inputs, hyper, options, stream),
            None => Err(Error::Device {
                device: self.device.name().into(),
                why: "device buffers need a CUDA runtime (Runtime::cuda)".into(),
            }),
        }
    }

    /// Runs the loss of `p` on `inputs` with hyperparameter values `hyper`.
    pub fn run(
        &self,
        p: &Pipeline,
        inputs: &InputSet<'_>,
        hyper: &BTreeMap<String, f32>,
        options: &RunOptions,
    ) -> Result<LossOutput, Error> {
        match (&self.device, &self.cuda) {
            (Device::Cuda, Some(e)) => cuda::host::run(e, p, inputs, hyper, options),
            _ => cpu::run(p, inputs, hyper, options),
        }
    }
}
