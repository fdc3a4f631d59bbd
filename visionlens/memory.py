"""Host-memory reuse for caching runs: keep freed activation memory for the next forward.

A full activation cache keeps every intermediate tensor alive, so each ``run_with_cache`` needs
hundreds of megabytes of *fresh* memory. With glibc's default settings the memory of the previous
cache goes back to the operating system when it is freed (large blocks are ``mmap``-ed and
``munmap``-ed, the heap top is trimmed), and the next run pays a page fault and a page of zeroing
for every 4 KiB it touches again: 15-25% of a ResNet-50 or ViT forward on CPU. A raw forward does
not pay this, because it frees each tensor right after use and malloc hands the same memory back.

:func:`retain_freed_memory` asks glibc to keep freed memory in the process (blocks up to 32 MiB
come from the heap, and up to ``limit`` bytes of free heap are kept instead of trimmed), the way
PyTorch's CUDA caching allocator keeps GPU memory. visionlens turns it on the first time a model
caches activations, and allocates a caching forward's large blocks (over 32 MiB, which glibc would
``mmap``) from the heap too (:class:`heap_allocations`); set ``VISIONLENS_RETAIN_MEMORY=0`` (or call
``retain_freed_memory(False)`` before caching) to keep glibc's defaults, and :func:`release_memory`
gives the retained memory back (like ``torch.cuda.empty_cache()``). It only changes when memory is
returned, never a value. On platforms without glibc it does nothing and says so in
:func:`memory_retention`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys
from typing import Optional

__all__ = [
    "retain_freed_memory",
    "release_memory",
    "memory_retention",
    "ensure_memory_retention",
    "heap_allocations",
]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_MMAP_MAX_DEFAULT = 65536  # glibc's default number of simultaneous mmap-ed blocks
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
_DEFAULT_LIMIT = 2**31 - 1  # mallopt takes a C int: 2 GiB is the most glibc can keep

_state: dict[str, object] = {"enabled": False, "decided": False, "limit": 0, "reason": "not requested yet"}


@functools.lru_cache(maxsize=1)
def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def _default_limit() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return _DEFAULT_LIMIT
    return int(min(_DEFAULT_LIMIT, total // 4))


def retain_freed_memory(enabled: bool = True, limit: Optional[int] = None) -> bool:
    """Keep up to ``limit`` bytes (default: a quarter of RAM, at most 2 GiB) of freed memory in the process.

    Returns whether retention is in effect. ``enabled=False`` restores glibc's dynamic defaults as far
    as glibc allows (128 KiB mmap threshold, 128 KiB trim threshold) and releases retained memory.
    """
    libc = _libc()
    _state["decided"] = True
    if libc is None:
        _state.update(enabled=False, reason="not available: needs glibc (Linux)")
        return False
    if not enabled:
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)
        _state.update(enabled=False, limit=0, reason="turned off")
        return False
    lim = int(limit if limit is not None else _default_limit())
    if lim <= 0:
        raise ValueError(f"limit must be a positive number of bytes, got {limit}")
    ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, min(lim, _DEFAULT_LIMIT))
    )
    reason = "on" if ok else "mallopt refused the settings"
    _state.update(enabled=ok, limit=min(lim, _DEFAULT_LIMIT) if ok else 0, reason=reason)
    return ok


def ensure_memory_retention() -> None:
    """Turn retention on once, unless the user decided already or ``VISIONLENS_RETAIN_MEMORY=0``."""
    if _state["decided"]:
        return
    if os.environ.get("VISIONLENS_RETAIN_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        _state.update(decided=True, enabled=False, reason="off: VISIONLENS_RETAIN_MEMORY=0")
        return
    retain_freed_memory(True)


class heap_allocations:
    """Within this block, allocate even blocks over 32 MiB from the heap (where freed memory is reused).

    glibc always ``mmap``-s blocks over 32 MiB, so an attention pattern of a 1024-pixel UNet layer
    (64 MiB) would be faulted in afresh on every run. Caching runs use this block around the
    forward; outside it glibc's behaviour is unchanged. No-op when retention is off.
    """

    def __enter__(self) -> "heap_allocations":
        libc = _libc() if _state["enabled"] else None
        self._libc = libc
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._libc is not None:
            self._libc.mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)


def release_memory() -> None:
    """Give freed memory that is being retained back to the operating system (``malloc_trim``)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def memory_retention() -> dict[str, object]:
    """Whether retention is on, its limit in bytes and why (for reports and bug reports)."""
    return {"enabled": _state["enabled"], "limit": _state["limit"], "reason": _state["reason"]}
