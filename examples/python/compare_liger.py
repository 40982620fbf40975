"""liger_rs' drop-in modules, Liger Kernel's modules and eager PyTorch side by side on one GPU.

Every implementation gets the same bf16 inputs (random, never zeros; prompts masked) and is
compared with a float64 evaluation of the same formula written here: the relative error of
the loss, of the metrics the modules return, and of every gradient (norm-wise,
``|a - ref| / |ref|``), then the fwd+bwd time (median of CUDA-event timings after warm-up
runs) and the peak memory above the inputs (PyTorch's allocator, plus the CUDA memory pool
that liger_rs' runtime allocates its working memory from; Liger Kernel and eager PyTorch use
only PyTorch's allocator).

    python examples/python/compare_liger.py                 # FLCE, DPO, JSD at S1
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
        else:
            raise SystemExit(f"unknown case {c}: flce, dpo, jsd")
        torch.cuda.empty_cache()
    print(f"done in {time.time() - t0:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": [s, t, h, v],
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
