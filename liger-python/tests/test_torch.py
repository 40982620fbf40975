"""The PyTorch door (`liger_rs.torch`) on CPU tensors: the drop-in modules against naive
formulas written here in torch (their gradients by torch's autograd of those formulas, an
independent reference), gradient accumulation, frozen weights and bf16 inputs. Skipped where
torch is not installed (the CI machine installs numpy only)."""

import unittest

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - depends on the machine
    torch = None

import liger_rs


def close(test, got, want, what, atol=1e-5, rtol=1e-4):
    got, want = got.detach().double(), want.detach().double()
    test.assertEqual(tuple(got.shape), tuple(want.shape), what)
    bad = (got - want).abs() > atol + rtol * want.abs()
    test.assertFalse(bool(bad.any()), f"{what}: {int(bad.sum())} of {bad.numel()} differ, "
                     f"worst {(got - want).abs().max().item():.3e}")


@unittest.skipIf(torch is None, "torch is not installed")
class TorchTest(unittest.TestCase):
    def setUp(self):
        from liger_rs import torch as lt
        self.lt = lt
        self.g = torch.Generator().manual_seed(0)

    def randn(self, *shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=self.g)).requires_grad_(True)

    def test_flce_drop_in_matches_cross_entropy_and_accumulates(self):
        n, h, v = 47, 16, 123
        x, w, b = self.randn(n, h), self.randn(v, h, scale=0.3), self.randn(v, scale=0.5)
        t = torch.randint(0, v, (n,), generator=self.g)
        t[::5] = -100
        for smoothing, z in [(0.0, 0.0), (0.1, 1e-3)]:
            mod = self.lt.LigerFusedLinearCrossEntropyLoss(label_smoothing=smoothing,
                                                           lse_square_scale=z)
            loss = mod(w, x, t, b)
            logits = x.double() @ w.double().T + b.double()
            want = F.cross_entropy(logits, t, ignore_index=-100, label_smoothing=smoothing)
            valid = t != -100
            want = want + z * (torch.logsumexp(logits, -1)[valid] ** 2).mean()
            close(self, loss, want, f"loss eps={smoothing}")
            gx, gw, gb = torch.autograd.grad(want, (x, w, b))
            x.grad = w.grad = b.grad = None
            (2.0 * loss).backward()
            close(self, x.grad, 2 * gx, "dx")
            close(self, w.grad, 2 * gw, "dW")
            close(self, b.grad, 2 * gb, "db")
            # Gradient accumulation: a second backward adds.
            mod(w, x, t, b).backward()
            close(self, w.grad, 3 * gw, "dW accumulated")
            x.grad = w.grad = b.grad = None

    def test_frozen_weight_and_bf16(self):
        n, h, v = 33, 8, 57
        x, w = self.randn(n, h), self.randn(v, h, scale=0.3)
        t = torch.randint(0, v, (n,), generator=self.g)
        w.requires_grad_(False)
        loss = self.lt.LigerFusedLinearCrossEntropyLoss()(w, x, t)
        loss.backward()
        self.assertIsNone(w.grad)
        want = F.cross_entropy(x.double() @ w.double().T, t)
        (gx,) = torch.autograd.grad(want, (x,))
        close(self, x.grad, gx, "dx with W frozen")
        xb = x.detach().bfloat16().requires_grad_(True)
        wb = w.detach().bfloat16()
        lb = self.lt.LigerFusedLinearCrossEntropyLoss()(wb, xb, t)
        lb.backward()
        self.assertEqual(xb.grad.dtype, torch.bfloat16)
        want = F.cross_entropy(xb.double() @ wb.double().T, t)
        close(self, lb, want, "bf16 loss", rtol=1e-4)

    def test_dpo_drop_in_matches_the_formula(self):
        p, t_, h, v, beta = 2, 6, 5, 11, 0.1
        x, w = self.randn(2 * p, t_, h), self.randn(v, h, scale=0.4)
        xr, wr = torch.randn(2 * p, t_, h, generator=self.g), 0.4 * torch.randn(v, h, generator=self.g)
        tg = torch.randint(0, v, (2 * p, t_), generator=self.g)
        tg[:, :2] = -100
        loss, aux = self.lt.LigerFusedLinearDPOLoss(beta=beta)(w, x, tg, ref_input=xr,
                                                               ref_weight=wr)
        valid = tg != -100
        idx = tg.clamp(min=0)

        def logps(x_, w_):
            lp = torch.log_softmax(x_.double() @ w_.double().T, -1)
            return (lp.gather(-1, idx[..., None])[..., 0] * valid).sum(1)

        pol, ref = logps(x, w), logps(xr, wr)
        margin = beta * ((pol[:p] - ref[:p]) - (pol[p:] - ref[p:]))
        want = -F.logsigmoid(margin).mean()
        close(self, loss, want, "dpo loss")
        close(self, aux[0], pol[:p], "chosen_logps")
        close(self, aux[5], beta * (pol[:p] - ref[:p]), "chosen_rewards")
        gx, gw = torch.autograd.grad(want, (x, w))
        loss.backward()
        close(self, x.grad, gx, "dpo dx")
        close(self, w.grad, gw, "dpo dW")

    def test_jsd_drop_in_matches_the_formula(self):
        n, h, v, beta, temp = 29, 8, 41, 0.5, 2.0
        xs, ws = self.randn(n, h), self.randn(v, h, scale=0.3)
        xt, wt = torch.randn(n, h, generator=self.g), 0.3 * torch.randn(v, h, generator=self.g)
        y = torch.randint(0, v, (n,), generator=self.g)
        y[::4] = -100
        loss = self.lt.LigerFusedLinearJSDLoss(beta=beta, temperature=temp)(xs, ws, xt, wt, y)
        s = xs.double() @ ws.double().T
        t = xt.double() @ wt.double().T
        valid = y != -100
        hard = F.cross_entropy(s, y, ignore_index=-100)
        ls, lt_ = torch.log_softmax(s / temp, -1), torch.log_softmax(t / temp, -1)
        lm = torch.logsumexp(torch.stack([ls + torch.log(torch.tensor(1 - beta)),
                                          lt_ + torch.log(torch.tensor(beta))]), 0)
        d = beta * (lt_.exp() * (lt_ - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
        soft = (d * valid).sum() / valid.sum()
        want = 0.5 * hard + 0.5 * soft
        close(self, loss, want, "jsd loss")
        gx, gw = torch.autograd.grad(want, (xs, ws))
        loss.backward()
        close(self, xs.grad, gx, "jsd dx")
        close(self, ws.grad, gw, "jsd dW")


if __name__ == "__main__":
    unittest.main()
