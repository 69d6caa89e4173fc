"""The training loop's autocast choice: bf16 on CUDA by ``train.bf16``, on CPU only by ``train.cpu_bf16``."""

from __future__ import annotations

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
