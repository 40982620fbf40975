//! `liger-runtime`: running a differentiated loss on real tensors.
//!
//! - [`tensor`] / [`inputs`]: borrowed host tensors and inputs by name;
//! - [`plan`]: the planner — picks a [`Strategy`] of the IR's schedule and the chunk size from
//!   a memory budget (or the strategy an option forces);
//! - [`cpu`]: the CPU executor — GEMMs through `matrixmultiply`, the vocab streams in f32 with
//!   rayon across rows, the whole-batch values computed before the chunk loop; returns the
//!   loss, metrics, `grad x`, `grad W` (f32 accumulated), `grad b` and a report.
//!
//! The CUDA executor arrives with its issue; CUDA libraries are loaded at run time, so this
//! crate builds and its CPU path runs anywhere.

pub mod cache;
pub mod cpu;
pub mod cuda;
pub mod error;
pub mod inputs;
pub mod output;
pub mod plan;
pub mod progress;
pub mod tensor;

pub use error::Error;
pub use inputs::{InputSet, InputValue};
pub use liger_ir::Strategy;
pub use output::{HeadGrads, LossOutput, MetricOutput, Report};
pub use plan::{Plan, RunOptions};
pub use tensor::{DType, Head, TensorData, TensorView};

use std::collections::BTreeMap;

/// Where a loss runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// The CPU executor.
    Cpu,
}

impl Device {
    /// The name used in options and reports.
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
        }
    }
}

/// An execution context: the device and its resources.
#[derive(Clone, Debug)]
pub struct Runtime {
    device: Device,
}

impl Runtime {
    /// The CPU runtime.
    pub fn cpu() -> Self {
        Runtime {
            device: Device::Cpu,
        }
    }

    /// A runtime for `device`: `"cpu"` (`"cuda"` and `"auto"` arrive with the GPU executor).
    pub fn for_device(device: &str) -> Result<Self, Error> {
        match device {
            "cpu" => Ok(Self::cpu()),
            "cuda" | "auto" => Err(Error::Device {
                device: device.into(),
                why: "the CUDA executor is not implemented yet; use `--device cpu`".into(),
            }),
            other => Err(Error::Device {
                device: other.into(),
                why: "devices are: cpu".into(),
            }),
        }
    }

    /// The device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Runs the gradient IR `grad_ir` (differentiated and simplified) on `inputs` with
    /// hyperparameter values `hyper`.
    pub fn run(
        &self,
        grad_ir: &liger_ir::LossFn,
        inputs: &InputSet<'_>,
        hyper: &BTreeMap<String, f32>,
        options: &RunOptions,
    ) -> Result<LossOutput, Error> {
        match self.device {
            Device::Cpu => cpu::run(grad_ir, inputs, hyper, options),
        }
    }
}
