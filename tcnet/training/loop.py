"""One training epoch and one validation pass: the inner loops of the train stage."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass


import torch
from torch import nn

HISTORY_COLUMNS = ("epoch", "train_loss", "val_loss", "val_DI", "val_JA", "lr", "seconds", "images_per_s")


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the message names the run, epoch and batch."""


def autocast(device: torch.device, bf16: bool, cpu_bf16: bool = False, cache: bool = True):
    """bfloat16 autocast on CUDA when ``bf16``, on CPU when ``cpu_bf16`` (``train.cpu_bf16``, opt-in:
    CPU runs stay in float32 unless asked, so a demo's metrics do not depend on the CPU's bf16 support).
    ``cache=False``: no cache of weight casts, as a CUDA-graph capture needs."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    if device.type == "cpu" and cpu_bf16:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX) for oneDNN to use; elsewhere bf16
    is emulated, slower than float32. (``torch.cpu``'s private probes: no public API says this.)"""
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return torch.backends.mkldnn.is_available() and any(bool(p()) for p in probes if p is not None)
    except RuntimeError:
        return False


def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, ...]:
    non_blocking = device.type == "cuda"
    image = batch["image"].to(device, non_blocking=non_blocking)
    if channels_last:
        image = image.contiguous(memory_format=torch.channels_last)
    return image, batch["mask"].to(device, non_blocking=non_blocking), batch["fov"].to(device, non_blocking=non_blocking)


def _progress(loader, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (DVC, CI, Kubeflow logs).
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr,
                disable=None if enabled else True, unit="batch")


@dataclass
class EpochResult:
    loss: float  # mean over images
    images: int  # images seen (this process)
    seconds: float


def forward_loss(model: nn.Module, loss_fn: nn.Module, image: torch.Tensor, mask: torch.Tensor, fov: torch.Tensor,
                 *, device: torch.device, bf16: bool = True, cpu_bf16: bool = False,
                 graph_safe: bool = False) -> torch.Tensor:
    """The training loss of one batch: the model under autocast, its output(s) in float32, the loss
    over the FOV. ``graph_safe``: autocast without its weight-cast cache (CUDA-graph capture)."""
    with autocast(device, bf16, cpu_bf16, cache=not graph_safe):
        out = model(image)
        if isinstance(out, (list, tuple)):
            out = [o.float() for o in out]
        else:
            out = out.float()
        return loss_fn(out, mask, fov)


def train_one_epoch(model: nn.Module, loader, loss_fn: nn.Module, optimizer, device: torch.device, *,
                    epoch: int, run_id: str, bf16: bool = True, cpu_bf16: bool = False,
                    channels_last: bool = False, progress: bool = True, desc: str = "",
                    graphed=None) -> EpochResult:
    """One pass over ``loader``; raises :class:`NonFiniteLossError` on a NaN/inf loss.

    ``graphed``: a :class:`tcnet.training.cuda_graph.GraphedTrainStep` over the same model, loss and
    optimiser, which does each whole step (CUDA; a non-finite loss's update is skipped there, so the
    weights are those before the batch, as here without it)."""
    model.train()
    total, n = 0.0, 0
    start = time.perf_counter()
    bar = _progress(loader, desc or f"{run_id} epoch {epoch}", progress)
    for batch_idx, batch in enumerate(bar):
        image, mask, fov = to_device(batch, device, channels_last)
        if graphed is not None:
            loss = graphed(image, mask, fov)
        else:
            optimizer.zero_grad(set_to_none=True)
            loss = forward_loss(model, loss_fn, image, mask, fov, device=device, bf16=bf16, cpu_bf16=cpu_bf16)
        value = float(loss.detach())
        if not math.isfinite(value):
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # the step before overflowed
                raise NonFiniteLossError(
                    f"run {run_id}: the training loss is {value} at epoch {epoch}, batch {batch_idx}, because the "
                    "weights already were NaN or infinite (the previous optimiser step overflowed; not this "
                    "batch's data); lower train.lr or turn off bf16"
                )
            raise NonFiniteLossError(
                f"run {run_id}: the training loss is {value} at epoch {epoch}, batch {batch_idx} "
                f"(batch ids: {', '.join(map(str, batch['id'][:8]))}); lower train.lr, check the data "
                "(empty or corrupt masks) or turn off bf16"
            )
        if graphed is None:
            loss.backward()
            optimizer.step()
        bs = image.shape[0]
        total += value * bs
        n += bs
        elapsed = time.perf_counter() - start
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / n:.4f}", img_s=f"{n / max(elapsed, 1e-9):.1f}", refresh=False)
    if hasattr(bar, "close"):
        bar.close()
    return EpochResult(total / max(n, 1), n, time.perf_counter() - start)


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn: nn.Module, device: torch.device, *, bf16: bool = True,
             cpu_bf16: bool = False, channels_last: bool = False) -> dict:
    """Validation loss and mean per-image DI/JA (``tcnet.metrics.batch_dice_jaccard``, FOV pixels);
    NaN everywhere for an empty loader."""
    from tcnet.metrics import batch_dice_jaccard

    if loader is None or len(loader.dataset) == 0:
        return {"val_loss": math.nan, "val_DI": math.nan, "val_JA": math.nan}
    model.eval()
    loss_sum, di_sum, ja_sum, n = 0.0, 0.0, 0.0, 0
    for batch in loader:
        image, mask, fov = to_device(batch, device, channels_last)
        with autocast(device, bf16, cpu_bf16):
            logits = model(image)
        logits = logits.float()
        bs = image.shape[0]
        loss_sum += float(loss_fn(logits, mask, fov)) * bs
        di, ja = batch_dice_jaccard(logits, mask, fov)
        di_sum += float(di.sum())
        ja_sum += float(ja.sum())
        n += bs
    return {"val_loss": loss_sum / n, "val_DI": di_sum / n, "val_JA": ja_sum / n}


def history_rows_csv(history: list[dict]) -> str:
    """``history.csv`` text (columns :data:`HISTORY_COLUMNS`, full float precision)."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in history:
        cells = []
        for c in HISTORY_COLUMNS:
            v = row.get(c)
            cells.append("" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(v) if isinstance(v, float) else str(v))
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


__all__ = ["HISTORY_COLUMNS", "NonFiniteLossError", "EpochResult", "train_one_epoch", "validate",
           "history_rows_csv", "autocast", "cpu_has_native_bf16", "forward_loss"]
