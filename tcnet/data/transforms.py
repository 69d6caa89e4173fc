"""The ONE preprocessing of tcnet: training, evaluation, ``tcnet predict`` and serving all use it.

    image (uint8 H x W x 3) --resize_image (area)--> S x S x 3 --normalize--> float32 3 x S x S
    mask  (0/1 or bool)     --resize_mask (nearest)--> S x S
    probability (S x S)     --resize_prob (bilinear)--> original H x W (predictions at full size)

``prepare_image`` chains resize + normalize into the ``1 x 3 x S x S`` tensor a model takes.
``build_augment`` is the paper's training augmentation (flips, diagonal flip, small shift + scale),
applied jointly to the image, the mask and the FOV mask.

Sizes: ``size`` is an int ``S`` (square S x S) or a ``(width, height)`` pair (OpenCV order).
"""

from __future__ import annotations

import os
import random
from typing import Optional, Sequence, Union

import cv2
import numpy as np

# OpenCV's own thread pool stays off (0 = run sequentially): tcnet parallelises over images
# (preprocess process pool, DataLoader workers), and an OpenCV pool that is alive when a worker is
# forked can deadlock that worker on its first OpenCV call (glibc pthread_cond_destroy waits for
# pool threads that do not exist in the child). Every tcnet module that uses OpenCV imports this
# module first. TCNET_CV2_THREADS=n overrides (e.g. for a single-process predict on huge images).
CV2_THREADS = int(os.environ.get("TCNET_CV2_THREADS", "0") or 0)
cv2.setNumThreads(CV2_THREADS)

# ImageNet statistics (RGB, on [0, 1]): the encoders' pretraining convention.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

# Augmentation defaults (the paper: flips, diagonal flip, small shift and scale, no rotation; the
# amounts are this project's choice); params.yaml's train.augment_shift / _scale / _p set them.
SHIFT_LIMIT = 0.0625  # fraction of the side, each direction
SCALE_RANGE = (0.9, 1.1)
AUG_P = 0.5  # probability of each augmentation

Size = Union[int, Sequence[int]]


def _wh(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        w = h = int(size)
    else:
        w, h = (int(v) for v in size)
    if w < 1 or h < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    return w, h


def _check_rgb(rgb: np.ndarray, what: str = "image") -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim == 2:  # greyscale -> RGB
        a = np.repeat(a[..., None], 3, axis=2)
    elif a.ndim == 3 and a.shape[2] == 4:  # drop alpha
        a = a[..., :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"{what}: expected an H x W x 3 RGB array, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 pixels (0..255), got {a.dtype}")
    if min(a.shape[:2]) < 1:
        raise ValueError(f"{what}: has no pixels (shape {a.shape})")
    return a


def resize_image(rgb: np.ndarray, size: Size) -> np.ndarray:
    """uint8 H x W x 3 -> uint8 h x w x 3 with area interpolation (no aliasing when shrinking)."""
    a = _check_rgb(rgb)
    w, h = _wh(size)
    if a.shape[:2] == (h, w):
        return np.ascontiguousarray(a).copy()
    return cv2.resize(np.ascontiguousarray(a), (w, h), interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, size: Size) -> np.ndarray:
    """H x W label mask -> h x w, nearest neighbour (labels stay labels; bool stays bool).

    Uses ``INTER_NEAREST_EXACT`` (pixel-centre aligned, like Pillow/scikit-image nearest); OpenCV's
    plain ``INTER_NEAREST`` shifts the mask by up to half a pixel.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask: expected an H x W array, got shape {m.shape}")
    w, h = _wh(size)
    is_bool = m.dtype == bool
    src = m.astype(np.uint8) if is_bool else m
    if src.shape == (h, w):
        out = np.array(src)
    else:
        out = cv2.resize(np.ascontiguousarray(src), (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    return out.astype(bool) if is_bool else out


def normalize(rgb: np.ndarray) -> np.ndarray:
    """uint8 H x W x 3 -> float32 3 x H x W: ``(x / 255 - MEAN) / STD`` per channel, channels first."""
    a = _check_rgb(rgb)
    x = a.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def denormalize(chw: np.ndarray) -> np.ndarray:
    """Inverse of :func:`normalize` (for figures): float 3 x H x W -> uint8 H x W x 3."""
    x = np.asarray(chw, np.float32).transpose(1, 2, 0) * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32)
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def prepare_image(rgb: np.ndarray, size: Size):
    """uint8 H x W x 3 -> torch float32 ``1 x 3 x S x S``: resize (area) then normalize."""
    import torch

    return torch.from_numpy(normalize(resize_image(rgb, size))).unsqueeze(0)


def resize_prob(prob, size: Sequence[int]) -> np.ndarray:
    """A probability map at network resolution -> ``size = (width, height)``, bilinear.

    ``prob``: numpy array or torch tensor, H x W or K x H x W (leading singleton batch dims are
    dropped). Returns float32 of the same rank at the new size, clipped to [0, 1].
    """
    if hasattr(prob, "detach"):  # torch tensor
        prob = prob.detach().float().cpu().numpy()
    p = np.asarray(prob, dtype=np.float32)
    while p.ndim > 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim not in (2, 3):
        raise ValueError(f"resize_prob: expected H x W or K x H x W, got shape {p.shape}")
    w, h = _wh(size)
    if p.ndim == 2:
        out = cv2.resize(np.ascontiguousarray(p), (w, h), interpolation=cv2.INTER_LINEAR)
    else:
        chans = [cv2.resize(np.ascontiguousarray(c), (w, h), interpolation=cv2.INTER_LINEAR) for c in p]
        out = np.stack(chans)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


_SEEDED_COMPOSE = None


def _seeded_compose_class():
    """``SeededCompose``: an ``albumentations.Compose`` whose seeding gives independent draws.

    albumentations 2.0.8 ``Compose.set_random_seed(s)`` (also called by ``Compose(seed=s)``) seeds
    EVERY child transform with the same ``s``: each child's first draw is then identical, so all
    ``p=0.5`` decisions come out the same (both flips or none, never one). Here the Compose and its
    children share ONE generator pair seeded from ``s`` (``set_random_state``), so consecutive draws
    are independent, and the same ``s`` still reproduces the same augmentation.
    Created on first use (importing albumentations takes seconds); importable by name for pickle.
    """
    global _SEEDED_COMPOSE
    if _SEEDED_COMPOSE is None:
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network
        import albumentations as A

        class SeededCompose(A.Compose):
            def set_random_seed(self, seed: Optional[int]) -> None:
                self.seed = seed
                self.set_random_state(np.random.default_rng(seed), random.Random(seed))

        SeededCompose.__module__ = __name__
        SeededCompose.__qualname__ = SeededCompose.__name__
        SeededCompose.__doc__ = _seeded_compose_class.__doc__
        _SEEDED_COMPOSE = SeededCompose
    return _SEEDED_COMPOSE


def __getattr__(name: str):  # module attribute SeededCompose, created lazily
    if name == "SeededCompose":
        return _seeded_compose_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_augment(enabled: bool = True, seed: Optional[int] = None, *, shift: float = SHIFT_LIMIT,
                  scale: tuple[float, float] = SCALE_RANGE, p: float = AUG_P):
    """The training augmentation as an ``albumentations.Compose`` (targets: image, mask, fov).

    HorizontalFlip, VerticalFlip, Transpose (diagonal flip) and Affine (shift <= ``shift`` of the
    side, default 6.25 %; isotropic scale in ``scale``, default 0.9-1.1; no rotation), each with
    probability ``p`` (default 0.5); the image is interpolated bilinearly,
    the mask and FOV nearest; pixels shifted in are 0 (image black, mask and FOV background). The
    same geometric transform is applied to all three: ``aug(image=img, mask=m, fov=f)``.

    ``enabled=False`` gives an identity Compose with the same call signature. ``seed`` seeds the
    Compose's own generator (albumentations 2.x ignores the global numpy/random seeds); re-seed per
    item with ``aug.set_random_seed(s)`` for order-independent augmentation (a ``SeededCompose``:
    one stream shared by all four transforms, so their decisions are independent).
    ``build_augment(seed)`` with an int (not bool) first argument is read as a seed, enabled.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    if isinstance(enabled, (int, np.integer)) and not isinstance(enabled, (bool, np.bool_)) and seed is None:
        enabled, seed = True, int(enabled)
    transforms = []
    if enabled:
        transforms = [
            A.HorizontalFlip(p=p),
            A.VerticalFlip(p=p),
            A.Transpose(p=p),
            A.Affine(
                scale=tuple(scale),
                keep_ratio=True,  # isotropic: one factor for x and y
                translate_percent=(-shift, shift),
                rotate=0.0,
                shear=0.0,
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=p,
            ),
        ]
    return _seeded_compose_class()(transforms, additional_targets={"fov": "mask"}, seed=seed)


__all__ = [
    "MEAN", "STD", "resize_image", "resize_mask", "normalize", "denormalize", "prepare_image",
    "resize_prob", "build_augment",
]
