"""One writer per dataset: synthetic look-alikes in EXACTLY the official layout, names and encodings.

Each writer fills a folder the way unzipping the real archives would (``docs/datasets.md``), so the
adapters, ``preprocess`` and everything after it run the same code path as on real data:

======== =============================================================================================
isic2017 ``ISIC-2017_{Training,Validation,Test_v2}_Data/ISIC_xxxxxxx.jpg`` + ``_Part1_GroundTruth/
         ISIC_xxxxxxx_segmentation.png`` (L, 0/255); decoys: one ``_superpixels.png``, metadata CSVs
isic2018 ``ISIC2018_Task1-2_Training_Input/*.jpg`` + ``ISIC2018_Task1_Training_GroundTruth/
         *_segmentation.png`` + ``LICENSE.txt``/``ATTRIBUTION.txt`` (optional val/test pairs)
ph2      ``PH2Dataset/PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp`` (RGB BMP),
         ``IMD002_lesion/IMD002_lesion.bmp`` (L, 0/255), ``PH2Dataset/PH2_dataset.txt``; decoy ``_roi``
drive    ``DRIVE/{training,test}/images/NN_{training,test}.tif`` (RGB TIFF), ``1st_manual/NN_manual1.gif``
         (L, 0/255), ``mask/NN_{training,test}_mask.gif`` (L, 0/255), test ``2nd_manual/NN_manual2.gif``
         (palette: 0 = (4, 2, 4), 1 = (252, 254, 252))
chase_db1 flat ``Image_01L.jpg``, ``Image_01L_1stHO.png``, ``Image_01L_2ndHO.png`` (1-bit PNG), L/R eyes
======== =============================================================================================

Every look-alike also gets ``SYNTHETIC.txt`` in its root (:func:`is_synthetic`): the evaluate
stage records it, and the compare stage refuses to label such numbers "real".

Determinism: the same (seed, n, size) gives byte-identical files. Every sample has its own
generator (:func:`tcnet.data.synth.common.rng_for`), JPEG quality/subsampling are fixed, and no
format gets a timestamp (PIL writes none to PNG/TIFF/BMP/GIF/JPEG unless asked).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tcnet.data.synth.common import rng_for, smooth_noise
from tcnet.data.synth.retina import make_fundus
from tcnet.data.synth.skin import make_lesion

DEFAULT_SEED = 0
JPEG_QUALITY = 92
JPEG_SUBSAMPLING = 2  # 4:2:0, as most camera/dermatoscope JPEGs
DRIVE_2ND_PALETTE = [4, 2, 4, 252, 254, 252]
NOTICE = "Synthetic look-alike written by 'tcnet synth'; contains no real {what} data.\n"


@dataclass(frozen=True)
class SynthSpec:
    """Defaults of one dataset's look-alike (what ``tcnet synth`` writes without options)."""

    n: int  # meaning: see ``n_help``
    size: tuple[int, int]  # (width, height)
    n_help: str
    n_max: int = 10_000


SPECS: dict[str, SynthSpec] = {
    "isic2017": SynthSpec(16, (192, 144), "training images; validation and test get n/2 each (16 -> 16/8/8)"),
    "isic2018": SynthSpec(24, (192, 144), "training images"),
    "ph2": SynthSpec(12, (192, 140), "images"),
    "drive": SynthSpec(8, (141, 146), "training images (21, 22, ...) and as many test images (01, 02, ...)", 20),
    "chase_db1": SynthSpec(28, (200, 192), "images, in L/R pairs (Image_01L, Image_01R, ...); 28 = all", 28),
}


# ----------------------------------------------------------------------------------------------
# Encoders (fixed settings, no metadata)
# ----------------------------------------------------------------------------------------------


def _pil(arr, mode=None):
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr))
    return img.convert(mode) if mode and img.mode != mode else img


def save_jpeg(path: Path, rgb: np.ndarray) -> None:
    _pil(rgb).save(path, format="JPEG", quality=JPEG_QUALITY, subsampling=JPEG_SUBSAMPLING,
                   optimize=False, progressive=False)


def save_png_l(path: Path, mask: np.ndarray) -> None:
    """bool mask -> 8-bit greyscale PNG, 0 / 255."""
    _pil(mask.astype(np.uint8) * 255).save(path, format="PNG")


def save_png_1bit(path: Path, mask: np.ndarray) -> None:
    _pil(mask.astype(bool)).save(path, format="PNG")


def save_bmp(path: Path, arr: np.ndarray) -> None:
    _pil(arr).save(path, format="BMP")


def save_tiff(path: Path, rgb: np.ndarray) -> None:
    _pil(rgb).save(path, format="TIFF", compression="raw")


def save_gif_l(path: Path, mask: np.ndarray) -> None:
    """bool mask -> greyscale GIF 0 / 255 (full grey palette, so Pillow reads it back as mode L)."""
    _pil(mask.astype(np.uint8) * 255).save(path, format="GIF", optimize=False)


def save_gif_palette(path: Path, mask: np.ndarray, palette: list[int]) -> None:
    """bool mask -> palette GIF with indices 0/1 and the given palette (DRIVE ``2nd_manual``)."""
    img = _pil(mask.astype(np.uint8)).convert("L")
    from PIL import Image

    p = Image.frombytes("P", img.size, img.tobytes())
    p.putpalette(palette)
    p.save(path, format="GIF", optimize=False)


def second_observer(rng: np.random.Generator, vessels: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """A plausible second annotation: wider in some regions, thin vessels missed in others."""
    from scipy import ndimage

    h, w = vessels.shape
    field = smooth_noise(rng, h, w, cell=min(h, w) / 5)
    wider = ndimage.binary_dilation(vessels)
    thinner = ndimage.binary_erosion(vessels, border_value=0) | (ndimage.binary_opening(vessels) & vessels)
    out = np.where(field > 0.6, wider, np.where(field < -0.8, thinner, vessels))
    return out & fov


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


def _isic_pairs(out: Path, dataset: str, seed: int, size, img_dir: str, gt_dir: str, ids, split: str):
    w, h = size
    (out / img_dir).mkdir(parents=True, exist_ok=True)
    (out / gt_dir).mkdir(parents=True, exist_ok=True)
    for k, sid in enumerate(ids):
        rgb, mask = make_lesion(rng_for(seed, dataset, split, k), w, h)
        save_jpeg(out / img_dir / f"{sid}.jpg", rgb)
        save_png_l(out / gt_dir / f"{sid}_segmentation.png", mask)


def _superpixels(w: int, h: int, cell: int = 16) -> np.ndarray:
    """An RGB superpixel index map as ISIC 2017 ships them: index = R + (G << 8) + (B << 16)."""
    yy, xx = np.mgrid[0:h, 0:w]
    idx = (yy // cell) * ((w + cell - 1) // cell) + (xx // cell)
    return np.stack([idx & 255, (idx >> 8) & 255, (idx >> 16) & 255], axis=-1).astype(np.uint8)


def write_isic2017(out: Path, n: int, seed: int, size) -> None:
    n_other = (n + 1) // 2
    rng = rng_for(seed, "isic2017", "metadata")
    splits = [  # (split, images folder, truth folder, metadata stem, first id, count)
        ("train", "ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", 0, n),
        ("val", "ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth", 1000, n_other),
        ("test", "ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth", 12000, n_other),
    ]
    for split, img_dir, gt_dir, first, count in splits:
        ids = [f"ISIC_{first + k:07d}" for k in range(count)]
        _isic_pairs(out, "isic2017", seed, size, img_dir, gt_dir, ids, split)
        rows = ["image_id,age_approximate,sex"]
        for sid in ids:
            age = "unknown" if rng.random() < 0.1 else str(int(rng.integers(3, 17)) * 5)
            rows.append(f"{sid},{age},{rng.choice(['male', 'female', 'unknown'])}")
        (out / img_dir / f"{img_dir}_metadata.csv").write_text("\n".join(rows) + "\n")
        if split == "train" and ids:  # one Part 2 superpixel file: must be ignored by the adapter
            _pil(_superpixels(*size)).save(out / img_dir / f"{ids[0]}_superpixels.png", format="PNG")


def write_isic2018(out: Path, n: int, seed: int, size, n_val: int = 0, n_test: int = 0) -> None:
    parts = [
        ("train", "Training", n, 0),
        ("val", "Validation", n_val, 34000),
        ("test", "Test", n_test, 36000),
    ]
    for split, name, count, first in parts:
        if count <= 0:
            continue
        ids = [f"ISIC_{first + k:07d}" for k in range(count)]
        gt = f"ISIC2018_Task1_{name}_GroundTruth"
        _isic_pairs(out, "isic2018", seed, size, f"ISIC2018_Task1-2_{name}_Input", gt, ids, split)
        (out / gt / "LICENSE.txt").write_text(NOTICE.format(what="ISIC"))
        (out / gt / "ATTRIBUTION.txt").write_text(NOTICE.format(what="ISIC"))


def write_ph2(out: Path, n: int, seed: int, size) -> None:
    w, h = size
    root = out / "PH2Dataset"
    images = root / "PH2 Dataset images"
    images.mkdir(parents=True, exist_ok=True)
    rng = rng_for(seed, "ph2", "table")
    lines = [
        "|| Name || Histological Diagnosis || Clinical Diagnosis || Asymmetry || Pigment Network || "
        "Dots/Globules || Streaks || Regression Areas || Blue-Whitish Veil || Colors ||"
    ]
    for k in range(n):
        cid = f"IMD{k + 2:03d}"
        case = images / cid
        rgb, mask = make_lesion(rng_for(seed, "ph2", k), w, h)
        (case / f"{cid}_Dermoscopic_Image").mkdir(parents=True)
        (case / f"{cid}_lesion").mkdir()
        save_bmp(case / f"{cid}_Dermoscopic_Image" / f"{cid}.bmp", rgb)
        save_bmp(case / f"{cid}_lesion" / f"{cid}_lesion.bmp", mask.astype(np.uint8) * 255)
        if k == 0:  # colour-region folder (not used for lesion segmentation): must be ignored
            (case / f"{cid}_roi").mkdir()
            save_bmp(case / f"{cid}_roi" / f"{cid}_R1_Label4.bmp", mask.astype(np.uint8) * 255)
        diag = int(rng.choice([0, 1, 2], p=[0.4, 0.4, 0.2]))
        colours = " ".join(str(c) for c in sorted(rng.choice(6, size=int(rng.integers(1, 4)), replace=False) + 1))
        lines.append(f"|| {cid} || || {diag} || {int(rng.integers(0, 3))} || T || A || A || A || A || {colours} ||")
    (root / "PH2_dataset.txt").write_text("\n".join(lines) + "\n")


def write_drive(out: Path, n: int, seed: int, size) -> None:
    w, h = size
    for part, first, suffix in (("training", 21, "training"), ("test", 1, "test")):
        d = out / "DRIVE" / part
        for sub in ("images", "1st_manual", "mask") + (("2nd_manual",) if part == "test" else ()):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            num = f"{first + k:02d}"
            rng = rng_for(seed, "drive", part, k)
            rgb, vessels, fov = make_fundus(rng, w, h, eye="LR"[k % 2])
            save_tiff(d / "images" / f"{num}_{suffix}.tif", rgb)
            save_gif_l(d / "1st_manual" / f"{num}_manual1.gif", vessels)
            save_gif_l(d / "mask" / f"{num}_{suffix}_mask.gif", fov)
            if part == "test":
                save_gif_palette(d / "2nd_manual" / f"{num}_manual2.gif", second_observer(rng, vessels, fov),
                                 DRIVE_2ND_PALETTE)


def write_chase_db1(out: Path, n: int, seed: int, size) -> None:
    w, h = size
    out.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        sid = f"Image_{k // 2 + 1:02d}{'LR'[k % 2]}"
        rng = rng_for(seed, "chase_db1", k)
        rgb, vessels, fov = make_fundus(rng, w, h, eye="LR"[k % 2], fov_radius=0.45, centre_jitter=0.02)
        save_jpeg(out / f"{sid}.jpg", rgb)
        save_png_1bit(out / f"{sid}_1stHO.png", vessels)
        save_png_1bit(out / f"{sid}_2ndHO.png", second_observer(rng, vessels, fov))


SYNTHETIC_MARKER = "SYNTHETIC.txt"  # in the dataset's root folder; no adapter reads it as data

WRITERS: dict[str, Callable] = {
    "isic2017": write_isic2017,
    "isic2018": write_isic2018,
    "ph2": write_ph2,
    "drive": write_drive,
    "chase_db1": write_chase_db1,
}


def write_dataset(dataset: str, out, n: int | None = None, seed: int = DEFAULT_SEED, size=None, **extra) -> Path:
    """Write the look-alike of ``dataset`` into ``out`` (created; should be empty). Returns ``out``.

    ``n`` and ``size`` (width, height) default to :data:`SPECS`; ``extra`` goes to the writer
    (e.g. ``n_val``/``n_test`` for isic2018).
    """
    if dataset not in WRITERS:
        from tcnet.config import did_you_mean

        raise ValueError(f"unknown dataset {dataset!r}{did_you_mean(dataset, WRITERS)}; valid: {', '.join(WRITERS)}")
    spec = SPECS[dataset]
    n = spec.n if n is None else int(n)
    if not 1 <= n <= spec.n_max:
        raise ValueError(f"{dataset}: n must be between 1 and {spec.n_max} ({spec.n_help}), got {n}")
    w, h = spec.size if size is None else (int(size[0]), int(size[1]))
    if min(w, h) < 16:
        raise ValueError(f"{dataset}: image size must be at least 16x16, got {w}x{h}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    WRITERS[dataset](out, n, int(seed), (w, h), **extra)
    extras = "".join(f", {k}={v}" for k, v in sorted(extra.items()))
    (out / SYNTHETIC_MARKER).write_text(
        f"A synthetic look-alike of {dataset}, written by tcnet synth (n={n}, seed={int(seed)}, size={w}x{h}{extras}).\n"
        "Not the real dataset: numbers computed from it are not the paper's. The evaluate stage records\n"
        "this file's presence, and the compare stage refuses compare.data_label 'real' while it is here.\n"
    )
    return out


def is_synthetic(folder) -> bool:
    """Whether ``folder`` (one dataset's raw folder) holds a look-alike written by :func:`write_dataset`."""
    return (Path(folder) / SYNTHETIC_MARKER).is_file()


# How many image/mask pairs each writer makes of (n, extras): what a look-alike's folder must hold.
_PAIRS: dict[str, Callable[..., int]] = {
    "isic2017": lambda n: n + 2 * ((n + 1) // 2),
    "isic2018": lambda n, n_val=0, n_test=0: n + max(n_val, 0) + max(n_test, 0),
    "ph2": lambda n: n,
    "drive": lambda n: 2 * n,
    "chase_db1": lambda n: n,
}
_MARKER_ARGS = re.compile(r"written by tcnet synth \(n=(\d+), seed=-?\d+, size=\d+x\d+((?:, \w+=-?\d+)*)\)")


def synthetic_pairs(folder, dataset: str) -> int | None:
    """The number of pairs :func:`write_dataset` wrote into ``folder``, read from its
    ``SYNTHETIC.txt``; None when there is no marker or it cannot be read (edited by hand)."""
    try:
        text = (Path(folder) / SYNTHETIC_MARKER).read_text()
    except (OSError, UnicodeDecodeError):
        return None
    m = _MARKER_ARGS.search(text)
    if m is None or dataset not in _PAIRS:
        return None
    extra = {k: int(v) for k, v in re.findall(r"(\w+)=(-?\d+)", m.group(2))}
    try:
        return _PAIRS[dataset](int(m.group(1)), **extra)
    except TypeError:  # an extra this writer does not take
        return None
