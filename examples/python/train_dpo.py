"""A real training loop: DPO on a small Llama-architecture model, the loss computed three ways.

A ``transformers`` ``LlamaForCausalLM`` built from a config (random initialisation, nothing
downloaded: 4 layers, hidden 1024, vocabulary 32000), a frozen copy of it as the reference
model, synthetic preference pairs (the chosen answer continues a pattern the prompt starts,
the rejected one is random tokens), AdamW, 50 optimizer steps. The same seed, data and model
for each of:

- ``eager``: the TRL-style loss in PyTorch (full ``[tokens, vocab]`` logits in float32),
- ``liger_rs``: ``liger_rs.torch.LigerFusedLinearDPOLoss`` on the last hidden states,
- ``liger_kernel``: Liger Kernel's ``LigerFusedLinearDPOLoss`` (when it imports).

Prints each run's loss curve, the largest difference from the eager curve, the median step
time and the peak memory (PyTorch's allocator plus the CUDA pool liger_rs allocates from).

    python examples/python/train_dpo.py [--steps 50] [--json out.json]
"""

import argparse
import copy
import json
import statistics
import sys

import torch
import torch.nn.functional as F

try:
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError:  # pragma: no cover
    raise SystemExit("this example needs `transformers` (pip install transformers)")

from liger_rs import torch as lt

try:
    from liger_kernel.chunked_loss import LigerFusedLinearDPOLoss as LKDPO
except Exception:  # pragma: no cover - depends on the machine
    LKDPO = None


def pool_peak(reset=False):
    """Peak bytes of the device's default CUDA memory pool (liger_rs' working memory)."""
    try:
        from cuda.bindings import driver as cu
        cu.cuInit(0)
        _, dev = cu.cuDeviceGet(torch.cuda.current_device())
        _, pool = cu.cuDeviceGetDefaultMemPool(dev)
        attr = cu.CUmemPool_attribute.CU_MEMPOOL_ATTR_USED_MEM_HIGH
        if reset:
            cu.cuMemPoolSetAttribute(pool, attr, cu.cuuint64_t(0))
            return 0
        _, v = cu.cuMemPoolGetAttribute(pool, attr)
        return int(v)
    except Exception:  # pragma: no cover
        return 0


def batches(steps, pairs, prompt, answer, vocab, seed):
    """Synthetic preference pairs: ``(input_ids [2P, T], labels [2P, T])``, chosen rows first;
    the prompt's labels are -100."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        start = torch.randint(0, vocab - prompt - answer, (pairs, 1), generator=g)
        prompt_ids = start + torch.arange(prompt)  # counting up from a random token
        chosen = start + prompt + torch.arange(answer)  # keeps counting: the pattern
        rejected = torch.randint(0, vocab, (pairs, answer), generator=g)
        ids = torch.cat([torch.cat([prompt_ids, chosen], 1),
                         torch.cat([prompt_ids, rejected], 1)], 0)
        labels = ids.clone()
        labels[:, :prompt] = -100
        out.append((ids, labels))
    return out


def eager_dpo(weight, hidden, labels, ref_hidden, ref_weight, beta):
    """TRL's sigmoid DPO loss on full float32 logits."""
    valid = labels != -100
    idx = labels.clamp(min=0)

    def logps(h, w):
        lp = torch.log_softmax((h @ w.T).float(), -1)
        return (lp.gather(-1, idx[..., None])[..., 0] * valid).sum(1)

    with torch.no_grad():
        ref = logps(ref_hidden, ref_weight)
    pol = logps(hidden, weight)
    p = pol.shape[0] // 2
    margin = beta * ((pol[:p] - ref[:p]) - (pol[p:] - ref[p:]))
    return -F.logsigmoid(margin).mean()


def train(impl, data, args):
    torch.manual_seed(args.seed)
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=16, vocab_size=32000,
                      max_position_embeddings=2048, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
    ref = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    if impl == "liger_rs":
        loss_fn = lt.LigerFusedLinearDPOLoss(beta=args.beta, budget=args.budget)
    elif impl == "liger_kernel":
        loss_fn = LKDPO(beta=args.beta)
    losses, times = [], []
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    pool_peak(reset=True)
    for ids, labels in data:
        ids, labels = ids.cuda(), labels.cuda()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        hidden = model.model(input_ids=ids).last_hidden_state
        with torch.no_grad():
            ref_hidden = ref.model(input_ids=ids).last_hidden_state
        # Predict token t+1 from position t.
        h, y, rh = hidden[:, :-1].contiguous(), labels[:, 1:].contiguous(), \
            ref_hidden[:, :-1].contiguous()
        if impl == "eager":
            loss = eager_dpo(model.lm_head.weight, h, y, rh, ref.lm_head.weight, args.beta)
        else:
            loss, _ = loss_fn(model.lm_head.weight, h, y, ref_input=rh,
                              ref_weight=ref.lm_head.weight)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
        losses.append(loss.item())
    peak = torch.cuda.max_memory_allocated() - base + pool_peak()
    return {"impl": impl, "losses": losses, "step_ms": statistics.median(times[3:]),
            "peak_gib": peak / 2**30}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--answer", type=int, default=449)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--budget", default="256MiB", help="liger_rs working-memory budget")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    data = batches(args.steps, args.pairs, args.prompt, args.answer, 32000, args.seed)
    impls = ["eager", "liger_rs"] + (["liger_kernel"] if LKDPO else [])
    runs = [train(i, data, args) for i in impls]
    eager = runs[0]["losses"]
    print(f"{args.steps} steps, {args.pairs} pairs x {args.prompt + args.answer} tokens, "
          f"Llama 4 x 1024, V = 32000, bf16, AdamW lr {args.lr}")
    print("step " + " ".join(f"{r['impl']:>13}" for r in runs))
    for k in range(args.steps):
        if k % 5 == 0 or k == args.steps - 1:
            print(f"{k:4} " + " ".join(f"{r['losses'][k]:13.6f}" for r in runs))
    print(f"{'impl':13} {'max |dloss| vs eager':>22} {'step ms':>9} {'peak GiB':>9}")
    for r in runs:
        r["max_abs_diff"] = max(abs(a - b) for a, b in zip(r["losses"], eager))
        print(f"{r['impl']:13} {r['max_abs_diff']:22.2e} {r['step_ms']:9.2f} "
              f"{r['peak_gib']:9.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs}, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
