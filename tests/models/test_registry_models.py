"""Every registered model: forward shape, backward, finite values (64×64, batch 2); registry errors."""

import pytest
import torch

import tcnet
from tcnet.models import create_model, list_models, model_options

EXPECTED = {"tcnet_tiny", "tcnet_small", "tcnet_base",
            "fcn", "unet", "unetpp", "unet3p", "deeplabv3", "deeplabv3p", "cenet"}


def test_every_expected_model_is_registered():
    assert set(list_models()) == EXPECTED
    assert tcnet.list_models() == list_models()


@pytest.mark.parametrize("name", list_models())
def test_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.randn(2, 3, 64, 64)
    y = model(x)
    assert isinstance(y, torch.Tensor), f"{name} must return a plain tensor of logits"
    assert y.shape == (2, 1, 64, 64)
    assert torch.isfinite(y).all()
    y.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), f"{name}: a parameter got no gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("name", ["tcnet_tiny", "unet", "cenet", "deeplabv3"])
def test_multiclass_output(name):
    model = create_model(name, num_classes=3).eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 64, 64))
    assert y.shape == (1, 3, 64, 64)


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3p"])
def test_deeplab_trains_with_batch_one_at_64(name):
    # ASPP pools to 1×1; a plain BatchNorm raises with one value per channel in training mode.
    model = create_model(name).train()
    y = model(torch.randn(1, 3, 64, 64))
    y.mean().backward()
    assert y.shape == (1, 1, 64, 64)


def test_encoder_override():
    model = create_model("unet", encoder_name="resnet18")
    assert sum(p.numel() for p in model.parameters()) < 20e6  # resnet34 U-Net has 24.4 M


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown model 'tcnet_tny' \(did you mean 'tcnet_tiny'\?\); valid: tcnet_tiny, "):
        create_model("tcnet_tny")
    with pytest.raises(ValueError, match="valid: .*cenet"):
        tcnet.create_model("segformer")


@pytest.mark.parametrize("name", ["tcnet_tiny", "unet", "fcn"])
def test_unknown_option_is_rejected(name):
    with pytest.raises(ValueError, match=r"no option\(s\) 'num_clases' \(did you mean 'num_classes'\?\).*valid: "):
        create_model(name, num_clases=2)
    assert "num_classes" in model_options(name)
