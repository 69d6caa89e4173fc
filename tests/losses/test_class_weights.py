"""class_weights_from_masks: inverse pixel frequency, smallest = 1, clipped to [1, 50]."""

import numpy as np
import pytest

from tcnet.losses import class_weights_from_masks


def test_by_hand():
    masks = np.zeros((1, 2, 5), np.uint8)
    masks[0, 0, :2] = 1  # 2 fg of 10 pixels
    # inverse frequency 10/8 = 1.25 (bg), 10/2 = 5 (fg) -> / 1.25 -> [1, 4]
    assert class_weights_from_masks(masks) == pytest.approx([1.0, 4.0])
    # 0/255 and bool masks are the same masks
    assert class_weights_from_masks(masks * 255) == pytest.approx([1.0, 4.0])
    assert class_weights_from_masks(masks.astype(bool)) == pytest.approx([1.0, 4.0])
    # valid drops 4 bg pixels: 4 bg, 2 fg -> [6/4, 6/2] / 1.5 = [1, 2]
    valid = np.ones_like(masks)
    valid[0, 1, :4] = 0
    assert class_weights_from_masks(masks, valid) == pytest.approx([1.0, 2.0])


def test_clip_and_degenerate_cases():
    masks = np.zeros((2, 10, 50), np.uint8)
    masks[0, 0, 0] = 1  # 1 fg in 1000 -> 999, clipped to 50
    assert class_weights_from_masks(masks) == pytest.approx([1.0, 50.0])
    assert class_weights_from_masks(masks, clip=(1, 2000)) == pytest.approx([1.0, 999.0])
    assert class_weights_from_masks(np.zeros((3, 4, 4))) == [1.0, 50.0]  # no fg: upper clip
    assert class_weights_from_masks(masks, np.zeros_like(masks)) == [1.0, 1.0]  # nothing counted
    # foreground the majority: the background gets the larger weight
    assert class_weights_from_masks(np.array([[1, 1, 1, 0]])) == pytest.approx([3.0, 1.0])


def test_multiclass_and_errors():
    labels = np.array([[0, 0, 0, 0, 1, 1, 2, 0]])  # counts 5, 2, 1 -> 8/5, 8/2, 8/1 -> / 1.6
    assert class_weights_from_masks(labels, num_classes=3) == pytest.approx([1.0, 2.5, 5.0])
    with pytest.raises(ValueError, match="outside"):
        class_weights_from_masks(labels + 2, num_classes=3)
    with pytest.raises(ValueError, match="must match"):
        class_weights_from_masks(np.zeros((2, 3)), np.zeros((3, 2)))
