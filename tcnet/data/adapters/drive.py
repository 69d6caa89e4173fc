"""DRIVE retinal vessels: TIFF images, GIF vessel labels (observer 1) and GIF FOV masks.

Recognised under the root (the root may be ``DRIVE/`` or up to two folders above it; ``training/``
and ``test/`` are looked for each on its own, so one folder per unzipped archive, e.g.
``training/training/images/``, as Windows' "Extract All" makes it, is found too)::

    DRIVE/training/images/21_training.tif    1st_manual/21_manual1.gif    mask/21_training_mask.gif
    DRIVE/test/images/01_test.tif            1st_manual/01_manual1.gif    mask/01_test_mask.gif
    DRIVE/test/2nd_manual/01_manual2.gif     (second observer, palette GIF: never used as truth)

Truth is ``1st_manual`` (observer A, the convention). ``training/`` is required; ``test/`` is
optional, but a ``test/`` without ``1st_manual/`` is refused: the grand-challenge ``test.zip`` ships
no labels (see the error message). ``official_split``: train | test.
"""

from __future__ import annotations

import re
from pathlib import Path

from tcnet.data.adapters.base import (
    Adapter, Sample, check_no_orphans, child, list_files, matching, missing_mask, register_adapter,
    shallowest_dirs,
)

PARTS = {  # part folder -> (split, image pattern, FOV mask name pattern)
    "training": ("train", re.compile(r"(\d{2})_training\.tiff?", re.I), "{n}_training_mask.gif"),
    "test": ("test", re.compile(r"(\d{2})_test\.tiff?", re.I), "{n}_test_mask.gif"),
}
MANUAL = "{n}_manual1.gif"
SEARCH_DEPTH = 3  # training/ at most 3 folders down: root / [up to one folder] / DRIVE / training

TEST_WITHOUT_LABELS = (
    "{test} has images but no 1st_manual/ folder: the DRIVE test.zip from drive.grand-challenge.org "
    "ships no vessel labels (only images/ and mask/), so the test images cannot be scored. Either "
    "(a) add the labels of the original DRIVE release as {test}/1st_manual/01_manual1.gif ... "
    "20_manual1.gif, or (b) delete (or move away) {test} to use the 20 labelled training images only: "
    "the split then has no test part, so score the split's seeded hold-out of training images instead "
    "(part: val in the experiment's drive entry in params.yaml; split.retina_val_fraction sets its size)"
)


def _part_accepts(part: str):
    """A folder named ``part`` holding any of the part's folders (labels alone count too: a test/
    whose images/ did not unzip must be seen, not skipped)."""
    return lambda d: d.name.lower() == part and any(child(d, f) is not None for f in ("images", "1st_manual", "mask"))


@register_adapter
class Drive(Adapter):
    name = "drive"
    title = "DRIVE"
    layout = """
data/drive/
  DRIVE/
    training/
      images/21_training.tif ... 40_training.tif
      1st_manual/21_manual1.gif ...
      mask/21_training_mask.gif ...
    test/
      images/01_test.tif ... 20_test.tif
      1st_manual/01_manual1.gif ...        (needed: the grand-challenge test.zip lacks it)
      2nd_manual/01_manual2.gif ...        (optional, not used as truth)
      mask/01_test_mask.gif ...
"""

    def find(self, root: Path) -> list[Sample]:
        found = {part: shallowest_dirs(root, _part_accepts(part), SEARCH_DEPTH) for part in PARTS}
        if not any(found.values()):
            raise self.error(root, "no DRIVE folder with training/images/ (or test/images/) found")
        for part, dirs in found.items():
            if len(dirs) > 1:
                raise self.error(root, f"DRIVE {part}/ found in more than one place ({', '.join(map(str, dirs))}); "
                                       "keep one copy")
        if not found["training"] or child(found["training"][0], "images") is None:
            where = found["training"][0] if found["training"] else root
            raise self.error(root, f"{where}: no training/images/ folder (the 20 training images are required)")
        samples = []
        for part, (split, image_re, fov_pattern) in PARTS.items():
            if not found[part]:
                continue
            part_dir = found[part][0]
            images_dir = child(part_dir, "images")
            images = matching(list_files(images_dir), image_re) if images_dir else []
            if not images:
                if part == "training":
                    raise self.error(root, f"{part_dir}/images/ holds no NN_training.tif images")
                labels = [f for d in ("1st_manual", "mask") if (sub := child(part_dir, d)) for f in list_files(sub)]
                if labels:  # a partial unzip: never drop the test set without a word
                    raise self.error(root, f"{part_dir}/images/ holds no NN_test.tif images, but {part_dir} holds "
                                           f"labels or FOV masks (e.g. {labels[0].name}): restore test/images/ (a "
                                           f"partial unzip?), or delete {part_dir} to use the training images only")
                continue
            manual_dir = child(part_dir, "1st_manual")
            if manual_dir is None:
                if part == "test":
                    raise self.error(root, TEST_WITHOUT_LABELS.format(test=part_dir))
                raise self.error(root, f"{part_dir} has no 1st_manual/ folder with the NN_manual1.gif vessel labels")
            fov_dir = child(part_dir, "mask")
            if fov_dir is None:
                raise self.error(root, f"{part_dir} has no mask/ folder with the NN_{part}_mask.gif FOV masks")
            manuals = {p.name.lower(): p for p in list_files(manual_dir)}
            fovs = {p.name.lower(): p for p in list_files(fov_dir)}
            used = []
            for image in images:
                n = image_re.fullmatch(image.name).group(1)
                manual = manuals.get(MANUAL.format(n=n).lower())
                if manual is None:
                    raise missing_mask(self.name, image, manual_dir / MANUAL.format(n=n))
                fov = fovs.get(fov_pattern.format(n=n).lower())
                if fov is None:
                    raise missing_mask(self.name, image, fov_dir / fov_pattern.format(n=n), "FOV mask")
                samples.append(Sample(image.name.rsplit(".", 1)[0], self.name, image, manual, fov, split))
                used += [manual, fov]
            label_re = re.compile(r"(\d{2})_manual1\.gif|(\d{2})_" + part + r"_mask\.gif", re.I)
            check_no_orphans(self.name, matching([*manuals.values(), *fovs.values()], label_re), used,
                             lambda f: images_dir / f"{f.name[:2]}_{part}.tif")
        return samples
