"""U-Net decoder over the four fused scales, with the HAM placements and deep-supervision heads.

From the coarsest fused map up: ``D_4 = F_4`` (1/32); for i = 3, 2, 1: upsample ×2 (bilinear) →
concat with ``F_i`` → ConvBlock → ``D_i``. The main 1×1 head reads ``D_1`` (1/4) and its logits are
upsampled ×4 to the input size. Deep supervision adds 1×1 heads on ``D_2``, ``D_3``, ``D_4``.

"1×1 head then upsample" equals the paper's "upsample then 1×1 head" exactly (bilinear
interpolation and a 1×1 convolution are both linear, and the interpolation weights sum to 1, so the
bias passes through), at 1/16 of the cost.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tcnet.models.grad_layout import grad_in_layout
from tcnet.models.layers import ConvBlock, maybe_ham


def upsample_to(x: torch.Tensor, size) -> torch.Tensor:
    # The decoder concatenates the upsampled map, so its gradient comes back as a channel slice:
    # made contiguous first, the CPU backward of the interpolation is 3-4x faster (grad_layout.py).
    return grad_in_layout(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class DecoderStage(nn.Module):
    """Upsample ×2 → [HAM: upsample] ; skip → [HAM: skip] ; concat → ConvBlock → [HAM: all_conv / output]."""

    def __init__(self, in_dim: int, skip_dim: int, out_dim: int, ham_up: bool, ham_skip: bool, ham_out: bool):
        super().__init__()
        self.ham_up = maybe_ham(ham_up, in_dim)
        self.ham_skip = maybe_ham(ham_skip, skip_dim)
        self.block = ConvBlock(in_dim + skip_dim, out_dim)
        self.ham_out = maybe_ham(ham_out, out_dim)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.ham_up(upsample_to(x, skip.shape[-2:]))
        return self.ham_out(self.block(torch.cat([up, self.ham_skip(skip)], dim=1)))


class UNetDecoder(nn.Module):
    """``[F_1, F_2, F_3, F_4]`` (widths ``dims``, scales 1/4 … 1/32) → logits at 1/4 (+ aux logits).

    ``placement`` is the model's ``attention_placement``; ``forward`` returns ``[main, aux_d2, aux_d3,
    aux_d4]`` logits at their own scales (only ``[main]`` without deep supervision or with ``aux=False``).
    """

    def __init__(self, dims: tuple[int, ...], num_classes: int, placement: str, deep_supervision: bool):
        super().__init__()
        n = len(dims)
        out_ham = placement in ("all_conv", "input_four_output")
        # D_4 = F_4 is the first of the four decoder stage outputs (input_four_output puts a HAM on it).
        self.ham_bottom = maybe_ham(placement == "input_four_output", dims[-1])
        self.stages = nn.ModuleList(
            DecoderStage(
                dims[i + 1], dims[i], dims[i],
                ham_up=placement == "upsample",
                ham_skip=placement == "skip",
                ham_out=out_ham or (placement == "input_single_output" and i == 0),
            )
            for i in reversed(range(n - 1))
        )
        self.head = nn.Conv2d(dims[0], num_classes, 1)
        self.aux_heads = nn.ModuleList(nn.Conv2d(d, num_classes, 1) for d in dims[1:]) if deep_supervision else None

    def forward(self, feats: list[torch.Tensor], aux: bool = True) -> list[torch.Tensor]:
        x = self.ham_bottom(feats[-1])
        outs = [x]  # D_4, D_3, ..., D_1
        for stage, skip in zip(self.stages, reversed(feats[:-1])):
            x = stage(x, skip)
            outs.append(x)
        logits = [self.head(outs[-1])]
        if aux and self.aux_heads is not None:
            # aux_heads[j] reads D_{j+2}: outs[-2] is D_2, outs[-3] is D_3, outs[0] is D_4.
            logits += [head(outs[-2 - j]) for j, head in enumerate(self.aux_heads)]
        return logits
