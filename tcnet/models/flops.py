"""Parameters and FLOPs of a forward pass, with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: 1 multiply-add = 2 FLOPs (FlopCounterMode's; papers that say "FLOPs" often mean
multiply-adds, i.e. half these numbers). The large depthwise kernels are counted as the *direct*
convolution (``lk_impl="direct"`` while counting) with the whole k×k kernel, as ``dwconv_direct``
computes it (it never crops: on the 14×14 maps of a 448² input only the central 27×27 taps reach
the map, so those convolutions count 32 % more than the taps that matter, ~0.7 % of tcnet_tiny's
FLOPs); the FFT path's own cost is not what is reported. Counted ops: convolutions, matmuls and
attention (SDPA); element-wise ops, norms and interpolation are not counted.

:func:`model_complexity` builds the model on the ``meta`` device, so counting at 448² costs no
compute and no memory, whatever the model.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from tcnet.models.lk_conv import LargeKernelDWConv


aten = torch.ops.aten

# torch 2.14's FlopCounterMode counts SDPA's CUDA kernels but not the CPU flash kernel that
# F.scaled_dot_product_attention picks on CPU: count it with the same formulas.
_CPU_SDPA_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: (
        lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    ),
    aten._scaled_dot_product_flash_attention_for_cpu_backward: (
        lambda grad_out, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad_out, q, k, v)
    ),
}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@contextmanager
def _direct_lk(model: nn.Module):
    convs = [m for m in model.modules() if isinstance(m, LargeKernelDWConv)]
    saved = [m.lk_impl for m in convs]
    try:
        for m in convs:
            m.lk_impl = "direct"
        yield
    finally:
        for m, impl in zip(convs, saved):
            m.lk_impl = impl


def _counted(model: nn.Module, size: int | tuple[int, int], batch: int, in_channels: int) -> FlopCounterMode:
    """The counter after one eval-mode, no-grad forward (large kernels direct); mode and ``lk_impl`` restored."""
    h, w = (size, size) if isinstance(size, int) else size
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    x = torch.zeros(batch, in_channels, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False, custom_mapping=_CPU_SDPA_FLOPS)
        with _direct_lk(model), torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter


def count_flops(model: nn.Module, size: int | tuple[int, int] = 448, batch: int = 1, in_channels: int = 3) -> int:
    """FLOPs of one eval-mode forward of ``model`` on a ``batch×in_channels×H×W`` input.

    Runs on the model's device (``meta`` costs nothing); the model's mode and ``lk_impl`` are restored.
    """
    return int(_counted(model, size, batch, in_channels).get_total_flops())


def flops_by_kind(model: nn.Module, size: int | tuple[int, int] = 448, batch: int = 1,
                  in_channels: int = 3) -> dict[str, int]:
    """:func:`count_flops`'s total split into ``large_kernel`` (the 31×31 depthwise convolutions,
    counted direct), ``convolution`` (every other convolution) and ``attention_matmul`` (SDPA,
    matmuls, linear layers): what each kind of kernel has to compute, to set beside its time."""
    counter = _counted(model, size, batch, in_channels)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    lk = sum(sum(counts.get(f"{root}.{name}", {}).values())
             for name, m in model.named_modules() if isinstance(m, LargeKernelDWConv))
    conv = sum(v for op, v in counts.get("Global", {}).items() if "convolution" in str(op))
    total = int(counter.get_total_flops())
    return {"total": total, "large_kernel": int(lk), "convolution": int(conv - lk),
            "attention_matmul": int(total - conv)}


def flops_by_module(model: nn.Module, size: int | tuple[int, int] = 448, batch: int = 1,
                    in_channels: int = 3) -> dict[str, int]:
    """Forward FLOPs of every submodule by its ``named_modules`` name (a module's count includes its
    children's; ``""`` is the whole model), counted as :func:`count_flops` counts them."""
    counts = _counted(model, size, batch, in_channels).get_flop_counts()
    root = type(model).__name__
    out = {name: int(sum(counts.get(f"{root}.{name}", {}).values())) for name, _ in model.named_modules() if name}
    out[""] = int(sum(counts.get("Global", {}).values()))
    return out


def meta_model(name: str, **overrides) -> nn.Module:
    """A registered model built on the ``meta`` device: shapes and FLOPs without compute or memory."""
    from tcnet.models.registry import create_model

    with torch.device("meta"):
        return create_model(name, **overrides)


def model_complexity(name: str, size: int = 448, **overrides) -> dict:
    """``{"model", "params", "params_m", "flops", "gflops", "size"}`` of a registered model (built on meta)."""
    model = meta_model(name, **overrides)
    in_channels = int(overrides.get("in_channels", 3))
    flops = count_flops(model, size, in_channels=in_channels)
    params = count_params(model)
    return {
        "model": name,
        "size": size,
        "params": params,
        "params_m": round(params / 1e6, 3),
        "flops": flops,
        "gflops": round(flops / 1e9, 2),
    }
