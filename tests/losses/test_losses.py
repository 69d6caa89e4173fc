"""Losses: hand-worked Dice / weighted CE, the λ mix, valid masks, gradients, deep supervision."""

import math

import pytest
import torch
import torch.nn.functional as F

from tcnet.config import LossConfig
from tcnet.losses import (
    CombinedLoss,
    DeepSupervisionLoss,
    DiceLoss,
    WeightedCrossEntropyLoss,
    build_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)

LN2 = math.log(2.0)


def _t(rows):
    """A 1 x H x W tensor from nested lists."""
    return torch.tensor(rows)[None]


# ----------------------------------------------------------------------------------------------
# Soft Dice
# ----------------------------------------------------------------------------------------------


def test_dice_binary_by_hand():
    # logits 0 -> p = 0.5 on all 4 pixels; target has 1 foreground pixel.
    # Σp·t = 0.5, Σp = 2, Σt = 1 -> dice = (2*0.5 + 1) / (2 + 1 + 1) = 0.5 -> loss 0.5
    logits = torch.zeros(1, 1, 2, 2)
    target = _t([[1, 0], [0, 0]])
    assert float(DiceLoss()(logits, target)) == pytest.approx(0.5)
    # valid mask drops pixel (1, 1): Σp = 1.5 -> dice = 2 / 3.5 -> loss 1 - 4/7 = 3/7
    valid = _t([[1, 1], [1, 0]])
    assert float(DiceLoss()(logits, target, valid)) == pytest.approx(3 / 7)


def test_dice_multiclass_by_hand():
    # 2 channels of zeros -> p = 0.5 for each class. Target: 1 pixel of class 1, 3 of class 0.
    # class 0: Σp·t = 1.5, Σp = 2, Σt = 3 -> dice 4/6 -> loss 1/3
    # class 1: Σp·t = 0.5, Σp = 2, Σt = 1 -> dice 2/4 -> loss 1/2;  mean = 5/12
    logits = torch.zeros(1, 2, 2, 2)
    target = _t([[1, 0], [0, 0]])
    assert float(DiceLoss()(logits, target)) == pytest.approx(5 / 12)


def test_dice_is_per_batch_not_per_image():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 4)
    target = (torch.rand(2, 4, 4) > 0.6).long()
    batch = soft_dice_loss(logits, target)
    # per batch = one image made of both side by side
    side_by_side = soft_dice_loss(torch.cat([logits[0:1], logits[1:2]], dim=3), torch.cat([target[0:1], target[1:2]], dim=2))
    assert float(batch) == pytest.approx(float(side_by_side), abs=1e-6)
    per_image_mean = (soft_dice_loss(logits[0:1], target[0:1]) + soft_dice_loss(logits[1:2], target[1:2])) / 2
    assert float(batch) != pytest.approx(float(per_image_mean), abs=1e-4)


def test_dice_perfect_prediction_is_near_zero_and_target_layouts_agree():
    target = _t([[1, 0, 1], [0, 1, 0]])
    logits = (target.float() * 2 - 1)[:, None] * 50.0
    assert float(soft_dice_loss(logits, target)) < 1e-6
    # B x 1 x H x W float target = B x H x W long target
    assert float(soft_dice_loss(logits * 0.01, target)) == pytest.approx(
        float(soft_dice_loss(logits * 0.01, target[:, None].float()))
    )


# ----------------------------------------------------------------------------------------------
# Weighted cross-entropy
# ----------------------------------------------------------------------------------------------


def test_wce_binary_by_hand():
    # logits [0, ln 3], target [1, 0]: BCE = ln 2 (fg pixel), softplus(ln 3) = ln 4 = 2 ln 2 (bg pixel)
    logits = torch.tensor([[[[0.0, math.log(3.0)]]]])
    target = torch.tensor([[[1, 0]]])
    # unweighted: (ln2 + 2 ln2) / 2 = 1.5 ln2
    assert float(WeightedCrossEntropyLoss()(logits, target)) == pytest.approx(1.5 * LN2)
    # [w_bg, w_fg] = [1, 3]: (3 * ln2 + 1 * 2 ln2) / (3 + 1) = 1.25 ln2
    assert float(WeightedCrossEntropyLoss([1.0, 3.0])(logits, target)) == pytest.approx(1.25 * LN2)
    # scaling all weights changes nothing (weighted mean)
    assert float(WeightedCrossEntropyLoss([2.0, 6.0])(logits, target)) == pytest.approx(1.25 * LN2)
    # valid mask keeping only the fg pixel: ln 2
    assert float(WeightedCrossEntropyLoss([1.0, 3.0])(logits, target, torch.tensor([[[1, 0]]]))) == pytest.approx(LN2)


def test_wce_matches_torch_cross_entropy_and_binary_equals_two_class():
    torch.manual_seed(1)
    w = [0.7, 2.5, 4.0]
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    ours = weighted_cross_entropy(logits, target, w)
    ref = F.cross_entropy(logits, target, weight=torch.tensor(w))
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)
    # binary BCE with [w_bg, w_fg] on z == 2-class CE on logits [0, z]
    z = torch.randn(2, 1, 5, 6)
    t = torch.randint(0, 2, (2, 5, 6))
    two = torch.cat([torch.zeros_like(z), z], dim=1)
    assert float(weighted_cross_entropy(z, t, [1.0, 5.0])) == pytest.approx(
        float(F.cross_entropy(two, t, weight=torch.tensor([1.0, 5.0]))), rel=1e-5
    )


def test_wce_valid_mask_equals_loss_on_the_valid_pixels_only():
    torch.manual_seed(2)
    z = torch.randn(1, 1, 4, 5)
    t = torch.randint(0, 2, (1, 4, 5))
    valid = torch.zeros(1, 4, 5, dtype=torch.long)
    valid[:, :, :3] = 1
    assert float(weighted_cross_entropy(z, t, [1, 4], valid)) == pytest.approx(
        float(weighted_cross_entropy(z[..., :3], t[..., :3], [1, 4])), rel=1e-6
    )
    # no valid pixel at all: 0, still differentiable
    zz = z.clone().requires_grad_(True)
    loss = weighted_cross_entropy(zz, t, [1, 4], torch.zeros_like(valid))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(zz.grad == 0)


def test_wce_rejects_wrong_weights():
    with pytest.raises(ValueError, match="class_weights"):
        WeightedCrossEntropyLoss([1.0, -2.0])
    with pytest.raises(ValueError, match="3 values for 2 classes"):
        weighted_cross_entropy(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2), [1, 2, 3])


# ----------------------------------------------------------------------------------------------
# Combined loss and gradients
# ----------------------------------------------------------------------------------------------


def _batch(seed=3, c=1):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 8, 8, generator=g)
    target = torch.randint(0, max(c, 2), (2, 8, 8), generator=g)
    return logits, target


@pytest.mark.parametrize("num_classes", [1, 3])
def test_combined_endpoints_and_mix(num_classes):
    logits, target = _batch(c=num_classes)
    w = [1.0, 4.0] if num_classes == 1 else [1.0, 2.0, 3.0]
    dice = float(soft_dice_loss(logits, target))
    wce = float(weighted_cross_entropy(logits, target, w))
    assert float(CombinedLoss(0.0, w, num_classes)(logits, target)) == dice
    assert float(CombinedLoss(1.0, w, num_classes)(logits, target)) == wce
    assert float(CombinedLoss(0.3, w, num_classes)(logits, target)) == pytest.approx(0.3 * wce + 0.7 * dice, rel=1e-6)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_gradients_flow_and_stay_inside_the_valid_mask(lam):
    logits, target = _batch(4)
    logits.requires_grad_(True)
    valid = torch.ones(2, 8, 8)
    valid[:, :, 6:] = 0
    loss = CombinedLoss(lam, [1.0, 3.0])(logits, target, valid)
    loss.backward()
    g = logits.grad
    assert torch.isfinite(g).all()
    assert g[..., :6].abs().sum() > 0
    assert torch.all(g[..., 6:] == 0)  # pixels outside the FOV do not count


def test_combined_rejects_bad_settings():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CombinedLoss(1.5)
    with pytest.raises(ValueError, match="needs 2"):
        CombinedLoss(0.5, [1.0, 2.0, 3.0], num_classes=1)
    with pytest.raises(ValueError, match="num_classes=1"):
        CombinedLoss(0.5)(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4))


def test_bf16_logits_are_scored_in_float32():
    logits, target = _batch(5)
    ref = float(CombinedLoss(0.5, [1, 2])(logits.bfloat16().float(), target))
    out = CombinedLoss(0.5, [1, 2])(logits.bfloat16(), target)
    assert out.dtype == torch.float32 and float(out) == pytest.approx(ref, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Deep supervision and build_loss
# ----------------------------------------------------------------------------------------------


def test_deep_supervision_weighting():
    base = CombinedLoss(0.5, [1.0, 2.0])
    heads = [_batch(s)[0] for s in (10, 11, 12)]
    target = _batch(10)[1]
    ds = DeepSupervisionLoss(base)
    expected = (1.0 * float(base(heads[0], target)) + 0.5 * float(base(heads[1], target))
                + 0.25 * float(base(heads[2], target))) / 1.75
    assert float(ds(heads, target)) == pytest.approx(expected, rel=1e-6)
    assert ds.head_weights(4) == pytest.approx([1 / 1.875, 0.5 / 1.875, 0.25 / 1.875, 0.125 / 1.875])
    # one tensor (eval mode) = the base loss; a one-element list too
    assert float(ds(heads[0], target)) == float(base(heads[0], target))
    assert float(ds([heads[0]], target)) == pytest.approx(float(base(heads[0], target)))


def test_deep_supervision_gradients_reach_every_head_and_errors():
    base = CombinedLoss(0.5)
    heads = [_batch(s)[0].requires_grad_(True) for s in (1, 2, 3, 4)]
    DeepSupervisionLoss(base)(heads, _batch(1)[1]).backward()
    assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)
    with pytest.raises(ValueError, match="5 heads"):
        DeepSupervisionLoss(base)([heads[0]] * 5, _batch(1)[1])
    with pytest.raises(ValueError, match="full resolution"):
        DeepSupervisionLoss(base)([heads[0], heads[1][..., :4, :4]], _batch(1)[1])


def test_build_loss_picks_weights_and_wraps():
    loss = build_loss(LossConfig(ce_weight=0.3), [1.0, 7.0], num_classes=1, deep_supervision=False)
    assert isinstance(loss, CombinedLoss) and loss.ce_weight == 0.3
    assert loss.wce.class_weights.tolist() == [1.0, 7.0]
    # hand-set weights win over the statistics
    loss = build_loss(LossConfig(ce_weight=0.5, class_weights=(1.0, 2.0)), [1.0, 7.0], 1, deep_supervision=True)
    assert isinstance(loss, DeepSupervisionLoss) and loss.base.wce.class_weights.tolist() == [1.0, 2.0]
    # no weights anywhere: plain cross-entropy
    assert build_loss(LossConfig(), None, 1, False).wce.class_weights is None
    with pytest.raises(ValueError, match="needs 3"):
        build_loss(LossConfig(), [1.0, 7.0], num_classes=3, deep_supervision=False)
