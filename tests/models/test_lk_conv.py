"""The large-kernel depthwise convolution: fft == direct (values and gradients), auto rule, switches."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from tcnet.models import LargeKernelDWConv, choose_impl, set_lk_impl
from tcnet.models.lk_conv import crop_kernel, dwconv_direct, dwconv_fft

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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_fft_equals_direct_values_and_grads(shape):
    B, C, H, W, k = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=g, requires_grad=True)
    w = torch.randn(C, 1, k, k, generator=g, requires_grad=True)
    b = torch.randn(C, generator=g, requires_grad=True)
    # Reference: PyTorch's own "same" padding.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # even k: "may require a zero-padded copy"
        ref = F.conv2d(x, w, b, padding="same", groups=C)
    up = torch.randn(ref.shape, generator=g)
    ref_grads = torch.autograd.grad(ref, (x, w, b), up)
    for fn in (dwconv_direct, dwconv_fft):
        y = fn(x, w, b)
        assert y.shape == (B, C, H, W)
        assert _rel(y, ref) < 1e-4, fn.__name__
        for got, want in zip(torch.autograd.grad(y, (x, w, b), up), ref_grads):
            assert _rel(got, want) < 1e-4, fn.__name__


def test_fft_gradcheck_float64():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: dwconv_fft(a, b), (x, w))


def test_kernel_crop_is_exact_and_small():
    w = torch.randn(3, 1, 31, 31)
    cropped, pads = crop_kernel(w, 2, 3)
    assert cropped.shape[-2:] == (3, 5) and pads == (2, 2, 1, 1)
    assert torch.equal(cropped, w[..., 14:17, 13:18])
    same, pads = crop_kernel(w, 64, 64)
    assert same.shape == w.shape and pads == (15, 15, 15, 15)


@pytest.mark.parametrize("impl", ["direct", "fft", "auto"])
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
    if impl == "fft":
        assert y.is_contiguous(memory_format=torch.channels_last)


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
    assert choose_impl(cpu, 64, 56, 56, 13, requires_grad=True) == "fft"
    assert choose_impl(cpu, 64, 56, 56, 3, requires_grad=True) == "direct"
    assert choose_impl(cuda, 64, 112, 112, 31) == "direct"
    assert choose_impl("meta", 64, 112, 112, 31) == "direct"
    # channels_last inference: oneDNN's CL depthwise forward wins on small maps, fft only on big ones
    assert choose_impl(cpu, 64, 112, 112, 31, requires_grad=False, channels_last=True) == "fft"
    assert choose_impl(cpu, 256, 28, 28, 31, requires_grad=False, channels_last=True) == "direct"
    assert choose_impl(cpu, 64, 56, 56, 21, requires_grad=False, channels_last=True) == "direct"
    assert choose_impl(cpu, 256, 28, 28, 31, requires_grad=True, channels_last=True) == "fft"


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
    assert small.resolved_impl(x) == "direct"


def test_bad_impl_lists_choices():
    with pytest.raises(ValueError, match="did you mean 'fft'.*valid: auto, direct, fft"):
        LargeKernelDWConv(4, 31, lk_impl="fftt")
    with pytest.raises(ValueError, match="valid: auto, direct, fft"):
        set_lk_impl(torch.nn.Identity(), "cudnn")
