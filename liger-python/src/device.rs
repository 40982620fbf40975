//! The CUDA door of the Python package: tensors that already live on a GPU (PyTorch CUDA
//! tensors) read in place, the work queued on the caller's stream (PyTorch's current stream),
//! gradients written into buffers the caller allocated (PyTorch's caching allocator), and
//! nothing synchronised. Plain Rust; the `#[pymodule]` glue in `lib.rs` calls it.
//!
//! A call has two steps, so that the caller allocates every output itself:
//! [`grads_planned`] names the gradients a run computes (with their shapes and dtypes), the
//! caller allocates them, then [`run`] queues the work with those buffers as targets and
//! returns the runtime's [`DeviceOutput`] (the loss, metrics and status words stay in it; the
//! caller copies the loss and metrics into its own buffers with [`DeviceOutput::copy_into`]
//! and reads the device checks' verdict with [`DeviceOutput::check`] when it chooses).
//!
//! Safety rests on the caller's promise, made in the Python package: every address is a live
//! allocation of the stated length on the stated device, held by its tensor until the call
//! returns, and freed by its owner only stream-ordered on the same stream (PyTorch's caching
//! allocator frees so), so the queued work never reads freed memory.

use liger::named::{Named, resolve};
use liger::{
    ChunkedLoss, DType, DeviceHead, DeviceInputs, DeviceOutput, DeviceTensor, ForeignBuffer,
    GradPart, ParamSet, RunOptions,
};

/// A device tensor as the Python side hands it over.
#[derive(Clone, Debug)]
pub struct DevTensor {
    /// `policy.x`, `target`, … (inputs) or `grad.policy.w`, … (gradient targets).
    pub name: String,
    /// Its device address.
    pub ptr: u64,
    /// Its length in bytes (C-contiguous).
    pub bytes: usize,
    /// `float32`, `bfloat16`, `float16`, `int64`, `int32` or `bool`.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// The dtype called `dtype` (torch's names) for a device tensor named `name`.
pub fn dtype_of(name: &str, dtype: &str) -> Result<DType, String> {
    Ok(match dtype {
        "float32" => DType::F32,
        "bfloat16" => DType::BF16,
        "float16" => DType::F16,
        "int64" => DType::I64,
        "int32" => DType::I32,
        "bool" | "uint8" => DType::Bool,
        "float64" => {
            return Err(format!(
                "`{name}` is float64: on the GPU liger-rs takes float32, bfloat16 or float16 \
                 (cast it, or run on CPU tensors)"
            ));
        }
        other => {
            return Err(format!(
                "`{name}` has dtype {other}; on the GPU liger-rs takes float32, bfloat16, \
                 float16, int64, int32 or bool"
            ));
        }
    })
}

/// torch's name of a gradient dtype.
fn torch_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

/// The parameter names that input names select (`policy.x` → `policy`).
fn given(names: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let p = match n.rsplit_once('.') {
            Some((head, "x" | "w" | "b")) => head,
            _ => n,
        };
        if !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    out
}

/// A gradient a run computes: `(grad.<head>.<part>, shape, torch dtype)`.
pub type Planned = (String, Vec<usize>, &'static str);

/// The gradients a run of `loss` on inputs `(name, shape)` computes under `opts`, as
/// `(grad.<head>.<part>, shape, torch dtype)`: every part of every trained head that
/// `opts.grads` asks for (the bias only where it is given), in the dtype of
/// `opts.grad_dtypes`.
pub fn grads_planned(
    loss: &dyn ChunkedLoss,
    params: &ParamSet,
    inputs: &[(String, Vec<usize>)],
    opts: &RunOptions,
) -> Result<Vec<Planned>, String> {
    let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
    let given = given(&names);
    let given: Vec<&str> = given.iter().map(String::as_str).collect();
    let (p, _) = liger::pipeline_for(loss, &given, params).map_err(|e| e.to_string())?;
    let shape = |n: &str| inputs.iter().find(|(m, _)| m == n).map(|(_, s)| s.clone());
    let mut out = Vec::new();
    for hp in p.schedule().heads.iter().filter(|h| h.grad.is_some()) {
        let parts = [
            (GradPart::X, opts.grads.x, opts.grad_dtypes.x),
            (GradPart::W, opts.grads.w, opts.grad_dtypes.w),
            (GradPart::B, opts.grads.b, opts.grad_dtypes.b),
        ];
        for (part, wanted, dtype) in parts {
            let input = format!("{}.{}", hp.name, part.name());
            if let (true, Some(s)) = (wanted, shape(&input)) {
                out.push((format!("grad.{input}"), s, torch_name(dtype)));
            }
        }
    }
    Ok(out)
}

/// Bytes of the f32 working copies the runtime keeps for gradients `(grad.<head>.<part>,
/// shape, torch dtype)` returned in bf16/f16 (an f32 gradient is accumulated in its own
/// buffer; with [`liger::WAccum::Output`] so is a `grad W` in its head's GEMM dtype, which
/// `input_dtype` gives for `<head>.x`).
pub fn working_copies<'a>(
    grads: impl IntoIterator<Item = (&'a str, &'a [usize], &'a str)>,
    w_accum: liger::WAccum,
    input_dtype: impl Fn(&str) -> Option<&'a str>,
) -> usize {
    grads
        .into_iter()
        .filter(|(name, _, d)| {
            let in_place = w_accum == liger::WAccum::Output
                && name
                    .strip_prefix("grad.")
                    .and_then(|n| n.strip_suffix(".w"))
                    .and_then(|head| input_dtype(&format!("{head}.x")))
                    == Some(*d);
            *d != "float32" && !in_place
        })
        .map(|(_, s, _)| s.iter().product::<usize>() * 4)
        .sum()
}

/// Queues `loss` on device tensors `inputs` on the caller's stream `stream` (a `CUstream`
/// handle of device `device`'s primary context; 0 is the legacy default stream), writing each
/// gradient into the target of its name (`grad.<head>.<part>`, from [`grads_planned`]).
/// Returns the device output and the loss's and metrics' names and shapes (`(S, T)` from the
/// first head's x).
#[allow(clippy::type_complexity)]
pub fn run(
    loss: &dyn ChunkedLoss,
    params: &ParamSet,
    inputs: &[DevTensor],
    targets: &[DevTensor],
    opts: &RunOptions,
    device: usize,
    stream: u64,
) -> Result<(DeviceOutput, Vec<(String, Vec<usize>)>), String> {
    let rt = crate::runtime(&format!("cuda:{device}")).map_err(|e| e.to_string())?;
    let ctx = rt
        .cuda_context()
        .ok_or_else(|| "the CUDA runtime has no context".to_string())?
        .clone();
    let mut bufs = Vec::with_capacity(inputs.len() + targets.len());
    for t in inputs.iter().chain(targets) {
        if t.bytes > 0 && t.ptr == 0 {
            return Err(format!(
                "`{}`: a null address for {} bytes",
                t.name, t.bytes
            ));
        }
        // SAFETY: the Python side passes the address and byte length of a contiguous CUDA
        // tensor on device `device`, read from the tensor, holds the tensor until this call
        // returns, and its owner (PyTorch's caching allocator) frees it stream-ordered on the
        // caller's stream, on which all our work is queued (see the module docs).
        bufs.push(unsafe { ForeignBuffer::new(&ctx, t.ptr, t.bytes) });
    }
    let (in_bufs, out_bufs) = bufs.split_at(inputs.len());
    let mut tensors = std::collections::HashMap::new();
    for (t, b) in inputs.iter().zip(in_bufs) {
        let d = dtype_of(&t.name, &t.dtype)?;
        let v = DeviceTensor::foreign(b, d, &t.shape).map_err(|e| format!("`{}`: {e}", t.name))?;
        if tensors.insert(t.name.as_str(), v).is_some() {
            return Err(format!("`{}` is given twice", t.name));
        }
    }
    let found = resolve(loss, inputs.iter().map(|t| t.name.as_str()), |n| {
        tensors.get(n).copied().map(Ok)
    })
    .map_err(|e| e.to_string())??;
    let mut set = DeviceInputs::new();
    for n in found {
        set = match n {
            Named::Head { name, x, w, b } => set.head(name, DeviceHead { x, w, b }),
            Named::Tensor { name, t } => set.tensor(name, t),
        };
    }
    for (t, b) in targets.iter().zip(out_bufs) {
        let (head, part) = t
            .name
            .strip_prefix("grad.")
            .and_then(|n| n.rsplit_once('.'))
            .and_then(|(h, p)| Some((h, GradPart::from_name(p)?)))
            .ok_or_else(|| format!("`{}` is no gradient name (grad.<head>.<x|w|b>)", t.name))?;
        set = set.grad_into(head, part, b, dtype_of(&t.name, &t.dtype)?);
    }
    // SAFETY: `stream` is the caller's live stream of device `device`'s primary context (the
    // context the runtime made with `CudaContext::new(device)` retains), kept alive by its
    // owner (PyTorch) beyond this call; the wrapper does not destroy it.
    let st = unsafe {
        ctx.wrap_borrowed_stream(stream as liger::runtime::cudarc::driver::sys::CUstream)
    };
    let out = liger::run_device(loss, &rt, &set, params, opts, &st).map_err(|e| e.to_string())?;
    let (s, t) = loss
        .params()
        .iter()
        .find(|p| p.kind.is_head())
        .and_then(|h| inputs.iter().find(|t| t.name == format!("{}.x", h.name)))
        .map_or((0, 0), |t| {
            (
                t.shape.first().copied().unwrap_or(0),
                t.shape.get(1).copied().unwrap_or(0),
            )
        });
    let mut results = vec![("loss".to_string(), vec![])];
    for name in out.metric_names() {
        if let Some((level, v)) = out.metric(name) {
            let shape = liger::named::metric_shape(level, (s, t), v.len());
            results.push((format!("metric.{name}"), shape));
        }
    }
    Ok((out, results))
}
