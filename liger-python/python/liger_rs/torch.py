"""liger-rs losses in a PyTorch training loop: :func:`apply` runs any :class:`liger_rs.Loss` as
an autograd function, and the drop-in modules take Liger Kernel's constructor arguments and
call signatures (switching is an import change) for fused linear cross-entropy, DPO and JSD.

As Liger Kernel does, the forward computes the loss, the metrics and the gradients at once;
the backward scales the stored gradients by the incoming gradient (so gradient accumulation
and loss scaling work). Only the gradients of inputs that require grad are computed: a frozen
weight (``requires_grad=False``, LoRA) costs no ``dW`` GEMM.

CUDA tensors are read in place and the work is queued on PyTorch's current stream; the
gradients (in each input's dtype), loss and metrics are CUDA tensors from PyTorch's caching
allocator, and nothing synchronises. The working-memory ``budget`` (256 MiB by default) is
for the chunks: the f32 accumulators of gradients returned in bf16/f16 (4 bytes per weight
element) come on top of it; an f32 weight's gradient is accumulated in its own buffer.
As Liger Kernel does, a bf16/f16 weight's gradient is accumulated in its own dtype across the
run's gradient stages (no f32 copy; ``accum_dtype=torch.float32`` accumulates in f32 and
rounds once, at 4 bytes per weight element of working memory on top of the budget). The device checks (token ids in range, finite inputs and
results) poison the loss with NaN; ``module.check()`` (or ``last_result.check()``) waits and
raises what they found. CPU tensors run on the CPU executor (or with ``device="cuda"``, copied
to the GPU by the runtime).
"""

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from . import LigerError, Loss

__all__ = [
    "apply",
    "CrossEntropyOutput",
    "LigerFusedLinearCrossEntropyLoss",
    "LigerFusedLinearDPOLoss",
    "LigerFusedLinearJSDLoss",
    "LigerFusedLinearCPOLoss",
    "LigerFusedLinearSimPOLoss",
    "LigerFusedLinearORPOLoss",
    "LigerFusedLinearKTOLoss",
    "LigerFusedLinearGRPOLoss",
]


def _to_torch(a: Any, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    if isinstance(a, torch.Tensor):  # from a CUDA run: already a tensor
        return a if like is None else a.to(like.dtype)
    t = torch.from_numpy(np.array(a, copy=True))
    return t if like is None else t.to(like.dtype)


_GRAD_DTYPES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


class _LossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, names, options, out, *tensors):  # type: ignore[override]
        wanted = {}
        for i, n in enumerate(names):
            part = n.rsplit(".", 1)[-1] if "." in n else ""
            if ctx.needs_input_grad[4 + i] and part in ("x", "w", "b"):
                # Each gradient in its input's dtype (autograd wants it so).
                wanted.setdefault(part, _GRAD_DTYPES.get(tensors[i].dtype, "f32"))
        opts = dict(options)
        opts["grads"] = ",".join(sorted(wanted)) if wanted else "none"
        if wanted:
            opts["grad_dtype"] = ",".join(f"{p}={d}" for p, d in sorted(wanted.items()))
        r = loss(dict(zip(names, tensors)), **opts)
        out["result"] = r
        # The result object must not hold the gradients past this call: `ctx` does, until
        # the backward hands them over.
        for k, v in r.metrics.items():
            out["metrics"][k] = _to_torch(v)
        ctx.grads = [
            _to_torch(r.grads[n], t) if ctx.needs_input_grad[4 + i] and n in r.grads else None
            for i, (n, t) in enumerate(zip(names, tensors))
        ]
        loss_t = r.loss if isinstance(r.loss, torch.Tensor) else torch.tensor(r.loss,
                                                                             dtype=torch.float32)
        r.grads, r.loss = {}, None
        return loss_t

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise LigerError("backward through a liger_rs loss ran twice: its gradients are "
                             "computed in the forward and handed over once; call the loss "
                             "again for another backward")
        # Scaled in place: the stored gradients are ours, and no second copy is made.
        scaled = [None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in grads]
        return (None, None, None, None, *scaled)


def apply(loss: Loss, inputs: Mapping[str, torch.Tensor],
          **options: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Runs ``loss`` on torch tensors named as :class:`liger_rs.Loss` names them; returns the
    loss (a 0-d float32 tensor that backpropagates into every input that requires grad) and
    the metrics (detached tensors). ``options`` as for :meth:`liger_rs.Loss.__call__` (except
    ``grads`` and ``grad_dtype``, which follow ``requires_grad`` and each input's dtype)."""
    return _apply(loss, inputs, options)[:2]


def _apply(loss: Loss, inputs: Mapping[str, torch.Tensor], options: Mapping[str, Any]):
    for k in ("grads", "grad_dtype"):
        if k in options:
            raise LigerError(f"`{k}` follows the inputs here (requires_grad and dtype): set "
                             "requires_grad_(False) on the inputs whose gradient is not wanted")
    base = {"device": "cpu", "budget": "256MiB", "schedule": "auto", "ignore_index": -100,
            "all_rows": False, "vocab_prefix": False, "chunk_rows": None, "stage_rows": None,
            "budget_beyond_grads": True, "w_accum": "output"}
    base.update(options)
    names = list(inputs)
    out: Dict[str, Any] = {"metrics": {}, "result": None}
    loss_t = _LossFunction.apply(loss, names, base, out, *[inputs[n] for n in names])
    return loss_t, out["metrics"], out["result"]


class _LastRun:
    """What :meth:`_Checked.check` needs of the last call: its report and device checks, not
    its tensors (holding the result would keep its gradients alive until the next call)."""

    def __init__(self, result: Any):
        self.report = dict(result.report)
        self._run = result._run

    def check(self):
        if self._run is None:
            w = self.report.get("warnings", "")
            return [x for x in w.split("\n") if x]
        return list(self._run.check())


class _Checked(torch.nn.Module):
    """The drop-ins' common part: the last call's report and device checks, for
    :meth:`check`."""

    last_result: Any = None

    def _run(self, loss: Loss, inputs: Mapping[str, torch.Tensor], options: Mapping[str, Any]):
        value, metrics, result = _apply(loss, inputs, options)
        self.last_result = _LastRun(result)
        return value, metrics

    def check(self):
        """Waits for the last call's work (on CUDA tensors) and raises :class:`LigerError`
        with what the device checks found (bad token ids, non-finite values); returns its
        warnings."""
        if self.last_result is None:
            raise LigerError("nothing has run yet")
        return self.last_result.check()


def _w_accum(accum_dtype: Any) -> str:
    """Liger Kernel's ``accum_dtype`` as a ``w_accum`` choice."""
    if accum_dtype is None:
        return "output"
    if accum_dtype == torch.float32:
        return "f32"
    raise LigerError(f"accum_dtype={accum_dtype}: take None (the weight's dtype) or "
                     "torch.float32")


def _reference(inputs: Dict[str, Any], x: Any, w: Any, b: Any) -> None:
    """The frozen reference head's tensors, named as :class:`liger_rs.Loss` names them."""
    if x is None or w is None:
        raise LigerError("use_ref_model=True needs ref_input and ref_weight")
    inputs.update({"reference.x": x, "reference.w": w})
    if b is not None:
        inputs["reference.b"] = b


def _camel(s: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in s.split("_"))


@dataclass
class CrossEntropyOutput:
    """What the FLCE drop-in returns with ``return_z_loss`` or ``return_token_accuracy`` (the
    fields of Liger Kernel's class of this name)."""

    loss: torch.Tensor
    z_loss: Optional[torch.Tensor] = None
    token_accuracy: Optional[torch.Tensor] = None
    predicted_tokens: Optional[torch.Tensor] = None


class LigerFusedLinearCrossEntropyLoss(_Checked):
    """Fused linear cross-entropy with Liger Kernel's arguments: ``forward(lin_weight, _input,
    target, bias=None)`` with ``_input [N, H]`` and ``target [N]``; returns the loss, or a
    :class:`CrossEntropyOutput` with ``return_z_loss`` or ``return_token_accuracy`` (the
    accuracy over the tokens not ignored). ``reduction="none"`` needs each token's upstream
    gradient, which this forward-computes-gradients design does not have: it is refused (use
    ``liger_rs.Loss("flce", reduction="None")`` with ``token_weight``). Extra keyword
    arguments: ``budget``, ``device``."""

    def __init__(self, ce_weight: Optional[torch.Tensor] = None, ignore_index: int = -100,
                 lse_square_scale: float = 0.0, label_smoothing: float = 0.0,
                 reduction: str = "mean", softcap: Optional[float] = None,
                 return_z_loss: bool = False, accum_dtype: Any = None,
                 use_token_scaling: bool = False, return_token_accuracy: bool = False,
                 return_predicted_tokens: bool = False, *, budget: str = "256MiB",
                 device: str = "cpu"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise LigerError(f"reduction={reduction!r}: liger_rs' drop-in FLCE takes 'mean' or "
                             "'sum' (per-token losses: liger_rs.Loss('flce', reduction='None'))")
        for flag, on in [("use_token_scaling", use_token_scaling),
                         ("return_predicted_tokens", return_predicted_tokens)]:
            if on:
                raise LigerError(f"{flag}=True is not supported by liger_rs' drop-in FLCE")
        hyper: Dict[str, Any] = {"label_smoothing": label_smoothing,
                                 "z_loss_scale": lse_square_scale,
                                 "reduction": _camel(reduction)}
        if softcap is not None:
            hyper.update(softcap=True, softcap_value=softcap)
        self.loss = Loss("flce", **hyper)
        self.ce_weight = ce_weight
        self.return_z_loss = return_z_loss
        self.return_token_accuracy = return_token_accuracy
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "w_accum": _w_accum(accum_dtype)}

    def forward(self, lin_weight, _input, target, bias=None):
        n, h = _input.shape
        inputs = {"logits.x": _input.reshape(1, n, h), "logits.w": lin_weight,
                  "target": target.reshape(1, n)}
        if bias is not None:
            inputs["logits.b"] = bias
        if self.ce_weight is not None:
            inputs["class_weight"] = self.ce_weight
        loss, metrics = self._run(self.loss, inputs, self.options)
        if not (self.return_z_loss or self.return_token_accuracy):
            return loss
        zero = torch.zeros((), dtype=torch.float32, device=loss.device)
        return CrossEntropyOutput(
            loss=loss,
            z_loss=metrics.get("z_loss", zero) if self.return_z_loss else None,
            token_accuracy=metrics["accuracy"] if self.return_token_accuracy else None)


class LigerFusedLinearDPOLoss(_Checked):
    """DPO with Liger Kernel's arguments: ``forward(lin_weight, _input, target, bias=None,
    ref_input=None, ref_weight=None, ref_bias=None)`` with ``_input [2P, T, H]`` (chosen rows
    first); returns ``(loss, (chosen_logps, rejected_logps, chosen_logits_mean,
    rejected_logits_mean, nll_loss, chosen_rewards, rejected_rewards))``. Every TRL loss type
    (``loss_type``: sigmoid, hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard,
    apo_zero, apo_down, discopop); unlike Liger Kernel, ``ipo`` is implemented and
    ``label_smoothing`` is applied for ``sigmoid`` as TRL does. Extra keyword arguments:
    ``budget``, ``device``, ``accum_dtype`` (as Liger Kernel's FLCE takes it: ``None``
    accumulates ``grad W`` in the weight's dtype, ``torch.float32`` in f32)."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0,
                 compute_nll_loss: bool = False, compiled: bool = True,
                 use_ref_model: bool = True, average_log_prob: bool = False,
                 chunk_size: int = 1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 discopop_tau: float = 0.05, *, budget: str = "256MiB",
                 device: str = "cpu", accum_dtype: Any = None):
        super().__init__()
        self.loss = Loss("dpo", beta=beta, alpha=alpha, label_smoothing=label_smoothing,
                         discopop_tau=discopop_tau, average=average_log_prob,
                         nll=compute_nll_loss, logits_metrics=True,
                         loss_type=_camel(loss_type))
        self.use_ref_model = use_ref_model
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "w_accum": _w_accum(accum_dtype)}

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None,
                ref_bias=None):
        inputs = {"policy.x": _input, "policy.w": lin_weight, "target": target}
        if bias is not None:
            inputs["policy.b"] = bias
        if self.use_ref_model:
            _reference(inputs, ref_input, ref_weight, ref_bias)
        loss, m = self._run(self.loss, inputs, self.options)
        return loss, _preference_aux(m, loss.device)


class LigerFusedLinearJSDLoss(_Checked):
    """Generalised JSD distillation with Liger Kernel's arguments: ``forward(student_input,
    student_weight, teacher_input, teacher_weight, true_labels, student_bias=None,
    teacher_bias=None)`` with inputs ``[N, H]``; returns the loss, or ``(loss, soft, hard)``
    with ``return_soft_hard_loss``. A teacher with more vocabulary rows than the student is
    refused unless ``vocab_prefix=True`` (its first V rows are read; Liger Kernel pads the
    student with zeros instead). Extra keyword arguments: ``budget``, ``device``,
    ``vocab_prefix``, ``accum_dtype`` (as for the DPO module)."""

    def __init__(self, weight_hard_loss: float = 0.5, weight_soft_loss: float = 0.5,
                 beta: float = 0.5, ignore_index: int = -100, temperature: float = 1.0,
                 compiled: bool = True, chunk_size: int = 1024,
                 return_soft_hard_loss: bool = False, *, budget: str = "256MiB",
                 device: str = "cpu", vocab_prefix: bool = False, accum_dtype: Any = None):
        super().__init__()
        self.loss = Loss("jsd", beta=beta, temperature=temperature,
                         weight_hard=weight_hard_loss, weight_soft=weight_soft_loss)
        self.return_soft_hard_loss = return_soft_hard_loss
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "vocab_prefix": vocab_prefix, "w_accum": _w_accum(accum_dtype)}

    def forward(self, student_input, student_weight, teacher_input, teacher_weight, true_labels,
                student_bias=None, teacher_bias=None):
        n = student_input.shape[0]
        inputs = {"student.x": student_input.reshape(1, n, -1), "student.w": student_weight,
                  "teacher.x": teacher_input.reshape(1, n, -1), "teacher.w": teacher_weight,
                  "target": true_labels.reshape(1, n)}
        if student_bias is not None:
            inputs["student.b"] = student_bias
        if teacher_bias is not None:
            inputs["teacher.b"] = teacher_bias
        loss, m = self._run(self.loss, inputs, self.options)
        if self.return_soft_hard_loss:
            return loss, m["soft_loss"], m["hard_loss"]
        return loss


def _preference_aux(m: Dict[str, torch.Tensor], device: Any, extra=()) -> Tuple:
    """Liger Kernel's auxiliary outputs of a paired preference loss: (chosen_logps,
    rejected_logps, chosen_logits_mean, rejected_logits_mean, nll_loss, chosen_rewards,
    rejected_rewards, *extra)."""
    zero = torch.zeros((), dtype=torch.float32, device=device)
    return (m["chosen_logps"], m["rejected_logps"], m.get("chosen_logits_mean", zero),
            m.get("rejected_logits_mean", zero), m.get("nll_loss", zero), m["chosen_rewards"],
            m["rejected_rewards"], *[m[k] for k in extra])


class _PairedPolicyOnly(_Checked):
    """CPO, SimPO and ORPO: ``forward(lin_weight, _input, target, bias=None)`` with ``_input
    [2P, T, H]`` (chosen rows first), returning ``(loss, aux)`` as Liger Kernel does."""

    _extra: Tuple[str, ...] = ()

    def _call(self, lin_weight, _input, target, bias, more=None):
        inputs = {"policy.x": _input, "policy.w": lin_weight, "target": target}
        if bias is not None:
            inputs["policy.b"] = bias
        inputs.update(more or {})
        loss, m = self._run(self.loss, inputs, self.options)
        return loss, _preference_aux(m, loss.device, self._extra)


class LigerFusedLinearCPOLoss(_PairedPolicyOnly):
    """CPO with Liger Kernel's arguments: ``forward(lin_weight, _input, target, bias=None)``;
    returns ``(loss, (chosen_logps, rejected_logps, chosen_logits_mean, rejected_logits_mean,
    nll_loss, chosen_rewards, rejected_rewards))``. Extra keyword arguments: ``budget``,
    ``device``, ``accum_dtype``."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0,
                 label_smoothing: float = 0.0, compute_nll_loss: bool = True,
                 compiled: bool = True, average_log_prob: bool = False, chunk_size: int = 1, *,
                 budget: str = "256MiB", device: str = "cpu", accum_dtype: Any = None):
        super().__init__()
        self.loss = Loss("cpo", beta=beta, alpha=alpha, label_smoothing=label_smoothing,
                         nll=compute_nll_loss, average=average_log_prob, logits_metrics=True)
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "w_accum": _w_accum(accum_dtype)}

    def forward(self, lin_weight, _input, target, bias=None):
        return self._call(lin_weight, _input, target, bias)


class LigerFusedLinearSimPOLoss(_PairedPolicyOnly):
    """SimPO with Liger Kernel's arguments (the NLL term on by default, as Liger's module has
    it): ``forward(lin_weight, _input, target, bias=None)``; returns ``(loss, aux)`` as the CPO
    module does. Extra keyword arguments: ``budget``, ``device``, ``accum_dtype``."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, alpha: float = 1.0,
                 label_smoothing: float = 0.0, compute_nll_loss: bool = True,
                 compiled: bool = True, gamma: float = 0.5, chunk_size: int = 1, *,
                 budget: str = "256MiB", device: str = "cpu", accum_dtype: Any = None):
        super().__init__()
        self.loss = Loss("simpo", beta=beta, gamma=gamma, alpha=alpha,
                         label_smoothing=label_smoothing, nll=compute_nll_loss,
                         logits_metrics=True)
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "w_accum": _w_accum(accum_dtype)}

    def forward(self, lin_weight, _input, target, bias=None):
        return self._call(lin_weight, _input, target, bias)


class LigerFusedLinearORPOLoss(_PairedPolicyOnly):
    """ORPO with Liger Kernel's arguments: ``forward(lin_weight, _input, target, bias=None,
    nll_target=None)``; returns ``(loss, aux)`` as the CPO module does, followed by
    ``log_odds_ratio`` and ``log_odds_chosen``. ORPO's loss is defined with its NLL term:
    ``compute_nll_loss=False`` is refused. Extra keyword arguments: ``budget``, ``device``,
    ``accum_dtype``."""

    _extra = ("log_odds_ratio", "log_odds_chosen")

    def __init__(self, ignore_index: int = -100, beta: float = 0.1,
                 compute_nll_loss: bool = True, compiled: bool = True, chunk_size: int = 1, *,
                 budget: str = "256MiB", device: str = "cpu", accum_dtype: Any = None):
        super().__init__()
        if not compute_nll_loss:
            raise LigerError("compute_nll_loss=False: liger_rs' ORPO always includes its NLL "
                             "term (the odds-ratio term alone is liger_rs.Loss('orpo') minus "
                             "its `nll_loss` metric)")
        self.loss = Loss("orpo", beta=beta, logits_metrics=True)
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "w_accum": _w_accum(accum_dtype)}

    def forward(self, lin_weight, _input, target, bias=None, nll_target=None):
        more = None if nll_target is None else {"nll_target": nll_target}
        return self._call(lin_weight, _input, target, bias, more)


class LigerFusedLinearKTOLoss(_Checked):
    """KTO with Liger Kernel's arguments: ``forward(_input, lin_weight, target, bias=None,
    preference_labels=None, ref_input=None, ref_weight=None, ref_bias=None, kl=None)`` (note
    the order: input first, as Liger's module has it) with ``_input [B, T, H]`` and
    ``preference_labels [B]`` (bool); returns ``(loss, (chosen_logps_sum, rejected_logps_sum,
    chosen_logits_sum, rejected_logits_sum, chosen_rewards_sum, rejected_rewards_sum))``.
    Extra keyword arguments: ``budget``, ``device``, ``accum_dtype``."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1, compiled: bool = True,
                 use_ref_model: bool = False, average_log_prob: bool = False,
                 chunk_size: int = 1, *, budget: str = "256MiB", device: str = "cpu",
                 accum_dtype: Any = None):
        super().__init__()
        self.loss = Loss("kto", beta=beta, average=average_log_prob, logits_metrics=True)
        self.use_ref_model = use_ref_model
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "w_accum": _w_accum(accum_dtype)}

    def forward(self, _input, lin_weight, target, bias=None, preference_labels=None,
                ref_input=None, ref_weight=None, ref_bias=None, kl=None):
        if preference_labels is None:
            raise LigerError("preference_labels is required: a bool per sequence, True for "
                             "the desirable ones")
        inputs = {"policy.x": _input, "policy.w": lin_weight, "target": target,
                  "preference": preference_labels.to(torch.bool)}
        if bias is not None:
            inputs["policy.b"] = bias
        if self.use_ref_model:
            _reference(inputs, ref_input, ref_weight, ref_bias)
        if kl is not None:
            inputs["kl"] = torch.as_tensor(kl, dtype=torch.float32,
                                           device=_input.device).reshape(())
        loss, m = self._run(self.loss, inputs, self.options)
        zero = torch.zeros((), dtype=torch.float32, device=loss.device)
        return loss, (m["chosen_logps_sum"], m["rejected_logps_sum"],
                      m.get("chosen_logits_sum", zero), m.get("rejected_logits_sum", zero),
                      m["chosen_rewards_sum"], m["rejected_rewards_sum"])


class LigerFusedLinearGRPOLoss(_Checked):
    """GRPO with Liger Kernel's arguments: ``forward(_input, lin_weight, selected_token_ids,
    attention_mask, advantages, bias=None, ref_per_token_logps=None,
    old_per_token_logps=None, ref_input=None, ref_weight=None, ref_bias=None,
    vllm_is_ratio=None, num_items_in_batch=None)`` with ``_input [B, T, H]``; returns ``(loss,
    (kl_mean, clip_ratio))`` (``kl_mean`` only when ``beta != 0``, as Liger's). Every loss
    type (grpo, bnpo, dr_grpo, dapo, cispo, sapo, luspo, vespo) and both importance-sampling
    levels. Extra keyword arguments: ``budget``, ``device``, ``accum_dtype``."""

    def __init__(self, beta: float = 0.04, compiled: bool = True, use_ref_model: bool = True,
                 chunk_size: int = 1, epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                 loss_type: str = "dapo", max_completion_length: Optional[int] = None,
                 importance_sampling_level: str = "token", sapo_temperature_pos: float = 1.0,
                 sapo_temperature_neg: float = 1.05, temperature: float = 1.0,
                 delta: Optional[float] = None, use_bias_correction_kl: bool = False,
                 vespo_k_pos: float = 2.0, vespo_lambda_pos: float = 3.0,
                 vespo_k_neg: float = 3.0, vespo_lambda_neg: float = 2.0, *,
                 budget: str = "256MiB", device: str = "cpu", accum_dtype: Any = None):
        super().__init__()
        self.hyper: Dict[str, Any] = dict(
            beta=beta, epsilon_low=epsilon_low, epsilon_high=epsilon_high,
            temperature=temperature, delta=0.0 if delta is None else delta,
            max_completion_length=0.0 if max_completion_length is None
            else float(max_completion_length),
            sapo_temperature_pos=sapo_temperature_pos,
            sapo_temperature_neg=sapo_temperature_neg, vespo_k_pos=vespo_k_pos,
            vespo_lambda_pos=vespo_lambda_pos, vespo_k_neg=vespo_k_neg,
            vespo_lambda_neg=vespo_lambda_neg, loss_type=_camel(loss_type),
            importance_sampling_level=_camel(importance_sampling_level),
            bias_correction_kl=use_bias_correction_kl)
        self.loss = Loss("grpo", **self.hyper)
        self.beta = beta
        self.use_ref_model = use_ref_model
        self.options = {"budget": budget, "device": device, "w_accum": _w_accum(accum_dtype)}

    def forward(self, _input, lin_weight, selected_token_ids, attention_mask, advantages,
                bias=None, ref_per_token_logps=None, old_per_token_logps=None, ref_input=None,
                ref_weight=None, ref_bias=None, vllm_is_ratio=None, num_items_in_batch=None):
        inputs = {"policy.x": _input, "policy.w": lin_weight, "target": selected_token_ids,
                  "mask": attention_mask.to(torch.bool), "advantages": advantages}
        if bias is not None:
            inputs["policy.b"] = bias
        if self.use_ref_model and self.beta != 0.0:
            if ref_input is not None and ref_weight is not None:
                _reference(inputs, ref_input, ref_weight, ref_bias)
            elif ref_per_token_logps is not None:
                inputs["ref_logps"] = ref_per_token_logps
            else:
                raise LigerError("use_ref_model=True with beta != 0 needs ref_input and "
                                 "ref_weight, or ref_per_token_logps")
        if old_per_token_logps is not None:
            inputs["old_logps"] = old_per_token_logps
        if vllm_is_ratio is not None:
            inputs["is_ratio"] = vllm_is_ratio.expand_as(attention_mask).contiguous()
        loss_fn = self.loss
        if num_items_in_batch is not None:
            loss_fn = Loss("grpo", **self.hyper, num_items_in_batch=float(num_items_in_batch))
        loss, m = self._run(loss_fn, inputs, self.options)
        metrics = ((m["kl_mean"],) if self.beta != 0.0 else ()) + (m["clip_ratio"],)
        return loss, metrics
