"""PH2 dermoscopic database: one folder per image, BMP image + BMP lesion mask.

Recognised layouts (the root may be ``PH2Dataset/``, its parent or its grandparent)::

    PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp     (official; note the spaces)
    PH2Dataset/PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp
    .../PH2_Dataset_images/IMD002/...                                            (mirror: underscores)
    .../trainx/IMD002.bmp + .../trainy/IMD002_lesion.bmp                          (flattened mirror)

``IMDxxx_roi/`` colour-region masks, ``PH2_dataset.txt``/``.xlsx`` are ignored. PH2 has no official
split (``official_split = ""``; the project uses all of it as a test set).
"""

from __future__ import annotations

import re
from pathlib import Path

from tcnet.data.adapters.base import (
    Adapter, Sample, check_no_orphans, child, find_dirs, list_dirs, list_files, matching, missing_mask, pick_folder,
    register_adapter,
)

IMAGES_DIR_NAMES = ("PH2 Dataset images", "PH2_Dataset_images", "PH2 Dataset_images", "PH2_Dataset images")
CASE_RE = re.compile(r"IMD\d{3}", re.IGNORECASE)
IMAGE_RE = re.compile(r"(IMD\d{3})\.bmp", re.IGNORECASE)
LESION_RE = re.compile(r"(IMD\d{3})_lesion\.bmp", re.IGNORECASE)
SEARCH_DEPTH = 3


@register_adapter
class PH2(Adapter):
    name = "ph2"
    title = "PH2"
    layout = """
data/ph2/
  PH2Dataset/
    PH2_dataset.txt                    (ignored)
    PH2 Dataset images/
      IMD002/
        IMD002_Dermoscopic_Image/IMD002.bmp
        IMD002_lesion/IMD002_lesion.bmp
        IMD002_roi/                    (ignored)
  (mirrors: 'PH2_Dataset_images/' instead of 'PH2 Dataset images/';
   flattened trainx/IMD002.bmp + trainy/IMD002_lesion.bmp)
"""

    def find(self, root: Path) -> list[Sample]:
        candidates = [d for d in find_dirs(root, IMAGES_DIR_NAMES, SEARCH_DEPTH)
                      if any(CASE_RE.fullmatch(c.name) for c in list_dirs(d))]
        if len(candidates) > 1:
            raise self.error(root, f"PH2 image folders found in more than one place "
                             f"({', '.join(map(str, candidates))}); keep one copy")
        if candidates:
            return self._official(candidates[0])
        trainx = pick_folder(find_dirs(root, ["trainx"], SEARCH_DEPTH), IMAGE_RE, "trainx/ (IMDxxx.bmp)",
                             lambda p: self.error(root, p))
        if trainx is not None:
            trainy = child(trainx.parent, "trainy")
            if trainy is None:
                raise self.error(root, f"{trainx} holds the images but there is no trainy/ folder with the "
                                 "IMDxxx_lesion.bmp masks next to it")
            return self._flat(trainx, trainy)
        raise self.error(root, "no 'PH2 Dataset images/' folder with IMDxxx case folders found "
                         "(nor a flattened trainx/ + trainy/ mirror)")

    def _official(self, images_dir: Path) -> list[Sample]:
        samples = []
        for case in list_dirs(images_dir):
            if not CASE_RE.fullmatch(case.name):
                continue
            cid = case.name
            img_dir = child(case, f"{cid}_Dermoscopic_Image")
            images = matching(list_files(img_dir), IMAGE_RE) if img_dir else []
            images = [p for p in images if p.stem.lower() == cid.lower()]
            if not images:
                raise self.error(
                    images_dir, f"case folder {case} has no {cid}_Dermoscopic_Image/{cid}.bmp"
                )
            image = images[0]
            lesion_dir = child(case, f"{cid}_lesion")
            masks = [p for p in matching(list_files(lesion_dir), LESION_RE)
                     if p.name.lower() == f"{cid}_lesion.bmp".lower()] if lesion_dir else []
            if not masks:
                raise missing_mask(self.name, image, case / f"{cid}_lesion" / f"{cid}_lesion.bmp")
            samples.append(Sample(cid, self.name, image, masks[0], None, ""))
        return samples

    def _flat(self, trainx: Path, trainy: Path) -> list[Sample]:
        masks = {LESION_RE.fullmatch(p.name).group(1).upper(): p for p in matching(list_files(trainy), LESION_RE)}
        samples = []
        for image in matching(list_files(trainx), IMAGE_RE):
            cid = IMAGE_RE.fullmatch(image.name).group(1)
            mask = masks.get(cid.upper())
            if mask is None:
                raise missing_mask(self.name, image, trainy / f"{cid}_lesion.bmp")
            samples.append(Sample(cid, self.name, image, mask, None, ""))
        check_no_orphans(self.name, masks.values(), [s.mask for s in samples],
                         lambda m: trainx / f"{LESION_RE.fullmatch(m.name).group(1)}.bmp")
        return samples
