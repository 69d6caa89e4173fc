"""The large-kernel depthwise convolution: fft == mixed == direct (values and gradients), auto rule, switches."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from tcnet.models import LargeKernelDWConv, choose_impl, set_lk_impl
from tcnet.models.lk_conv import crop_kernel, dwconv_direct, dwconv_fft, dwconv_mixed

# (B, C, H, W, k): kernel larger than the map, odd and even map sizes, non-square, batch > 1, even k.
SHAPES = [
    (2, 4, 16, 16, 31),
    (1, 3, 7, 9, 31),
    (3, 2, 2, 2, 31),
    (2, 3, 1, 5, 31),
    (2, 5, 33, 20, 13),
    (2, 3, 12, 11, 6),
    (1, 2, 8, 8, 1),
]


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, CUDA])]


@pytest.fixture
def exact_cuda():
    """cuDNN's float32 convolutions run in TF32 by default on Ampere and later (10-bit mantissa):
    the direct reference would then be the inexact one. Off for the comparison."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fft_and_mixed_equal_direct_values_and_grads(shape, layout, device, exact_cuda):
    B, C, H, W, k = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g).to(device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(C, 1, k, k, generator=g).to(device).requires_grad_()
    b = torch.randn(C, generator=g).to(device).requires_grad_()
    # Reference: PyTorch's own "same" padding.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # even k: "may require a zero-padded copy"
        ref = F.conv2d(x, w, b, padding="same", groups=C)
    up = torch.randn(ref.shape, generator=g).to(device)
    ref_grads = torch.autograd.grad(ref, (x, w, b), up)
    for fn in (dwconv_direct, dwconv_fft, dwconv_mixed):
        y = fn(x, w, b)
        assert y.shape == (B, C, H, W)
        assert _rel(y, ref) < 1e-4, fn.__name__
        grads = torch.autograd.grad(y, (x, w, b), up)
        for got, want in zip(grads, ref_grads):
            assert _rel(got, want) < 1e-4, fn.__name__
        if layout == "channels_last" and fn is not dwconv_direct:
            # handed on in the input's layout (the consumers' fast path; lk_conv.py)
            assert y.is_contiguous(memory_format=torch.channels_last), fn.__name__
            assert grads[0].is_contiguous(memory_format=torch.channels_last), fn.__name__


@pytest.mark.parametrize("fn", [dwconv_fft, dwconv_mixed])
def test_gradcheck_float64(fn):
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, v, c: fn(a, v, c), (x, w, b))
    w6 = torch.randn(2, 1, 6, 4, dtype=torch.float64, requires_grad=True)  # even: asymmetric padding
    assert torch.autograd.gradcheck(lambda a, v: fn(a, v), (x, w6))


def test_kernel_crop_is_exact_and_small():
    w = torch.randn(3, 1, 31, 31)
    cropped, pads = crop_kernel(w, 2, 3)
    assert cropped.shape[-2:] == (3, 5) and pads == (2, 2, 1, 1)
    assert torch.equal(cropped, w[..., 14:17, 13:18])
    same, pads = crop_kernel(w, 64, 64)
    assert same.shape == w.shape and pads == (15, 15, 15, 15)


@pytest.mark.parametrize("impl", ["direct", "fft", "mixed", "auto"])
def test_module_channels_last_and_impls_agree(impl):
    torch.manual_seed(0)
    conv = LargeKernelDWConv(8, 31, lk_impl="direct")
    x = torch.randn(2, 8, 16, 16)
    ref = conv(x)
    set_lk_impl(conv, impl)
    x_cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x_cl)
    assert _rel(y, ref) < 1e-4
    y.sum().backward()
    assert x_cl.grad is not None and torch.isfinite(x_cl.grad).all()
    if impl in ("fft", "mixed", "auto"):
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
@pytest.mark.parametrize("impl", ["direct", "fft", "mixed", "auto"])
def test_cpu_bf16_autocast_trains_with_every_impl(impl, layout):
    """Under CPU autocast (train.cpu_bf16) every path runs forward and backward and stays near float32."""
    torch.manual_seed(0)
    conv = LargeKernelDWConv(8, 31, lk_impl=impl)
    x = torch.randn(2, 8, 12, 12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ref = conv(x).detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x.bfloat16().requires_grad_())
    y.float().square().sum().backward()
    assert _rel(y.float(), ref) < 3e-2
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


@pytest.mark.cuda
@CUDA
@pytest.mark.parametrize("layout", ["NCHW", "channels_last"])
@pytest.mark.parametrize("impl", ["direct", "fft", "mixed", "auto"])
def test_cuda_bf16_autocast_trains_with_every_impl(impl, layout):
    """The GPU train step's precision (bf16 autocast, float32 weights) at a TCNet stage shape: every
    path runs forward and backward and stays near float32."""
    torch.manual_seed(0)
    conv = LargeKernelDWConv(64, 31, lk_impl=impl).cuda()
    x = torch.randn(2, 64, 56, 56, device="cuda")
    if layout == "channels_last":
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        ref = dwconv_direct(x, conv.weight, conv.bias).detach()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = conv(x.bfloat16().requires_grad_())
    y.float().square().sum().backward()
    assert _rel(y.float(), ref) < 3e-2
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


def test_module_parameters_match_nn_conv2d():
    conv = LargeKernelDWConv(6, 31)
    ref = torch.nn.Conv2d(6, 6, 31, groups=6)
    assert conv.weight.shape == ref.weight.shape and conv.bias.shape == ref.bias.shape
    assert set(dict(conv.named_parameters())) == {"weight", "bias"}


def test_choose_impl_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_impl(cpu, 64, 112, 112, 31, requires_grad=True) == "fft"
    assert choose_impl(cpu, 64, 112, 112, 31, requires_grad=False) == "fft"
    assert choose_impl(cpu, 64, 56, 56, 13, requires_grad=False) == "direct"
    assert choose_impl(cpu, 64, 56, 56, 13, requires_grad=True) == "mixed"  # NCHW fwd fast below 15
    assert choose_impl(cpu, 64, 56, 56, 5, requires_grad=True) == "mixed"
    assert choose_impl(cpu, 64, 56, 56, 15, requires_grad=True) == "fft"
    assert choose_impl(cpu, 64, 56, 56, 3, requires_grad=True) == "direct"
    assert choose_impl(cpu, 64, 56, 56, 7, requires_grad=True, channels_last=True) == "direct"
    assert choose_impl(cuda, 64, 112, 112, 31) == "direct"
    # CUDA's fallback (where auto cannot measure): fft for channels_last maps >= 56² at k >= 25
    assert choose_impl(cuda, 64, 112, 112, 31, channels_last=True) == "fft"
    assert choose_impl(cuda, 64, 56, 56, 25, channels_last=True) == "fft"
    assert choose_impl(cuda, 64, 28, 28, 31, channels_last=True) == "direct"
    assert choose_impl(cuda, 64, 112, 112, 21, channels_last=True) == "direct"
    assert choose_impl("meta", 64, 112, 112, 31) == "direct"
    # channels_last inference: oneDNN's CL depthwise forward wins on small maps, fft only on big ones
    assert choose_impl(cpu, 64, 112, 112, 31, requires_grad=False, channels_last=True) == "fft"
    assert choose_impl(cpu, 256, 28, 28, 31, requires_grad=False, channels_last=True) == "direct"
    assert choose_impl(cpu, 64, 56, 56, 21, requires_grad=False, channels_last=True) == "direct"
    assert choose_impl(cpu, 256, 28, 28, 31, requires_grad=True, channels_last=True) == "fft"
    # channels_last training on small maps: direct forward and input gradient, fft weight gradient
    assert choose_impl(cpu, 512, 14, 14, 31, requires_grad=True, channels_last=True) == "mixed"
    assert choose_impl(cpu, 512, 20, 20, 31, requires_grad=True, channels_last=True) == "mixed"
    assert choose_impl(cpu, 512, 14, 14, 31, requires_grad=True) == "fft"  # NCHW: oneDNN's cliff
    assert choose_impl(cpu, 512, 14, 14, 7, requires_grad=True, channels_last=True) == "direct"


def test_auto_sees_the_layout():
    conv = LargeKernelDWConv(8, 31, lk_impl="auto").to(memory_format=torch.channels_last)
    small = torch.randn(1, 8, 14, 14)
    with torch.inference_mode():
        assert conv.resolved_impl(small) == "fft"
        assert conv.resolved_impl(small.contiguous(memory_format=torch.channels_last)) == "direct"
        big = torch.randn(1, 8, 64, 64).contiguous(memory_format=torch.channels_last)
        assert conv.resolved_impl(big) == "fft"
        # both paths give the same numbers in channels_last
        ref = conv(small)
        set_lk_impl(conv, "direct")
        torch.testing.assert_close(conv(small.contiguous(memory_format=torch.channels_last)), ref,
                                   rtol=1e-4, atol=1e-4)


def test_auto_resolves_per_call():
    conv = LargeKernelDWConv(4, 31, lk_impl="auto")
    x = torch.randn(1, 4, 8, 8)
    assert conv.resolved_impl(x) == "fft"  # the weight needs a gradient
    with torch.no_grad():
        assert conv.resolved_impl(x) == "fft"
    small = LargeKernelDWConv(4, 7, lk_impl="auto")
    assert small.resolved_impl(x) == "mixed"  # training, NCHW, 5 <= k < 15
    with torch.no_grad():
        assert small.resolved_impl(x) == "direct"


def test_auto_takes_mixed_for_small_channels_last_training_maps():
    torch.manual_seed(0)
    conv = LargeKernelDWConv(8, 31, lk_impl="auto").to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 14, 14).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert conv.resolved_impl(x) == "mixed"
    y = conv(x)
    y.backward(torch.ones_like(y))
    grads = [t.grad.clone() for t in (x, conv.weight, conv.bias)]
    for t in (x, conv.weight, conv.bias):
        t.grad = None
    set_lk_impl(conv, "direct")
    ref = conv(x)
    ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    for got, t in zip(grads, (x, conv.weight, conv.bias)):
        torch.testing.assert_close(got, t.grad, rtol=1e-4, atol=1e-4)


def test_bad_impl_lists_choices():
    with pytest.raises(ValueError, match="did you mean 'fft'.*valid: auto, direct, fft, mixed"):
        LargeKernelDWConv(4, 31, lk_impl="fftt")
    with pytest.raises(ValueError, match="valid: auto, direct, fft, mixed"):
        set_lk_impl(torch.nn.Identity(), "cudnn")
