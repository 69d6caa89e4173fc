"""Hand a gradient on in the memory layout of the tensor it belongs to (a CPU fast path).

``torch.cat``'s backward hands each input a *slice* of the output's gradient: under channels_last
a ``B×C×H×W`` view whose pixel stride is the concatenation's width, contiguous in neither memory
format. Some CPU backward kernels leave their vectorised path on such strides. Bilinear
upsampling's is the costly one in TCNet: the decoder's upsampling, concatenation and their backward
take 10.8 ms at 2×128×56² → 112² and 5.7 ms at 2×256×28² → 56² as they come, 3.9 and 1.5 ms with a
channels_last copy of the gradient made first, the copy included (docs/performance.md §2, ninth
round). :func:`grad_in_layout` is the identity in the forward and makes that copy in the backward;
the values are unchanged.
"""

from __future__ import annotations

import torch


class _GradInLayout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.memory_format = (
            torch.channels_last
            if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        return x.view_as(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return g.contiguous(memory_format=ctx.memory_format)


def grad_in_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself; in the backward, its gradient made contiguous in ``x``'s memory format.

    Only on CPU with gradients, and not while tracing for export (the plain graph is wanted there);
    elsewhere ``x`` is returned as is.
    """
    if x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled() and not torch.jit.is_tracing():
        return _GradInLayout.apply(x)
    return x
