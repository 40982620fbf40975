//! The losses on candle tensors (feature `candle`): [`run`] takes `candle_core::Tensor`s named
//! as `liger run` names its inputs (`policy.x`, `policy.w`, `target`, …) and returns the loss as
//! a candle tensor whose backward, through candle's own autograd, gives every trained input
//! that is a candle variable (or depends on one) its gradient.
//!
//! - CPU tensors only: they run on the CPU executor, read in place (no copy) under the
//!   tensors' read locks. A CUDA tensor is refused with [`Error::Candle`]: candle's `cuda`
//!   feature builds its kernels with nvcc at build time and links cudarc dynamically, which
//!   this crate's CPU-only build does not do; the CUDA path is not built or tested.
//! - As the PyTorch door does, the forward computes the loss, the metrics and the gradients at
//!   once (only those of inputs that track gradients). The returned loss is `L + (s −
//!   detach(s))` with `s = Σ sum(input ⊙ grad)` over those inputs: its value is `L` exactly
//!   (`s − s` is 0), and candle's backward of it gives each input `upstream · grad` (scaled by
//!   whatever the loss is multiplied by afterwards, accumulated across calls as candle does).
//!   This works for any number of trained tensors and any input kind, where candle's custom
//!   ops take at most three arguments.
//! - Gradients are computed in the input's dtype (f32, bf16 or f16; f64 inputs get f32
//!   gradients, widened); metrics are f32 tensors shaped as `liger run` writes them.

use std::collections::BTreeMap;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, DType as CDType, Device, Storage, Tensor};

use crate::named::{Named, metric_shape, resolve};
use crate::{ChunkedLoss, DType, Error, GradBuf, Head, InputSet, ParamSet, Report, RunOptions};
use crate::{TensorView, Wanted};

/// What [`run`] returns.
#[derive(Debug)]
pub struct CandleOutput {
    /// The loss, a scalar f32 tensor; `loss.backward()` gives the trained inputs their
    /// gradients.
    pub loss: Tensor,
    /// The metrics by name (f32; a row-level metric is `[S, T]`).
    pub metrics: BTreeMap<String, Tensor>,
    /// How it ran.
    pub report: Report,
}

fn refuse(input: &str, why: impl Into<String>) -> Error {
    Error::Candle {
        input: input.into(),
        why: why.into(),
    }
}

fn candle_err(input: &str) -> impl Fn(candle_core::Error) -> Error + '_ {
    move |e| refuse(input, e.to_string())
}

/// A tensor's contiguous CPU values, borrowed from its storage (`start..end` of the layout).
fn view<'a>(
    name: &str,
    storage: &'a Storage,
    range: (usize, usize),
    shape: &'a [usize],
) -> Result<TensorView<'a>, Error> {
    let Storage::Cpu(cpu) = storage else {
        return Err(refuse(
            name,
            "it is not on the CPU: this build runs candle's CPU tensors (the CUDA path needs \
             candle's nvcc-built kernels and is not built); move it with `to_device(&Device::Cpu)`",
        ));
    };
    let (a, b) = range;
    let bad = |e: liger_runtime::Error| refuse(name, e.to_string());
    match cpu {
        CpuStorage::F32(v) => TensorView::new(&v[a..b], shape).map_err(bad),
        CpuStorage::BF16(v) => TensorView::new(&v[a..b], shape).map_err(bad),
        CpuStorage::F16(v) => TensorView::new(&v[a..b], shape).map_err(bad),
        CpuStorage::F64(v) => TensorView::new(&v[a..b], shape).map_err(bad),
        CpuStorage::I64(v) => TensorView::new(&v[a..b], shape).map_err(bad),
        CpuStorage::I32(v) => TensorView::new(&v[a..b], shape).map_err(bad),
        CpuStorage::U8(v) => {
            let v = &v[a..b];
            if v.iter().any(|&x| x > 1) {
                return Err(refuse(name, "a u8 mask holds a byte other than 0 or 1"));
            }
            // SAFETY: `bool` has the size and alignment of `u8`, every byte was just checked
            // to be 0 or 1 (the two valid `bool` values), and the slice borrows `v`.
            let m: &[bool] = unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), v.len()) };
            TensorView::new(m, shape).map_err(bad)
        }
        other => Err(refuse(
            name,
            format!(
                "dtype {:?}: liger-rs takes f32, bf16, f16, f64, i64, i32 and u8 (0/1 masks); \
                 cast it (e.g. u32 token ids with `to_dtype(DType::I64)`)",
                other.dtype()
            ),
        )),
    }
}

/// The gradient dtype for an input of candle dtype `d` (f64 inputs get f32 gradients).
fn grad_dtype(d: CDType) -> DType {
    match d {
        CDType::BF16 => DType::BF16,
        CDType::F16 => DType::F16,
        _ => DType::F32,
    }
}

/// A gradient as a candle tensor of `shape` in the dtype of `like`.
fn to_tensor(g: GradBuf, shape: &[usize], like: &Tensor, name: &str) -> Result<Tensor, Error> {
    let e = candle_err(name);
    let t = match g {
        GradBuf::F32(v) => Tensor::from_vec(v, shape, &Device::Cpu),
        GradBuf::BF16(v) => Tensor::from_vec(v, shape, &Device::Cpu),
        GradBuf::F16(v) => Tensor::from_vec(v, shape, &Device::Cpu),
    }
    .map_err(&e)?;
    if t.dtype() == like.dtype() {
        Ok(t)
    } else {
        t.to_dtype(like.dtype()).map_err(e)
    }
}

/// Runs `loss` with `params` on candle CPU tensors named as `liger run` names them, under
/// `opts` (its `grads` and `grad_dtypes` are set from the inputs: a gradient is computed for
/// each input of a trained head that tracks gradients, in that input's dtype). See the
/// module docs.
pub fn run(
    loss: &dyn ChunkedLoss,
    params: &ParamSet,
    inputs: &[(&str, &Tensor)],
    opts: &RunOptions,
) -> Result<CandleOutput, Error> {
    // Read locks and contiguous ranges first; the views borrow from them.
    let mut locked = Vec::with_capacity(inputs.len());
    for (name, t) in inputs {
        let (storage, layout) = t.storage_and_layout();
        let range = layout.contiguous_offsets().ok_or_else(|| {
            refuse(
                name,
                "it is not contiguous: pass `.contiguous()?` (nothing is copied silently)",
            )
        })?;
        locked.push((*name, storage, range, t.dims().to_vec()));
    }
    let mut views = std::collections::HashMap::new();
    for (name, storage, range, shape) in &locked {
        if views
            .insert(*name, view(name, storage, *range, shape)?)
            .is_some()
        {
            return Err(refuse(name, "it is given twice"));
        }
    }
    let found = resolve(loss, inputs.iter().map(|(n, _)| *n), |n| {
        views.get(n).cloned().map(Ok)
    })?
    .map_err(|why| refuse("inputs", why))?;
    // Gradients: of the trained heads' inputs that track them, in their dtypes.
    let tensor = |n: &str| inputs.iter().find(|(m, _)| *m == n).map(|(_, t)| *t);
    let given: Vec<&str> = found
        .iter()
        .map(|n| match n {
            Named::Head { name, .. } | Named::Tensor { name, .. } => *name,
        })
        .collect();
    let (p, _) = crate::pipeline_for(loss, &given, params)?;
    let trained: Vec<String> = p
        .schedule()
        .heads
        .iter()
        .filter(|h| h.grad.is_some())
        .map(|h| h.name.clone())
        .collect();
    let tracks = |part: &str| -> Option<&Tensor> {
        trained
            .iter()
            .filter_map(|h| tensor(&format!("{h}.{part}")))
            .find(|t| t.track_op())
    };
    let (tx, tw, tb) = (tracks("x"), tracks("w"), tracks("b"));
    let mut ro = *opts;
    ro.grads = Wanted {
        x: tx.is_some(),
        w: tw.is_some(),
        b: tb.is_some(),
    };
    ro.grad_dtypes = crate::GradDTypes {
        x: tx.map_or(DType::F32, |t| grad_dtype(t.dtype())),
        w: tw.map_or(DType::F32, |t| grad_dtype(t.dtype())),
        b: tb.map_or(DType::F32, |t| grad_dtype(t.dtype())),
    };
    let set = found.into_iter().fold(InputSet::new(), |set, n| match n {
        Named::Head { name, x, w, b } => set.head(name, Head { x, w, b }),
        Named::Tensor { name, t } => set.tensor(name, t),
    });
    let rt = crate::Runtime::cpu();
    let out = crate::run(loss, &rt, &set, params, &ro)?;
    drop(set);
    drop(views);
    drop(locked);

    let (s, t) = loss
        .params()
        .iter()
        .find(|q| q.kind.is_head())
        .and_then(|h| tensor(&format!("{}.x", h.name)))
        .map_or((0, 0), |x| {
            let d = x.dims();
            (
                d.first().copied().unwrap_or(0),
                d.get(1).copied().unwrap_or(0),
            )
        });
    let mut metrics = BTreeMap::new();
    for m in out.metrics {
        let shape = metric_shape(m.level, (s, t), m.values.len());
        let name = format!("metric.{}", m.name);
        let v = Tensor::from_vec(m.values, shape, &Device::Cpu).map_err(candle_err(&name))?;
        metrics.insert(m.name, v);
    }
    let value = Tensor::new(out.loss, &Device::Cpu).map_err(candle_err("loss"))?;
    // s = Σ sum(input ⊙ grad) over the inputs that track gradients (see the module docs).
    let mut surrogate: Option<Tensor> = None;
    for g in out.grads {
        for (part, buf) in [("x", g.x), ("w", g.w), ("b", g.b)] {
            let name = format!("{}.{part}", g.head);
            let (Some(buf), Some(input)) = (buf, tensor(&name)) else {
                continue;
            };
            if !input.track_op() {
                continue;
            }
            let e = candle_err(&name);
            let grad = to_tensor(buf, input.dims(), input, &name)?;
            // In f32: a 16-bit product could overflow, and `s − s` of an infinity is NaN.
            let term = input
                .to_dtype(CDType::F32)
                .and_then(|i| i.mul(&grad.to_dtype(CDType::F32)?))
                .and_then(|p| p.sum_all())
                .map_err(&e)?;
            surrogate = Some(match surrogate {
                Some(acc) => (acc + term).map_err(e)?,
                None => term,
            });
        }
    }
    let loss_t = match surrogate {
        Some(s) => {
            let e = candle_err("loss");
            let zero = (&s - s.detach()).map_err(&e)?;
            (value + zero).map_err(e)?
        }
        None => value,
    };
    Ok(CandleOutput {
        loss: loss_t,
        metrics,
        report: out.report,
    })
}
