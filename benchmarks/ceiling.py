"""What a TCNet train step would cost if a kind of work were free: the ceiling of faster kernels for it.

``step_breakdown --ceiling`` times whole steps (no hooks) of the model as it is and with one kind
of work taken out, interleaved with U-Net in the same layout, and prints each variant's model
FLOP/s -- counted with the FLOPs of the model as it is -- against U-Net's: the ratio
``train_step`` would report if hand-written kernels made that kind cost nothing. It bounds what
the route "fused CPU kernels for the glue / for the attention" can reach (docs/performance.md §2).

One model serves every variant (each module of a kind wrapped in a switch, :class:`Bypass`), so
the process holds one TCNet and one U-Net, as ``train_step``'s does: with a model per variant,
U-Net's steps paid ~23 000 page faults each in the shared heap and ran ~15 % slower, which
flattered every ratio.

The kinds taken out are those that do few or no model FLOPs but take time (the CBAM gates, GELU,
LayerNorm2d, BatchNorm: bypassed, the identity in their place) and the attention's SDPA, whose products run
in MKL's AVX2 code on AMD processors. SDPA's stand-in keeps every tensor in the graph -- ``q`` plus
the mean over the keys of ``k + v`` -- so the projections and the spatial reduction still run
forward and backward; only the score matrix's work goes. A copy without its norms computes other
numbers (activations grow); the time of these float32 ops does not depend on their values
(denormals are flushed, as in training). A bypassed module's parameters get no gradient, and
fused Adam skips them, as it would skip parameters that were not there.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator
from unittest import mock

import torch
from torch import nn

FLOP_FREE = ("CBAM gates", "GELU", "LayerNorm2d", "BatchNorm")
SDPA = "SDPA"
REMOVABLE = FLOP_FREE + (SDPA,)
EVERYTHING = "all of these"


def _classes(kind: str) -> tuple[type, ...]:
    from tcnet.models.layers import ChannelAttention, LayerNorm2d, SpatialAttention

    return {
        "CBAM gates": (ChannelAttention, SpatialAttention),
        "GELU": (nn.GELU,),
        "LayerNorm2d": (LayerNorm2d,),
        "BatchNorm": (nn.BatchNorm2d,),
    }[kind]


class Bypass(nn.Module):
    """``inner`` while ``off`` is False, the identity while it is True: one model serves every variant."""

    def __init__(self, inner: nn.Module, kind: str):
        super().__init__()
        self.inner, self.kind, self.off = inner, kind, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.off else self.inner(x)


def add_bypasses(model: nn.Module) -> dict[str, int]:
    """Wrap every module of the kinds in :data:`FLOP_FREE` (the outermost, when one holds another) in a
    :class:`Bypass`, in place; returns the number of modules per kind, :data:`SDPA` included (the
    attention modules, whose SDPA :func:`with_removed` replaces)."""
    from tcnet.models.attention import SpatialReductionAttention

    counts = {SDPA: sum(isinstance(m, SpatialReductionAttention) for m in model.modules())}
    kind_of = {c: k for k in FLOP_FREE for c in _classes(k)}
    targets = [(name, kind_of[type(m)]) for name, m in model.named_modules() if name and type(m) in kind_of]
    outer = [(n, k) for n, k in targets if not any(n.startswith(o + ".") for o, _ in targets)]
    for name, kind in outer:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Bypass(getattr(parent, child), kind))
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def sdpa_stand_in(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """SDPA's shape (``B×h×N×d``) and graph without the score matrix: ``q`` plus the keys' mean of ``k + v``."""
    return q + (k + v).mean(dim=-2, keepdim=True)


@contextmanager
def with_removed(model: nn.Module, kinds: tuple[str, ...]) -> Iterator[None]:
    """Meanwhile the :class:`Bypass` modules of ``kinds`` are off and, if :data:`SDPA` is among them,
    the attention's ``F.scaled_dot_product_attention`` is :func:`sdpa_stand_in`."""
    import tcnet.models.attention as attention

    bypasses = [m for m in model.modules() if isinstance(m, Bypass) and m.kind in kinds]
    for m in bypasses:
        m.off = True
    try:
        if SDPA in kinds:
            with mock.patch.object(attention.F, "scaled_dot_product_attention", sdpa_stand_in):
                yield
        else:
            yield
    finally:
        for m in bypasses:
            m.off = False


def removed_step(step: Callable[[], None], model: nn.Module, kinds: tuple[str, ...]) -> Callable[[], None]:
    """``step`` run with ``kinds`` taken out of ``model`` (:func:`with_removed`)."""
    def run() -> None:
        with with_removed(model, kinds):
            step()

    return run


def variants() -> dict[str, tuple[str, ...]]:
    """Label -> kinds taken out: the model as is, each kind alone, then all of them."""
    out: dict[str, tuple[str, ...]] = {"as is": ()}
    out.update({f"without {k}": (k,) for k in REMOVABLE})
    out[f"without {EVERYTHING}"] = REMOVABLE
    return out
