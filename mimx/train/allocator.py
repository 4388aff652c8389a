"""Host memory allocator setting for CPU training.

glibc serves every allocation above its mmap threshold (32 MiB at most) from
fresh pages and returns them to the system when the tensor is freed, so a CPU
training step pays page faults and page zeroing again, every step, for each
large activation (the ``[B, heads, N, N]`` attention matrices of a video
decoder are 30-60 MiB each). ``heap`` serves all allocations from the heap
and keeps freed memory for reuse, which is what a caching allocator does on a
GPU. It changes no result, only where the bytes come from; the process keeps
its peak memory instead of giving it back between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch

from mimx.config import UserError

MODES = ("auto", "heap", "system")
_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_applied: str | None = None


def _mallopt() -> ctypes._CFuncPtr | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return getattr(libc, "mallopt", None)


def tune_cpu_allocator(mode: str, device: torch.device) -> str:
    """Apply ``mode`` (``auto``: ``heap`` when training on the CPU) and return what is in effect.

    Returns ``heap``, or ``system`` where nothing was changed (a GPU device,
    ``mode=system``, or a C library other than glibc).
    """
    global _applied
    if mode not in MODES:
        raise UserError(f"cpu_allocator={mode!r}; choose one of {', '.join(MODES)}")
    if mode == "system" or (mode == "auto" and device.type != "cpu"):
        return _applied or "system"
    if _applied == "heap":
        return _applied
    mallopt = _mallopt()
    if mallopt is None:
        if mode == "heap":
            raise UserError("cpu_allocator=heap needs glibc on Linux; use auto or system here")
        return "system"
    # no mmap'd chunks: large tensors come from the heap; trim only above 1 GiB of free top-of-heap memory
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, 1 << 30) != 1:
        return "system"
    _applied = "heap"
    return _applied
