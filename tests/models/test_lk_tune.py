"""lk_impl="auto" on CUDA: the fastest candidate is measured once per key and cached (lk_tune.py).

The measuring code is device-agnostic; the CPU tests drive it directly with candidates of known
speed (one sleeps), the CUDA tests through the module.
"""

from __future__ import annotations

import time
import types

import pytest
import torch

from tcnet.models import LargeKernelDWConv
from tcnet.models import lk_conv, lk_tune
from tcnet.models.lk_conv import IMPL_FUNCTIONS, dwconv_direct, dwconv_fft, dwconv_mixed

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _empty_cache():
    lk_tune.clear_cache()
    yield
    lk_tune.clear_cache()


def _counted(fn, calls: dict, name: str, delay: float = 0.0):
    def run(x, w, b):
        calls[name] = calls.get(name, 0) + 1
        if delay:
            time.sleep(delay)
        return fn(x, w, b)
    return run


def _inputs(grad: bool = True):
    x = torch.randn(2, 4, 16, 16, requires_grad=grad)
    w = torch.randn(4, 1, 7, 7, requires_grad=grad)
    b = torch.randn(4, requires_grad=grad)
    return x, w, b


def test_the_fastest_is_kept_and_the_next_call_measures_nothing():
    calls: dict = {}
    impls = {"direct": _counted(dwconv_direct, calls, "direct", delay=0.02),
             "fft": _counted(dwconv_fft, calls, "fft"),
             "mixed": _counted(dwconv_mixed, calls, "mixed", delay=0.02)}
    x, w, b = _inputs()
    assert lk_tune.measured_impl(x, w, b, False, impls) == "fft"
    assert calls == {n: 1 + lk_tune.TUNE_REPEATS for n in impls}  # warm-up + timed calls, each
    # the timing ran on detached copies: nothing reached the caller's tensors
    assert x.grad is None and w.grad is None and b.grad is None
    assert lk_tune.measured_impl(x, w, b, False, impls) == "fft"
    assert calls == {n: 1 + lk_tune.TUNE_REPEATS for n in impls}  # cached
    assert list(lk_tune.cached_choices().values()) == ["fft"]


def test_a_failing_candidate_is_ruled_out_and_cudnn_autotuning_is_off_meanwhile(monkeypatch):
    seen = []

    def out_of_memory(x, w, b):
        seen.append(torch.backends.cudnn.benchmark)
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    x, w, b = _inputs()
    impls = {"direct": out_of_memory, "fft": dwconv_fft, "mixed": out_of_memory}
    assert lk_tune.measured_impl(x, w, b, False, impls) == "fft"
    assert seen == [False, False] and torch.backends.cudnn.benchmark is True  # restored
    lk_tune.clear_cache()
    assert lk_tune.measured_impl(x, w, b, False, {"direct": out_of_memory, "fft": out_of_memory}) == "direct"


def test_without_gradients_mixed_is_not_a_candidate_and_is_timed_forward_only():
    calls: dict = {}
    impls = {"direct": _counted(dwconv_direct, calls, "direct"),
             "fft": _counted(dwconv_fft, calls, "fft", delay=0.02),
             "mixed": _counted(dwconv_mixed, calls, "mixed")}
    x, w, b = _inputs(grad=False)
    with torch.inference_mode():
        assert lk_tune.measured_impl(x, w, b, False, impls) == "direct"
    assert "mixed" not in calls


def test_the_copies_need_the_gradients_the_call_needs():
    """A frozen kernel (fine-tuning) is timed without a weight gradient: that is mixed's only gain."""
    got = []

    def record(x, w, b):
        got.append((x.requires_grad, w.requires_grad, b.requires_grad))
        return dwconv_direct(x, w, b)

    x = torch.randn(1, 2, 8, 8, requires_grad=True)
    w, b = torch.randn(2, 1, 5, 5), torch.randn(2)
    lk_tune.measured_impl(x, w, b, False, {"direct": record})
    assert set(got) == {(True, False, False)}
    assert [k[5] for k in lk_tune.cached_choices()] == [(True, False, False)]


def test_the_key_separates_layout_gradients_shape_dtypes_and_autocast():
    x, w, b = _inputs()
    g, none = (True, True, True), (False, False, False)
    keys = {lk_tune.tune_key(x, w, b, g, False), lk_tune.tune_key(x, w, b, none, False),
            lk_tune.tune_key(x, w, b, (True, False, False), False), lk_tune.tune_key(x, w, b, g, True),
            lk_tune.tune_key(x[:1], w, b, g, False), lk_tune.tune_key(x, w, None, g, False),
            lk_tune.tune_key(x, w.double(), b, g, False), lk_tune.tune_key(x.double(), w, b, g, False)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        keys.add(lk_tune.tune_key(x, w, b, g, False))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=not torch.backends.cudnn.allow_tf32):
        keys.add(lk_tune.tune_key(x, w, b, g, False))
    assert len(keys) == 10
    # the device is part of it (stand-ins for tensors on two GPUs: the key reads device, shape, dtype)
    gpu0, gpu1 = (types.SimpleNamespace(device=torch.device("cuda", i), shape=x.shape, dtype=x.dtype) for i in (0, 1))
    assert lk_tune.tune_key(gpu0, w, b, g, False) != lk_tune.tune_key(gpu1, w, b, g, False)


def test_nothing_is_measured_on_cpu_in_deterministic_mode_or_while_tracing(monkeypatch):
    x = torch.randn(1, 2, 8, 8)
    assert not lk_tune.can_tune(x)  # CPU: the measured static rule (choose_impl)
    conv = LargeKernelDWConv(2, 7, lk_impl="auto")
    conv(x)
    assert lk_tune.cached_choices() == {}
    # The other refusals, on a stand-in for a CUDA tensor (can_tune reads only its device).
    fake = types.SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert lk_tune.can_tune(fake)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert not lk_tune.can_tune(fake)
    finally:
        torch.use_deterministic_algorithms(before)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert not lk_tune.can_tune(fake)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not lk_tune.can_tune(fake)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    monkeypatch.setattr(torch.jit, "is_tracing", lambda: True)
    assert not lk_tune.can_tune(fake)


def test_a_measured_choice_is_looked_up_by_its_key_where_nothing_may_be_measured():
    x, w, b = _inputs()
    # a stand-in for a CUDA tensor: the key reads device, shape, dtype and requires_grad
    fake = types.SimpleNamespace(device=torch.device("cuda", 0), shape=x.shape, dtype=x.dtype, requires_grad=True)
    assert lk_tune.cached_impl(fake, w, b, False) is None  # nothing measured yet
    lk_tune._CACHE[lk_tune.tune_key(fake, w, b, (True, True, True), False)] = "mixed"
    assert lk_tune.cached_impl(fake, w, b, False) == "mixed"
    assert lk_tune.cached_impl(fake, w, b, True) is None  # another layout: another key
    with torch.no_grad():
        assert lk_tune.cached_impl(fake, w, b, False) is None  # inference: another key
    assert lk_tune.cached_impl(x, w, b, False) is None  # CPU: never measured, never looked up


@pytest.mark.cuda
@CUDA
def test_cuda_capture_after_eager_warm_up_runs_the_measured_choice(monkeypatch):
    torch.manual_seed(0)
    conv = LargeKernelDWConv(32, 31, lk_impl="auto").cuda().to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 56, 56, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        eager = conv(x)
    assert len(lk_tune.cached_choices()) == 1
    # The fixed rule says fft for this shape (channels_last, 56², k = 31): a cached "direct" shows
    # that the capture read the cache.
    assert lk_conv.choose_impl(x.device, 32, 56, 56, 31, requires_grad=False, channels_last=True) == "fft"
    monkeypatch.setattr(lk_tune, "_CACHE", {k: "direct" for k in lk_tune.cached_choices()})
    graph = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s), torch.no_grad():
        conv(x)  # warm-up on the side stream, as CUDA-graph capture wants
    torch.cuda.current_stream().wait_stream(s)
    with torch.no_grad(), torch.cuda.graph(graph):
        assert conv.resolved_impl(x) == "direct"  # the cache, not the fixed rule
        static = conv(x)
    graph.replay()
    torch.cuda.synchronize()
    assert float((static - eager).abs().max() / eager.abs().max()) < 1e-3


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
def test_cuda_auto_measures_once_per_key_and_computes_the_same(layout, monkeypatch):
    measured = []
    real_best = lk_tune._best
    monkeypatch.setattr(lk_tune, "_best", lambda *a, **k: measured.append(1) or real_best(*a, **k))
    torch.manual_seed(0)
    conv = LargeKernelDWConv(32, 31, lk_impl="auto").cuda()
    x = torch.randn(2, 32, 56, 56, device="cuda")
    if layout == "channels_last":
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = conv(x)
    choices = lk_tune.cached_choices()
    assert len(choices) == 1 and set(choices.values()) <= set(IMPL_FUNCTIONS) and len(measured) == 1
    y.sum().backward()
    conv(x)
    assert len(measured) == 1  # the second call of the key measured nothing
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        xr = x.detach().requires_grad_()
        wr = conv.weight.detach().requires_grad_()
        ref = dwconv_direct(xr, wr, conv.bias.detach())
        ref.sum().backward()
    assert float((y.detach() - ref.detach()).abs().max() / ref.abs().max()) < 1e-4
    assert float((conv.weight.grad - wr.grad).abs().max() / wr.grad.abs().max()) < 1e-4
    assert float((x.grad - xr.grad).abs().max() / xr.grad.abs().max()) < 1e-4
    with torch.no_grad():
        conv(x)
    assert len(lk_tune.cached_choices()) == 2 and len(measured) == 2  # inference is its own key
