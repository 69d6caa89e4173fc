"""Large-kernel depthwise convolution with a choice of implementation (``lk_impl``).

TCNet's 31×31 depthwise convolutions dominate its cost on CPU: oneDNN's depthwise kernels fall off
a cliff for kernels of 15 and more, and their backward pass is slow at every large size. The same
convolution through the FFT is exact up to float rounding and 15-30× faster for training on CPU.

``lk_impl``:

- ``"direct"``: ``F.conv2d(groups=C)``, what cuDNN / oneDNN do; the form to export (ONNX,
  TorchScript, ``torch.export``) and to count FLOPs with.
- ``"fft"``: ``rfft2`` of the zero-padded input and kernel, a product, ``irfft2``, a crop; the
  input and weight gradients are two more products in the same Fourier grid (``_FFTDepthwise``).
- ``"mixed"``: the forward and the input gradient direct, the weight gradient through the FFT
  (``_MixedDepthwise``): where oneDNN's depthwise forward is fast (channels_last maps at any
  kernel size, NCHW below k = 15) only its weight gradient is slow, and on small maps or kernels
  the FFT's fixed costs lose to the direct forward.
- ``"auto"``: on CUDA, the fastest of the three measured once per shape (:mod:`tcnet.models.lk_tune`);
  elsewhere (and where CUDA cannot measure) :func:`choose_impl` per call, from the device, the
  shape, the layout and whether gradients are needed.

The fft and mixed paths first crop the kernel to the part that can reach the map: with "same" zero padding
an output pixel only sees input pixels within ``H-1`` rows and ``W-1`` columns, so on a 2×2 map
only the central 3×3 of a 31×31 kernel matters. The crop is exact (the cut weights get zero
gradient) and keeps the FFT small. The direct path never crops: its graph is then the same at
every input size, which is what tracing and export need (a crop traced at 64×64 would be wrong at
448×448).
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from tcnet.models.lk_tune import cached_impl, can_tune, measured_impl

LK_IMPLS = ("auto", "direct", "fft", "mixed")
MIXED_MAX_PIXELS = 20 * 20  # channels_last training maps up to this size take "mixed" (measured crossover ~24²)


def check_lk_impl(impl: str) -> str:
    if impl not in LK_IMPLS:
        from tcnet.config import did_you_mean

        raise ValueError(f"unknown lk_impl {impl!r}{did_you_mean(impl, LK_IMPLS)}; valid: {', '.join(LK_IMPLS)}")
    return impl


def choose_impl(device: torch.device | str, C: int, H: int, W: int, k: int, requires_grad: bool = True,
                channels_last: bool = False) -> str:
    """The faster implementation of a depthwise ``k``×``k`` convolution on a ``C×H×W`` map.

    The rule, from measurements on the project's 2-core CPU with torch 2.14.1 (``python -m
    benchmarks lkconv``; the tables are in ``docs/performance.md``):

    - CUDA: ``auto`` measures each shape once instead (:mod:`tcnet.models.lk_tune`); this rule is
      its fallback where it cannot measure (deterministic mode, tracing, compiling): ``fft`` for
      channels_last maps of at least 56×56 with k >= 25, else ``direct``. On an H200 (bf16
      autocast, fwd+bwd, k = 31) cuDNN's channels_last depthwise kernels took up to 6× the FFT's
      time at batch 2 (2×64×112²: 21 ms vs 3.4) and up to 25× at the paper's batch 15, while its
      NCHW ones beat the FFT's ~2 ms fixed cost on most shapes at batch 2. The rule is set for
      batch 15: at batch 2, direct was 7-14 % faster at two of its fft shapes (16×112², 32×56²);
    - other devices (MPS, ...): ``direct``;
    - CPU, gradients needed (training), channels_last: ``fft`` from k = 9 on; fft wins by 15-40×
      at k = 31 (fwd+bwd, 2×64×112²: direct ~1 s, fft ~27 ms): oneDNN's depthwise backward is
      slow at every large size. Except on maps of at most 20×20 pixels, where ``mixed`` wins
      (k = 31: 0.63-0.74× of fft's time at 14² and 16², 0.85-0.93× at 20², a tie at 24²,
      1.15× slower at 28²);
    - CPU, training, NCHW: ``direct`` for k < 5, ``mixed`` for 5 <= k < 15 (oneDNN's NCHW
      depthwise forward is fast there, its weight gradient is not: 2×64×56², k = 5-13, mixed
      3.6-4.3 ms, fft 4.8-5.4, direct 7.9-40; ninth round, two runs), ``fft`` from k = 15;
    - CPU, no gradients, NCHW: ``fft`` from k = 15 on, where oneDNN's NCHW depthwise forward leaves
      its fast path (2×64×56²: k = 13 direct 1.0 ms, k = 15 19 ms, fft ~2.3 ms);
    - CPU, no gradients, channels_last: oneDNN's channels_last depthwise forward stays fast at every
      k (175-290 GFLOP/s), so ``direct`` wins on small maps; ``fft`` only for k >= 29 on maps of
      at least 48×48 (k = 31: 112² fft 1.7× faster, 56² 1.1-1.3×, 28² and 14² direct 1.6-3.9× faster).

    ``C`` is accepted so that the rule can grow a channel term; the measured crossovers did not
    depend on it.
    """
    del C
    dev = torch.device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        return "fft" if channels_last and k >= 25 and H * W >= 56 * 56 else "direct"
    if dev.type != "cpu":
        return "direct"
    if requires_grad:
        if channels_last:
            if k < 9:
                return "direct"
            return "mixed" if H * W <= MIXED_MAX_PIXELS else "fft"
        if k < 5:
            return "direct"
        return "mixed" if k < 15 else "fft"
    if channels_last:
        return "fft" if k >= 29 and H * W >= 48 * 48 else "direct"
    return "fft" if k >= 15 else "direct"


def _same_pad(k: int) -> tuple[int, int]:
    """(before, after) zero padding of ``padding="same"`` for a kernel of size ``k`` (PyTorch's rule)."""
    before = (k - 1) // 2
    return before, k - 1 - before


def _reach(k: int, n: int) -> tuple[int, int, int, int]:
    """Crop of a size-``k`` kernel to the taps that can reach a size-``n`` map with "same" padding.

    Returns ``(start, stop, pad_before, pad_after)``: kernel taps ``start:stop`` and the "same"
    padding that goes with the cropped kernel.
    """
    before, _ = _same_pad(k)
    start = max(0, before - (n - 1))
    stop = min(k, before + n)
    k2 = stop - start
    pad_before = before - start
    return start, stop, pad_before, k2 - 1 - pad_before


def _fast_size(n: int, even: bool = False) -> int:
    """Smallest m >= n whose only prime factors are 2, 3, 5 (quick FFT sizes); even if asked."""
    m = n
    while True:
        if not (even and m % 2):
            r = m
            for p in (2, 3, 5):
                while r % p == 0:
                    r //= p
            if r == 1:
                return m
        m += 1


def crop_kernel(weight: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """The part of a depthwise ``C×1×kh×kw`` kernel that reaches an ``H×W`` map, and its padding.

    Padding is ``(left, right, top, bottom)`` as :func:`F.pad` takes it.
    """
    kh, kw = weight.shape[-2:]
    h0, h1, top, bottom = _reach(kh, H)
    w0, w1, left, right = _reach(kw, W)
    if (h0, h1, w0, w1) != (0, kh, 0, kw):
        weight = weight[..., h0:h1, w0:w1]
    return weight, (left, right, top, bottom)


def dwconv_direct(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise convolution, "same" zero padding, through ``F.conv2d`` with the whole kernel.

    No crop and no shape-dependent Python here, so a traced or exported graph (``torch.jit.trace``,
    ONNX, ``torch.export``) is valid at every input size, and FLOP counts see the full kernel.
    """
    kh, kw = weight.shape[-2:]
    top, bottom = _same_pad(kh)
    left, right = _same_pad(kw)
    if left == right and top == bottom:
        return F.conv2d(x, weight, bias, padding=(top, left), groups=weight.shape[0])
    return F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, groups=weight.shape[0])


def _spectrum(x: torch.Tensor, nh: int, nw: int) -> torch.Tensor:
    """2-D real FFT of the last two dims, zero-padded at the end to ``nh``×``nw``, W-frequencies first.

    Returns ``[..., nw//2+1, nh]``: ``rfft`` along W, then ``fft`` along H on the transposed result.
    In this layout :func:`_inverse` can drop the rows it does not need before its real (c2r) pass;
    the standard ``irfft2`` runs both passes over the whole grid, with copies around its c2r.
    """
    return torch.fft.fft(torch.fft.rfft(x, n=nw, dim=-1).transpose(-1, -2), n=nh, dim=-1)


def _inverse(z: torch.Tensor, nw: int, rows: int, shift: int = 0) -> torch.Tensor:
    """The inverse of :func:`_spectrum`, rows ``-shift … rows-shift-1`` only (mod the grid): ``[..., rows, nw]``.

    With ``shift = 0`` the first ``rows`` rows; a ``shift`` reads rows that wrap around the grid's
    end (the rolled kernel's taps, :func:`_unroll`).
    """
    z = torch.fft.ifft(z, dim=-1)
    z = _unroll(z, rows, shift) if shift else z[..., :rows]
    return torch.fft.irfft(z.transpose(-1, -2), n=nw, dim=-1)


def _unroll(z: torch.Tensor, k: int, shift: int) -> torch.Tensor:
    """``z.roll(shift, -1)[..., :k]`` without rolling the rest.

    The last ``shift`` entries, then the first ``k - shift``."""
    return torch.cat([z[..., z.shape[-1] - shift:], z[..., :k - shift]], dim=-1)


def _rolled_kernel(wflip: torch.Tensor, nh: int, nw: int, oh: int, ow: int) -> torch.Tensor:
    """``wflip`` (``C×kh×kw``) zero-padded to ``nh×nw`` and rolled by ``(-oh, -ow)``, built in place.

    The same grid as ``F.pad(...).roll(...)`` without the pass over the whole grid that the roll
    makes: tap ``(a, b)`` goes straight to ``((a - oh) mod nh, (b - ow) mod nw)``, in four blocks.
    """
    C, kh, kw = wflip.shape
    grid = wflip.new_zeros(C, nh, nw)
    for a0, a1, r0 in ((oh, kh, 0), (0, oh, nh - oh)):
        for b0, b1, c0 in ((ow, kw, 0), (0, ow, nw - ow)):
            if a1 > a0 and b1 > b0:
                grid[:, r0:r0 + a1 - a0, c0:c0 + b1 - b0] = wflip[:, a0:a1, b0:b1]
    return grid


class _FFTDepthwise(torch.autograd.Function):
    """Circular convolution with the kernel rolled so that output pixel ``(i, j)`` is grid ``(i, j)``.

    ``wflip`` (``C×kh×kw``) is placed in an ``nh×nw`` grid and rolled by ``-offset``: the "same"
    output is then the top-left ``H×W`` of ``x ⊛ w``, and the output gradient enters the grid where
    ``rfft``'s own zero padding puts it (no offset pads). Spectra are in :func:`_spectrum`'s
    transposed layout. The backward is two correlations in the same Fourier grid:
    ``grad_x = inverse(G · conj(Wf))`` and ``grad_w = inverse(Σ_b G · conj(Xf))`` rolled back (the
    batch summed in the frequency domain, so the weight's inverse transform is C maps, not B·C).
    Autograd through the FFT ops instead takes a full complex-to-complex transform for each real
    FFT's backward and pads, slices and scatters around them. Measured (``python -m benchmarks
    lkconv``, ``docs/performance.md`` §1).
    """

    @staticmethod
    def forward(ctx, x, wflip, n: tuple[int, int], offset: tuple[int, int]):
        H, W = x.shape[-2:]
        (nh, nw), (oh, ow) = n, offset
        kh, kw = wflip.shape[-2:]
        ctx.channels_last = (x.dim() == 4 and not x.is_contiguous()
                             and x.is_contiguous(memory_format=torch.channels_last))
        # Contiguous NCHW in, so that every spectrum below is contiguous: the FFTs and complex
        # products are 2-3x slower on the strides a channels_last input would give them.
        Xf = _spectrum(x.contiguous(), nh, nw)
        Wf = _spectrum(_rolled_kernel(wflip, nh, nw, oh, ow), nh, nw)
        y = _inverse(Xf * Wf, nw, H)[..., :W]
        ctx.save_for_backward(Xf, Wf)
        ctx.geometry = (H, W, kh, kw, n, offset)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        Xf, Wf = ctx.saved_tensors
        H, W, kh, kw, (nh, nw), (oh, ow) = ctx.geometry
        G = _spectrum(gy.contiguous(), nh, nw)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            # Handed on contiguous, in the input's layout: the inverse's rows are nw wide, and the
            # consumers of a channels_last map (the residual add, LayerNorm2d's backward) turn such
            # a view around 2-3x slower than these two copies (NCHW, then channels_last).
            gx = _inverse(G * Wf.conj(), nw, H)[..., :W].contiguous()
            if ctx.channels_last:
                gx = gx.contiguous(memory_format=torch.channels_last)
        if ctx.needs_input_grad[1]:
            # Only the grid rows and columns where the kernel's taps lie (the roll undone by slicing).
            gw = _unroll(_inverse((G * Xf.conj()).sum(0), nw, kh, shift=oh), kw, ow)
        return gx, gw, None, None


def _in_float32(x: torch.Tensor) -> bool:
    """Whether the fft and mixed paths must recompute ``x`` in float32 with autocast off: half-precision
    inputs (FFTs want float32, and bf16 FFTs do not exist), or autocast on (it would run the direct
    convolutions inside :class:`_MixedDepthwise` in bf16 while their hand-written backward, outside
    autocast, meets the float32 weights)."""
    return x.dtype in (torch.float16, torch.bfloat16) or torch.is_autocast_enabled(x.device.type)


def dwconv_fft(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same convolution as :func:`dwconv_direct`, computed through ``torch.fft``.

    ``conv2d`` is a cross-correlation, so the kernel is flipped and the result is a true linear
    convolution: ``full = x * flip(w)``, ``y[i] = full[i + kh-1-top]``. The FFT size only needs
    ``H + max(top, bottom)`` (not ``H + kh - 1``): wrap-around beyond that lands outside the
    ``H×W`` read back (and, in the backward, outside the rows and taps read back).
    """
    if _in_float32(x):
        with torch.autocast(x.device.type, enabled=False):
            y = dwconv_fft(x.float(), weight.float(), None if bias is None else bias.float())
        return y.to(x.dtype)
    B, C, H, W = x.shape
    w, (left, right, top, bottom) = crop_kernel(weight.to(x.dtype), H, W)
    kh, kw = w.shape[-2:]
    nh = _fast_size(H + max(top, bottom))
    nw = _fast_size(W + max(left, right), even=True)
    wflip = w.flip((-2, -1)).reshape(C, kh, kw)
    y = _FFTDepthwise.apply(x, wflip, (nh, nw), (kh - 1 - top, kw - 1 - left))
    if bias is not None:
        y = y + bias.to(x.dtype).view(1, C, 1, 1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        y = y.contiguous(memory_format=torch.channels_last)
    return y


class _MixedDepthwise(torch.autograd.Function):
    """Direct forward and input gradient, weight gradient through the FFT.

    ``w`` is the cropped ``C×1×kh×kw`` kernel, ``pads`` its "same" padding ``(left, right, top,
    bottom)``. The input gradient is the direct convolution of the output gradient with the
    flipped kernel, padded the other way round. The weight gradient is the correlation of the
    input with the output gradient, ``Σ_b inverse(Xf · conj(G))`` in a grid of ``H + max(top,
    bottom)`` (by ``W + ...``), read at the kernel's offsets ``-top … bottom``: the same grid and
    sizes as the fft path (``docs/model.md``).
    """

    @staticmethod
    def forward(ctx, x, w, bias, pads: tuple[int, int, int, int]):
        ctx.save_for_backward(x, w)
        ctx.pads, ctx.has_bias = pads, bias is not None
        return _conv_same(x, w, bias, pads)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        left, right, top, bottom = ctx.pads
        B, C, H, W = x.shape
        kh, kw = w.shape[-2:]
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        gy = gy.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _conv_same(gy, w.flip((-2, -1)), None, (right, left, bottom, top))
        if ctx.needs_input_grad[1]:
            nh = _fast_size(H + max(top, bottom))
            nw = _fast_size(W + max(left, right), even=True)
            corr = (_spectrum(x.contiguous(), nh, nw) * _spectrum(gy.contiguous(), nh, nw).conj()).sum(0)
            gw = _unroll(_inverse(corr, nw, kh, shift=top), kw, left).view(C, 1, kh, kw)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = gy.sum((0, 2, 3))
        return gx, gw, gb, None


def _conv_same(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None,
               pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Depthwise ``F.conv2d`` with the zero padding ``pads`` = ``(left, right, top, bottom)``."""
    left, right, top, bottom = pads
    if left == right and top == bottom:
        return F.conv2d(x, w, bias, padding=(top, left), groups=w.shape[0])
    return F.conv2d(F.pad(x, pads), w, bias, groups=w.shape[0])


def dwconv_mixed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The same convolution as :func:`dwconv_direct`: forward and input gradient direct (kernel
    cropped to the map), weight gradient through ``torch.fft`` (:class:`_MixedDepthwise`)."""
    if _in_float32(x):
        with torch.autocast(x.device.type, enabled=False):
            y = dwconv_mixed(x.float(), weight.float(), None if bias is None else bias.float())
        return y.to(x.dtype)
    w, pads = crop_kernel(weight.to(x.dtype), *x.shape[-2:])
    return _MixedDepthwise.apply(x, w, None if bias is None else bias.to(x.dtype), pads)


IMPL_FUNCTIONS = {"direct": dwconv_direct, "fft": dwconv_fft, "mixed": dwconv_mixed}


class LargeKernelDWConv(nn.Module):
    """Depthwise ``k``×``k`` convolution with "same" zero padding; ``k`` may exceed the map.

    Shape: ``B×C×H×W -> B×C×H×W``. Parameters are exactly those of
    ``nn.Conv2d(C, C, k, groups=C, bias=bias)`` (``weight`` ``C×1×k×k``), whatever ``lk_impl``.
    """

    def __init__(self, channels: int, kernel_size: int = 31, bias: bool = True, lk_impl: str = "auto"):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.lk_impl = check_lk_impl(lk_impl)
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Conv2d's default initialisation (fan_in = k*k for a depthwise kernel).
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size * self.kernel_size)
            nn.init.uniform_(self.bias, -bound, bound)

    def resolved_impl(self, x: torch.Tensor) -> str:
        """The implementation a call on ``x`` uses: ``lk_impl``, or for auto the measured choice on
        CUDA (:func:`tcnet.models.lk_tune.measured_impl`; while compiling or capturing a graph, the
        choice measured for the same key in an earlier eager call), else :func:`choose_impl`."""
        if self.lk_impl != "auto":
            return self.lk_impl
        H, W = x.shape[-2:]
        grad = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
        cl = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        if can_tune(x):  # CUDA: measured once per shape (lk_tune.py), no rule held across shapes and batches
            return measured_impl(x, self.weight, self.bias, cl, IMPL_FUNCTIONS)
        if not torch.are_deterministic_algorithms_enabled():  # compiling or capturing after eager warm-up
            measured = cached_impl(x, self.weight, self.bias, cl)
            if measured is not None:
                return measured
        return choose_impl(x.device, self.channels, H, W, self.kernel_size, requires_grad=grad, channels_last=cl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        impl = self.resolved_impl(x)
        if impl == "fft":
            return dwconv_fft(x, self.weight, self.bias)
        if impl == "mixed":
            return dwconv_mixed(x, self.weight, self.bias)
        return dwconv_direct(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        bias = self.bias is not None
        return f"{self.channels}, kernel_size={self.kernel_size}, bias={bias}, lk_impl={self.lk_impl!r}"


def set_lk_impl(model: nn.Module, impl: str) -> nn.Module:
    """Switch every :class:`LargeKernelDWConv` in ``model`` to ``impl`` (in place; returns ``model``).

    Export and FLOP counting use ``set_lk_impl(model, "direct")``; the weights are unchanged.
    """
    check_lk_impl(impl)
    for m in model.modules():
        if isinstance(m, LargeKernelDWConv):
            m.lk_impl = impl
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and hasattr(config, "lk_impl"):
        model.config = dataclasses.replace(config, lk_impl=impl)
    return model
