"""The kernel cache from Python: warming a loss compiles its kernels with NVRTC (no GPU
needed) into a cache that `liger_rs.cache` lists, shows and clears. Skipped where NVRTC is not
found, unless LIGER_REQUIRE_NVRTC=1 (CI sets it)."""

import os
import tempfile
import unittest

import liger_rs
from liger_rs import LigerError


class CacheTest(unittest.TestCase):
    def test_warm_then_list_show_and_clear(self):
        with tempfile.TemporaryDirectory() as d:
            root = os.path.join(d, "kernels")
            flce = liger_rs.Loss("flce", label_smoothing=0.1)
            try:
                got = flce.warm(["logits", "target"], arch="sm_90", dtype="bf16", root=root)
            except LigerError as e:
                if "nvrtc" in str(e).lower() and os.environ.get("LIGER_REQUIRE_NVRTC") != "1":
                    self.skipTest(f"no NVRTC here: {e}")
                raise
            self.assertIn("fused", [s for s, _, _ in got])
            self.assertTrue(all(o.startswith("compiled") for _, _, o in got), got)
            # A second warm (a new cache object: nothing in memory) is served from disk.
            again = flce.warm(["logits", "target"], arch="sm_90", dtype="bf16", root=root)
            self.assertEqual([k for _, k, _ in again], [k for _, k, _ in got])
            self.assertTrue(all(o == "disk" for _, _, o in again), again)
            self.assertEqual(liger_rs.cache.root(root), root)
            es = liger_rs.cache.entries(root)
            self.assertEqual(sorted(e["key"] for e in es), sorted(k for _, k, _ in got))
            e = es[0]
            self.assertIsNone(e["broken"])
            self.assertEqual(e["arch"], "sm_90")
            self.assertEqual(e["components"].get("dtype"), "bf16")
            self.assertGreaterEqual(e["hits"], 1)
            src = liger_rs.cache.show(e["key"][:12], "kernel.cu", root)
            self.assertIn("__global__", src)
            self.assertIn("liger_", src)
            self.assertIn("label_smoothing", liger_rs.cache.show(e["key"], "surface.lir", root)
                          + liger_rs.cache.show(e["key"], "key.json", root))
            st = liger_rs.cache.stats(root)
            self.assertEqual(st["entries"], len(got))
            self.assertEqual(st["broken"], 0)
            with self.assertRaises(LigerError):
                liger_rs.cache.show("zzzz", "kernel.cu", root)
            with self.assertRaises(LigerError):
                liger_rs.cache.show(e["key"], "../key.json", root)
            with self.assertRaises(LigerError):
                flce.warm(["logits", "target"], arch="sm_90", dtype="f64", root=root)
            self.assertEqual(liger_rs.cache.clear(root), len(got))
            self.assertEqual(liger_rs.cache.entries(root), [])


if __name__ == "__main__":
    unittest.main()
