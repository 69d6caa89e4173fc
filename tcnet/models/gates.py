"""The CBAM gates of HAM, MFM's channel and spatial attention, with a lean backward on CPU.

``channel_gate(x, w1, w2)  = x · σ(MLP(mean_hw x) + MLP(max_hw x))``   (MLP: 1×1 w1, ReLU, 1×1 w2)
``spatial_gate(x, w, b)    = x · σ(conv_k×k([mean_c x, max_c x]; w, b))``

Plain autograd runs each gate's backward as about seven passes over the full ``B×C×H×W`` map:
the product's two gradients, the mean's broadcast, the max's ``x == max`` mask, its division and
product, and the sums that join them: memory-bound passes that do no model FLOPs, after every LKM
block and decoder stage and in every MFM. Here each gate is one
``autograd.Function`` whose backward makes two full passes (one product-and-sum for the gate's
gradient, one fused multiply-add for the input's) plus a scatter of the max's gradient to the
arg-max positions. The small part (the MLP or the k×k conv, and σ, on the pooled descriptors)
is differentiated by hand too: the channel gate's MLP as two small GEMMs on a ``2B×C`` matrix of
both descriptors (oneDNN's 1×1 convolutions on ``1×1`` maps cost 50-600 µs a call with two
threads, against ~5 µs with one), the spatial gate's conv through ``convolution_backward``
directly. ``torch.autograd.functional.vjp`` did this before: a graph built and run by the
autograd engine for a few tiny ops, 1.1-1.6 ms a gate with two threads (0.2-0.3 ms with one).

Only on CPU, and not while a model is traced for export (the exporters want the plain ops): on
a GPU the plain form is already fast, and its backward kernels are deterministic, where
``scatter_add_`` on CUDA is not. At exact ties of the maximum, plain autograd shares the
gradient among the tied positions, the CPU path gives it to the first (both are subgradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _channel_logits(avg, mx, w1, w2):
    """``MLP(avg) + MLP(max)`` on ``B×C×1×1`` descriptors (shared MLP, no bias)."""
    return F.conv2d(F.relu(F.conv2d(avg, w1)), w2) + F.conv2d(F.relu(F.conv2d(mx, w1)), w2)


def _descriptor(mean, mx, channels_last: bool = False):
    """``[mean, max]`` (``B×2×H×W``). ``channels_last``: in that layout, where oneDNN's CPU backward
    of the 2 → 1 conv is several times faster than in NCHW."""
    desc = torch.cat([mean, mx], dim=1)
    return desc.contiguous(memory_format=torch.channels_last) if channels_last else desc


def _spatial_logits(mean, mx, w, b):
    """``conv([mean, max])`` on ``B×1×H×W`` descriptors, "same" padding."""
    return F.conv2d(_descriptor(mean, mx), w, b, padding=w.shape[-1] // 2)


class _ChannelGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w2):
        B, C, H, W = x.shape
        # Global max pooling for the max and its arg-max: `x.flatten(2).max(-1)` gives the same, but its
        # index-tracking reduction is ~9x slower on a channels_last map (2x64x112²: 0.9 vs 0.1 ms).
        mx, idx = F.max_pool2d(x, (H, W), return_indices=True)
        # Both descriptors through the MLP at once, as a 2B×C matrix: two small GEMMs. oneDNN's 1×1
        # convolutions on 1×1 maps cost ~50-600 µs a call with 2 threads (~5 µs with one).
        d = torch.cat([x.mean((2, 3)), mx.view(B, C)])
        w1, w2 = w1.view(w1.shape[0], C), w2.view(C, w2.shape[1])
        h = F.relu(F.linear(d, w1))
        o = F.linear(h, w2)
        gate = torch.sigmoid(o[:B] + o[B:])
        ctx.save_for_backward(x, d, h, idx, gate, w1, w2)
        return x * gate.view(B, C, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, d, h, idx, gate, w1, w2 = ctx.saved_tensors
        B, C, H, W = x.shape
        # d logits: sum over H, W of gy · x, through σ; then the MLP's backward by hand (both halves
        # of the 2B rows get the same logit gradient, since logits = MLP(avg) + MLP(max)).
        g_o = (gy * x).sum((2, 3)).mul_(gate * (1 - gate)).repeat(2, 1)
        g_w2 = g_o.t() @ h
        g_h = (g_o @ w2).mul_(h > 0)
        g_w1 = g_h.t() @ d
        g_d = g_h @ w1
        # d x = gy · gate + (d avg) / HW everywhere + (d max) at each arg-max position.
        hw = H * W
        gx = (gy * gate.view(B, C, 1, 1)).add_(g_d[:B].view(B, C, 1, 1) / hw)  # not addcmul: see _SpatialGate
        if not (gx.is_contiguous() or gx.is_contiguous(memory_format=torch.channels_last)):
            gx = gx.contiguous()  # an odd gy layout (H, W not adjacent): make the view below possible
        # view, not flatten: the scatter must land in gx (a view exists in both memory formats)
        gx.view(B, C, hw).scatter_add_(2, idx.flatten(2), g_d[B:].view(B, C, 1))
        return gx, g_w1.view(-1, C, 1, 1), g_w2.view(C, -1, 1, 1)


class _SpatialGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        mean = x.mean(1, keepdim=True)
        mx, idx = x.max(1, keepdim=True)
        desc = _descriptor(mean, mx, channels_last=True)
        gate = torch.sigmoid(F.conv2d(desc, w, b, padding=w.shape[-1] // 2))
        ctx.save_for_backward(x, desc, idx, gate, w)
        ctx.has_bias = b is not None
        return x * gate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, desc, idx, gate, w = ctx.saved_tensors
        g_logits = (gy * x).sum(1, keepdim=True).mul_(gate * (1 - gate))
        p = w.shape[-1] // 2
        g_desc, g_w, g_b = torch.ops.aten.convolution_backward(
            g_logits, desc, w, [w.shape[0]] if ctx.has_bias else None, [1, 1], [p, p], [1, 1], False, [0, 0], 1,
            [True, True, ctx.has_bias],
        )
        # Not addcmul: an operand broadcast along the innermost stride (here B×1×H×W under
        # channels_last; the channel gate's B×C×1×1 under NCHW) takes addcmul off its vectorised
        # path, ~5x slower than this product and in-place sum.
        gx = (gy * gate).add_(g_desc[:, :1] / x.shape[1])
        gx.scatter_add_(1, idx, g_desc[:, 1:])
        return gx, g_w, g_b


def _lean(x: torch.Tensor) -> bool:
    """Whether to take the lean CPU path: on CPU with gradients, in float32 (not under CPU autocast, whose
    dtypes its hand-written backward does not follow), and not while tracing for export (the exporters want
    the plain ops, and the pooling's kernel size would be a traced shape)."""
    return (x.device.type == "cpu" and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.jit.is_tracing())


def channel_gate(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """CBAM channel attention of ``x`` (``B×C×H×W``) with MLP weights ``w1`` (``R×C×1×1``), ``w2`` (``C×R×1×1``)."""
    if _lean(x):
        return _ChannelGate.apply(x, w1, w2)
    gate = _channel_logits(x.mean((2, 3), keepdim=True), x.amax((2, 3), keepdim=True), w1, w2)
    return x * torch.sigmoid(gate)


def spatial_gate(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """CBAM spatial attention of ``x`` (``B×C×H×W``) with a ``1×2×k×k`` conv ``w`` and bias ``b``."""
    if _lean(x):
        return _SpatialGate.apply(x, w, b)
    gate = _spatial_logits(x.mean(1, keepdim=True), x.amax(1, keepdim=True), w, b)
    return x * torch.sigmoid(gate)
