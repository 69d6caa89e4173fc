"""Baseline specifics: published sizes, small-input handling, plain-tensor outputs."""

import torch

from tcnet.models import create_model
from tcnet.models.baselines.cenet import RMPBlock


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts():
    # UNet 3+ paper: 26.97 M; CE-Net with ResNet-34: ~29 M.
    assert abs(_n_params(create_model("unet3p")) / 1e6 - 26.97) < 0.01
    assert abs(_n_params(create_model("cenet")) / 1e6 - 29.0) < 0.1


def test_rmp_clamps_pool_kernels_on_small_maps():
    rmp = RMPBlock(8)
    assert rmp(torch.randn(1, 8, 2, 2)).shape == (1, 12, 2, 2)
    assert rmp(torch.randn(1, 8, 14, 14)).shape == (1, 12, 14, 14)


def test_in_channels_option():
    for name in ("unet", "cenet", "fcn", "tcnet_tiny"):
        model = create_model(name, in_channels=1).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64), name
