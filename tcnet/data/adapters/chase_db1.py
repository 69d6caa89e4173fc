"""CHASE_DB1 retinal vessels: 28 JPEG images flat in one folder, two observers' PNG labels.

Recognised: a folder (the root, or up to two folders below it, e.g. ``CHASEDB1/``) holding::

    Image_01L.jpg  Image_01L_1stHO.png  Image_01L_2ndHO.png  ...  Image_14R.jpg ...

Truth is ``_1stHO`` (first observer); ``_2ndHO`` is not used. No FOV masks ship, so the FOV is
derived from the image (:func:`derive_fov`). Split convention (none is official): the first 20
images (Image_01L..Image_10R, children 01-10) are ``train`` and the last 8 (Image_11L..Image_14R)
``test`` -- torch-em / mmseg's convention; assigned by child, so a missing image moves no other
(:func:`split_ids`; a set without children 11-14 takes the same 20:8 proportion).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from tcnet.data.adapters.base import (
    Adapter, Sample, check_no_orphans, list_files, matching, missing_mask, register_adapter, shallowest_dirs,
)

IMAGE_RE = re.compile(r"(Image_\d{2}[LR])\.jpg", re.IGNORECASE)
FIRST_OBSERVER = "{id}_1stHO.png"
SEARCH_DEPTH = 2
N_TRAIN, N_TOTAL = 20, 28  # first 20 of 28 train, last 8 test
TRAIN_CHILDREN = 10  # children 01-10 (Image_01L..Image_10R) train, 11-14 test
ID_RE = re.compile(r"Image_(\d{2})[LR]")

# FOV derivation (see derive_fov): a pixel is inside when the brightest channel of the
# median-smoothed image exceeds max(FOV_MIN_LEVEL, FOV_REL_LEVEL * its 99th percentile).
FOV_MIN_LEVEL = 15
FOV_REL_LEVEL = 0.10
FOV_MEDIAN = 5  # median filter size (odd), against JPEG noise in the black surround
FOV_ERODE_FRACTION = 0.004  # erosion radius as a fraction of min(H, W) (999x960 -> 4 px), >= 1 px


def derive_fov_of_file(path) -> np.ndarray:
    """:func:`derive_fov` of the image file at ``path`` (what evaluate and ``tcnet score
    --fov-from-images`` count)."""
    from tcnet.data.io import read_image

    return derive_fov(read_image(path))


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
    fov = fill_holes(labels == largest)
    r = max(1, int(round(FOV_ERODE_FRACTION * min(a.shape))))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    fov = cv2.erode(fov.astype(np.uint8), disk)  # default border: no erosion from the image edge
    return fov.astype(bool)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_fill_holes`` of a 2-D bool mask with its default structure (a hole:
    background not 4-connected to the border), by one OpenCV flood fill from a one-pixel frame.
    The preprocess workers then need no scipy, whose import cost every run ~0.26 s."""
    import cv2

    h, w = mask.shape
    framed = np.zeros((h + 2, w + 2), np.uint8)
    framed[1:-1, 1:-1] = mask
    cv2.floodFill(framed, None, (0, 0), 2, flags=4)  # the background reached from outside becomes 2
    return framed[1:-1, 1:-1] != 2


def split_ids(ids) -> tuple[list[str], list[str], str]:
    """``(train, test, rule)``: the convention's split of CHASE_DB1 ids (there is no official one).

    Official names (``Image_NN[LR]``) split by child: children 01-10 (Image_01L..Image_10R, the
    first 20) train, 11-14 (the last 8) test, so a missing image moves no other one. Other names,
    or a set without children 11-14 (a small look-alike), take the same 20:8 proportion of the
    sorted ids. ``rule`` says which, and which of the 28 images are missing.
    """
    ids = sorted(ids)
    n = len(ids)
    matches = [ID_RE.fullmatch(i) for i in ids]
    children = [int(m.group(1)) for m in matches] if n and all(matches) else []
    train = [i for i, c in zip(ids, children) if c <= TRAIN_CHILDREN]
    test = [i for i, c in zip(ids, children) if c > TRAIN_CHILDREN]
    if train and test:
        missing = sorted({f"Image_{c:02d}{eye}" for c in range(1, 15) for eye in "LR"} - set(ids))
        rule = "first 20 / last 8 (children 01-10 / 11-14)"
        if missing:
            more = " ..." if len(missing) > 8 else ""
            rule += f"; {len(missing)} of the 28 images missing: {', '.join(missing[:8])}{more}"
        return train, test, rule
    n_train = N_TRAIN if n == N_TOTAL else int(round(n * N_TRAIN / N_TOTAL))
    if n < 2 or not 0 < n_train < n:
        raise ValueError(f"chase_db1: need at least 2 images for a train/test split, found {n}")
    why = "ids not named Image_NN[LR]" if not children else "no image of children 11-14"
    return ids[:n_train], ids[n_train:], f"first {n_train} / last {n - n_train} (20:8 of {n} images; {why})"


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
        train = set(split_ids([IMAGE_RE.fullmatch(p.name).group(1) for p in images])[0]) if len(images) > 1 else set()
        for image in images:
            sid = IMAGE_RE.fullmatch(image.name).group(1)
            label = files.get(FIRST_OBSERVER.format(id=sid).lower())
            if label is None:
                raise missing_mask(self.name, image, folder / FIRST_OBSERVER.format(id=sid))
            samples.append(Sample(sid, self.name, image, label, None, "train" if sid in train else "test"))
        label_re = re.compile(r"(Image_\d{2}[LR])_1stHO\.png", re.I)
        check_no_orphans(self.name, matching(files.values(), label_re), [s.mask for s in samples],
                         lambda f: folder / f"{label_re.fullmatch(f.name).group(1)}.jpg")
        return samples

    def load_fov(self, sample: Sample, image: Optional[np.ndarray] = None) -> np.ndarray:
        return derive_fov_of_file(sample.image) if image is None else derive_fov(image)
