"""What a forward pass returns, turned into what evaluation and inference need.

Models return logits ``B x K x H x W`` (K = 1: binary, sigmoid; K > 1: softmax), or in training
mode with deep supervision a list whose first item is the main head. Evaluate, predict, export and
serving all go through these two functions so they read model outputs the same way.
"""

from __future__ import annotations


def main_output(out):
    """The segmentation logits of a forward pass: the tensor itself, the first of a tuple/list
    (deep supervision: main head first), or ``out``/``logits`` of a dict (torchvision style)."""
    if isinstance(out, dict):
        for key in ("out", "logits", "mask", "main"):
            if key in out:
                return out[key]
        return next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def foreground_prob(logits):
    """``B x K x H x W`` logits (or a model's raw output) -> ``B x H x W`` foreground probability:
    sigmoid for one channel, softmax channel 1 for two or more."""
    import torch

    logits = main_output(logits)
    if logits.ndim == 3:
        logits = logits.unsqueeze(1)
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=1)[:, 1]
