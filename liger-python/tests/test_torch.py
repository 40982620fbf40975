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
        out = self.lt.LigerFusedLinearCrossEntropyLoss(
            lse_square_scale=1e-3, return_z_loss=True, return_token_accuracy=True)(w, x, t, b)
        logits = x.double() @ w.double().T + b.double()
        valid = t != -100
        close(self, out.z_loss, 1e-3 * (torch.logsumexp(logits, -1)[valid] ** 2).mean(),
              "z_loss")
        acc = (logits.argmax(-1) == t)[valid].double().mean()
        close(self, out.token_accuracy, acc, "token_accuracy")
        self.assertIsNone(out.predicted_tokens)

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


@unittest.skipIf(torch is None, "torch is not installed")
class TorchFamiliesTest(unittest.TestCase):
    """The CPO, SimPO, ORPO, KTO and GRPO drop-ins against their formulas written here in
    torch (float64), gradients by torch's autograd of those formulas."""

    def setUp(self):
        from liger_rs import torch as lt
        self.lt = lt
        self.g = torch.Generator().manual_seed(4)
        self.p, self.t, self.h, self.v = 2, 7, 5, 29

    def data(self, s):
        x = torch.randn(s, self.t, self.h, generator=self.g).requires_grad_(True)
        w = (0.4 * torch.randn(self.v, self.h, generator=self.g)).requires_grad_(True)
        tg = torch.randint(0, self.v, (s, self.t), generator=self.g)
        tg[:, :2] = -100
        return x, w, tg

    def token_logps(self, x, w, tg):
        valid = tg != -100
        lp = torch.log_softmax(x.double() @ w.double().T, -1)
        return lp.gather(-1, tg.clamp(min=0)[..., None])[..., 0] * valid, valid

    def check(self, what, loss, want, x, w):
        close(self, loss, want, f"{what} loss")
        gx, gw = torch.autograd.grad(want, (x, w))
        loss.backward()
        close(self, x.grad, gx, f"{what} dx")
        close(self, w.grad, gw, f"{what} dW")

    def pairs(self, lp, valid, average):
        p = self.p
        per = lp.sum(1) / (valid.sum(1) if average else 1)
        return per[:p], per[p:]

    def nll(self, lp, valid):
        p = self.p
        return -lp[:p].sum() / valid[:p].sum()

    def test_cpo_and_simpo(self):
        import torch.nn.functional as F
        beta, alpha, eps = 0.2, 0.7, 0.1
        x, w, tg = self.data(2 * self.p)
        loss, aux = self.lt.LigerFusedLinearCPOLoss(beta=beta, alpha=alpha,
                                                    label_smoothing=eps)(w, x, tg)
        lp, valid = self.token_logps(x, w, tg)
        c, r = self.pairs(lp, valid, False)
        d = beta * (c - r)
        want = (-(1 - eps) * F.logsigmoid(d) - eps * F.logsigmoid(-d)).mean()
        want = want + alpha * self.nll(lp, valid)
        close(self, aux[0], c, "cpo chosen_logps")
        close(self, aux[5], beta * c, "cpo chosen_rewards")
        self.check("cpo", loss, want, x, w)

        gamma = 0.3
        x, w, tg = self.data(2 * self.p)
        loss, aux = self.lt.LigerFusedLinearSimPOLoss(beta=beta, gamma=gamma)(w, x, tg)
        lp, valid = self.token_logps(x, w, tg)
        c, r = self.pairs(lp, valid, True)
        d = beta * (c - r) - gamma
        want = -F.logsigmoid(d).mean() + self.nll(lp, valid)
        close(self, aux[1], r, "simpo rejected_logps")
        self.check("simpo", loss, want, x, w)

    def test_orpo(self):
        import torch.nn.functional as F
        beta = 0.15
        x, w, tg = self.data(2 * self.p)
        loss, aux = self.lt.LigerFusedLinearORPOLoss(beta=beta)(w, x, tg)
        lp, valid = self.token_logps(x, w, tg)
        c, r = self.pairs(lp, valid, True)
        o = (c - r) - (torch.log1p(-torch.exp(c)) - torch.log1p(-torch.exp(r)))
        want = self.nll(lp, valid) + beta * (-F.logsigmoid(o)).mean()
        close(self, aux[7], F.logsigmoid(o).mean(), "orpo log_odds_ratio")
        self.check("orpo", loss, want, x, w)
        with self.assertRaisesRegex(liger_rs.LigerError, "NLL"):
            self.lt.LigerFusedLinearORPOLoss(compute_nll_loss=False)

    def test_kto_reference_free_with_a_kl_estimate(self):
        beta, kl = 0.3, 0.05
        s = 5
        x, w, tg = self.data(s)
        pref = torch.tensor([True, False, True, True, False])
        loss, aux = self.lt.LigerFusedLinearKTOLoss(beta=beta)(
            x, w, tg, preference_labels=pref, kl=torch.tensor(kl))
        lp, valid = self.token_logps(x, w, tg)
        rho = lp.sum(1)
        per = torch.where(pref, 1 - torch.sigmoid(beta * (rho - kl)),
                          1 - torch.sigmoid(beta * (kl - rho)))
        close(self, aux[0], rho[pref].sum(), "kto chosen_logps_sum")
        close(self, aux[4], (beta * rho)[pref].sum(), "kto chosen_rewards_sum")
        self.check("kto", loss, per.mean(), x, w)

    def test_grpo_dapo_with_old_logps(self):
        s, el, eh = 3, 0.2, 0.28
        x, w, _ = self.data(s)
        tokens = torch.randint(0, self.v, (s, self.t), generator=self.g)
        mask = torch.rand(s, self.t, generator=self.g) < 0.8
        adv = torch.tensor([1.0, -0.5, 0.25])
        old = -3.0 + 0.1 * torch.randn(s, self.t, generator=self.g)
        mod = self.lt.LigerFusedLinearGRPOLoss(beta=0.0, epsilon_low=el, epsilon_high=eh)
        loss, metrics = mod(x, w, tokens, mask, adv, old_per_token_logps=old)
        self.assertEqual(len(metrics), 1, "no KL metric when beta = 0, as Liger's")
        lp = torch.log_softmax(x.double() @ w.double().T, -1).gather(
            -1, tokens[..., None])[..., 0]
        rho = torch.exp(lp - old.double())
        a = adv.double()[:, None]
        per = -torch.min(rho * a, torch.clamp(rho, 1 - el, 1 + eh) * a)
        want = (per * mask).sum() / mask.sum()
        self.check("grpo", loss, want, x, w)


def _cuda() -> bool:
    return torch is not None and torch.cuda.is_available()


@unittest.skipIf(not _cuda(), "no CUDA device (torch with CUDA needed)")
class TorchCudaTest(unittest.TestCase):
    """CUDA tensors read in place on PyTorch's current stream, results in PyTorch's caching
    allocator, against the same naive formulas in float64 on the host."""

    def setUp(self):
        from liger_rs import torch as lt
        self.lt = lt
        self.g = torch.Generator().manual_seed(1)

    def rand(self, *shape, scale=1.0, dtype=None):
        t = scale * torch.randn(*shape, generator=self.g)
        return t.to("cuda", dtype or torch.bfloat16).requires_grad_(True)

    def test_flce_on_a_side_stream_in_bf16(self):
        n, h, v = 123, 64, 783
        x, w, b = self.rand(n, h), self.rand(v, h, scale=0.2), self.rand(v, scale=0.5)
        t = torch.randint(0, v, (n,), generator=self.g)
        t[::7] = -100
        t = t.cuda()
        xd, wd, bd = (p_.detach().double().cpu().requires_grad_(True) for p_ in (x, w, b))
        want = F.cross_entropy(xd @ wd.T + bd, t.cpu(), ignore_index=-100, label_smoothing=0.1)
        gx, gw, gb = torch.autograd.grad(3.0 * want, (xd, wd, bd))
        # grad W accumulated in bf16 across stages (Liger Kernel's default) and in f32; small
        # chunks (a 4.5 MB budget, a little above the least) make several stages.
        for accum in (None, torch.float32):
            x.grad = w.grad = b.grad = None
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):
                mod = self.lt.LigerFusedLinearCrossEntropyLoss(label_smoothing=0.1,
                                                               accum_dtype=accum,
                                                               budget="4500000")
                loss = mod(w, x, t, b)
                self.assertTrue(loss.is_cuda)
                (3.0 * loss).backward()
            side.synchronize()
            self.assertEqual(mod.check(), [])
            self.assertGreater(int(mod.last_result.report["chunks"]), 1)
            for p_ in (x, w, b):
                self.assertEqual(p_.grad.dtype, torch.bfloat16)
                self.assertTrue(p_.grad.is_cuda)
            what = f"accum_dtype={accum}"
            close(self, loss.cpu(), want, f"loss {what}", atol=1e-4, rtol=1e-4)
            # bf16 gradients: the result's rounding (2^-8 relative), a few more for dW in bf16.
            close(self, x.grad.cpu(), gx, f"dx {what}", atol=2e-4, rtol=1e-2)
            close(self, w.grad.cpu(), gw, f"dW {what}", atol=2e-4, rtol=2e-2)
            close(self, b.grad.cpu(), gb, f"db {what}", atol=2e-4, rtol=1e-2)
        with self.assertRaisesRegex(liger_rs.LigerError, "accum_dtype"):
            self.lt.LigerFusedLinearCrossEntropyLoss(accum_dtype=torch.float16)

    def test_loss_returns_cuda_tensors_and_frozen_parts_cost_nothing(self):
        n, h, v = 47, 32, 123
        x = self.rand(1, n, h, dtype=torch.float32)
        w = self.rand(v, h, scale=0.3, dtype=torch.float32)
        t = torch.randint(0, v, (1, n), generator=self.g).cuda()
        r = liger_rs.Loss("flce")({"logits.x": x.detach(), "logits.w": w.detach(),
                                   "target": t}, grads="x")
        self.assertEqual(sorted(r.grads), ["logits.x"])
        self.assertTrue(r.loss.is_cuda and r.grads["logits.x"].is_cuda)
        self.assertEqual(r.grads["logits.x"].dtype, torch.float32)
        self.assertEqual(r.check(), [])
        self.assertIn("accuracy", r.metrics)
        xd, wd = x.detach().double().cpu(), w.detach().double().cpu()
        want = F.cross_entropy((xd @ wd.T)[0], t.cpu()[0])
        close(self, r.loss.cpu(), want, "loss", atol=1e-5, rtol=1e-5)
        w.requires_grad_(False)
        loss = self.lt.LigerFusedLinearCrossEntropyLoss()(w, x[0], t[0])
        loss.backward()
        self.assertIsNone(w.grad)
        xd.requires_grad_(True)
        (gx,) = torch.autograd.grad(F.cross_entropy(xd[0] @ wd.T, t.cpu()[0]), (xd,))
        close(self, x.grad.cpu(), gx, "dx, W frozen", atol=1e-6, rtol=1e-4)

    def test_dpo_on_cuda_matches_the_formula(self):
        p, t_, h, v, beta = 3, 47, 32, 211, 0.1
        x, w = self.rand(2 * p, t_, h, dtype=torch.float32), self.rand(v, h, scale=0.3,
                                                                        dtype=torch.float32)
        xr = self.rand(2 * p, t_, h, dtype=torch.float32).detach()
        wr = self.rand(v, h, scale=0.3, dtype=torch.float32).detach()
        tg = torch.randint(0, v, (2 * p, t_), generator=self.g)
        tg[:, :5] = 42
        mod = self.lt.LigerFusedLinearDPOLoss(beta=beta, ignore_index=42)
        loss, aux = mod(w, x, tg.cuda(), ref_input=xr, ref_weight=wr)
        loss.backward()
        valid = tg != 42
        idx = tg.clamp(min=0) * valid

        def logps(x_, w_):
            lp = torch.log_softmax(x_.double().cpu() @ w_.double().cpu().T, -1)
            return (lp.gather(-1, idx[..., None])[..., 0] * valid).sum(1)

        xd, wd = x.detach().double().cpu().requires_grad_(True), w.detach().double().cpu()
        wd.requires_grad_(True)
        pol, ref = logps(xd, wd), logps(xr, wr)
        want = -F.logsigmoid(beta * ((pol[:p] - ref[:p]) - (pol[p:] - ref[p:]))).mean()
        close(self, loss.cpu(), want, "dpo loss", atol=1e-5, rtol=1e-4)
        close(self, aux[0].cpu(), pol[:p], "chosen_logps", atol=1e-3, rtol=1e-4)
        gx, gw = torch.autograd.grad(want, (xd, wd))
        close(self, x.grad.cpu(), gx, "dpo dx", atol=1e-6, rtol=1e-3)
        close(self, w.grad.cpu(), gw, "dpo dW", atol=1e-6, rtol=1e-3)

    def test_bad_inputs_are_refused_or_reported(self):
        n, h, v = 5, 8, 11
        x, w = self.rand(n, h), self.rand(v, h)
        t = torch.randint(0, v, (n,), generator=self.g)
        with self.assertRaisesRegex(liger_rs.LigerError, "target.*CUDA tensor"):
            liger_rs.Loss("flce")({"logits.x": x.detach()[None], "logits.w": w.detach(),
                                   "target": t[None]})
        with self.assertRaisesRegex(liger_rs.LigerError, "not contiguous"):
            liger_rs.Loss("flce")({"logits.x": x.detach()[None], "logits.w": w.detach().T,
                                   "target": t[None].cuda()})
        bad = t.clone()
        bad[2] = v + 3  # out of the vocabulary: found on the device, not on the host
        mod = self.lt.LigerFusedLinearCrossEntropyLoss()
        loss = mod(w, x, bad.cuda())
        with self.assertRaisesRegex(liger_rs.LigerError, "target"):
            mod.check()
        self.assertTrue(bool(torch.isnan(loss).item()))


if __name__ == "__main__":
    unittest.main()
