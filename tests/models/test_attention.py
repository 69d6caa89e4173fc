"""The attention's projection routes: oneDNN 1×1 convolution == F.linear (values, gradients, layouts)."""

import pytest
import torch

from tcnet.models import attention
from tcnet.models.attention import SpatialReductionAttention, project


def _grads(module, x, onednn):
    module.onednn = onednn
    try:
        y = module(x)
        g = torch.autograd.grad(y, [x, *module.parameters()], torch.ones_like(y))
    finally:
        module.onednn = None
    return y, g


@pytest.mark.parametrize("channels_last", [False, True])
def test_project_routes_agree(channels_last):
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 12)
    x = torch.randn(2, 8, 5, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    outs = {}
    for route in (False, True):
        y = project(x, lin, onednn=route)
        assert y.shape == (2, 12, 5, 3)
        up = torch.randn(2, 12, 5, 3, generator=torch.Generator().manual_seed(1))
        outs[route] = (y, torch.autograd.grad(y, [x, lin.weight, lin.bias], up))
    (y0, g0), (y1, g1) = outs[False], outs[True]
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the reference written out: every pixel through the linear layer
    ref = torch.einsum("bchw,oc->bohw", x, lin.weight) + lin.bias[:, None, None]
    torch.testing.assert_close(y1, ref, rtol=1e-5, atol=1e-5)


def test_auto_route_by_size(monkeypatch):
    calls = []
    conv2d = torch.nn.functional.conv2d
    monkeypatch.setattr(attention.F, "conv2d", lambda *a, **k: calls.append(a[0].shape) or conv2d(*a, **k))
    lin = torch.nn.Linear(64, 64)
    project(torch.randn(1, 64, 4, 4), lin)  # 16 × 64 × 64 MACs: F.linear
    assert calls == []
    big = torch.randn(2, 64, 32, 32)  # 2048 × 64 × 64 = 8.4 M: oneDNN
    assert big.numel() * 64 >= attention.ONEDNN_MIN_MACS
    project(big, lin)
    assert calls == [big.shape]
    calls.clear()
    project(torch.randn(2, 64, 32, 32, device="meta"), lin.to("meta"))  # off the CPU: always F.linear
    assert calls == []


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_routes_agree(channels_last):
    torch.manual_seed(0)
    attn = SpatialReductionAttention(16, num_heads=2, sr_ratio=2)
    x = torch.randn(2, 16, 8, 6)
    if channels_last:
        attn = attn.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y0, g0 = _grads(attn, x, False)
    for route in (True, None):
        y, g = _grads(attn, x, route)
        torch.testing.assert_close(y, y0, rtol=1e-5, atol=1e-5)
        for a, b in zip(g, g0):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert attn.onednn is None  # restored
    if channels_last:  # handed on in the input's layout by either route
        assert y0.is_contiguous(memory_format=torch.channels_last)


def test_graph_capture_keeps_the_linear_graph():
    # Above the threshold eager CPU takes the 1×1 convolution; a traced (exported) graph keeps
    # F.linear, so no size test is baked into it.
    attn = SpatialReductionAttention(64, num_heads=1, sr_ratio=1).eval()
    x = torch.randn(2, 64, 32, 32)
    assert x.numel() * 64 >= attention.ONEDNN_MIN_MACS
    with torch.no_grad():
        traced = torch.jit.trace(attn, x)
        graph = str(traced.inlined_graph)
        assert "aten::linear" in graph and "aten::_convolution" not in graph
        torch.testing.assert_close(traced(x), attn(x), rtol=1e-5, atol=1e-5)
