"""CHASE_DB1 retinal vessels: 28 JPEG images flat in one folder, two observers' PNG labels.

Recognised: a folder (the root, or up to two folders below it, e.g. ``CHASEDB1/``) holding::

    Image_01L.jpg  Image_01L_1stHO.png  Image_01L_2ndHO.png  ...  Image_14R.jpg ...

Truth is ``_1stHO`` (first observer); ``_2ndHO`` is not used. No FOV masks ship, so the FOV is
derived from the image (:func:`derive_fov`). Split convention (none is official): sorted by name,
the first 20 images (Image_01L..Image_10R) are ``train`` and the last 8 (Image_11L..Image_14R)
``test`` -- torch-em / mmseg's convention; with fewer than 28 images the same 20:8 proportion.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from tcnet.data.adapters.base import (
    Adapter, Sample, list_files, matching, missing_mask, register_adapter, shallowest_dirs,
)

IMAGE_RE = re.compile(r"(Image_\d{2}[LR])\.jpg", re.IGNORECASE)
FIRST_OBSERVER = "{id}_1stHO.png"
SEARCH_DEPTH = 2
N_TRAIN, N_TOTAL = 20, 28  # first 20 of 28 train, last 8 test

# FOV derivation (see derive_fov): a pixel is inside when the brightest channel of the
# median-smoothed image exceeds max(FOV_MIN_LEVEL, FOV_REL_LEVEL * its 99th percentile).
FOV_MIN_LEVEL = 15
FOV_REL_LEVEL = 0.10
FOV_MEDIAN = 5  # median filter size (odd), against JPEG noise in the black surround
FOV_ERODE_FRACTION = 0.004  # erosion radius as a fraction of min(H, W) (999x960 -> 4 px), >= 1 px


def derive_fov(rgb: np.ndarray) -> np.ndarray:
    """Field of view of a fundus photograph on a black surround, as bool H x W.

    1. brightest channel (max of R, G, B) after a 5x5 median filter (JPEG noise in the black
       surround is suppressed, vessels inside the disc do not matter: they are not black);
    2. threshold at ``max(15, 0.10 * 99th percentile)``: a fixed floor above the black level plus a
       relative term for bright images;
    3. keep the largest 8-connected component (drops text, stray bright pixels in the corners);
    4. fill holes (a dark macula or lesion inside the disc stays inside);
    5. erode by ``max(1, round(0.004 * min(H, W)))`` px (a disk) to drop the dim, noisy rim.
    The image border does not erode the mask (an image cropped inside the FOV keeps its edges).
    """
    import cv2
    from scipy import ndimage

    import tcnet.data.transforms  # noqa: F401  (OpenCV single-threaded, fork-safe: see there)

    a = np.asarray(rgb)
    if a.ndim == 3:
        a = a[..., :3].max(axis=2)
    a = np.ascontiguousarray(a, dtype=np.uint8)
    if min(a.shape) >= FOV_MEDIAN:
        a = cv2.medianBlur(a, FOV_MEDIAN)
    level = max(FOV_MIN_LEVEL, FOV_REL_LEVEL * float(np.percentile(a, 99)))
    inside = (a > level).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if n <= 1:
        return np.zeros(a.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fov = ndimage.binary_fill_holes(labels == largest)
    r = max(1, int(round(FOV_ERODE_FRACTION * min(a.shape))))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    fov = cv2.erode(fov.astype(np.uint8), disk)  # default border: no erosion from the image edge
    return fov.astype(bool)


def split_of(rank: int, n: int) -> str:
    """``train`` for the first 20 of 28 images by sorted name, ``test`` for the rest (same 20:8
    proportion, rounded, when fewer images are present)."""
    n_train = N_TRAIN if n == N_TOTAL else int(round(n * N_TRAIN / N_TOTAL))
    return "train" if rank < n_train else "test"


@register_adapter
class ChaseDB1(Adapter):
    name = "chase_db1"
    title = "CHASE_DB1"
    layout = """
data/chase_db1/                 (the zip's 84 files, flat; a CHASEDB1/ subfolder is fine too)
  Image_01L.jpg  Image_01L_1stHO.png  Image_01L_2ndHO.png
  Image_01R.jpg  Image_01R_1stHO.png  Image_01R_2ndHO.png
  ...            (to Image_14R; 2ndHO optional, not used)
"""

    def find(self, root: Path) -> list[Sample]:
        holders = shallowest_dirs(root, lambda d: bool(matching(list_files(d), IMAGE_RE)), SEARCH_DEPTH)
        if not holders:
            raise self.error(root, "no Image_NN[L|R].jpg images found")
        if len(holders) > 1:
            raise self.error(root, f"CHASE_DB1 images found in more than one folder "
                             f"({', '.join(map(str, holders))}); keep one copy")
        folder = holders[0]
        files = {p.name.lower(): p for p in list_files(folder)}
        images = sorted(matching(files.values(), IMAGE_RE), key=lambda p: p.name)
        samples = []
        for rank, image in enumerate(images):
            sid = IMAGE_RE.fullmatch(image.name).group(1)
            label = files.get(FIRST_OBSERVER.format(id=sid).lower())
            if label is None:
                raise missing_mask(self.name, image, folder / FIRST_OBSERVER.format(id=sid))
            samples.append(Sample(sid, self.name, image, label, None, split_of(rank, len(images))))
        return samples

    def load_fov(self, sample: Sample, image: Optional[np.ndarray] = None) -> np.ndarray:
        if image is None:
            from tcnet.data.io import read_image

            image = read_image(sample.image)
        return derive_fov(image)
