"""Liger Kernel on the same GPU and shapes as `liger bench`: the peer comparison.

Cases (bf16 inputs, H = 4096, V = 128256, targets with the first T/8 tokens of every sequence
ignored, x ~ std 1, W ~ std 0.02, as `liger bench` makes them): DPO with a reference head,
FLCE and JSD with a teacher head at 8 x 1024 tokens; DPO at 1 pair x 4096, 8192, 16384 tokens.

For each: median forward+backward time over `--reps` runs (CUDA events around the loss call
and `backward()`), the peak extra memory the PyTorch allocator saw (its high-water mark minus
what was allocated before the call: inputs and weights; reported with and without the
gradient tensors the call returns), and the same GEMMs through `torch.matmul` in bf16 (the
cuBLAS floor) in the same process. Prints a table and writes JSON (`--json`).

Run on the GPU machine (PyTorch and Triton are there; the liger-kernel wheel is carried):
    python3 bench/peer_liger.py --reps 5 --json $OUT/peer.json
"""

import argparse
import json
import statistics
import sys
import time

import torch

H, V = 4096, 128256
DEV = "cuda"


def uniform(shape, sd, seed):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = (torch.rand(shape, generator=g, device=DEV) - 0.5) * (sd * 3.46)
    return x.to(torch.bfloat16)


def targets(s, t):
    i = torch.arange(s * t, device=DEV)
    tg = (i * 7919) % V
    tg = torch.where((i % t) < t // 8, torch.full_like(tg, -100), tg)
    return tg.view(s, t)


def timed(fn, reps, grads):
    """Median ms, max peak extra bytes, and the bytes of the returned gradients."""
    for g in grads():
        g.grad = None
    fn()  # warm-up (compilation, autotuning)
    torch.cuda.synchronize()
    times, peaks, grad_bytes = [], [], 0
    for _ in range(reps):
        for g in grads():
            g.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
        peaks.append(torch.cuda.max_memory_allocated() - base)
        grad_bytes = sum(g.grad.numel() * g.grad.element_size() for g in grads() if g.grad is not None)
    return statistics.median(times), max(peaks), grad_bytes


def floor_ms(rows, heads, reps):
    """The lm-head GEMMs in bf16 through torch.matmul: per trained head logits, dx, dW; per
    frozen head logits."""
    x = uniform((rows, H), 1.0, 11)
    w = uniform((V, H), 0.02, 12)
    def once():
        for trained in heads:
            z = x @ w.t()
            if trained:
                _dx = z @ w
                _dw = z.t() @ x
    once()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        once()
        b.record()
        torch.cuda.synchronize()
        ts.append(a.elapsed_time(b))
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--json", default=None)
    ap.add_argument("--only", default="")
    args = ap.parse_args()

    import liger_kernel
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss, LigerFusedLinearJSDLoss
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    version = getattr(liger_kernel, "__version__", "?")
    try:
        from importlib.metadata import version as pkg_version
        version = pkg_version("liger-kernel")
    except Exception:
        pass
    print(f"liger-kernel {version}, torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)

    cases = [
        ("dpo S1 8x1024 ref head", "dpo", 8, 1024),
        ("flce S1 8x1024", "flce", 8, 1024),
        ("jsd S1 8x1024 teacher head", "jsd", 8, 1024),
        ("dpo 1 pair x 4096", "dpo", 2, 4096),
        ("dpo 1 pair x 8192", "dpo", 2, 8192),
        ("dpo 1 pair x 16384", "dpo", 2, 16384),
    ]
    w = uniform((V, H), 0.02, 1).requires_grad_(True)
    wr = uniform((V, H), 0.02, 2)
    rows = []
    for name, kind, s, t in cases:
        if args.only not in name:
            continue
        x = uniform((s, t, H), 1.0, 3).requires_grad_(True)
        xr = uniform((s, t, H), 1.0, 4)
        tg = targets(s, t)
        compiled = True
        row = {"case": name}
        for attempt in (True, False):
            compiled = attempt
            try:
                if kind == "flce":
                    f = LigerFusedLinearCrossEntropyLoss()
                    x2 = x.detach().view(-1, H).requires_grad_(True)
                    def fn():
                        f(w, x2, tg.view(-1)).backward()
                    grads = lambda: [x2, w]
                    heads = [True]
                elif kind == "jsd":
                    f = LigerFusedLinearJSDLoss(compiled=compiled)
                    x2 = x.detach().view(-1, H).requires_grad_(True)
                    def fn():
                        f(x2, w, xr.view(-1, H), wr, tg.view(-1)).backward()
                    grads = lambda: [x2, w]
                    heads = [True, False]
                else:
                    f = LigerFusedLinearDPOLoss(compiled=compiled, use_ref_model=True)
                    def fn():
                        out = f(w, x, tg, None, xr, wr)
                        (out[0] if isinstance(out, tuple) else out).backward()
                    grads = lambda: [x, w]
                    heads = [True, False]
                ms, peak, gbytes = timed(fn, args.reps, grads)
                break
            except Exception as e:  # torch.compile unavailable: retry eager, say so
                if not attempt:
                    raise
                print(f"{name}: compiled=True failed ({type(e).__name__}: {e}); retrying eager", flush=True)
                torch.cuda.empty_cache()
        fl = floor_ms(s * t, heads, args.reps)
        row.update({
            "liger_ms": ms, "torch_floor_ms": fl, "ratio": ms / fl,
            "peak_extra_bytes": peak, "grad_bytes": gbytes,
            "peak_extra_bytes_without_grads": peak - gbytes,
            "grad_w_dtype": str(w.grad.dtype) if w.grad is not None else None,
            "compiled": compiled,
        })
        print(
            f"{name:<28} {ms:9.2f} ms  floor {fl:8.2f} ms  ratio {ms / fl:5.2f}  "
            f"peak {peak / 2**30:7.3f} GiB (without grads {(peak - gbytes) / 2**30:7.3f})  "
            f"grad W {row['grad_w_dtype']}",
            flush=True,
        )
        rows.append(row)
        del x, xr, tg
        w.grad = None
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"liger_kernel": version, "torch": torch.__version__,
                       "device": torch.cuda.get_device_name(), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    sys.exit(main())
