//! What a run returns: loss, metrics, gradients and a report of how it ran.

use liger_ir::{Level, Strategy};

/// A metric: a scalar (batch), `[P]` (pair), `[S]` (seq) or `[S,T]` (row).
#[derive(Clone, Debug, PartialEq)]
pub struct MetricOutput {
    /// Its name.
    pub name: String,
    /// Its level.
    pub level: Level,
    /// Its values.
    pub values: Vec<f32>,
}

/// The gradients of one `Logits` head, in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrads {
    /// The head's name.
    pub head: String,
    /// `dL/dx`, `[S,T,H]`.
    pub x: Vec<f32>,
    /// `dL/dW`, `[V,H]`, accumulated in f32 across chunks.
    pub w: Vec<f32>,
    /// `dL/db`, `[V]`, when the head has a bias.
    pub b: Option<Vec<f32>>,
}

/// How a run went.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// The device.
    pub device: &'static str,
    /// The strategy that ran.
    pub strategy: Strategy,
    /// Whether it was forced by an option.
    pub forced: bool,
    /// Rows per chunk (sub-chunk for deferred).
    pub chunk_rows: usize,
    /// Chunks run (both passes counted for two passes).
    pub chunks: usize,
    /// The memory budget (bytes).
    pub budget: usize,
    /// The planner's estimate of working memory (bytes).
    pub estimate: usize,
    /// GEMM floating-point operations.
    pub gemm_flops: f64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Non-fatal findings (e.g. a mean over no valid row).
    pub warnings: Vec<String>,
    /// Device time of the compute (GEMMs and kernels, inputs already on the device), ms.
    pub device_ms: Option<f64>,
    /// Peak extra device memory during the call as the device allocator measured it (its
    /// high-water mark minus the use before the call, the uploaded inputs and the returned
    /// gradients), bytes; `None` on the CPU or when the allocator keeps no counters
    /// ([`Report::estimate`] is the planner's figure).
    pub peak_extra_bytes: Option<usize>,
}

/// The result of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct LossOutput {
    /// The loss.
    pub loss: f32,
    /// Metrics, in the order the loss reports them.
    pub metrics: Vec<MetricOutput>,
    /// Gradients of every `Logits` head.
    pub grads: Vec<HeadGrads>,
    /// How it ran.
    pub report: Report,
}

impl LossOutput {
    /// The metric called `name`.
    pub fn metric(&self, name: &str) -> Option<&MetricOutput> {
        self.metrics.iter().find(|m| m.name == name)
    }

    /// The gradients of head `name`.
    pub fn grad(&self, name: &str) -> Option<&HeadGrads> {
        self.grads.iter().find(|g| g.head == name)
    }
}
