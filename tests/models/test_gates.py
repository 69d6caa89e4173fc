"""The CBAM gates' CPU autograd Functions equal the plain formulas, values and gradients."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from tcnet.models.gates import channel_gate, spatial_gate
from tcnet.models.layers import HAM


def plain_channel(x, w1, w2):
    mlp = lambda d: F.conv2d(F.relu(F.conv2d(d, w1)), w2)  # noqa: E731
    return x * torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))


def plain_spatial(x, w, b):
    desc = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], dim=1)
    return x * torch.sigmoid(F.conv2d(desc, w, b, padding=w.shape[-1] // 2))


def _params(C, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = max(C // 4, 1)
    return [torch.randn(*s, generator=g, dtype=dtype).requires_grad_()
            for s in ((r, C, 1, 1), (C, r, 1, 1), (1, 2, 7, 7), (1,))]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shape", [(2, 8, 9, 11), (1, 3, 1, 1), (3, 16, 4, 4)], ids=lambda s: "x".join(map(str, s)))
def test_gates_equal_plain_formulas(shape, channels_last):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w1, w2, w, b = _params(shape[1])
    up = torch.randn(shape, generator=g)
    for fast, plain, params in ((channel_gate, plain_channel, (w1, w2)), (spatial_gate, plain_spatial, (w, b))):
        y, y_ref = fast(x, *params), plain(x, *params)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)
        got = torch.autograd.grad(y, (x, *params), up)
        want = torch.autograd.grad(y_ref, (x, *params), up)
        for a, e in zip(got, want):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_channel_gate_backward_with_an_odd_gradient_layout():
    # The output gradient arrives with W outside H (a transposed view): the scatter must still land.
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    w1, w2, _, _ = _params(3)
    up = torch.randn(2, 3, 4, 5).transpose(2, 3)
    (got,) = torch.autograd.grad(channel_gate(x, w1, w2), x, up)
    (want,) = torch.autograd.grad(plain_channel(x, w1, w2), x, up)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_gates_gradcheck_float64():
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64, requires_grad=True)
    w1, w2, w, b = _params(4, torch.float64)
    assert torch.autograd.gradcheck(channel_gate, (x, w1, w2))
    assert torch.autograd.gradcheck(spatial_gate, (x, w, b))


def test_max_ties_give_the_gradient_to_one_position():
    # A constant map: every position ties for the max. Plain autograd shares the max's gradient;
    # the CPU path gives it to one position. The total is the same (both are subgradients).
    x = torch.ones(1, 2, 3, 3, requires_grad=True)
    w1, w2, _, _ = _params(2)
    up = torch.ones(1, 2, 3, 3)
    (gx,) = torch.autograd.grad(channel_gate(x, w1, w2), x, up)
    (gx_ref,) = torch.autograd.grad(plain_channel(x, w1, w2), x, up)
    torch.testing.assert_close(gx.sum((2, 3)), gx_ref.sum((2, 3)))


def test_no_grad_and_inference_take_the_plain_path():
    x = torch.randn(2, 8, 5, 5)
    w1, w2, w, b = _params(8)
    with torch.no_grad():
        torch.testing.assert_close(channel_gate(x, w1, w2), plain_channel(x, w1, w2))
        torch.testing.assert_close(spatial_gate(x, w, b), plain_spatial(x, w, b))


def test_ham_state_dict_and_grads_unchanged():
    ham = HAM(32)
    assert sorted(ham.state_dict()) == ["ca.fc1.weight", "ca.fc2.weight", "sa.conv.bias", "sa.conv.weight"]
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    ham(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in ham.parameters())


def test_even_spatial_kernel_is_refused():
    from tcnet.models.layers import SpatialAttention

    with pytest.raises(ValueError, match="odd kernel_size"):
        SpatialAttention(6)


@pytest.mark.slow
@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="torch.compile on CPU needs a C++ compiler")
def test_torch_compile_keeps_values_and_grads():
    # train.compile: true compiles the model; the CPU autograd Functions (gates, FFT convolution)
    # must survive dynamo and give the eager numbers.
    from torch import nn

    from tcnet.models.lk_conv import LargeKernelDWConv

    torch.manual_seed(0)
    model = nn.Sequential(LargeKernelDWConv(8, 31, lk_impl="fft"), HAM(8))
    x = torch.randn(2, 8, 32, 32, requires_grad=True)
    inputs = [x, *model.parameters()]
    want_y = model(x)
    want = torch.autograd.grad(want_y.square().sum(), inputs)
    got_y = torch.compile(model)(x)
    got = torch.autograd.grad(got_y.square().sum(), inputs)
    torch.testing.assert_close(got_y, want_y)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


def test_spatial_gate_without_bias():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, k: spatial_gate(a, k, None), (x, w))
    torch.testing.assert_close(spatial_gate(x, w, None), plain_spatial(x, w, None))
