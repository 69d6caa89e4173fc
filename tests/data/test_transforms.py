"""tcnet.data.transforms: the one preprocessing (resize, normalize, prepare) and the augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcnet.data.transforms import (
    MEAN, STD, build_augment, denormalize, normalize, prepare_image, resize_image, resize_mask, resize_prob,
)


def _image(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_resize_image_area_and_sizes():
    img = _image()
    out = resize_image(img, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert resize_image(img, (20, 10)).shape == (10, 20, 3)  # (width, height)
    half = resize_image(img, (32, 24))  # exact 2x downscale: area = block mean
    block = img.reshape(24, 2, 32, 2, 3).astype(float).mean(axis=(1, 3))
    assert np.abs(half.astype(float) - block).max() <= 1
    np.testing.assert_array_equal(resize_image(img, (64, 48)), img)
    assert resize_image(img[..., 0], 16).shape == (16, 16, 3)  # grey promoted to RGB
    with pytest.raises(ValueError, match="uint8"):
        resize_image(img.astype(np.float32), 16)
    with pytest.raises(ValueError, match="H x W x 3"):
        resize_image(np.zeros((4, 4, 2), np.uint8), 16)


def test_resize_mask_nearest_keeps_labels():
    m = np.zeros((48, 64), np.uint8)
    m[10:30, 20:50] = 1
    out = resize_mask(m, 32)
    assert out.shape == (32, 32) and out.dtype == np.uint8 and set(np.unique(out)) == {0, 1}
    assert abs(out.mean() - m.mean()) < 0.03
    b = resize_mask(m.astype(bool), (128, 96))
    assert b.dtype == bool and b.shape == (96, 128)
    np.testing.assert_array_equal(b[::2, ::2], m.astype(bool))  # 2x up-sampling repeats pixels exactly
    lab = resize_mask((m * 255).astype(np.uint8), 17)
    assert set(np.unique(lab)) <= {0, 255}


def test_normalize_and_denormalize():
    img = _image()
    x = normalize(img)
    assert x.dtype == np.float32 and x.shape == (3, 48, 64) and x.flags["C_CONTIGUOUS"]
    black = normalize(np.zeros((2, 2, 3), np.uint8))
    np.testing.assert_allclose(black[:, 0, 0], -np.array(MEAN) / np.array(STD), rtol=1e-6)
    white = normalize(np.full((2, 2, 3), 255, np.uint8))
    np.testing.assert_allclose(white[:, 0, 0], (1 - np.array(MEAN)) / np.array(STD), rtol=1e-6)
    np.testing.assert_array_equal(denormalize(x), img)


def test_prepare_image_is_resize_then_normalize():
    img = _image(90, 61)
    t = prepare_image(img, 32)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (1, 3, 32, 32)
    np.testing.assert_array_equal(t[0].numpy(), normalize(resize_image(img, 32)))
    with pytest.raises(ValueError, match="uint8"):
        prepare_image(img.astype(np.float64), 32)


def test_resize_prob_back_to_original_size():
    p = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    out = resize_prob(p, (61, 90))
    assert out.shape == (90, 61) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert resize_prob(torch.from_numpy(p)[None, None], (61, 90)).shape == (90, 61)  # 1 x 1 x S x S tensor
    k = resize_prob(np.stack([p, 1 - p]), (10, 20))
    assert k.shape == (2, 20, 10)
    np.testing.assert_allclose(k.sum(0), 1.0, atol=1e-5)
    const = resize_prob(np.full((8, 8), 0.3, np.float32), (31, 7))
    np.testing.assert_allclose(const, 0.3, atol=1e-6)


def _aligned_toy(s=64, seed=0):
    """An image whose R channel is the mask and G channel the FOV (asymmetric shapes)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((s, s), np.uint8)
    r, c = rng.integers(4, s // 3, 2)
    mask[r:r + s // 3, c:c + s // 2] = 1
    mask[r:r + 5, c:c + s // 2 + 10] = 1
    fov = np.zeros((s, s), np.uint8)
    fov[s // 8:, : s - s // 5] = 1
    img = np.zeros((s, s, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = mask * 255, fov * 255, 128
    return img, mask, fov


def test_augment_keeps_image_mask_fov_aligned_and_binary():
    aug = build_augment(True)
    img, mask, fov = _aligned_toy()
    changed = 0
    for s in range(40):
        aug.set_random_seed(s)
        out = aug(image=img, mask=mask, fov=fov)
        oi, om, of = out["image"], out["mask"], out["fov"]
        assert oi.shape == img.shape and oi.dtype == np.uint8
        assert om.shape == mask.shape and of.shape == fov.shape
        assert set(np.unique(om)) <= {0, 1} and set(np.unique(of)) <= {0, 1}
        # the same geometric transform on all three: the image channels still encode mask and FOV
        assert np.mean((oi[..., 0] > 127) != (om > 0)) < 0.02
        assert np.mean((oi[..., 1] > 127) != (of > 0)) < 0.02
        changed += not np.array_equal(om, mask)
    assert changed > 30  # it does augment (all four skipped: p = 1/16)


def test_augment_decisions_are_independent_under_per_item_seeds():
    """albumentations 2.0.8 seeds every child with the same seed (all flips or none); ours must not."""
    import pickle

    aug = build_augment(True)
    img = np.zeros((64, 64, 3), np.uint8)
    for k, (r, c) in enumerate([(0, 0), (0, 32), (32, 0), (32, 32)]):
        img[r:r + 32, c:c + 32, 0] = 40 * (k + 1)  # four labelled quadrants
    centres = [(16, 16), (16, 48), (48, 16), (48, 48)]  # shift/scale never move a quadrant centre out
    arrangements = set()
    for s in range(64):
        aug.set_random_seed(s)
        oi = aug(image=img)["image"]
        arrangements.add(tuple(int(oi[r, c, 0]) for r, c in centres))
    assert len(arrangements) == 8  # every flip/transpose combination; correlated seeding gives 2
    clone = pickle.loads(pickle.dumps(aug))  # DataLoader workers may pickle it
    clone.set_random_seed(3)
    aug.set_random_seed(3)
    np.testing.assert_array_equal(clone(image=img)["image"], aug(image=img)["image"])


def test_augment_seeding_and_identity():
    img, mask, fov = _aligned_toy(seed=1)
    a, b = build_augment(True, seed=5), build_augment(True, seed=5)
    for _ in range(5):
        oa, ob = a(image=img, mask=mask, fov=fov), b(image=img, mask=mask, fov=fov)
        np.testing.assert_array_equal(oa["image"], ob["image"])
        np.testing.assert_array_equal(oa["fov"], ob["fov"])
    a.set_random_seed(9)
    first = a(image=img, mask=mask, fov=fov)["mask"]
    a.set_random_seed(9)
    np.testing.assert_array_equal(a(image=img, mask=mask, fov=fov)["mask"], first)
    assert build_augment(7).seed == 7  # build_augment(seed) form: enabled, seeded
    ident = build_augment(False)
    out = ident(image=img, mask=mask, fov=fov)
    np.testing.assert_array_equal(out["image"], img)
    np.testing.assert_array_equal(out["mask"], mask)
    np.testing.assert_array_equal(out["fov"], fov)


def test_augment_shift_scale_bounds():
    """No rotation, shift <= 6.25 %, isotropic scale 0.9-1.1: a centred square stays a square."""
    s = 128
    mask = np.zeros((s, s), np.uint8)
    mask[44:84, 44:84] = 1
    img = np.zeros((s, s, 3), np.uint8)
    aug = build_augment(True)
    for seed in range(30):
        aug.set_random_seed(seed)
        om = aug(image=img, mask=mask, fov=mask)["mask"]
        rows, cols = np.nonzero(om)
        hgt, wid = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert 40 * 0.9 - 2 <= hgt <= 40 * 1.1 + 2 and abs(hgt - wid) <= 1
        cy, cx = rows.mean(), cols.mean()
        assert abs(cy - 63.5) <= 0.0625 * s * 1.1 + 1 and abs(cx - 63.5) <= 0.0625 * s * 1.1 + 1
        assert om.sum() == (om[rows.min():rows.max() + 1, cols.min():cols.max() + 1]).sum() == hgt * wid


def test_augment_amounts_come_from_the_arguments():
    """train.augment_shift / _scale / _p reach the transforms: p = 0 is the identity; a fixed
    scale of 1.5 with no shift grows a centred square 1.5x wherever p = 1 applies it."""
    s = 128
    mask = np.zeros((s, s), np.uint8)
    mask[44:84, 44:84] = 1
    img = np.random.default_rng(0).integers(0, 255, (s, s, 3), dtype=np.uint8)
    never = build_augment(True, seed=3, shift=0.2, scale=(0.5, 2.0), p=0.0)
    for _ in range(5):
        out = never(image=img, mask=mask, fov=mask)
        np.testing.assert_array_equal(out["image"], img)
    always = build_augment(True, seed=3, shift=0.0, scale=(1.5, 1.5), p=1.0)
    om = always(image=img, mask=mask, fov=mask)["mask"]
    rows, cols = np.nonzero(om)
    assert np.ptp(rows) + 1 == pytest.approx(60, abs=2) and np.ptp(cols) + 1 == pytest.approx(60, abs=2)
    assert abs(rows.mean() - 63.5) <= 1 and abs(cols.mean() - 63.5) <= 1


def test_opencv_runs_single_threaded_for_fork_safety():
    """An OpenCV thread pool alive at fork time can deadlock forked workers (preprocess pool,
    DataLoader workers); importing the transforms turns it off unless TCNET_CV2_THREADS says so."""
    import os

    import cv2

    from tcnet.data import transforms

    if "TCNET_CV2_THREADS" not in os.environ:
        assert transforms.CV2_THREADS == 0 and cv2.getNumThreads() <= 1
