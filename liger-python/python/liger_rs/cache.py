"""The kernel cache, as ``liger cache`` shows it: the CUDA kernels liger-rs generated, one entry
per loss specialisation, schedule, GEMM dtype, architecture and NVRTC version, each holding the
IR it came from, the CUDA C, the binary and its key. Every function takes ``root`` (default:
``LIGER_CACHE_DIR``, else ``$XDG_CACHE_HOME/liger``, else ``~/.cache/liger``). Entries are
checked before they are served (a sealed key and binary); a broken one is listed with why.
Filling it ahead of time: :meth:`liger_rs.Loss.warm`."""

from typing import Dict, List, Optional

from . import _native

__all__ = ["root", "entries", "show", "stats", "clear", "prune"]


def root(root: Optional[str] = None) -> Optional[str]:
    """The cache's directory (``None``: no disk tier, ``LIGER_CACHE=off``)."""
    return _native.cache_root(root)


def entries(root: Optional[str] = None) -> List[Dict[str, object]]:
    """Every entry: ``key``, ``arch``, ``bytes``, ``hits``, ``compile_ms``, ``last_used``
    (seconds since the epoch), ``components`` (the key's parts: loss, specialisation,
    ``schedule``, ``dtype``, ...) and ``broken`` (why it is not served, or ``None``)."""
    out = []
    for key, arch, nbytes, hits, ms, used, comps, broken in _native.cache_entries(root):
        out.append({"key": key, "arch": arch, "bytes": nbytes, "hits": hits, "compile_ms": ms,
                    "last_used": used, "components": dict(comps), "broken": broken})
    return out


def show(key: str, file: str = "kernel.cu", root: Optional[str] = None) -> str:
    """One file of the entry whose key starts with ``key``: ``surface.lir``, ``grad.lir``,
    ``schedule.txt``, ``kernel.cu`` (default), ``kernel.ptx``, ``meta.json`` or ``key.json``."""
    return _native.cache_show(key, file, root)


def stats(root: Optional[str] = None) -> Dict[str, int]:
    """``entries``, ``broken``, ``bytes`` and disk ``hits``."""
    e, b, n, h = _native.cache_stats(root)
    return {"entries": e, "broken": b, "bytes": n, "hits": h}


def clear(root: Optional[str] = None) -> int:
    """Removes every entry; returns how many."""
    return _native.cache_clear(root)


def prune(max_size: str, root: Optional[str] = None) -> int:
    """Removes the least recently used entries until at most ``max_size`` (``"512MiB"``)."""
    return _native.cache_prune(max_size, root)
