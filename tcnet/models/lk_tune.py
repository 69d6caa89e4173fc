"""``lk_impl="auto"`` on a GPU: time the candidates once per shape and keep the fastest.

Why measure instead of a rule: on an H200 (``python -m benchmarks lkconv --device cuda``,
docs/performance.md §7) no shape rule held. cuDNN's NCHW depthwise kernels beat the FFT at most
TCNet shapes at batch 2, its channels_last ones took up to 6× the FFT's time on 56² and larger
maps, the FFT's fixed cost (~2 ms a call at batch 2) is paid back only on large maps or batches,
and ``mixed`` wins some shapes in between. A rule measured on one GPU and batch would be a guess on
another. So, as ``torch.backends.cudnn.benchmark`` does for cuDNN's own algorithms, the first call
with a new key -- device, shape, dtype (autocast's included), layout, kernel size, whether
gradients are needed -- times each candidate on detached copies of its inputs (forward, or
forward + backward when training; cuDNN's own autotuning off meanwhile) and the fastest serves
every later call with that key, for the life of the process. The cost is paid once per key: one
warm-up and three timed calls of each candidate: with batch 15 at 448², about 0.6 s for
tcnet_base's slowest key (its 112² maps in channels_last) and some 2 s for all its keys, estimated
from lkconv's per-call times on an H200 (not timed as a whole). A candidate that fails (out of memory mid-step) is ruled out.

Not measured (the static rule of :func:`tcnet.models.lk_conv.choose_impl` instead): CPU devices
(a slow direct candidate costs seconds there; the CPU rule is measured, see its docstring),
deterministic mode (``torch.use_deterministic_algorithms``: a timing-dependent choice would make two
runs differ in rounding), and tracing, compiling or CUDA-graph capture (no timing inside a graph).
A key measured before, in eager calls, keeps its measured choice there too (:func:`cached_impl`):
warm up eagerly, then compile or capture, and the graph runs what was measured.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

TUNE_REPEATS = 3  # timed calls per candidate (after one warm-up); the minimum counts
_CACHE: dict[tuple, str] = {}


def clear_cache() -> None:
    """Forget every measured choice (the next call of each key measures again)."""
    _CACHE.clear()


def cached_choices() -> dict[tuple, str]:
    """The measured choices so far, ``{key: impl}`` (a copy)."""
    return dict(_CACHE)


def can_tune(x: torch.Tensor) -> bool:
    """Whether a call on ``x`` may be timed: a CUDA tensor, outside deterministic mode, tracing,
    compiling and CUDA-graph capture."""
    if x.device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        return False
    if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
        return False
    return not torch.cuda.is_current_stream_capturing()


def cached_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                channels_last: bool) -> Optional[str]:
    """The choice measured earlier for this call's key, or ``None``. Read where measuring is not
    possible (compiling, tracing, CUDA-graph capture), so that a graph made after eager warm-up
    steps runs the measured choices, not the fixed rule."""
    if not _CACHE or x.device.type != "cuda":
        return None
    return _CACHE.get(tune_key(x, weight, bias, _grads(x, weight, bias), channels_last))


def _grads(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple[bool, bool, bool]:
    on = torch.is_grad_enabled()
    return (on and x.requires_grad, on and weight.requires_grad, on and bias is not None and bias.requires_grad)


def tune_key(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], grads: tuple[bool, bool, bool],
             channels_last: bool) -> tuple:
    """What decides which implementation is fastest: device, shapes, dtypes (autocast's too), layout,
    which of input, weight and bias need gradients, and cuDNN's TF32 switch (direct's float32 speed)."""
    dev = x.device.type
    amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
    return (str(x.device), tuple(x.shape), x.dtype, amp, channels_last, tuple(grads), tuple(weight.shape),
            weight.dtype, bias is not None, bool(torch.backends.cudnn.allow_tf32))


def _best(fns: dict[str, Callable[[], None]], sync: Callable[[], None], repeats: int) -> str:
    """The fastest of ``fns``; one that fails (out of memory in the middle of a step) is ruled out."""
    times = {}
    for name, fn in fns.items():
        try:
            fn()  # warm-up: cuFFT plans, cuDNN's heuristics, the caching allocator
            sync()
            best = float("inf")
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                sync()
                best = min(best, time.perf_counter() - t)
        except (torch.OutOfMemoryError, RuntimeError):
            best = float("inf")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        times[name] = best
    if all(t == float("inf") for t in times.values()):
        return "direct"  # none could be timed: the reference implementation, whose own call will say why
    return min(times, key=times.get)


def measured_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], channels_last: bool,
                  impls: dict[str, Callable], repeats: int = TUNE_REPEATS) -> str:
    """The fastest of ``impls`` (``name -> fn(x, weight, bias)``) for this call's key, measured on the
    first call with that key and cached. The copies it times need the gradients the call needs
    (forward + backward when any does; ``mixed``, whose gain is the weight gradient, only then)."""
    grads = _grads(x, weight, bias)
    key = tune_key(x, weight, bias, grads, channels_last)
    if key in _CACHE:
        return _CACHE[key]
    grad = any(grads)
    xd = x.detach().requires_grad_(grads[0])
    wd = weight.detach().requires_grad_(grads[1])
    bd = None if bias is None else bias.detach().requires_grad_(grads[2])
    leaves = [t for t in (xd, wd, bd) if t is not None]

    def make(fn):
        if not grad:
            def run():
                with torch.no_grad():
                    fn(xd, wd, bd)
            return run

        def run():
            with torch.enable_grad():
                y = fn(xd, wd, bd)
            y.backward(torch.ones_like(y))  # ones_like keeps y's memory format: the real gradient's
            for t in leaves:
                t.grad = None
        return run

    candidates = {n: make(f) for n, f in impls.items() if grad or n != "mixed"}
    sync = (lambda: torch.cuda.synchronize(x.device)) if x.device.type == "cuda" else (lambda: None)
    # cuDNN's own autotuning (cudnn.benchmark, on in the paper profile) off while timing: it would
    # search every algorithm of direct's channels_last depthwise kernels first, which took minutes
    # on an H200. Where direct wins, the real calls autotune it after.
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        _CACHE[key] = _best(candidates, sync, repeats)
    finally:
        torch.backends.cudnn.benchmark = benchmark
    return _CACHE[key]
