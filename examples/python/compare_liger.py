"""liger_rs' drop-in modules, Liger Kernel's modules and eager PyTorch side by side on one GPU.

Every implementation gets the same bf16 inputs (random, never zeros; prompts masked) and is
compared with a float64 evaluation of the same formula written here: the relative error of
the loss, of the metrics the modules return, and of every gradient (norm-wise,
``|a - ref| / |ref|``), then the fwd+bwd time (median of CUDA-event timings after warm-up
runs) and the peak memory above the inputs (PyTorch's allocator, plus the CUDA memory pool
that liger_rs' runtime allocates its working memory from; Liger Kernel and eager PyTorch use
only PyTorch's allocator).

    python examples/python/compare_liger.py                 # FLCE, DPO, JSD at S1
    python examples/python/compare_liger.py --cases cpo,simpo,orpo,kto,grpo
    python examples/python/compare_liger.py --small         # a quick run at small sizes
    python examples/python/compare_liger.py --json out.json

S1: 8 sequences x 1024 tokens, H = 4096, V = 128256 (Llama-3's vocabulary), bf16. Liger
Kernel is used when it imports (``pip install liger-kernel``); without it its rows are left out.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import liger_rs
from liger_rs import torch as lt

try:
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss as LKDPO
    from liger_kernel.chunked_loss import LigerFusedLinearJSDLoss as LKJSD
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss as LKFLCE
except Exception as e:  # pragma: no cover - depends on the machine
    print(f"Liger Kernel not available ({e}); its rows are left out", file=sys.stderr)
    LKDPO = LKJSD = LKFLCE = None
try:
    from liger_kernel.chunked_loss import LigerFusedLinearCPOLoss as LKCPO
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss as LKGRPO
    from liger_kernel.chunked_loss import LigerFusedLinearKTOLoss as LKKTO
    from liger_kernel.chunked_loss import LigerFusedLinearORPOLoss as LKORPO
    from liger_kernel.chunked_loss import LigerFusedLinearSimPOLoss as LKSimPO
except Exception:  # pragma: no cover - depends on the machine
    LKCPO = LKGRPO = LKKTO = LKORPO = LKSimPO = None


# --- the CUDA memory pool liger_rs allocates from (stream-ordered allocations) -------------

class Pool:
    """The device's default CUDA memory pool: liger_rs' runtime allocates its working memory
    there (cuMemAllocAsync), PyTorch's caching allocator does not."""

    def __init__(self):
        try:
            from cuda.bindings import driver as cu
            cu.cuInit(0)
            _, dev = cu.cuDeviceGet(torch.cuda.current_device())
            _, self.pool = cu.cuDeviceGetDefaultMemPool(dev)
            self.cu = cu
        except Exception as e:  # pragma: no cover
            print(f"cuda-bindings not available ({e}): the pool's peak is not counted",
                  file=sys.stderr)
            self.cu = None

    def reset(self):
        if self.cu:
            attr = self.cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_USED_MEM_HIGH
            self.cu.cuMemPoolSetAttribute(self.pool, attr, self.cu.cuuint64_t(0))

    def peak(self) -> int:
        if not self.cu:
            return 0
        attr = self.cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_USED_MEM_HIGH
        _, v = self.cu.cuMemPoolGetAttribute(self.pool, attr)
        return int(v)


POOL = None
F32_BUDGETS = []  # liger_rs rows with grad W accumulated in f32 (--f32-budgets)
REF_ROWS = 1024  # rows per block of the float64 references


def measure(step, reps: int, warm: int = 2):
    """Runs ``step`` (fwd+bwd, returns the outputs) ``warm`` times, then ``reps`` times timed
    with CUDA events; returns (outputs of the last run, median ms, peak bytes above the memory
    in use before the timed runs)."""
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    POOL.reset()
    times = []
    out = None
    for _ in range(reps):
        out = None
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        out = step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    peak = torch.cuda.max_memory_allocated() - base + POOL.peak()
    return out, statistics.median(times), peak


def rel(a, ref) -> float:
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    n = ref.norm().item()
    return (a - ref).norm().item() / (n if n > 0 else 1.0)


def leaf(t, grad=True):
    return t.detach().clone().requires_grad_(grad)


def run_impls(case, impls, ref, reps):
    """Each implementation: outputs (loss, metrics, grads) against ``ref``, time, memory."""
    rows = []
    for name, make in impls:
        step = make()
        if step is None:
            continue
        try:
            (loss, metrics, grads), ms, peak = measure(step, reps)
        except Exception as e:  # a peer that fails on a case is reported, not hidden
            rows.append({"case": case, "impl": name, "error": str(e)[:300]})
            print(f"{case:5} {name:18} failed: {str(e)[:200]}")
            continue
        row = {"case": case, "impl": name, "ms": ms, "peak_gib": peak / 2**30,
               "loss": float(loss), "err_loss": abs(float(loss) - ref["loss"]) /
               max(abs(ref["loss"]), 1e-30)}
        for k, v in metrics.items():
            if k in ref["metrics"]:
                row[f"err_{k}"] = rel(v, ref["metrics"][k])
        for k, v in grads.items():
            row[f"err_d{k}"] = rel(v, ref["grads"][k])
        rows.append(row)
        errs = " ".join(f"{k[4:]}={v:.1e}" for k, v in row.items() if k.startswith("err_"))
        print(f"{case:5} {name:18} {ms:8.2f} ms {peak / 2**30:7.3f} GiB  {errs}", flush=True)
    return rows


# --- FLCE ---------------------------------------------------------------------------------

def case_flce(n, h, v, reps, budgets):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = (torch.randn(n, h, device="cuda", generator=g)).bfloat16()
    w = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).bfloat16()
    t = torch.randint(0, v, (n,), device="cuda", generator=g)
    t[torch.rand(n, device="cuda", generator=g) < 0.1] = -100

    # float64, a block of rows at a time (the loss is a sum over rows, divided by the
    # batch's valid-token count): the gradients accumulate exactly.
    xd, wd = leaf(x.double()), leaf(w.double())
    nv = (t != -100).sum().clamp(min=1)
    total = 0.0
    for r in range(0, n, REF_ROWS):
        part = F.cross_entropy(xd[r:r + REF_ROWS] @ wd.T, t[r:r + REF_ROWS],
                               ignore_index=-100, reduction="sum") / nv
        part.backward()
        total += part.item()
    ref = {"loss": total, "metrics": {}, "grads": {"x": xd.grad, "w": wd.grad}}
    del xd, wd

    def impl(mod_fn):
        def make():
            mod = mod_fn()
            if mod is None:
                return None
            xi, wi = leaf(x), leaf(w)

            def step():
                xi.grad = wi.grad = None
                out = mod(wi, xi, t)
                out.backward()
                return out.detach(), {}, {"x": xi.grad, "w": wi.grad}
            return step
        return make

    def eager():
        xi, wi = leaf(x), leaf(w)

        def step():
            xi.grad = wi.grad = None
            out = F.cross_entropy((xi @ wi.T).float(), t, ignore_index=-100)
            out.backward()
            return out.detach(), {}, {"x": xi.grad, "w": wi.grad}
        return step

    impls = [("eager", eager)]
    impls += [(f"liger_rs {b}", impl(lambda b=b: lt.LigerFusedLinearCrossEntropyLoss(budget=b)))
              for b in budgets]
    impls += [(f"liger_rs {b} f32", impl(lambda b=b: lt.LigerFusedLinearCrossEntropyLoss(
        budget=b, accum_dtype=torch.float32))) for b in F32_BUDGETS]
    impls.append(("Liger Kernel", impl(lambda: LKFLCE() if LKFLCE else None)))
    return run_impls("flce", impls, ref, reps)


# --- DPO with a reference head --------------------------------------------------------------

def case_dpo(pairs, tlen, h, v, reps, budgets, beta=0.1):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(2 * pairs, tlen, h, device="cuda", generator=g).bfloat16()
    xr = torch.randn(2 * pairs, tlen, h, device="cuda", generator=g).bfloat16()
    w = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).bfloat16()
    wr = (w.float() + 0.1 * h ** -0.5 * torch.randn(v, h, device="cuda", generator=g)).bfloat16()
    t = torch.randint(0, v, (2 * pairs, tlen), device="cuda", generator=g)
    t[:, : tlen // 8] = -100  # the prompt
    valid = t != -100
    idx = t.clamp(min=0)

    # float64, one sequence at a time: the log-probs first (no graph), then each pair's
    # loss term backpropagated through its two sequences' log-probs.
    xd, wd = leaf(x.double()), leaf(w.double())

    def seq_logp(x_, w_, i):
        lp = torch.log_softmax(x_[i] @ w_.T, -1)
        return (lp.gather(-1, idx[i][:, None])[:, 0] * valid[i]).sum()

    with torch.no_grad():
        refl = torch.stack([seq_logp(xr.double(), wr.double(), i) for i in range(2 * pairs)])
        pol = torch.stack([seq_logp(xd, wd, i) for i in range(2 * pairs)])
    cr, rr = beta * (pol[:pairs] - refl[:pairs]), beta * (pol[pairs:] - refl[pairs:])
    loss = -F.logsigmoid(cr - rr).mean()
    # d loss / d margin_i = -sigmoid(-margin_i) / P; margin_i = beta (pol_i - pol_{i+P}) - ...
    coef = -torch.sigmoid(-(cr - rr)) / pairs * beta
    for i in range(pairs):
        (coef[i] * (seq_logp(xd, wd, i) - seq_logp(xd, wd, i + pairs))).backward()
    ref = {"loss": loss.item(),
           "metrics": {"chosen_logps": pol[:pairs], "rejected_logps": pol[pairs:],
                       "chosen_rewards": cr, "rejected_rewards": rr},
           "grads": {"x": xd.grad, "w": wd.grad}}
    del xd, wd

    def impl(mod_fn):
        def make():
            mod = mod_fn()
            if mod is None:
                return None
            xi, wi = leaf(x), leaf(w)

            def step():
                xi.grad = wi.grad = None
                out, aux = mod(wi, xi, t, ref_input=xr, ref_weight=wr)
                out.backward()
                m = {"chosen_logps": aux[0], "rejected_logps": aux[1],
                     "chosen_rewards": aux[5], "rejected_rewards": aux[6]}
                return out.detach(), m, {"x": xi.grad, "w": wi.grad}
            return step
        return make

    def eager():
        xi, wi = leaf(x), leaf(w)

        def lp(x_, w_):
            z = torch.log_softmax((x_ @ w_.T).float(), -1)
            return (z.gather(-1, idx[..., None])[..., 0] * valid).sum(1)

        def step():
            xi.grad = wi.grad = None
            with torch.no_grad():
                r = lp(xr, wr)
            p = lp(xi, wi)
            c_, r_ = beta * (p[:pairs] - r[:pairs]), beta * (p[pairs:] - r[pairs:])
            out = -F.logsigmoid(c_ - r_).mean()
            out.backward()
            m = {"chosen_logps": p[:pairs].detach(), "rejected_logps": p[pairs:].detach(),
                 "chosen_rewards": c_.detach(), "rejected_rewards": r_.detach()}
            return out.detach(), m, {"x": xi.grad, "w": wi.grad}
        return step

    impls = [("eager", eager)]
    impls += [(f"liger_rs {b}", impl(lambda b=b: lt.LigerFusedLinearDPOLoss(beta=beta, budget=b)))
              for b in budgets]
    impls += [(f"liger_rs {b} f32", impl(lambda b=b: lt.LigerFusedLinearDPOLoss(
        beta=beta, budget=b, accum_dtype=torch.float32))) for b in F32_BUDGETS]
    impls.append(("Liger Kernel", impl(lambda: LKDPO(beta=beta) if LKDPO else None)))
    return run_impls("dpo", impls, ref, reps)


# --- JSD with a teacher head ----------------------------------------------------------------

def case_jsd(n, h, v, reps, budgets, beta=0.5, temp=1.0):
    g = torch.Generator(device="cuda").manual_seed(2)
    xs = torch.randn(n, h, device="cuda", generator=g).bfloat16()
    xt = torch.randn(n, h, device="cuda", generator=g).bfloat16()
    ws = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).bfloat16()
    wt = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).bfloat16()
    y = torch.randint(0, v, (n,), device="cuda", generator=g)
    y[torch.rand(n, device="cuda", generator=g) < 0.1] = -100
    valid = y != -100
    nv = valid.sum().clamp(min=1)

    def formula_rows(s, t, yy, vv):
        """The loss terms of a block of rows (sums over rows / the batch's valid count)."""
        hard = F.cross_entropy(s, yy, ignore_index=-100, reduction="sum") / nv
        ls, lt_ = torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)
        lm = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt_ + math.log(beta)]), 0)
        d = beta * (lt_.exp() * (lt_ - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
        return 0.5 * hard + 0.5 * (d * vv).sum() / nv

    xd, wd = leaf(xs.double()), leaf(ws.double())
    total = 0.0
    for r in range(0, n, REF_ROWS):
        sl = slice(r, r + REF_ROWS)
        with torch.no_grad():
            td = xt[sl].double() @ wt.double().T
        part = formula_rows(xd[sl] @ wd.T, td, y[sl], valid[sl])
        part.backward()
        total += part.item()
    ref = {"loss": total, "metrics": {}, "grads": {"x": xd.grad, "w": wd.grad}}
    del xd, wd, td

    def impl(mod_fn):
        def make():
            mod = mod_fn()
            if mod is None:
                return None
            xi, wi = leaf(xs), leaf(ws)

            def step():
                xi.grad = wi.grad = None
                out = mod(xi, wi, xt, wt, y)
                out.backward()
                return out.detach(), {}, {"x": xi.grad, "w": wi.grad}
            return step
        return make

    def eager():
        xi, wi = leaf(xs), leaf(ws)

        def step():
            xi.grad = wi.grad = None
            with torch.no_grad():
                tz = (xt @ wt.T).float()
            out = formula_rows((xi @ wi.T).float(), tz, y, valid)
            out.backward()
            return out.detach(), {}, {"x": xi.grad, "w": wi.grad}
        return step

    impls = [("eager", eager)]
    impls += [(f"liger_rs {b}", impl(lambda b=b: lt.LigerFusedLinearJSDLoss(
        beta=beta, temperature=temp, budget=b))) for b in budgets]
    impls += [(f"liger_rs {b} f32", impl(lambda b=b: lt.LigerFusedLinearJSDLoss(
        beta=beta, temperature=temp, budget=b, accum_dtype=torch.float32)))
        for b in F32_BUDGETS]
    impls.append(("Liger Kernel", impl(lambda: LKJSD(beta=beta, temperature=temp)
                                        if LKJSD else None)))
    return run_impls("jsd", impls, ref, reps)


# --- the losses over per-token log-probabilities: CPO, SimPO, ORPO, KTO, GRPO --------------
#
# Each is a formula of the batch's token log-probabilities ``lp [B, T]`` (plus constants such
# as a reference head's log-probs). The float64 reference computes every sequence's token
# log-probs without a graph, differentiates the formula with respect to them, then
# backpropagates each sequence's log-probs with that gradient: exact, one sequence's logits
# in memory at a time. Eager PyTorch runs the same formula on float32 log-softmaxes of the
# bf16 GEMM (the whole batch's logits at once).

def seq_token_logps(x_, w_, idx, i):
    return torch.log_softmax(x_[i] @ w_.T, -1).gather(-1, idx[i][:, None])[:, 0]


def reference_from_tokens(x, w, idx, formula, consts):
    xd, wd = leaf(x.double()), leaf(w.double())
    with torch.no_grad():
        lp = torch.stack([seq_token_logps(xd, wd, idx, i) for i in range(x.shape[0])])
    lp.requires_grad_(True)
    loss, metrics = formula(lp, consts)
    loss.backward()
    g = lp.grad
    for i in range(x.shape[0]):
        if g[i].abs().sum() > 0:
            (seq_token_logps(xd, wd, idx, i) * g[i]).sum().backward()
    return {"loss": loss.item(), "metrics": {k: m.detach() for k, m in metrics.items()},
            "grads": {"x": xd.grad, "w": wd.grad}}


def eager_tokens(x, w, idx, formula, consts):
    def make():
        xi, wi = leaf(x), leaf(w)

        def step():
            xi.grad = wi.grad = None
            lp = torch.log_softmax((xi @ wi.T).float(), -1).gather(-1, idx[..., None])[..., 0]
            out, m = formula(lp, consts)
            out.backward()
            return out.detach(), {k: t.detach() for k, t in m.items()}, {"x": xi.grad,
                                                                        "w": wi.grad}
        return step
    return make


def module_impl(x, w, mod_fn, call):
    """A module (ours or Liger Kernel's) called by ``call(mod, x, w) -> (loss, metrics)``."""
    def make():
        mod = mod_fn()
        if mod is None:
            return None
        xi, wi = leaf(x), leaf(w)

        def step():
            xi.grad = wi.grad = None
            out, m = call(mod, xi, wi)
            out.backward()
            return out.detach(), m, {"x": xi.grad, "w": wi.grad}
        return step
    return make


def family_impls(x, w, idx, formula, ours, liger, call, budgets):
    """eager (f32 formula), ours at each budget (grad W in bf16, then f32), Liger Kernel."""
    consts32 = {k: c.float() for k, c in formula.consts.items()}
    impls = [("eager", eager_tokens(x, w, idx, formula, consts32))]
    impls += [(f"liger_rs {b}", module_impl(x, w, lambda b=b: ours(budget=b), call))
              for b in budgets]
    impls += [(f"liger_rs {b} f32", module_impl(
        x, w, lambda b=b: ours(budget=b, accum_dtype=torch.float32), call))
        for b in F32_BUDGETS]
    impls.append(("Liger Kernel", module_impl(x, w, liger, call)))
    return impls


class Formula:
    """A loss formula ``fn(lp, consts) -> (loss, metrics)`` and its float64 constants."""

    def __init__(self, fn, consts=None):
        self.fn, self.consts = fn, consts or {}

    def __call__(self, lp, consts):
        return self.fn(lp, consts)


def preference_data(seed, seqs, tlen, h, v):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(seqs, tlen, h, device="cuda", generator=g).bfloat16()
    w = (torch.randn(v, h, device="cuda", generator=g) * h ** -0.5).bfloat16()
    t = torch.randint(0, v, (seqs, tlen), device="cuda", generator=g)
    t[:, : tlen // 8] = -100  # the prompt
    return g, x, w, t


def case_paired(kind, pairs, tlen, h, v, reps, budgets, beta=0.1, gamma=0.5):
    """CPO (sums), SimPO and ORPO (length-averaged log-probs); each with its NLL term on the
    chosen sequences, as Liger Kernel's modules have it by default."""
    _, x, w, t = preference_data(3, 2 * pairs, tlen, h, v)
    valid, idx = t != -100, t.clamp(min=0)

    def seqs(lp, average):
        s = (lp * valid).sum(1) / (valid.sum(1) if average else 1)
        return s[:pairs], s[pairs:]

    def nll(lp):
        return -(lp * valid)[:pairs].sum() / valid[:pairs].sum()

    def cpo(lp, _):
        c, r = seqs(lp, False)
        loss = -F.logsigmoid(beta * (c - r)).mean() + nll(lp)
        return loss, {"chosen_logps": c, "rejected_logps": r}

    def simpo(lp, _):
        c, r = seqs(lp, True)
        loss = -F.logsigmoid(beta * (c - r) - gamma).mean() + nll(lp)
        return loss, {"chosen_logps": c, "rejected_logps": r}

    def orpo(lp, _):
        c, r = seqs(lp, True)
        o = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        loss = nll(lp) + beta * (-F.logsigmoid(o)).mean()
        return loss, {"chosen_logps": c, "rejected_logps": r, "log_odds_ratio":
                      F.logsigmoid(o).mean()}

    fn, ours, lk = {
        "cpo": (cpo, lambda **o: lt.LigerFusedLinearCPOLoss(beta=beta, **o),
                lambda: LKCPO(beta=beta) if LKCPO else None),
        "simpo": (simpo, lambda **o: lt.LigerFusedLinearSimPOLoss(beta=beta, gamma=gamma, **o),
                  lambda: LKSimPO(beta=beta, gamma=gamma) if LKSimPO else None),
        "orpo": (orpo, lambda **o: lt.LigerFusedLinearORPOLoss(beta=beta, **o),
                 lambda: LKORPO(beta=beta) if LKORPO else None),
    }[kind]
    formula = Formula(fn)
    ref = reference_from_tokens(x, w, idx, formula, {})

    def call(mod, xi, wi):
        out, aux = mod(wi, xi, t)
        m = {"chosen_logps": aux[0], "rejected_logps": aux[1]}
        if kind == "orpo":
            m["log_odds_ratio"] = aux[7]
        return out, m

    return run_impls(kind, family_impls(x, w, idx, formula, ours, lk, call, budgets), ref,
                     reps)


def case_kto(seqs, tlen, h, v, reps, budgets, beta=0.1):
    """KTO with a reference head, no KL estimate (Liger Kernel's ``kl=None``)."""
    g, x, w, t = preference_data(4, seqs, tlen, h, v)
    xr = torch.randn(seqs, tlen, h, device="cuda", generator=g).bfloat16()
    wr = (w.float() + 0.1 * h ** -0.5 * torch.randn(v, h, device="cuda", generator=g)).bfloat16()
    pref = torch.rand(seqs, device="cuda", generator=g) < 0.5
    pref[0], pref[-1] = True, False
    valid, idx = t != -100, t.clamp(min=0)

    def kto(lp, c):
        rho = (lp * valid).sum(1) - c["ref"]
        per = torch.where(pref, 1 - torch.sigmoid(beta * rho), 1 - torch.sigmoid(-beta * rho))
        pol = (lp * valid).sum(1)
        return per.mean(), {"chosen_logps_sum": pol[pref].sum(),
                            "rejected_logps_sum": pol[~pref].sum()}

    def ref_sums(dtype):
        with torch.no_grad():
            lp = torch.stack([seq_token_logps(xr.to(dtype), wr.to(dtype), idx, i)
                              for i in range(seqs)])
        return (lp * valid).sum(1)

    formula = Formula(kto, {"ref": ref_sums(torch.float64)})
    ref = reference_from_tokens(x, w, idx, formula, formula.consts)
    formula.consts = {"ref": ref_sums(torch.float32)}  # eager's reference head, as it runs

    def call(mod, xi, wi):
        out, aux = mod(xi, wi, t, preference_labels=pref, ref_input=xr, ref_weight=wr)
        return out, {"chosen_logps_sum": aux[0], "rejected_logps_sum": aux[1]}

    return run_impls("kto", family_impls(
        x, w, idx, formula, lambda **o: lt.LigerFusedLinearKTOLoss(
            beta=beta, use_ref_model=True, **o),
        lambda: LKKTO(beta=beta, use_ref_model=True) if LKKTO else None, call, budgets),
        ref, reps)


def case_grpo(seqs, tlen, h, v, reps, budgets, el=0.2, eh=0.28):
    """GRPO, DAPO's normalisation and clip range, no reference (beta = 0), with the old
    policy's token log-probs (the policy's own, perturbed: ratios near 1, some clipped) and
    completions of random lengths (the attention mask)."""
    g, x, w, _ = preference_data(5, seqs, tlen, h, v)
    tokens = torch.randint(0, v, (seqs, tlen), device="cuda", generator=g)
    lens = torch.randint(tlen // 4, tlen + 1, (seqs,), device="cuda", generator=g)
    mask = torch.arange(tlen, device="cuda")[None, :] < lens[:, None]
    adv = torch.randn(seqs, device="cuda", generator=g)
    with torch.no_grad():
        old = torch.log_softmax((x @ w.T).float(), -1).gather(-1, tokens[..., None])[..., 0]
    old = old + 0.1 * torch.randn(seqs, tlen, device="cuda", generator=g)

    def dapo(lp, _):
        rho = torch.exp(lp - old.to(lp.dtype))
        a = adv.to(lp.dtype)[:, None]
        per = -torch.min(rho * a, torch.clamp(rho, 1 - el, 1 + eh) * a)
        return (per * mask).sum() / mask.sum(), {}

    formula = Formula(dapo)
    ref = reference_from_tokens(x, w, tokens, formula, {})

    def call(mod, xi, wi):
        out, _ = mod(xi, wi, tokens, mask.long(), adv, old_per_token_logps=old)
        return out, {}

    kw = dict(beta=0.0, use_ref_model=False, epsilon_low=el, epsilon_high=eh, loss_type="dapo")
    return run_impls("grpo", family_impls(
        x, w, tokens, formula, lambda **o: lt.LigerFusedLinearGRPOLoss(**kw, **o),
        lambda: LKGRPO(**kw) if LKGRPO else None, call, budgets), ref, reps)


def main():
    global POOL
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="flce,dpo,jsd")
    ap.add_argument("--small", action="store_true", help="small sizes (a quick check)")
    ap.add_argument("--budgets", default="256MiB,2GiB", help="liger_rs working-memory budgets")
    ap.add_argument("--f32-budgets", default="1GiB",
                    help="budgets of the liger_rs rows with grad W accumulated in f32 "
                    "(accum_dtype=torch.float32); the others accumulate in bf16 as Liger does")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args()
    POOL = Pool()
    if a.small:
        s, t, h, v = 4, 123, 256, 32003
    else:
        s, t, h, v = 8, 1024, 4096, 128256
    budgets = a.budgets.split(",")
    F32_BUDGETS[:] = [b for b in a.f32_budgets.split(",") if b]
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; liger_rs "
          f"{liger_rs.__version__}; S={s} T={t} H={h} V={v} bf16; median of {a.reps}")
    print(f"{'case':5} {'impl':18} {'fwd+bwd':>11} {'peak':>11}  relative errors vs float64")
    rows = []
    t0 = time.time()
    for c in a.cases.split(","):
        if c == "flce":
            rows += case_flce(s * t, h, v, a.reps, budgets)
        elif c == "dpo":
            rows += case_dpo(s // 2, t, h, v, a.reps, budgets)
        elif c == "jsd":
            rows += case_jsd(s * t, h, v, a.reps, budgets)
        elif c in ("cpo", "simpo", "orpo"):
            rows += case_paired(c, s // 2, t, h, v, a.reps, budgets)
        elif c == "kto":
            rows += case_kto(s, t, h, v, a.reps, budgets)
        elif c == "grpo":
            rows += case_grpo(s, t, h, v, a.reps, budgets)
        else:
            raise SystemExit(f"unknown case {c}: flce, dpo, jsd, cpo, simpo, orpo, kto, grpo")
        torch.cuda.empty_cache()
    print(f"done in {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": [s, t, h, v],
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
