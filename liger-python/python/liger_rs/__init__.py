"""liger-rs from Python: chunked, fused post-training losses (DPO, CPO, SimPO, ORPO, KTO,
GRPO, fused linear cross-entropy, JSD/KL/cosine distillation, and losses you write in the loss
language), computed without ever holding the ``[tokens, vocab]`` logits.

A :class:`Loss` is called with a dict of arrays named exactly as ``liger run`` names the
tensors of its input file (``{"logits.x": ..., "logits.w": ..., "target": ...}``; a head
``policy`` is ``policy.x``, ``policy.w`` and optionally ``policy.b``) and returns a
:class:`Result` with ``.loss``, ``.metrics`` (by metric name) and ``.grads`` (by the input each
gradient belongs to: ``"logits.x"``, ``"logits.w"``, ...).

Arrays are numpy arrays or CPU torch tensors (bf16 tensors included), C-contiguous, read in
place without a copy; results come back as numpy arrays. CUDA torch tensors are read in place
on their GPU too: the work is queued on PyTorch's current stream, every result is a CUDA
tensor allocated by PyTorch's caching allocator, and nothing synchronises (``Result.check()``
waits and raises the device checks' error, if any). Errors are :class:`LigerError` with a
message that says what is wrong and how to fix it.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from ._native import LigerError, NativeLoss, builtin_names, compile_source, __version__
from ._native import empty_cache
from . import cache

__all__ = [
    "Loss", "Result", "LigerError", "compile", "losses", "cache", "empty_cache", "__version__",
]

_DTYPES = {
    np.dtype(np.float32): "float32",
    np.dtype(np.float16): "float16",
    np.dtype(np.float64): "float64",
    np.dtype(np.int64): "int64",
    np.dtype(np.int32): "int32",
    np.dtype(np.bool_): "bool",
}


def _buffer(name: str, value: Any) -> Tuple[str, Any, int, int, str, List[int]]:
    """One input as ``(name, owner, address, bytes, dtype, shape)``: a C-contiguous host array
    read in place (the native side holds ``owner`` for the call)."""
    mod = type(value).__module__
    if mod.startswith("torch"):
        return _torch_buffer(name, value)
    if not isinstance(value, np.ndarray):
        raise LigerError(
            f"`{name}` is a {type(value).__name__}: pass a numpy array or a torch tensor"
        )
    dtype = _DTYPES.get(value.dtype)
    if dtype is None:
        raise LigerError(
            f"`{name}` has dtype {value.dtype}; liger-rs takes float32, float16, float64, "
            "int64, int32 or bool arrays (bfloat16 as a torch tensor)"
        )
    if not value.flags.c_contiguous:
        raise LigerError(
            f"`{name}` is not C-contiguous: pass np.ascontiguousarray({name}) (no copy is made "
            "silently)"
        )
    return name, value, int(value.ctypes.data), int(value.nbytes), dtype, list(value.shape)


def _torch_dtype_name(name: str, t: Any) -> str:
    import torch

    names = {
        torch.bfloat16: "bfloat16",
        torch.float32: "float32",
        torch.float16: "float16",
        torch.float64: "float64",
        torch.int64: "int64",
        torch.int32: "int32",
        torch.bool: "bool",
    }
    dtype = names.get(t.dtype)
    if dtype is None:
        raise LigerError(
            f"`{name}` has dtype {t.dtype}; liger-rs takes float32, bfloat16, float16, "
            "float64 (host only), int64, int32 or bool tensors"
        )
    return dtype


def _torch_buffer(name: str, t: Any) -> Tuple[str, Any, int, int, str, List[int]]:
    if t.device.type != "cpu":
        raise LigerError(
            f"`{name}` is on {t.device} while other inputs are host arrays: give every input "
            "on one device (nothing is copied silently)"
        )
    if not t.is_contiguous():
        raise LigerError(f"`{name}` is not contiguous: pass {name}.contiguous()")
    t = t.detach()
    dtype = _torch_dtype_name(name, t)
    return name, t, int(t.data_ptr()), int(t.numel() * t.element_size()), dtype, list(t.shape)


def _is_cuda(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and value.device.type == "cuda"


def _cuda_call(native: NativeLoss, inputs: Mapping[str, Any],
               options: Dict[str, Any]) -> "Result":
    """Runs on CUDA tensors in place, queued on PyTorch's current stream of their device; the
    gradients, loss and metrics are CUDA tensors from PyTorch's caching allocator."""
    import torch

    device = None
    ins = []
    keep = []
    for name, t in inputs.items():
        if not _is_cuda(t):
            raise LigerError(
                f"`{name}` is not a CUDA tensor while other inputs are: give every input on "
                f"one device, e.g. {name}.cuda() (nothing is copied silently)"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise LigerError(f"`{name}` is on {t.device}, other inputs on {device}: give every "
                             "input on one GPU")
        if not t.is_contiguous():
            raise LigerError(f"`{name}` is not contiguous: pass {name}.contiguous()")
        t = t.detach()
        keep.append(t)
        dtype = _torch_dtype_name(name, t)
        ins.append((name, int(t.data_ptr()), int(t.numel() * t.element_size()), dtype,
                    list(t.shape)))
    assert device is not None
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.cuda.device(index):
        stream = torch.cuda.current_stream(index)
        planned = native.cuda_grads([(n, s) for n, _, _, _, s in ins], options)
        grads = {}
        targets = []
        for gname, shape, dtype in planned:
            g = torch.empty(shape, dtype=getattr(torch, dtype), device=device)
            grads[gname[len("grad."):]] = g
            targets.append((gname, int(g.data_ptr()), int(g.numel() * g.element_size()),
                            dtype, list(g.shape)))
        run = native.run_cuda(ins, targets, options, index, int(stream.cuda_stream))
        values = {}
        for rname, shape in run.results():
            v = torch.empty(shape, dtype=torch.float32, device=device)
            run.copy_into(rname, int(v.data_ptr()), int(v.numel() * 4))
            values[rname] = v
    del keep
    loss = values.pop("loss")
    metrics = {k[len("metric."):]: v for k, v in values.items()}
    return Result(loss, metrics, grads, dict(run.report()), {}, _DeviceRun(run, index))


def _array(shape: List[int], dtype: str, data: bytes) -> np.ndarray:
    """A result as a numpy array (bfloat16 gradients widened to float32: numpy has no bf16)."""
    if dtype == "bfloat16":
        bits = np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


class _DeviceRun:
    """A queued CUDA run and its device: waiting on it binds the runtime's CUDA context to
    the calling thread, so it is done with PyTorch's current device set to the run's (and
    restored after), never leaving another device current."""

    def __init__(self, native: Any, index: int):
        self._native = native
        self._index = index

    def check(self) -> List[str]:
        import torch

        with torch.cuda.device(self._index):
            return list(self._native.check())

    def device_ms(self) -> float:
        import torch

        with torch.cuda.device(self._index):
            return float(self._native.device_ms())


class Result:
    """What a call returns.

    ``loss``: the scalar loss (a float). ``metrics``: metric name -> array (a scalar metric is
    a 0-d array, a row metric ``[S, T]``). ``grads``: input name (``"policy.x"``,
    ``"policy.w"``, ``"policy.b"``) -> gradient of the loss with respect to it, for the
    gradients asked for. ``report``: how it ran (device, schedule, chunk and stage rows, rows
    skipped, seconds, warnings).

    From CUDA tensors, ``loss`` is a 0-d float32 CUDA tensor and every metric and gradient a
    CUDA tensor, all still being computed on PyTorch's current stream; :meth:`check` waits
    for them and raises the device checks' error (token ids out of range, non-finite inputs
    or results, an empty sequence), which otherwise shows as a NaN loss.
    """

    def __init__(self, loss: Any, metrics: Dict[str, Any], grads: Dict[str, Any],
                 report: Dict[str, str], raw: Dict[str, Tuple[List[int], str, bytes]],
                 run: Any = None):
        self.loss = loss
        self.metrics = metrics
        self.grads = grads
        self.report = report
        self._raw = raw
        self._run = run

    def check(self) -> List[str]:
        """Waits for a CUDA run (synchronises its stream) and returns its warnings, or raises
        :class:`LigerError` with what the device checks found. A host run was checked before
        it returned: its warnings are in ``report["warnings"]``."""
        if self._run is None:
            w = self.report.get("warnings", "")
            return [x for x in w.split("\n") if x]
        return list(self._run.check())

    def device_ms(self) -> float:
        """Device time of a CUDA run in ms (waits for it)."""
        if self._run is None:
            raise LigerError("device_ms is measured for runs on CUDA tensors")
        return float(self._run.device_ms())

    def __repr__(self) -> str:
        loss = f"{self.loss:.6g}" if isinstance(self.loss, float) else "<on the GPU>"
        return (f"Result(loss={loss}, metrics={sorted(self.metrics)}, "
                f"grads={sorted(self.grads)})")


class Loss:
    """A liger-rs loss: a built-in by name with its hyperparameters and variants as keyword
    arguments (``Loss("dpo", beta=0.1, loss_type="Ipo")``), or one compiled from source
    (:func:`compile`).

    Call it with a dict of named arrays; keyword options:

    - ``device``: for host arrays: ``"cpu"`` (default), ``"cuda"`` (copied to GPU 0),
      ``"cuda:N"``, ``"auto"``. CUDA torch tensors run on their own GPU in place (see
      :class:`Result`), whatever ``device`` says;
    - ``budget``: working memory (``"256MiB"`` default, ``"2GiB"``, bytes);
    - ``schedule``: ``"auto"`` or a strategy (``fused``, ``group-aligned``, ``deferred``,
      ``two-pass``);
    - ``ignore_index``: target ids ignored (-100);
    - ``grads``: which gradients of the trained heads (``"x,w,b"`` default, ``"x"`` for a
      frozen weight, ``"none"``);
    - ``grad_dtype``: ``"f32"`` (default), ``"bf16"``, ``"x=bf16,w=f32"``;
    - ``all_rows``: run the rows that carry nothing too (off: they are skipped);
    - ``vocab_prefix``: read a larger frozen head's first V rows;
    - ``chunk_rows``, ``stage_rows``: rows per chunk and per gradient stage instead of the
      planner's choice (for measuring plans; still checked against the budget);
    - ``budget_beyond_grads``: the budget is for the chunks only, and the f32 accumulators of
      gradients returned in bf16/f16 (4 bytes per element of each such gradient: 2 GiB for a
      128256 x 4096 head) come on top (off: they count against the budget; ``liger_rs.torch``
      turns it on);
    - ``w_accum``: where ``grad W`` is accumulated across the run's gradient stages: ``"f32"``
      (default: rounded once at the end) or ``"output"`` (in its returned dtype when that is
      the weight's dtype, bf16 or f16: no f32 copy, one rounding per stage, as Liger Kernel
      does; GPU only, the CPU accumulates in f32).
    """

    def __init__(self, name: str, **hyper: Any):
        self._native = NativeLoss(name, _hyper_pairs(hyper))

    @classmethod
    def _wrap(cls, native: NativeLoss) -> "Loss":
        self = cls.__new__(cls)
        self._native = native
        return self

    def with_params(self, **hyper: Any) -> "Loss":
        """The same loss with these hyperparameters and variants (the others at defaults)."""
        return Loss._wrap(self._native.with_params(_hyper_pairs(hyper)))

    @property
    def name(self) -> str:
        return self._native.name

    @property
    def doc(self) -> str:
        return self._native.doc

    def params(self) -> List[Tuple[str, str, bool]]:
        """``(name, kind, optional)`` of every parameter (inputs, hyperparameters, variants)."""
        return list(self._native.params())

    def input_names(self) -> List[str]:
        """The names the inputs are given by."""
        return list(self._native.input_names())

    def warm(self, given: List[str], arch: str = "sm_90", dtype: str = "bf16",
             root: Optional[str] = None) -> List[Tuple[str, str, str]]:
        """Compiles the kernels of every schedule the planner may pick for the specialisation
        these hyperparameters and the inputs ``given`` (names such as ``"policy"``,
        ``"reference"``, ``"target"``) select, for ``arch`` and GEMM ``dtype``, into the
        kernel cache (:mod:`liger_rs.cache`). Needs NVRTC, not a GPU. Returns ``(schedule,
        key, origin)`` each."""
        return list(self._native.warm(list(given), arch, dtype, root))

    def __call__(self, inputs: Mapping[str, Any], *, device: str = "cpu", budget: str = "256MiB",
                 schedule: str = "auto", ignore_index: int = -100, grads: str = "x,w,b",
                 grad_dtype: str = "f32", all_rows: bool = False,
                 vocab_prefix: bool = False, chunk_rows: Optional[int] = None,
                 stage_rows: Optional[int] = None, budget_beyond_grads: bool = False,
                 w_accum: str = "f32") -> Result:
        options = {
            "device": device, "budget": str(budget), "schedule": schedule,
            "ignore_index": int(ignore_index), "grads": grads, "grad_dtype": grad_dtype,
            "all_rows": bool(all_rows), "vocab_prefix": bool(vocab_prefix),
            "chunk_rows": None if chunk_rows is None else int(chunk_rows),
            "stage_rows": None if stage_rows is None else int(stage_rows),
            "budget_beyond_grads": bool(budget_beyond_grads), "w_accum": str(w_accum),
        }
        if any(_is_cuda(v) for v in inputs.values()):
            return _cuda_call(self._native, inputs, options)
        bufs = [_buffer(k, v) for k, v in inputs.items()]
        tensors, report = self._native.run(bufs, options)
        loss: Optional[float] = None
        metrics: Dict[str, np.ndarray] = {}
        grads_out: Dict[str, np.ndarray] = {}
        raw: Dict[str, Tuple[List[int], str, bytes]] = {}
        for name, shape, dtype, data in tensors:
            raw[name] = (list(shape), dtype, data)
            if name == "loss":
                loss = float(np.frombuffer(data, dtype=np.float32)[0])
            elif name.startswith("metric."):
                metrics[name[len("metric."):]] = _array(shape, dtype, data)
            elif name.startswith("grad."):
                grads_out[name[len("grad."):]] = _array(shape, dtype, data)
        if loss is None:
            raise LigerError("internal: the run returned no loss")
        return Result(loss, metrics, grads_out, dict(report), raw)

    def __repr__(self) -> str:
        return f"liger_rs.Loss({self.name!r})"


def _hyper_pairs(hyper: Mapping[str, Any]) -> List[Tuple[str, str]]:
    out = []
    for k, v in hyper.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        out.append((k, str(v)))
    return out


def compile(source: str) -> Dict[str, Loss]:  # noqa: A001 - the loss language's compile
    """Compiles loss-language source (``#[chunked_loss]`` fns, helper fns, ``use`` items) and
    returns its losses by name, each with default hyperparameters (``.with_params(...)`` sets
    them)."""
    return {n.name: Loss._wrap(n) for n in compile_source(source)}


def losses() -> List[str]:
    """The built-in losses' names."""
    return list(builtin_names())
