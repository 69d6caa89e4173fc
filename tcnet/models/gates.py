"""The CBAM gates of HAM, MFM's channel and spatial attention, with a lean backward on CPU.

``channel_gate(x, w1, w2)  = x · σ(MLP(mean_hw x) + MLP(max_hw x))``   (MLP: 1×1 w1, ReLU, 1×1 w2)
``spatial_gate(x, w, b)    = x · σ(conv_k×k([mean_c x, max_c x]; w, b))``

Plain autograd runs each gate's backward as about seven passes over the full ``B×C×H×W`` map:
the product's two gradients, the mean's broadcast, the max's ``x == max`` mask, its division and
product, and the sums that join them: memory-bound passes that do no model FLOPs, after every LKM
block and decoder stage and in every MFM. Here each gate is one
``autograd.Function`` whose backward makes two full passes (one product-and-sum for the gate's
gradient, one fused multiply-add for the input's) plus a scatter of the max's gradient to the
arg-max positions; the small part (MLP or k×k conv and σ on the pooled descriptors) is recomputed
in the backward through ``torch.autograd.functional.vjp``, so its parameters get their gradients
the usual way.

Only on CPU, and not while a model is traced for export (the exporters want the plain ops): on
a GPU the plain form is already fast, and its backward kernels are deterministic, where
``scatter_add_`` on CUDA is not. At exact ties of the maximum, plain autograd shares the
gradient among the tied positions, the CPU path gives it to the first (both are subgradients).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.functional import vjp


def _channel_logits(avg, mx, w1, w2):
    """``MLP(avg) + MLP(max)`` on ``B×C×1×1`` descriptors (shared MLP, no bias)."""
    return F.conv2d(F.relu(F.conv2d(avg, w1)), w2) + F.conv2d(F.relu(F.conv2d(mx, w1)), w2)


def _spatial_logits(mean, mx, w, b, channels_last: bool = False):
    """``conv([mean, max])`` on ``B×1×H×W`` descriptors, "same" padding. ``channels_last``: run the
    2 → 1 conv in that layout, where oneDNN's CPU backward for it is several times faster than in NCHW."""
    desc = torch.cat([mean, mx], dim=1)
    if channels_last:
        desc = desc.contiguous(memory_format=torch.channels_last)
    return F.conv2d(desc, w, b, padding=w.shape[-1] // 2)


class _ChannelGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, w2):
        # Global max pooling for the max and its arg-max: `x.flatten(2).max(-1)` gives the same, but its
        # index-tracking reduction is ~9x slower on a channels_last map (2x64x112²: 0.9 vs 0.1 ms).
        mx, idx = F.max_pool2d(x, x.shape[-2:], return_indices=True)
        desc = (x.mean((2, 3), keepdim=True), mx)
        gate = torch.sigmoid(_channel_logits(*desc, w1, w2))
        ctx.save_for_backward(x, *desc, idx, gate, w1, w2)
        return x * gate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, avg, mx, idx, gate, w1, w2 = ctx.saved_tensors
        # d gate: sum over H, W of gy · x; then back through σ and the MLP, recomputed under autograd.
        g_gate = (gy * x).sum((2, 3), keepdim=True)
        _, (g_a, g_m, g_w1, g_w2) = vjp(lambda *t: torch.sigmoid(_channel_logits(*t)), (avg, mx, w1, w2), g_gate)
        # d x = gy · gate + (d avg) / HW everywhere + (d max) at each arg-max position.
        hw = x.shape[2] * x.shape[3]
        gx = (gy * gate).add_(g_a / hw)  # not addcmul: see _SpatialGate.backward
        if not (gx.is_contiguous() or gx.is_contiguous(memory_format=torch.channels_last)):
            gx = gx.contiguous()  # an odd gy layout (H, W not adjacent): make the view below possible
        # view, not flatten: the scatter must land in gx (a view exists in both memory formats)
        gx.view(gx.shape[0], gx.shape[1], hw).scatter_add_(2, idx.flatten(2), g_m.flatten(2))
        return gx, g_w1, g_w2


class _SpatialGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        mean = x.mean(1, keepdim=True)
        mx, idx = x.max(1, keepdim=True)
        gate = torch.sigmoid(_spatial_logits(mean, mx, w, b, channels_last=True))
        ctx.save_for_backward(x, mean, mx, idx, gate, w, b)
        return x * gate

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, mean, mx, idx, gate, w, b = ctx.saved_tensors
        g_gate = (gy * x).sum(1, keepdim=True)
        _, (g_me, g_m, g_w, g_b) = vjp(lambda *t: torch.sigmoid(_spatial_logits(*t, channels_last=True)),
                                       (mean, mx, w, b), g_gate)
        # Not addcmul: an operand broadcast along the innermost stride (here B×1×H×W under
        # channels_last; the channel gate's B×C×1×1 under NCHW) takes addcmul off its vectorised
        # path, ~5x slower than this product and in-place sum.
        gx = (gy * gate).add_(g_me / x.shape[1])
        gx.scatter_add_(1, idx, g_m)
        return gx, g_w, g_b


def _lean(x: torch.Tensor) -> bool:
    """Whether to take the lean CPU path: on CPU with gradients, and not while tracing for export
    (the exporters want the plain ops, and the pooling's kernel size would be a traced shape)."""
    return x.device.type == "cpu" and torch.is_grad_enabled() and not torch.jit.is_tracing()


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
