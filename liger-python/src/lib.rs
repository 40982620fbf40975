//! The native module of the `liger_rs` Python package (`liger_rs._native`): the thin layer
//! between Python buffers and the `liger` facade. The package's Python side
//! (`python/liger_rs/`) turns numpy arrays and CPU torch tensors into byte buffers with a dtype
//! and a shape, and wraps the results back; this side checks every buffer (length, alignment,
//! dtype, bool bytes), views it in place (no copy), runs the loss with the GIL released, and
//! returns each result as bytes named as `liger run` names them (`loss`, `metric.<name>`,
//! `grad.<head>.<x|w|b>`, [`liger::named`]).
//!
//! Everything here except the `#[pymodule]` glue is plain Rust, tested by `cargo test`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use half::{bf16, f16};
use liger::named::NamedTensor;
use liger::{ChunkedLoss, DynLoss, GradBuf, ParamSet, RunOptions, Runtime, TensorView};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

mod device;

pyo3::create_exception!(
    _native,
    LigerError,
    PyValueError,
    "A liger-rs error: bad input, options or loss source (the message says what and how to fix it)."
);

/// Which loss: a built-in by name, or one compiled from source.
#[derive(Clone, Copy, Debug)]
pub enum Which {
    /// A built-in loss ([`liger::losses::by_name`]).
    Builtin(&'static str),
    /// A loss compiled at run time ([`liger::compile_loss`]).
    Compiled(DynLoss),
}

impl Which {
    /// The loss.
    pub fn loss(&self) -> Result<&dyn ChunkedLoss, String> {
        match self {
            Which::Builtin(n) => liger::losses::by_name(n).map_err(|e| e.to_string()),
            Which::Compiled(d) => Ok(d),
        }
    }
}

/// A tensor as the Python side hands it over: its name, bytes, dtype name and shape.
pub struct RawTensor<'a> {
    /// `policy.x`, `target`, …
    pub name: String,
    /// Its bytes, C-contiguous.
    pub bytes: &'a [u8],
    /// `float32`, `float16`, `bfloat16`, `float64`, `int64`, `int32` or `bool`.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// Views `t`'s bytes as its dtype, in place: the length must match the shape and the bytes
/// must be aligned for the dtype (numpy and torch allocate them so); bool bytes must be 0 or 1.
pub fn view<'a>(t: &RawTensor<'a>) -> Result<TensorView<'a>, String> {
    let n: usize = t.shape.iter().product();
    fn cast<'b, T: bytemuck::Pod>(name: &str, b: &'b [u8], n: usize) -> Result<&'b [T], String> {
        let size = std::mem::size_of::<T>();
        if b.len() != n * size {
            return Err(format!(
                "`{name}` holds {} bytes, its shape needs {n} elements of {size} bytes",
                b.len()
            ));
        }
        bytemuck::try_cast_slice(b).map_err(|_| {
            format!("`{name}`'s data is not aligned to {size} bytes: pass a copy of it")
        })
    }
    let name = t.name.as_str();
    let shape = &t.shape[..];
    let bad = |e: liger::runtime::Error| format!("`{name}`: {e}");
    match t.dtype.as_str() {
        "float32" => TensorView::new(cast::<f32>(name, t.bytes, n)?, shape).map_err(bad),
        "float16" => TensorView::new(cast::<f16>(name, t.bytes, n)?, shape).map_err(bad),
        "bfloat16" => TensorView::new(cast::<bf16>(name, t.bytes, n)?, shape).map_err(bad),
        "float64" => TensorView::new(cast::<f64>(name, t.bytes, n)?, shape).map_err(bad),
        "int64" => TensorView::new(cast::<i64>(name, t.bytes, n)?, shape).map_err(bad),
        "int32" => TensorView::new(cast::<i32>(name, t.bytes, n)?, shape).map_err(bad),
        "bool" => {
            let b = cast::<u8>(name, t.bytes, n)?;
            if b.iter().any(|&x| x > 1) {
                return Err(format!(
                    "`{name}` is bool but holds a byte other than 0 or 1"
                ));
            }
            // SAFETY: `bool` has the size and alignment of `u8`, and every byte was just
            // checked to be 0 or 1, the two valid `bool` values; the slice borrows `b`.
            let b: &[bool] = unsafe { std::slice::from_raw_parts(b.as_ptr().cast(), b.len()) };
            TensorView::new(b, shape).map_err(bad)
        }
        other => Err(format!(
            "`{name}` has dtype {other}; liger-rs takes float32, float16, bfloat16, float64, \
             int64, int32 or bool"
        )),
    }
}

/// The options of a call, as the Python side passes them (strings as `liger run` takes them).
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// `cpu`, `cuda` or `auto`.
    pub device: String,
    /// Working-memory budget (`256MiB`, `2GiB`, bytes).
    pub budget: String,
    /// `auto` or a strategy name.
    pub schedule: String,
    /// Target ids equal to this are ignored.
    pub ignore_index: i64,
    /// Which gradients (`x,w,b`, `x`, `none`, …).
    pub grads: String,
    /// Gradient dtypes (`f32`, `bf16`, `x=bf16,w=f32`, …).
    pub grad_dtype: String,
    /// Run every row (no dead-row skipping).
    pub all_rows: bool,
    /// Read a larger frozen head's first V rows.
    pub vocab_prefix: bool,
    /// Rows per chunk instead of the planner's choice.
    pub chunk_rows: Option<usize>,
    /// Rows per gradient stage (with `chunk_rows`).
    pub stage_rows: Option<usize>,
    /// The budget is for the chunks only: the f32 accumulators of the gradients returned in
    /// bf16/f16 come on top of it.
    pub budget_beyond_grads: bool,
    /// Where `grad W` is accumulated: `f32` or `output` ([`liger::WAccum`]).
    pub w_accum: String,
}

impl CallOptions {
    fn run_options(&self) -> Result<RunOptions, liger::Error> {
        let schedule = match self.schedule.as_str() {
            "auto" => None,
            s => Some(
                liger::Strategy::from_name(s).ok_or_else(|| liger::Error::BadVariant {
                    param: "schedule".into(),
                    value: s.into(),
                    allowed: "auto, fused, group-aligned, deferred, two-pass".into(),
                })?,
            ),
        };
        Ok(RunOptions {
            ignore_index: self.ignore_index,
            chunk_memory: liger::runtime::plan::parse_bytes(&self.budget)?,
            schedule,
            grad_dtypes: liger::GradDTypes::parse(&self.grad_dtype)?,
            grads: liger::Wanted::parse(&self.grads)?,
            skip_dead_rows: !self.all_rows,
            vocab_prefix: self.vocab_prefix,
            rows: self.chunk_rows.map(|chunk| liger::ForcedRows {
                chunk,
                stage: self.stage_rows,
            }),
            w_accum: liger::WAccum::from_name(&self.w_accum).ok_or_else(|| {
                liger::Error::BadVariant {
                    param: "w_accum".into(),
                    value: self.w_accum.clone(),
                    allowed: "f32, output".into(),
                }
            })?,
            ..RunOptions::default()
        })
    }
}

/// One runtime per device, made on first use (a CUDA runtime holds its context and caches).
/// The runtimes made so far, by device.
static RUNTIMES: OnceLock<Mutex<HashMap<String, Arc<Runtime>>>> = OnceLock::new();

fn runtime(device: &str) -> Result<Arc<Runtime>, liger::Error> {
    let mut map = match RUNTIMES.get_or_init(Default::default).lock() {
        Ok(m) => m,
        Err(poisoned) => poisoned.into_inner(),
    };
    // One runtime per GPU, however it is named.
    let device = if device == "cuda" { "cuda:0" } else { device };
    if let Some(r) = map.get(device) {
        return Ok(r.clone());
    }
    let r = Arc::new(Runtime::for_device(device)?);
    map.insert(device.to_string(), r.clone());
    Ok(r)
}

/// What a call returns: the named results and a few facts of the run.
pub struct CallResult {
    /// `loss`, `metric.*`, `grad.*`.
    pub tensors: Vec<NamedTensor>,
    /// `device`, `strategy`, `chunk_rows`, `stage_rows`, `chunks`, `skipped_rows`, … as text.
    pub report: Vec<(&'static str, String)>,
}

/// Runs `which` with `params` on `inputs` under `opts`.
pub fn call(
    which: &Which,
    params: &ParamSet,
    inputs: &[RawTensor<'_>],
    opts: &CallOptions,
) -> Result<CallResult, String> {
    let loss = which.loss()?;
    let mut views = HashMap::new();
    for t in inputs {
        if views.insert(t.name.as_str(), view(t)?).is_some() {
            return Err(format!("`{}` is given twice", t.name));
        }
    }
    let set = liger::named::inputs_by_name(loss, inputs.iter().map(|t| t.name.as_str()), |n| {
        views.get(n).cloned().map(Ok)
    })
    .map_err(|e| e.to_string())??;
    let mut ro = opts.run_options().map_err(|e| e.to_string())?;
    let rt = runtime(&opts.device).map_err(|e| e.to_string())?;
    if opts.budget_beyond_grads {
        let shapes: Vec<(String, Vec<usize>)> = inputs
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let planned = device::grads_planned(loss, params, &shapes, &ro)?;
        // The CPU executor accumulates `grad W` in f32 whatever `w_accum` says.
        let accum = if rt.device() == liger::runtime::Device::Cuda {
            ro.w_accum
        } else {
            liger::WAccum::F32
        };
        ro.chunk_memory += device::working_copies(
            planned.iter().map(|(n, s, d)| (n.as_str(), &s[..], *d)),
            accum,
            |n| {
                inputs
                    .iter()
                    .find(|t| t.name == n)
                    .map(|t| t.dtype.as_str())
            },
        );
    }
    let out = liger::run(loss, &rt, &set, params, &ro).map_err(|e| e.to_string())?;
    let report = report_pairs(&out.report);
    // A row-level metric is [S, T]: the first head's x gives S and T.
    let first_head = loss
        .params()
        .iter()
        .find(|p| p.kind.is_head())
        .map(|p| p.name);
    let st = first_head
        .and_then(|h| inputs.iter().find(|t| t.name == format!("{h}.x")))
        .map_or((0, 0), |t| {
            (
                t.shape.first().copied().unwrap_or(0),
                t.shape.get(1).copied().unwrap_or(0),
            )
        });
    let shape_of = |n: &str| inputs.iter().find(|t| t.name == n).map(|t| t.shape.clone());
    Ok(CallResult {
        tensors: liger::named::named_outputs(out, st, shape_of),
        report,
    })
}

/// A run's report as pairs of text.
fn report_pairs(r: &liger::Report) -> Vec<(&'static str, String)> {
    vec![
        ("device", r.device.to_string()),
        ("strategy", r.strategy.name().to_string()),
        ("chunk_rows", r.chunk_rows.to_string()),
        ("stage_rows", r.stage_rows.to_string()),
        ("chunks", r.chunks.to_string()),
        ("skipped_rows", r.skipped_rows.to_string()),
        ("budget", r.budget.to_string()),
        ("estimate", r.estimate.to_string()),
        ("seconds", r.seconds.to_string()),
        ("warnings", r.warnings.join("\n")),
    ]
}

/// Sets `hyper` (name → value as text: numbers, variant choices, `true`/`false`) on a
/// parameter set of `loss`, checking every name and value.
pub fn params(loss: &dyn ChunkedLoss, hyper: &[(String, String)]) -> Result<ParamSet, String> {
    let mut ps = ParamSet::new();
    for (k, v) in hyper {
        ps.set_str(loss, k, v).map_err(|e| e.to_string())?;
    }
    ps.resolve(loss).map_err(|e| e.to_string())?;
    Ok(ps)
}

/// A loss with its hyperparameters and variants, ready to call.
#[pyclass(frozen, module = "liger_rs._native")]
struct NativeLoss {
    which: Which,
    params: ParamSet,
}

fn err(e: String) -> PyErr {
    LigerError::new_err(e)
}

#[pymethods]
impl NativeLoss {
    /// The built-in loss `name` with `hyper` (pairs of name and value as text).
    #[new]
    fn new(name: &str, hyper: Vec<(String, String)>) -> PyResult<Self> {
        let loss = liger::losses::by_name(name).map_err(|e| err(e.to_string()))?;
        let params = params(loss, &hyper).map_err(err)?;
        Ok(NativeLoss {
            which: Which::Builtin(loss.name()),
            params,
        })
    }

    /// The same loss with other hyperparameters.
    fn with_params(&self, hyper: Vec<(String, String)>) -> PyResult<Self> {
        let loss = self.which.loss().map_err(err)?;
        Ok(NativeLoss {
            which: self.which,
            params: params(loss, &hyper).map_err(err)?,
        })
    }

    /// The loss's name.
    #[getter]
    fn name(&self) -> PyResult<&'static str> {
        Ok(self.which.loss().map_err(err)?.name())
    }

    /// Its documentation.
    #[getter]
    fn doc(&self) -> PyResult<&'static str> {
        Ok(self.which.loss().map_err(err)?.doc())
    }

    /// Its parameters: `(name, kind, optional)` each.
    fn params(&self) -> PyResult<Vec<(&'static str, &'static str, bool)>> {
        let loss = self.which.loss().map_err(err)?;
        Ok(loss
            .params()
            .iter()
            .map(|p| (p.name, p.kind.name(), p.optional))
            .collect())
    }

    /// The names its inputs are given by.
    fn input_names(&self) -> PyResult<Vec<String>> {
        Ok(liger::named::input_names(self.which.loss().map_err(err)?))
    }

    /// Compiles (NVRTC; no GPU needed) the kernels of every schedule the planner may pick for
    /// the specialisation these hyperparameters and the inputs named `given` (input names
    /// such as `policy`, `reference`, `target`) select, for `arch` (`sm_90`) and GEMM `dtype`
    /// (`bf16`, `f16`, `f32`), into the kernel cache at `root` (default: `LIGER_CACHE_DIR`,
    /// else the user's cache directory). Returns `(schedule, key, origin)` each.
    #[pyo3(signature = (given, arch, dtype, root=None))]
    fn warm(
        &self,
        py: Python<'_>,
        given: Vec<String>,
        arch: String,
        dtype: String,
        root: Option<String>,
    ) -> PyResult<Vec<(String, String, String)>> {
        let which = self.which;
        let params = self.params.clone();
        py.detach(move || -> Result<Vec<(String, String, String)>, String> {
            use liger::ir::emit::{EmitOptions, GemmDType};
            let loss = which.loss()?;
            let gemm_dtype = match dtype.as_str() {
                "bf16" => GemmDType::BF16,
                "f16" => GemmDType::F16,
                "f32" => GemmDType::F32,
                other => return Err(format!("dtype `{other}`: choose bf16, f16 or f32")),
            };
            let names: Vec<&str> = given.iter().map(String::as_str).collect();
            let (p, _) = liger::pipeline_for(loss, &names, &params).map_err(|e| e.to_string())?;
            let cache = open_cache(root);
            let opts = EmitOptions::new(gemm_dtype);
            let mut out = Vec::new();
            for strategy in p.schedule().candidates.clone() {
                let k = liger::runtime::cuda::compile::compile(&p, strategy, &opts, &arch, &cache)
                    .map_err(|e| e.to_string())?;
                out.push((
                    strategy.name().to_string(),
                    k.key.key(),
                    origin_name(&k.origin),
                ));
            }
            Ok(out)
        })
        .map_err(err)
    }

    /// Runs the loss. `inputs`: `(name, owner, address, bytes, dtype, shape)` each, the
    /// address and length of a C-contiguous host array that `owner` (the numpy array or torch
    /// tensor) holds; `options`: a dict of `device`, `budget`, `schedule`, `ignore_index`,
    /// `grads`, `grad_dtype`, `all_rows`, `vocab_prefix`, `chunk_rows`, `stage_rows`. Returns
    /// `(results, report)`: results
    /// as `(name, shape, dtype, bytes)`, the report as pairs of text.
    ///
    /// The package's Python side is the caller: it reads the address and length from the
    /// array itself (`ctypes.data`/`nbytes`, `data_ptr()`/`numel()·element_size()`) after
    /// checking that it is a contiguous host array, and holds it for the call. (The buffer
    /// protocol is not in CPython's stable ABI before 3.11, and the wheel is abi3 from 3.9.)
    #[allow(clippy::type_complexity)]
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<(String, Bound<'py, PyAny>, usize, usize, String, Vec<usize>)>,
        options: &Bound<'py, PyDict>,
    ) -> PyResult<(
        Vec<(String, Vec<usize>, &'static str, Bound<'py, PyBytes>)>,
        Vec<(&'static str, String)>,
    )> {
        let opts = call_options(options)?;
        let mut raw = Vec::with_capacity(inputs.len());
        for (name, _owner, addr, len, dtype, shape) in &inputs {
            if *len > 0 && *addr == 0 {
                return Err(err(format!("`{name}`: a null address for {len} bytes")));
            }
            let bytes: &[u8] = if *len == 0 {
                &[]
            } else {
                // SAFETY: the caller (the package's Python side, see above) passes the address
                // and byte length of a C-contiguous host array, read from that array, and
                // `inputs` holds the array (`_owner`) until this call returns, so the memory
                // stays allocated and unmoved. The slice is only read. Python code mutating the
                // array from another thread during the call would race, as with any native
                // operation that releases the GIL.
                unsafe { std::slice::from_raw_parts(*addr as *const u8, *len) }
            };
            raw.push(RawTensor {
                name: name.clone(),
                bytes,
                dtype: dtype.clone(),
                shape: shape.clone(),
            });
        }
        let which = self.which;
        let params = self.params.clone();
        let result = py
            .detach(|| call(&which, &params, &raw, &opts))
            .map_err(err)?;
        let tensors = result
            .tensors
            .into_iter()
            .map(|t| {
                let (dtype, bytes): (&'static str, &[u8]) = match &t.data {
                    GradBuf::F32(x) => ("float32", bytemuck::cast_slice(x)),
                    GradBuf::BF16(x) => ("bfloat16", bytemuck::cast_slice(x)),
                    GradBuf::F16(x) => ("float16", bytemuck::cast_slice(x)),
                };
                (t.name, t.shape, dtype, PyBytes::new(py, bytes))
            })
            .collect();
        Ok((tensors, result.report))
    }

    /// The gradients a CUDA run on inputs `(name, shape)` computes under `options`, as
    /// `(grad.<head>.<part>, shape, torch dtype)`: the caller allocates them and passes them
    /// to `run_cuda` as targets.
    fn cuda_grads(
        &self,
        inputs: Vec<(String, Vec<usize>)>,
        options: &Bound<'_, PyDict>,
    ) -> PyResult<Vec<device::Planned>> {
        let loss = self.which.loss().map_err(err)?;
        let ro = call_options(options)?
            .run_options()
            .map_err(|e| err(e.to_string()))?;
        device::grads_planned(loss, &self.params, &inputs, &ro).map_err(err)
    }

    /// Queues the loss on CUDA tensors read in place: `inputs` and `targets` are
    /// `(name, address, bytes, dtype, shape)` of contiguous tensors on device `device`
    /// (targets: the gradients `cuda_grads` names, allocated by the caller), `stream` the
    /// caller's `CUstream` handle (PyTorch's current stream). Nothing synchronises; the
    /// returned run holds the loss, metrics and device checks.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn run_cuda(
        &self,
        py: Python<'_>,
        inputs: Vec<(String, u64, usize, String, Vec<usize>)>,
        targets: Vec<(String, u64, usize, String, Vec<usize>)>,
        options: &Bound<'_, PyDict>,
        device: usize,
        stream: u64,
    ) -> PyResult<NativeRun> {
        let co = call_options(options)?;
        let mut ro = co.run_options().map_err(|e| err(e.to_string()))?;
        if co.budget_beyond_grads {
            ro.chunk_memory += device::working_copies(
                targets
                    .iter()
                    .map(|(n, _, _, d, s)| (n.as_str(), &s[..], d.as_str())),
                ro.w_accum,
                |n| inputs.iter().find(|t| t.0 == n).map(|t| t.3.as_str()),
            );
        }
        let dev = |v: Vec<(String, u64, usize, String, Vec<usize>)>| -> Vec<device::DevTensor> {
            v.into_iter()
                .map(|(name, ptr, bytes, dtype, shape)| device::DevTensor {
                    name,
                    ptr,
                    bytes,
                    dtype,
                    shape,
                })
                .collect()
        };
        let (inputs, targets) = (dev(inputs), dev(targets));
        let which = self.which;
        let params = self.params.clone();
        let (out, results) = py
            .detach(|| {
                let loss = which.loss()?;
                device::run(loss, &params, &inputs, &targets, &ro, device, stream)
            })
            .map_err(err)?;
        Ok(NativeRun { out, results })
    }
}

/// The call options from the Python side's dict (every key present; see `NativeLoss.run`).
fn call_options(options: &Bound<'_, PyDict>) -> PyResult<CallOptions> {
    let get = |k: &str| -> PyResult<Bound<'_, PyAny>> {
        options
            .get_item(k)?
            .ok_or_else(|| err(format!("option `{k}` is missing")))
    };
    Ok(CallOptions {
        device: get("device")?.extract()?,
        budget: get("budget")?.extract()?,
        schedule: get("schedule")?.extract()?,
        ignore_index: get("ignore_index")?.extract()?,
        grads: get("grads")?.extract()?,
        grad_dtype: get("grad_dtype")?.extract()?,
        all_rows: get("all_rows")?.extract()?,
        vocab_prefix: get("vocab_prefix")?.extract()?,
        chunk_rows: get("chunk_rows")?.extract()?,
        stage_rows: get("stage_rows")?.extract()?,
        budget_beyond_grads: match options.get_item("budget_beyond_grads")? {
            Some(v) => v.extract()?,
            None => false,
        },
        w_accum: match options.get_item("w_accum")? {
            Some(v) => v.extract()?,
            None => "f32".into(),
        },
    })
}

/// A run queued on a CUDA stream: its loss, metrics and device checks stay on the device
/// until copied into the caller's tensors or checked.
#[pyclass(frozen, module = "liger_rs._native")]
struct NativeRun {
    out: liger::DeviceOutput,
    results: Vec<(String, Vec<usize>)>,
}

#[pymethods]
impl NativeRun {
    /// The loss and metrics as `(name, shape)` (f32 each).
    fn results(&self) -> Vec<(String, Vec<usize>)> {
        self.results.clone()
    }

    /// Queues a copy of result `name` into the f32 CUDA tensor at `ptr` of `nbytes` bytes on
    /// the run's stream (no synchronisation). The caller holds the tensor.
    fn copy_into(&self, name: &str, ptr: u64, nbytes: usize) -> PyResult<()> {
        let ctx = self.out.stream().context();
        // SAFETY: the Python side passes the address and length of a contiguous f32 CUDA
        // tensor on the run's device, which it allocated on the run's stream and holds.
        let dst = unsafe { liger::ForeignBuffer::new(ctx, ptr, nbytes) };
        self.out
            .copy_into(name, &dst)
            .map_err(|e| err(e.to_string()))
    }

    /// Waits for the run (synchronises its stream) and returns the warnings, or raises the
    /// device checks' error (bad token ids, non-finite inputs or results, an empty sequence).
    fn check(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.out.check())
            .map_err(|e| err(e.to_string()))
    }

    /// Device time of the run in ms (waits for it).
    fn device_ms(&self, py: Python<'_>) -> PyResult<f64> {
        py.detach(|| self.out.device_ms())
            .map_err(|e| err(e.to_string()))
    }

    /// The plan as pairs of text (`strategy`, `chunk_rows`, …).
    fn report(&self) -> Vec<(&'static str, String)> {
        report_pairs(self.out.report())
    }
}

/// Returns the GPU memory the runtimes' device pools keep between runs (their working
/// memory, kept so that the next run maps nothing) to the system.
#[pyfunction]
fn empty_cache(py: Python<'_>) -> PyResult<()> {
    let runtimes: Vec<Arc<Runtime>> = match RUNTIMES.get() {
        Some(m) => match m.lock() {
            Ok(m) => m.values().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().values().cloned().collect(),
        },
        None => Vec::new(),
    };
    py.detach(|| runtimes.iter().try_for_each(|r| r.trim_memory()))
        .map_err(|e| err(e.to_string()))
}

/// The kernel cache at `root`, or at the default root (`LIGER_CACHE_DIR`, then
/// `XDG_CACHE_HOME/liger`, then `~/.cache/liger`), in the mode `LIGER_CACHE` sets.
fn open_cache(root: Option<String>) -> liger::runtime::cache::Cache {
    use liger::runtime::cache::{Cache, Mode, default_root};
    Cache::open(
        root.map(std::path::PathBuf::from).or_else(default_root),
        Mode::from_env(),
    )
}

fn origin_name(o: &liger::runtime::cache::Origin) -> String {
    match o {
        liger::runtime::cache::Origin::Memory => "memory".into(),
        liger::runtime::cache::Origin::Disk => "disk".into(),
        liger::runtime::cache::Origin::Compiled { why } => format!("compiled ({why})"),
    }
}

/// The kernel cache's directory (`None`: no disk tier).
#[pyfunction]
#[pyo3(signature = (root=None))]
fn cache_root(root: Option<String>) -> Option<String> {
    open_cache(root).root().map(|r| r.display().to_string())
}

/// One row per entry: `(key, arch, bytes, hits, compile_ms, last_used, components, broken)`.
#[allow(clippy::type_complexity)]
#[pyfunction]
#[pyo3(signature = (root=None))]
fn cache_entries(
    root: Option<String>,
) -> Vec<(
    String,
    String,
    u64,
    u64,
    f64,
    u64,
    Vec<(String, String)>,
    Option<String>,
)> {
    open_cache(root)
        .entries()
        .into_iter()
        .map(|e| {
            (
                e.key,
                e.arch,
                e.bytes,
                e.hits,
                e.compile_ms,
                e.last_used,
                e.components,
                e.broken,
            )
        })
        .collect()
}

/// The text of one file of the entry whose key starts with `key` (`surface.lir`, `grad.lir`,
/// `schedule.txt`, `kernel.cu`, `kernel.ptx`, `meta.json`, `key.json`).
#[pyfunction]
#[pyo3(signature = (key, file, root=None))]
fn cache_show(key: &str, file: &str, root: Option<String>) -> PyResult<String> {
    const FILES: [&str; 7] = [
        "surface.lir",
        "grad.lir",
        "schedule.txt",
        "kernel.cu",
        "kernel.ptx",
        "meta.json",
        "key.json",
    ];
    if !FILES.contains(&file) {
        return Err(err(format!(
            "`{file}` is not an entry file (choose: {})",
            FILES.join(", ")
        )));
    }
    let c = open_cache(root);
    let e = c
        .get(key)
        .ok_or_else(|| err(format!("no single cache entry with key prefix `{key}`")))?;
    e.file(file)
        .ok_or_else(|| err(format!("entry {} has no {file}", e.info.key)))
}

/// `(entries, broken, bytes, hits)` of the cache.
#[pyfunction]
#[pyo3(signature = (root=None))]
fn cache_stats(root: Option<String>) -> (usize, usize, u64, u64) {
    let st = open_cache(root).stats();
    (st.entries, st.broken, st.bytes, st.hits)
}

/// Removes every entry; returns how many.
#[pyfunction]
#[pyo3(signature = (root=None))]
fn cache_clear(root: Option<String>) -> PyResult<usize> {
    open_cache(root).clear().map_err(|e| err(e.to_string()))
}

/// Removes the least recently used entries until the cache holds at most `max_size`
/// (`512MiB`, bytes); returns how many.
#[pyfunction]
#[pyo3(signature = (max_size, root=None))]
fn cache_prune(max_size: &str, root: Option<String>) -> PyResult<usize> {
    let max = liger::runtime::plan::parse_bytes(max_size).map_err(|e| err(e.to_string()))?;
    open_cache(root)
        .prune(max as u64)
        .map_err(|e| err(e.to_string()))
}

/// The built-in losses' names.
#[pyfunction]
fn builtin_names() -> Vec<&'static str> {
    liger::losses::builtin().iter().map(|l| l.name()).collect()
}

/// Compiles loss-language source (one or more `#[chunked_loss]` fns, helpers, `use` items);
/// returns each loss with its default hyperparameters.
#[pyfunction]
fn compile_source(source: &str) -> PyResult<Vec<NativeLoss>> {
    let losses = liger::compile_loss(source, "<python>").map_err(|e| err(e.to_string()))?;
    losses
        .into_iter()
        .map(|d| {
            Ok(NativeLoss {
                which: Which::Compiled(d),
                params: params(&d, &[]).map_err(err)?,
            })
        })
        .collect()
}

/// The `liger_rs._native` module.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("LigerError", m.py().get_type::<LigerError>())?;
    m.add_class::<NativeLoss>()?;
    m.add_class::<NativeRun>()?;
    m.add_function(wrap_pyfunction!(builtin_names, m)?)?;
    m.add_function(wrap_pyfunction!(compile_source, m)?)?;
    m.add_function(wrap_pyfunction!(empty_cache, m)?)?;
    for f in [
        wrap_pyfunction!(cache_root, m)?,
        wrap_pyfunction!(cache_entries, m)?,
        wrap_pyfunction!(cache_show, m)?,
        wrap_pyfunction!(cache_stats, m)?,
        wrap_pyfunction!(cache_clear, m)?,
        wrap_pyfunction!(cache_prune, m)?,
    ] {
        m.add_function(f)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(name: &str, bytes: &'a [u8], dtype: &str, shape: &[usize]) -> RawTensor<'a> {
        RawTensor {
            name: name.into(),
            bytes,
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn buffers_are_checked_before_they_are_viewed() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let b: &[u8] = bytemuck::cast_slice(&x);
        assert!(view(&raw("x", b, "float32", &[2, 2])).is_ok());
        let e = view(&raw("x", b, "float32", &[3, 2]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("holds 16 bytes"), "{e}");
        let e = view(&raw("x", &b[1..13], "float32", &[3]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("not aligned"), "{e}");
        let e = view(&raw("x", b, "uint8", &[16])).err().unwrap_or_default();
        assert!(e.contains("dtype uint8"), "{e}");
        let e = view(&raw("m", &[0, 1, 2], "bool", &[3]))
            .err()
            .unwrap_or_default();
        assert!(e.contains("other than 0 or 1"), "{e}");
        assert!(view(&raw("m", &[0, 1, 1], "bool", &[3])).is_ok());
    }

    #[test]
    fn a_call_runs_flce_and_names_its_results() {
        let (s, t, h, v) = (1usize, 3usize, 2usize, 4usize);
        let x: Vec<f32> = (0..s * t * h).map(|i| i as f32 * 0.1).collect();
        let w: Vec<f32> = (0..v * h).map(|i| (i as f32 * 0.37).sin()).collect();
        let target = [1i64, -100, 3];
        let inputs = [
            raw("logits.x", bytemuck::cast_slice(&x), "float32", &[s, t, h]),
            raw("logits.w", bytemuck::cast_slice(&w), "float32", &[v, h]),
            raw("target", bytemuck::cast_slice(&target), "int64", &[s, t]),
        ];
        let which = Which::Builtin("flce");
        let ps = params(which.loss().expect("flce"), &[]).expect("params");
        let opts = CallOptions {
            device: "cpu".into(),
            budget: "64MiB".into(),
            schedule: "auto".into(),
            ignore_index: -100,
            grads: "x,w,b".into(),
            grad_dtype: "f32".into(),
            all_rows: false,
            vocab_prefix: false,
            chunk_rows: None,
            stage_rows: None,
            budget_beyond_grads: false,
            w_accum: "f32".into(),
        };
        let r = call(&which, &ps, &inputs, &opts).expect("call");
        let names: Vec<&str> = r.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names[0], "loss");
        assert!(names.contains(&"grad.logits.x") && names.contains(&"grad.logits.w"));
        // The loss: mean cross-entropy over the two valid rows, written out here.
        let ce = |row: usize, tgt: usize| -> f64 {
            let z: Vec<f64> = (0..v)
                .map(|j| {
                    (0..h)
                        .map(|k| f64::from(x[row * h + k]) * f64::from(w[j * h + k]))
                        .sum()
                })
                .collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + z.iter().map(|a| (a - m).exp()).sum::<f64>().ln();
            lse - z[tgt]
        };
        let want = (ce(0, 1) + ce(2, 3)) / 2.0;
        let GradBuf::F32(l) = &r.tensors[0].data else {
            panic!("loss in f32")
        };
        assert!((f64::from(l[0]) - want).abs() < 1e-5, "{} vs {want}", l[0]);
        let dx = r
            .tensors
            .iter()
            .find(|t| t.name == "grad.logits.x")
            .expect("dx");
        assert_eq!(dx.shape, vec![s, t, h]);
        // A typo in a name is refused with the names expected.
        let mut bad = inputs;
        bad[2].name = "targte".into();
        let e = call(&which, &ps, &bad, &opts).err().unwrap_or_default();
        assert!(e.contains("targte") && e.contains("expected"), "{e}");
    }
}
