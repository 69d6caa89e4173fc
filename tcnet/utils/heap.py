"""Keep freed heap memory in the process instead of handing it back to the kernel (glibc only).

glibc's malloc serves blocks above a (dynamic) threshold with ``mmap`` and returns them with
``munmap`` on ``free``, and trims freed memory at the top of the heap back to the kernel. A worker
that decodes one full-size image after another then gets fresh pages for every image, and every
first touch of a fresh page is a page fault: decoding and resizing ISIC-like pairs (1024×768) took
~1 750 faults per pair, and ~30 % of the workers' CPU time went with them on the project's VM
(``python -m benchmarks preprocess``: its page-fault table; ``docs/performance.md`` §3).

:func:`retain_freed_memory` sets a fixed ``mmap`` threshold at glibc's maximum (32 MiB on 64-bit)
and a trim threshold (256 MiB by default), so those blocks come from the heap and are reused. The
memory a process keeps is bounded by its own peak heap; in this default form blocks above 32 MiB
are still mapped and unmapped.

Training needs the no-trim form (``trim_threshold=None``): a train step frees most of its
activations in the backward pass -- far more than 256 MiB at the top of the heap -- and glibc
trimmed them after every step, so the next forward faulted them in again. Measured in a process of
its own, as the train stage runs (``python -m benchmarks cpu_settings``, its heap table;
``docs/performance.md``): the page faults of a tcnet_base / U-Net step at 448², batch 2.
The no-trim form also turns ``mmap`` off (``M_MMAP_MAX = 0``), so that blocks above the 32 MiB
cap come from the heap too and are kept: a U-Net step at 448², batch 4 has activations of 50-100
MiB, mapped afresh on every step otherwise (125 000 page faults per step with trimming off alone,
``python -m benchmarks train_step --batch 4``; none with ``mmap`` off). Where the heap cannot
grow, glibc still falls back to ``mmap``.

Inference (the evaluate stage, ``tcnet predict``) uses no trimming but leaves ``mmap`` on for the
blocks above the cap (``large_blocks=False``): same speed for TCNet at 448², batch 8, part of it
for U-Net, and no heap growth beyond the live peak for models with huge activations
(``python -m benchmarks cpu_settings --only heap_infer``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 256 * 1024 * 1024


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 -- musl and others have no such symbol: not glibc
        return libc
    except (OSError, AttributeError):
        return None


INFERENCE_FORM = {"trim_threshold": None, "large_blocks": False}  # the evaluate stage's and predict's


def retain_freed_memory_for_inference() -> bool:
    """:func:`retain_freed_memory` in the form for inference (``INFERENCE_FORM``: no trimming, blocks
    above the ``mmap`` cap still mapped; see the module docstring): the evaluate stage and ``tcnet
    predict`` on CPU."""
    return retain_freed_memory(**INFERENCE_FORM)


def retain_freed_memory(trim_threshold: int | None = TRIM_THRESHOLD, *, large_blocks: bool | None = None) -> bool:
    """Tune this process's glibc malloc to reuse freed blocks (see the module docstring).

    ``trim_threshold``: bytes of free memory at the top of the heap that glibc keeps rather than
    returns to the kernel; ``None`` never returns it. ``large_blocks``: serve the blocks above the
    32 MiB ``mmap`` cap from the heap as well (``mmap`` off) and keep them; default: only with
    ``trim_threshold=None`` (the train stage's form: the process keeps its peak heap). Inference
    passes ``trim_threshold=None, large_blocks=False``: a forward frees activations of many sizes
    in a different order than a train step, and with every block on the heap the heap grew well
    above the live peak for the largest models (UNet3+ at 448², batch 4: 11.7 against 8.7 GiB; a
    process running several models at batch 8 ran out of 24 GiB), while blocks above the cap that
    stay mapped are handed back whole.
    Returns True where applied; False where the C library is not glibc (macOS, musl, Windows),
    where it is a no-op. Call it once, early, in a process of its own (a worker, a stage): it changes
    the whole process, and glibc's default dynamic thresholds cannot be restored afterwards.
    """
    if trim_threshold is not None and not 0 <= trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be None or 0 <= bytes < 2**31 (a C int), got {trim_threshold}")
    if large_blocks is None:
        large_blocks = trim_threshold is None
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    if large_blocks:
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and ok
    # -1 disables trimming altogether (mallopt(3)).
    return libc.mallopt(_M_TRIM_THRESHOLD, -1 if trim_threshold is None else trim_threshold) == 1 and ok
