"""The pairing logic both ISIC challenges share: split folders of JPEGs + ground-truth folders of PNGs.

Only ``ISIC_<7 digits>.jpg`` counts as an image (superpixel PNGs, metadata CSVs, LICENSE/ATTRIBUTION
texts are ignored); the mask is ``ISIC_<id>_segmentation.png`` matched case-insensitively (the
challenge page writes ``_Segmentation``, the real files are lower case).
"""

from __future__ import annotations

import re
from pathlib import Path

from tcnet.data.adapters.base import (
    Adapter, Sample, check_no_orphans, find_dirs, list_files, matching, missing_mask, pick_folder,
)

IMAGE_RE = re.compile(r"(ISIC_\d{7})\.jpg", re.IGNORECASE)
MASK_SUFFIX = "_segmentation.png"
MASK_RE = re.compile(r"(ISIC_\d{7})_segmentation\.png", re.IGNORECASE)
SEARCH_DEPTH = 3  # root/<extract dir>/<zip folder>/<zip folder> (dataset-ninja doubles the folder)


class IsicAdapter(Adapter):
    # split -> (images folder, ground-truth folder); set by subclasses
    folders: dict[str, tuple[str, str]] = {}
    required: tuple[str, ...] = ("train",)

    def find(self, root: Path) -> list[Sample]:
        samples = []
        for split, (img_name, gt_name) in self.folders.items():
            img_dir = pick_folder(
                find_dirs(root, [img_name], SEARCH_DEPTH), IMAGE_RE, f"{img_name} (ISIC_xxxxxxx.jpg images)",
                lambda p: self.error(root, p),
            )
            gt_dir = pick_folder(
                find_dirs(root, [gt_name], SEARCH_DEPTH), re.compile(r".*" + re.escape(MASK_SUFFIX), re.I),
                f"{gt_name} (masks)", lambda p: self.error(root, p),
            )
            if img_dir is None:
                if split in self.required:
                    raise self.error(root, f"no {img_name}/ folder with ISIC_xxxxxxx.jpg images found "
                                     f"(the {split} split is required)")
                if gt_dir is not None:  # masks of a split whose images are missing: never drop it silently
                    raise self.error(root, f"{gt_dir} holds the {split} masks but no {img_name}/ folder with "
                                     f"ISIC_xxxxxxx.jpg images was found next to it: add the {img_name} archive, "
                                     f"or move {gt_dir} out of {root} to use the other splits only")
                continue
            if gt_dir is None:
                way_out = "" if split in self.required else (
                    f"; the challenge's {split} inputs were released before their ground truth: add the "
                    f"{gt_name} archive, or move {img_dir} out of {root} to use the other splits only")
                raise self.error(root, f"{img_dir} holds the {split} images but no {gt_name}/ folder with "
                                 f"ISIC_xxxxxxx{MASK_SUFFIX} masks was found next to it{way_out}")
            masks = {f.name.lower(): f for f in list_files(gt_dir)}
            used = []
            for image in matching(list_files(img_dir), IMAGE_RE):
                sid = IMAGE_RE.fullmatch(image.name).group(1)
                mask = masks.get((sid + MASK_SUFFIX).lower())
                if mask is None:
                    raise missing_mask(self.name, image, gt_dir / (sid + MASK_SUFFIX))
                samples.append(Sample(sid, self.name, image, mask, None, split))
                used.append(mask)
            check_no_orphans(self.name, matching(masks.values(), MASK_RE), used,
                             lambda m: img_dir / f"{MASK_RE.fullmatch(m.name).group(1)}.jpg")
        return samples
