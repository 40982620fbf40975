"""The Python package on numpy arrays (CPU executor): losses and gradients against naive f64
formulas written here, gradients by finite differences of those formulas, custom losses from
source, and the errors a user gets. Run: python -m unittest discover -s liger-python/tests"""

import unittest

import numpy as np

import liger_rs
from liger_rs import LigerError


def close(test, got, want, what, atol=1e-5, rtol=1e-4):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    test.assertEqual(got.shape, want.shape, what)
    bad = np.abs(got - want) > atol + rtol * np.abs(want)
    test.assertFalse(bad.any(), f"{what}: {int(bad.sum())} of {bad.size} differ; worst "
                     f"{np.abs(got - want).max():.3e} (got {got[bad][:3]}, want {want[bad][:3]})")


def log_softmax(z):
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def targets(rng, s, t, v, ignore, every=5):
    tg = rng.integers(0, v, size=(s, t)).astype(np.int64)
    tg[rng.random((s, t)) < 1.0 / every] = ignore
    # An ignore_index that is also a valid id (42) must still be ignored.
    return tg


class FlceTest(unittest.TestCase):
    def check(self, s, t, h, v, ignore, seed):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(s, t, h)).astype(np.float32)
        w = (0.3 * rng.normal(size=(v, h))).astype(np.float32)
        b = (0.5 * rng.normal(size=(v,))).astype(np.float32)
        tg = targets(rng, s, t, v, ignore)
        tg[0, 0] = 1 if ignore != 1 else 2  # at least one valid row
        out = liger_rs.Loss("flce")({"logits.x": x, "logits.w": w, "logits.b": b, "target": tg},
                                    ignore_index=ignore, budget="8MiB")
        # Naive: mean cross-entropy over the valid rows, in f64.
        x64, w64, b64 = x.astype(np.float64), w.astype(np.float64), b.astype(np.float64)
        z = x64 @ w64.T + b64
        valid = tg != ignore
        n = valid.sum()
        lp = log_softmax(z)
        idx = np.where(valid, tg, 0)
        nll = -np.take_along_axis(lp, idx[..., None], axis=-1)[..., 0]
        want = (nll * valid).sum() / n
        close(self, out.loss, want, "loss", rtol=1e-5)
        dz = np.exp(lp)
        np.put_along_axis(dz, idx[..., None],
                          np.take_along_axis(dz, idx[..., None], axis=-1) - 1.0, axis=-1)
        dz = dz * valid[..., None] / n
        close(self, out.grads["logits.x"], dz @ w64, "dx")
        close(self, out.grads["logits.w"], np.einsum("stv,sth->vh", dz, x64), "dW")
        close(self, out.grads["logits.b"], dz.sum(axis=(0, 1)), "db")
        self.assertEqual(out.grads["logits.x"].dtype, np.float32)
        self.assertIn("accuracy", out.metrics)
        return out

    def test_matches_naive_formulas_at_odd_sizes(self):
        for (s, t, h, v), ignore in [((1, 3, 5, 7), -100), ((3, 47, 16, 123), -100),
                                     ((2, 13, 8, 783), 42)]:
            with self.subTest(s=s, t=t, h=h, v=v, ignore=ignore):
                self.check(s, t, h, v, ignore, seed=s * 1000 + v)

    def test_hyperparameters_and_gradients_on_request(self):
        rng = np.random.default_rng(3)
        s, t, h, v = 2, 9, 6, 31
        x = rng.normal(size=(s, t, h)).astype(np.float32)
        w = (0.3 * rng.normal(size=(v, h))).astype(np.float32)
        tg = targets(rng, s, t, v, -100)
        tg[0, 0] = 3
        inputs = {"logits.x": x, "logits.w": w, "target": tg}
        base = liger_rs.Loss("flce")(inputs)
        frozen = liger_rs.Loss("flce")(inputs, grads="x")
        self.assertEqual(sorted(frozen.grads), ["logits.x"])
        np.testing.assert_array_equal(frozen.grads["logits.x"], base.grads["logits.x"])
        # Label smoothing eps: (1 - eps) * nll + eps * mean_v(-log_softmax), naive here.
        eps = 0.1
        sm = liger_rs.Loss("flce", label_smoothing=eps)(inputs)
        z = x.astype(np.float64) @ w.astype(np.float64).T
        lp = log_softmax(z)
        valid = tg != -100
        idx = np.where(valid, tg, 0)
        nll = -np.take_along_axis(lp, idx[..., None], axis=-1)[..., 0]
        per = (1 - eps) * nll + eps * (-lp.mean(axis=-1))
        close(self, sm.loss, (per * valid).sum() / valid.sum(), "smoothed loss", rtol=1e-5)
        self.assertNotEqual(sm.loss, base.loss)


class DpoTest(unittest.TestCase):
    def test_reference_head_matches_naive_formula_and_finite_differences(self):
        rng = np.random.default_rng(11)
        s, t, h, v, beta = 4, 7, 5, 11, 0.1
        x = rng.normal(size=(s, t, h)).astype(np.float32)
        w = (0.4 * rng.normal(size=(v, h))).astype(np.float32)
        xr = rng.normal(size=(s, t, h)).astype(np.float32)
        wr = (0.4 * rng.normal(size=(v, h))).astype(np.float32)
        tg = targets(rng, s, t, v, -100, every=4)
        tg[:, 0] = 1
        loss = liger_rs.Loss("dpo", beta=beta)
        out = loss({"policy.x": x, "policy.w": w, "reference.x": xr, "reference.w": wr,
                    "target": tg})
        valid = tg != -100
        idx = np.where(valid, tg, 0)

        def seq_logps(x_, w_):
            lp = log_softmax(x_ @ w_.T)
            tok = np.take_along_axis(lp, idx[..., None], axis=-1)[..., 0]
            return (tok * valid).sum(axis=1)

        def naive(x_, w_):
            pol = seq_logps(x_, w_)
            ref = seq_logps(xr.astype(np.float64), wr.astype(np.float64))
            p = s // 2  # chosen first, rejected second
            margin = beta * ((pol[:p] - ref[:p]) - (pol[p:] - ref[p:]))
            return np.mean(np.logaddexp(0.0, -margin))

        x64, w64 = x.astype(np.float64), w.astype(np.float64)
        close(self, out.loss, naive(x64, w64), "loss", rtol=1e-5)
        # Finite differences of the naive formula (f64) at a few entries of x and W.
        e = 1e-6
        for (i, j, k) in [(0, 0, 0), (1, 3, 4), (3, 6, 2), (2, 1, 1)]:
            xp, xm = x64.copy(), x64.copy()
            xp[i, j, k] += e
            xm[i, j, k] -= e
            fd = (naive(xp, w64) - naive(xm, w64)) / (2 * e)
            close(self, out.grads["policy.x"][i, j, k], fd, f"dx[{i},{j},{k}]", atol=2e-6,
                  rtol=1e-3)
        for (a, c) in [(0, 0), (5, 3), (10, 4)]:
            wp, wm = w64.copy(), w64.copy()
            wp[a, c] += e
            wm[a, c] -= e
            fd = (naive(x64, wp) - naive(x64, wm)) / (2 * e)
            close(self, out.grads["policy.w"][a, c], fd, f"dW[{a},{c}]", atol=2e-6, rtol=1e-3)
        self.assertNotIn("reference.x", out.grads)  # a frozen head has no gradient


class JsdTest(unittest.TestCase):
    def test_teacher_head_int32_targets_and_float16_inputs(self):
        rng = np.random.default_rng(21)
        s, t, h, v, beta, temp = 2, 11, 6, 37, 0.3, 2.0
        xs = rng.normal(size=(s, t, h)).astype(np.float32)
        ws = (0.3 * rng.normal(size=(v, h))).astype(np.float32)
        xt = rng.normal(size=(s, t, h)).astype(np.float32)
        wt = (0.3 * rng.normal(size=(v, h))).astype(np.float32)
        y = targets(rng, s, t, v, -100, every=4).astype(np.int32)
        y[0, 0] = 2
        loss = liger_rs.Loss("jsd", beta=beta, temperature=temp)

        def naive(xs_, ws_, xt_, wt_):
            zs, zt = xs_ @ ws_.T, xt_ @ wt_.T
            valid = y != -100
            n = valid.sum()
            idx = np.where(valid, y, 0).astype(np.int64)
            hard = -(np.take_along_axis(log_softmax(zs), idx[..., None], axis=-1)[..., 0]
                     * valid).sum() / n
            ls, lt = log_softmax(zs / temp), log_softmax(zt / temp)
            lm = np.logaddexp(ls + np.log(1 - beta), lt + np.log(beta))
            d = beta * (np.exp(lt) * (lt - lm)).sum(-1) + (1 - beta) * (np.exp(ls) * (ls - lm)).sum(-1)
            return 0.5 * hard + 0.5 * (d * valid).sum() / n

        f64 = [a.astype(np.float64) for a in (xs, ws, xt, wt)]
        out = loss({"student.x": xs, "student.w": ws, "teacher.x": xt, "teacher.w": wt,
                    "target": y})
        close(self, out.loss, naive(*f64), "jsd loss", rtol=1e-5)
        self.assertEqual(sorted(out.grads), ["student.w", "student.x"])  # the teacher is frozen
        e = 1e-6
        for (i, j, k) in [(0, 0, 0), (1, 7, 5), (0, 4, 2)]:
            xp, xm = f64[0].copy(), f64[0].copy()
            xp[i, j, k] += e
            xm[i, j, k] -= e
            fd = (naive(xp, *f64[1:]) - naive(xm, *f64[1:])) / (2 * e)
            close(self, out.grads["student.x"][i, j, k], fd, f"dx[{i},{j},{k}]", atol=2e-6,
                  rtol=1e-3)
        # float16 inputs: the same loss on the rounded inputs, within f32 accumulation.
        h16 = [a.astype(np.float16) for a in (xs, ws, xt, wt)]
        out16 = loss({"student.x": h16[0], "student.w": h16[1], "teacher.x": h16[2],
                      "teacher.w": h16[3], "target": y})
        close(self, out16.loss, naive(*[a.astype(np.float64) for a in h16]), "f16 loss",
              rtol=1e-4)


TEMPERED = """
use liger::prelude::*;

/// Cross-entropy of temperature-scaled logits, averaged over the valid tokens.
#[chunked_loss]
pub fn tempered_ce(
    logits: Logits,
    target: Target,
    #[default(2.0)]
    #[range(gt = 0.0)]
    temperature: f32,
) -> Loss {
    mean(-logprob(logits / temperature, target))
}
"""


class CustomLossTest(unittest.TestCase):
    def test_a_loss_from_source_runs_with_its_hyperparameters(self):
        losses = liger_rs.compile(TEMPERED)
        self.assertEqual(sorted(losses), ["tempered_ce"])
        rng = np.random.default_rng(5)
        s, t, h, v = 2, 5, 4, 13
        x = rng.normal(size=(s, t, h)).astype(np.float32)
        w = rng.normal(size=(v, h)).astype(np.float32)
        tg = targets(rng, s, t, v, -100)
        tg[0, 0] = 0
        valid = tg != -100
        idx = np.where(valid, tg, 0)
        for temp in [2.0, 0.5]:
            loss = losses["tempered_ce"].with_params(temperature=temp)
            out = loss({"logits.x": x, "logits.w": w, "target": tg})
            lp = log_softmax((x.astype(np.float64) @ w.astype(np.float64).T) / temp)
            nll = -np.take_along_axis(lp, idx[..., None], axis=-1)[..., 0]
            close(self, out.loss, (nll * valid).sum() / valid.sum(), f"T={temp}", rtol=1e-5)

    def test_source_errors_say_where(self):
        with self.assertRaises(LigerError) as cm:
            liger_rs.compile(TEMPERED.replace("logprob(", "logprobb("))
        self.assertIn("logprobb", str(cm.exception))


class ErrorTest(unittest.TestCase):
    def setUp(self):
        rng = np.random.default_rng(1)
        self.x = rng.normal(size=(1, 4, 3)).astype(np.float32)
        self.w = rng.normal(size=(5, 3)).astype(np.float32)
        self.t = np.array([[1, 2, -100, 4]], dtype=np.int64)

    def inputs(self, **over):
        d = {"logits.x": self.x, "logits.w": self.w, "target": self.t}
        d.update(over)
        return d

    def raises(self, fn, *needles):
        with self.assertRaises(LigerError) as cm:
            fn()
        for n in needles:
            self.assertIn(n, str(cm.exception))

    def test_bad_input_is_a_typed_error_naming_it(self):
        flce = liger_rs.Loss("flce")
        self.raises(lambda: liger_rs.Loss("dpoo"), "dpoo")
        self.raises(lambda: liger_rs.Loss("flce", label_smothing=0.1), "label_smothing")
        self.raises(lambda: liger_rs.Loss("flce", label_smoothing=2.0), "label_smoothing")
        d = self.inputs()
        d["targte"] = d.pop("target")
        self.raises(lambda: flce(d), "targte", "expected")
        self.raises(lambda: flce(self.inputs(**{"logits.x": self.x[:, ::2]})), "logits.x",
                    "contiguous")
        self.raises(lambda: flce(self.inputs(target=self.t.astype(np.uint8))), "target", "uint8")
        self.raises(lambda: flce(self.inputs(target=self.t.astype(np.float32))), "target")
        self.raises(lambda: flce(self.inputs(**{"logits.w": self.w[:4]})), "4")
        self.raises(lambda: flce(self.inputs(target=[[1, 2, 3, 4]])), "target", "list")
        self.raises(lambda: flce(self.inputs(), budget="lots"), "lots")
        self.raises(lambda: flce(self.inputs(), schedule="fast"), "fast")
        self.raises(lambda: flce(self.inputs(), grads="y"), "y")
        # The CPU runs its gradient GEMMs per chunk: a deeper stage is refused, saying so.
        self.raises(lambda: flce(self.inputs(), chunk_rows=2, stage_rows=4), "stage of 4",
                    "per chunk")

    def test_forced_chunk_sizes_give_the_same_results(self):
        flce = liger_rs.Loss("flce")
        planned = flce(self.inputs())
        forced = flce(self.inputs(), chunk_rows=1, all_rows=True)
        self.assertEqual(forced.report["chunk_rows"], "1")
        self.assertEqual(forced.report["chunks"], "4")
        self.assertAlmostEqual(forced.loss, planned.loss, places=6)
        np.testing.assert_allclose(forced.grads["logits.w"], planned.grads["logits.w"],
                                   rtol=1e-5, atol=1e-7)

    def test_the_f32_copies_of_bf16_gradients_count_unless_asked_otherwise(self):
        # dW of 32000 x 64 and dx of 8 x 64 returned in bf16 keep f32 accumulators of
        # 8192000 + 2048 bytes: a 6 MB budget cannot hold them, unless the budget is for the
        # chunks only.
        rng = np.random.default_rng(3)
        x = rng.normal(size=(1, 8, 64)).astype(np.float32)
        w = (0.1 * rng.normal(size=(32000, 64))).astype(np.float32)
        t = rng.integers(0, 32000, size=(1, 8)).astype(np.int64)
        d = {"logits.x": x, "logits.w": w, "target": t}
        flce = liger_rs.Loss("flce")
        self.raises(lambda: flce(d, budget="6000000", grad_dtype="bf16"), "f32 working copy",
                    "8194048")
        r = flce(d, budget="6000000", grad_dtype="bf16", budget_beyond_grads=True)
        want = flce(d, budget="64MiB")
        self.assertAlmostEqual(r.loss, want.loss, places=6)
        # bf16 gradients: the f32 values rounded once.
        np.testing.assert_allclose(r.grads["logits.w"], want.grads["logits.w"], rtol=2 ** -8,
                                   atol=1e-12)

    def test_listing(self):
        names = liger_rs.losses()
        for n in ["dpo", "flce", "jsd", "grpo", "kto", "orpo", "cpo", "simpo"]:
            self.assertIn(n, names)
        flce = liger_rs.Loss("flce")
        self.assertIn("logits.x, logits.w, logits.b", flce.input_names())
        self.assertIn(("label_smoothing", "hyperparameter", False),
                      [(n, k, o) for n, k, o in flce.params()])


if __name__ == "__main__":
    unittest.main()
