"""liger-rs losses in a PyTorch training loop: :func:`apply` runs any :class:`liger_rs.Loss` as
an autograd function, and the drop-in modules take Liger Kernel's constructor arguments and
call signatures (switching is an import change) for fused linear cross-entropy, DPO and JSD.

As Liger Kernel does, the forward computes the loss, the metrics and the gradients at once;
the backward scales the stored gradients by the incoming gradient (so gradient accumulation
and loss scaling work). Only the gradients of inputs that require grad are computed: a frozen
weight (``requires_grad=False``, LoRA) costs no ``dW`` GEMM.

This build runs on CPU tensors (the CPU executor), or with ``device="cuda"`` on CPU tensors
copied to the GPU by the runtime. CUDA tensors in place on the caller's stream are not wired
yet: a CUDA tensor is refused with a message, never copied silently.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from . import LigerError, Loss

__all__ = [
    "apply",
    "LigerFusedLinearCrossEntropyLoss",
    "LigerFusedLinearDPOLoss",
    "LigerFusedLinearJSDLoss",
]


def _to_torch(a: np.ndarray, like: Optional[torch.Tensor] = None) -> torch.Tensor:
    t = torch.from_numpy(np.array(a, copy=True))
    return t if like is None else t.to(like.dtype)


class _LossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, loss, names, options, metrics_out, *tensors):  # type: ignore[override]
        wanted = set()
        for i, n in enumerate(names):
            part = n.rsplit(".", 1)[-1] if "." in n else ""
            if ctx.needs_input_grad[4 + i] and part in ("x", "w", "b"):
                wanted.add(part)
        opts = dict(options)
        opts["grads"] = ",".join(sorted(wanted)) if wanted else "none"
        r = loss(dict(zip(names, tensors)), **opts)
        for k, v in r.metrics.items():
            metrics_out[k] = _to_torch(v)
        ctx.grads = [
            _to_torch(r.grads[n], t) if ctx.needs_input_grad[4 + i] and n in r.grads else None
            for i, (n, t) in enumerate(zip(names, tensors))
        ]
        return torch.tensor(r.loss, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad_loss):  # type: ignore[override]
        scaled = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.grads]
        return (None, None, None, None, *scaled)


def apply(loss: Loss, inputs: Mapping[str, torch.Tensor],
          **options: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Runs ``loss`` on torch tensors named as :class:`liger_rs.Loss` names them; returns the
    loss (a 0-d float32 tensor that backpropagates into every input that requires grad) and
    the metrics (detached tensors). ``options`` as for :meth:`liger_rs.Loss.__call__` (except
    ``grads``, which follows ``requires_grad``)."""
    if "grads" in options:
        raise LigerError("`grads` follows requires_grad here: set requires_grad_(False) on the "
                         "inputs whose gradient is not wanted")
    base = {"device": "cpu", "budget": "256MiB", "schedule": "auto", "ignore_index": -100,
            "grad_dtype": "f32", "all_rows": False, "vocab_prefix": False, "chunk_rows": None,
            "stage_rows": None}
    base.update(options)
    names = list(inputs)
    metrics: Dict[str, torch.Tensor] = {}
    out = _LossFunction.apply(loss, names, base, metrics, *[inputs[n] for n in names])
    return out, metrics


def _camel(s: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in s.split("_"))


class LigerFusedLinearCrossEntropyLoss(torch.nn.Module):
    """Fused linear cross-entropy with Liger Kernel's arguments: ``forward(lin_weight, _input,
    target, bias=None)`` with ``_input [N, H]`` and ``target [N]``; returns the loss, or
    ``(loss, z_loss)`` with ``return_z_loss``. ``reduction="none"`` needs each token's upstream
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
                         ("return_token_accuracy", return_token_accuracy),
                         ("return_predicted_tokens", return_predicted_tokens)]:
            if on:
                raise LigerError(f"{flag}=True is not supported by liger_rs' drop-in FLCE "
                                 "(the `accuracy` metric of liger_rs.Loss('flce') gives the "
                                 "token accuracy)")
        hyper: Dict[str, Any] = {"label_smoothing": label_smoothing,
                                 "z_loss_scale": lse_square_scale,
                                 "reduction": _camel(reduction)}
        if softcap is not None:
            hyper.update(softcap=True, softcap_value=softcap)
        self.loss = Loss("flce", **hyper)
        self.ce_weight = ce_weight
        self.return_z_loss = return_z_loss
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device}

    def forward(self, lin_weight, _input, target, bias=None):
        n, h = _input.shape
        inputs = {"logits.x": _input.reshape(1, n, h), "logits.w": lin_weight,
                  "target": target.reshape(1, n)}
        if bias is not None:
            inputs["logits.b"] = bias
        if self.ce_weight is not None:
            inputs["class_weight"] = self.ce_weight
        loss, metrics = apply(self.loss, inputs, **self.options)
        if self.return_z_loss:
            return loss, metrics.get("z_loss", torch.zeros((), dtype=torch.float32))
        return loss


class LigerFusedLinearDPOLoss(torch.nn.Module):
    """DPO with Liger Kernel's arguments: ``forward(lin_weight, _input, target, bias=None,
    ref_input=None, ref_weight=None, ref_bias=None)`` with ``_input [2P, T, H]`` (chosen rows
    first); returns ``(loss, (chosen_logps, rejected_logps, chosen_logits_mean,
    rejected_logits_mean, nll_loss, chosen_rewards, rejected_rewards))``. Every TRL loss type
    (``loss_type``: sigmoid, hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard,
    apo_zero, apo_down, discopop); unlike Liger Kernel, ``ipo`` is implemented and
    ``label_smoothing`` is applied for ``sigmoid`` as TRL does."""

    def __init__(self, ignore_index: int = -100, beta: float = 0.1,
                 compute_nll_loss: bool = False, compiled: bool = True,
                 use_ref_model: bool = True, average_log_prob: bool = False,
                 chunk_size: int = 1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 discopop_tau: float = 0.05, alpha: float = 1.0, *, budget: str = "256MiB",
                 device: str = "cpu"):
        super().__init__()
        self.loss = Loss("dpo", beta=beta, alpha=alpha, label_smoothing=label_smoothing,
                         discopop_tau=discopop_tau, average=average_log_prob,
                         nll=compute_nll_loss, logits_metrics=True,
                         loss_type=_camel(loss_type))
        self.use_ref_model = use_ref_model
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device}

    def forward(self, lin_weight, _input, target, bias=None, ref_input=None, ref_weight=None,
                ref_bias=None):
        inputs = {"policy.x": _input, "policy.w": lin_weight, "target": target}
        if bias is not None:
            inputs["policy.b"] = bias
        if self.use_ref_model:
            if ref_input is None or ref_weight is None:
                raise LigerError("use_ref_model=True needs ref_input and ref_weight")
            inputs.update({"reference.x": ref_input, "reference.w": ref_weight})
            if ref_bias is not None:
                inputs["reference.b"] = ref_bias
        loss, m = apply(self.loss, inputs, **self.options)
        zero = torch.zeros((), dtype=torch.float32)
        aux = (m["chosen_logps"], m["rejected_logps"], m.get("chosen_logits_mean", zero),
               m.get("rejected_logits_mean", zero), m.get("nll_loss", zero),
               m["chosen_rewards"], m["rejected_rewards"])
        return loss, aux


class LigerFusedLinearJSDLoss(torch.nn.Module):
    """Generalised JSD distillation with Liger Kernel's arguments: ``forward(student_input,
    student_weight, teacher_input, teacher_weight, true_labels, student_bias=None,
    teacher_bias=None)`` with inputs ``[N, H]``; returns the loss, or ``(loss, soft, hard)``
    with ``return_soft_hard_loss``. A teacher with more vocabulary rows than the student is
    refused unless ``vocab_prefix=True`` (its first V rows are read; Liger Kernel pads the
    student with zeros instead)."""

    def __init__(self, weight_hard_loss: float = 0.5, weight_soft_loss: float = 0.5,
                 beta: float = 0.5, ignore_index: int = -100, temperature: float = 1.0,
                 compiled: bool = True, chunk_size: int = 1024,
                 return_soft_hard_loss: bool = False, *, budget: str = "256MiB",
                 device: str = "cpu", vocab_prefix: bool = False):
        super().__init__()
        self.loss = Loss("jsd", beta=beta, temperature=temperature,
                         weight_hard=weight_hard_loss, weight_soft=weight_soft_loss)
        self.return_soft_hard_loss = return_soft_hard_loss
        self.options = {"ignore_index": ignore_index, "budget": budget, "device": device,
                        "vocab_prefix": vocab_prefix}

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
        loss, m = apply(self.loss, inputs, **self.options)
        if self.return_soft_hard_loss:
            return loss, m["soft_loss"], m["hard_loss"]
        return loss
