//! What a run returns: loss, metrics, gradients and a report of how it ran.

use half::{bf16, f16};
use liger_ir::{Level, Strategy};

use crate::tensor::DType;

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

/// A gradient in the dtype the caller chose ([`crate::GradDTypes`]); computed and accumulated
/// in f32 either way, rounded to nearest even once at the end.
#[derive(Clone, Debug, PartialEq)]
pub enum GradBuf {
    /// f32 (the default).
    F32(Vec<f32>),
    /// bfloat16.
    BF16(Vec<bf16>),
    /// IEEE half.
    F16(Vec<f16>),
}

impl GradBuf {
    /// f32 values rounded to `dtype` (f32, bf16 or f16; other dtypes keep f32).
    pub fn from_f32(x: Vec<f32>, dtype: DType) -> GradBuf {
        match dtype {
            DType::BF16 => GradBuf::BF16(x.iter().map(|&v| bf16::from_f32(v)).collect()),
            DType::F16 => GradBuf::F16(x.iter().map(|&v| f16::from_f32(v)).collect()),
            _ => GradBuf::F32(x),
        }
    }

    /// Its dtype.
    pub fn dtype(&self) -> DType {
        match self {
            GradBuf::F32(_) => DType::F32,
            GradBuf::BF16(_) => DType::BF16,
            GradBuf::F16(_) => DType::F16,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GradBuf::F32(x) => x.len(),
            GradBuf::BF16(x) => x.len(),
            GradBuf::F16(x) => x.len(),
        }
    }

    /// Whether it has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (exact: every bf16/f16 value is an f32).
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            GradBuf::F32(x) => x.clone(),
            GradBuf::BF16(x) => x.iter().map(|v| v.to_f32()).collect(),
            GradBuf::F16(x) => x.iter().map(|v| v.to_f32()).collect(),
        }
    }

    /// The f32 values, when it is f32.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            GradBuf::F32(x) => Some(x),
            _ => None,
        }
    }
}

/// The gradients of one `Logits` head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrads {
    /// The head's name.
    pub head: String,
    /// `dL/dx`, `[S,T,H]` (`None` when not asked for, [`crate::RunOptions::grads`]).
    pub x: Option<GradBuf>,
    /// `dL/dW`, `[V,H]`, accumulated in f32 across chunks (`None` when not asked for).
    pub w: Option<GradBuf>,
    /// `dL/db`, `[V]`, when the head has a bias and it was asked for.
    pub b: Option<GradBuf>,
}

/// Device time of one phase of a profiled CUDA run (`RunOptions::profile`).
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseTime {
    /// The phase (`logits GEMM`, `stream kernels`, `dx GEMM`, …).
    pub phase: String,
    /// Its device time summed over the run, ms.
    pub ms: f64,
    /// Timed launches (the logits GEMM and its bias add are separate phases).
    pub launches: usize,
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
    /// Rows per gradient stage (the gradient GEMMs run once per stage of whole chunks; the
    /// chunk where the backend does not stage).
    pub stage_rows: usize,
    /// Chunks run (both passes counted for two passes).
    pub chunks: usize,
    /// Rows left out of the chunk loop because they carry nothing
    /// (`RunOptions::skip_dead_rows`).
    pub skipped_rows: usize,
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
    /// Device time per phase when the run was profiled (`RunOptions::profile`), else empty.
    pub profile: Vec<PhaseTime>,
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

impl LossOutput {
    /// The first result that is not finite, as [`crate::Error::NonFiniteResult`] (`Ok` when
    /// the loss, every metric and every gradient are finite).
    pub fn check_finite(&self) -> Result<(), crate::Error> {
        let bad = |what: String, index: usize, value: f64| {
            Err(crate::Error::NonFiniteResult { what, index, value })
        };
        if !self.loss.is_finite() {
            return bad("the loss".into(), 0, f64::from(self.loss));
        }
        for m in &self.metrics {
            if let Some(i) = m.values.iter().position(|v| !v.is_finite()) {
                return bad(format!("metric `{}`", m.name), i, f64::from(m.values[i]));
            }
        }
        for g in &self.grads {
            for (part, buf) in [
                ("x", g.x.as_ref()),
                ("w", g.w.as_ref()),
                ("b", g.b.as_ref()),
            ] {
                let Some(buf) = buf else { continue };
                if let Some((i, v)) = buf.first_non_finite() {
                    return bad(format!("grad {}.{part}", g.head), i, v);
                }
            }
        }
        Ok(())
    }
}

impl GradBuf {
    /// The index and value of the first element that is not finite.
    pub fn first_non_finite(&self) -> Option<(usize, f64)> {
        match self {
            GradBuf::F32(x) => x
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| (i, f64::from(x[i]))),
            GradBuf::BF16(x) => x
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| (i, x[i].to_f64())),
            GradBuf::F16(x) => x
                .iter()
                .position(|v| !v.is_finite())
                .map(|i| (i, x[i].to_f64())),
        }
    }
}
