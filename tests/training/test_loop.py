"""The training loop's autocast choice: bf16 on CUDA by ``train.bf16``, on CPU only by ``train.cpu_bf16``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tcnet.training import loop

CPU = torch.device("cpu")


def conv_dtype(bf16: bool, cpu_bf16: bool) -> torch.dtype:
    conv = nn.Conv2d(3, 4, 3)
    with loop.autocast(CPU, bf16, cpu_bf16):
        return conv(torch.randn(1, 3, 8, 8)).dtype


def test_cpu_stays_float32_unless_cpu_bf16():
    # train.bf16 (default true) is the CUDA switch: a CPU run's numerics must not depend on it
    assert conv_dtype(bf16=True, cpu_bf16=False) == torch.float32
    assert conv_dtype(bf16=False, cpu_bf16=False) == torch.float32
    assert conv_dtype(bf16=False, cpu_bf16=True) == torch.bfloat16
    assert conv_dtype(bf16=True, cpu_bf16=True) == torch.bfloat16


def test_cpu_has_native_bf16_answers_a_bool():
    assert isinstance(loop.cpu_has_native_bf16(), bool)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_epochs_learn_a_toy_task(device):
    """train_one_epoch + validate as the train stage drives them (channels_last; bf16 autocast on CUDA,
    float32 on CPU), on tcnet_tiny with lk_impl auto: the loss falls and the Dice rises on a task a
    few steps can learn (the mask is where the first channel of a smooth image is positive: smooth,
    because the stride-4 stem cannot follow pixel noise)."""
    import tcnet
    from tcnet.losses.combined import CombinedLoss

    dev = torch.device(device)
    torch.manual_seed(0)
    images = torch.nn.functional.interpolate(torch.randn(8, 3, 4, 4), size=32, mode="bilinear")
    masks = (images[:, :1] > 0).float()
    data = [{"image": images[i], "mask": masks[i], "fov": torch.ones(1, 32, 32), "id": f"img{i}"} for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    model = tcnet.create_model("tcnet_tiny").to(dev).to(memory_format=torch.channels_last)
    loss_fn = CombinedLoss(ce_weight=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = loop.validate(model, loader, loss_fn, dev, channels_last=True)
    for epoch in range(10):
        res = loop.train_one_epoch(model, loader, loss_fn, opt, dev, epoch=epoch, run_id="toy", bf16=True,
                                   channels_last=True, progress=False)
        assert res.images == 8 and res.loss == res.loss  # finite (the loop raises on NaN/inf)
    last = loop.validate(model, loader, loss_fn, dev, channels_last=True)
    assert last["val_loss"] < 0.6 * first["val_loss"], (first, last)  # CPU: 0.57 -> 0.13-0.16
    assert last["val_DI"] > first["val_DI"] + 0.15, (first, last)  # CPU: 0.71 -> 0.95


def test_a_loss_made_non_finite_by_the_weights_blames_the_step_not_the_data():
    from tcnet.losses.combined import CombinedLoss

    model = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        model.weight[0, 0, 0, 0] = float("nan")
    data = [{"image": torch.randn(3, 8, 8), "mask": torch.ones(1, 8, 8), "fov": torch.ones(1, 8, 8), "id": "a"}]
    loader = torch.utils.data.DataLoader(data, batch_size=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(loop.NonFiniteLossError, match=r"weights already were NaN or infinite .*not this batch's data"):
        loop.train_one_epoch(model, loader, CombinedLoss(ce_weight=0.5), opt, CPU, epoch=3, run_id="r", progress=False)
