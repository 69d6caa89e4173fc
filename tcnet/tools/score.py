"""``tcnet score``: score a folder of predicted masks against ground truth, ISIC-scorer style.

    tcnet score --pred PRED_DIR --truth TRUTH_DIR [--truth-glob '*_1stHO.png'] [--pred-glob PATTERN]
                [--fov FOV_DIR | --fov-from-images IMAGES_DIR] [--recursive]
                [--probs PROBS_DIR] [--threshold 128] [--out scores.json]

Files are paired by :func:`mask_id` (ISIC ``ISIC_0000000_segmentation.png`` <-> ``ISIC_0000000.png``,
DRIVE ``01_manual1.gif`` <-> ``01_test.png``, CHASE ``Image_01L_1stHO.png`` <-> ``Image_01L.png``,
otherwise the same stem). Predictions follow the official ISIC scorer (``isic-challenge-scoring``):
8-bit single-channel images binarised ``> threshold`` (default 128) on 0..255, at the truth's size.
Truth and FOV masks are binarised by the datasets' robust rule
(:func:`tcnet.data.adapters.base.binarize_mask_file`). Every per-image score, their mean (macro,
the ISIC convention) and the pooled (micro, the retina convention) scores are written as JSON::

    {"per_image": [{"id", "AC", "SE", "SP", "JA", "DI", "TJA"[, "AUC"]}, ...],
     "mean": {"AC", "SE", "SP", "JA", "DI", "TJA"[, "AUC"]},
     "pooled": {"AC", "SE", "SP", "JA", "DI"[, "AUC"]}}

An undefined AUC (one-class truth) is written as ``null``. See ``docs/metrics.md``.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from tcnet.metrics import METRICS, MetricAccumulator

MASK_SUFFIXES = (".png", ".gif", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif")  # photographs (predict, --fov-from-images)
PROB_SUFFIXES = MASK_SUFFIXES + (".npy",)
# Suffixes stripped from a file stem (repeatedly, case-insensitively) to get the image id:
# ISIC truth, DRIVE truth/FOV/images, CHASE_DB1 observers, PH2 lesion masks, common prediction names.
# The first seven name annotations in the official layouts (tcnet predict never segments those).
ANNOTATION_SUFFIXES = ("_segmentation", "_manual1", "_manual2", "_1stHO", "_2ndHO", "_lesion", "_mask")
ID_SUFFIXES = (*ANNOTATION_SUFFIXES, "_test", "_training", "_pred", "_prediction", "_prob", "_probs", "_probability")
# tcnet predict's maps and pictures (probs/<stem>_prob.png, overlays/<stem>_overlay.png): never masks.
NOT_MASK_NAME = re.compile(r"(_prob|_probs|_probability|_overlay)$", re.IGNORECASE)
# Files beside the images of the official layouts that are not photographs: the annotations (PH2's
# colour-region labels IMD002_R1_Label4 too), ISIC's superpixel decoys, and predict's own outputs.
NOT_IMAGE_NAME = re.compile(
    "(" + "|".join([*ANNOTATION_SUFFIXES, "_superpixels", "_prob", "_overlay", r"_R\d+_Label\d+"]) + ")$", re.IGNORECASE)
_ISIC_ID = re.compile(r"ISIC_(\d{7})(?!\d)", re.IGNORECASE)  # 8 digits is a typo, not this id
GREY_PALETTE_TOLERANCE = 8  # max R/G/B spread of a palette colour that still counts as grey
TABLE_KEYS = (*METRICS, "TJA", "AUC")


class ScoreError(ValueError):
    """A prediction/truth folder that cannot be scored; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Pairing files
# ----------------------------------------------------------------------------------------------


def mask_id(path) -> str:
    """The image id a mask/prediction/FOV/probability file belongs to.

    ``ISIC_0000000_segmentation.png`` -> ``ISIC_0000000`` (any stem holding ``ISIC_`` + 7 digits);
    ``01_manual1.gif``, ``01_test.tif``, ``01_test_mask.gif``, ``21_training.png`` -> ``01``/``21``;
    ``Image_01L_1stHO.png`` -> ``Image_01L``; ``IMD002_lesion.bmp`` -> ``IMD002``; otherwise the
    stem with any of :data:`ID_SUFFIXES` removed from its end (``case7.png`` -> ``case7``).
    """
    stem = Path(path).stem
    m = _ISIC_ID.search(stem)
    if m:
        return f"ISIC_{m.group(1)}"
    stripped = True
    while stripped:
        stripped = False
        for suffix in ID_SUFFIXES:
            if len(stem) > len(suffix) and stem.lower().endswith(suffix.lower()):
                stem, stripped = stem[: -len(suffix)], True
    return stem


def _index(folder: Path, what: str, suffixes: tuple[str, ...], glob: str | None = None,
           recursive: bool = False, exclude: re.Pattern | None = NOT_MASK_NAME) -> dict[str, list[Path]]:
    """id -> files in ``folder`` (with ``recursive`` its sub-folders too; hidden files and folders,
    non-image files, stems ``exclude`` matches -- by default predict's probability maps and
    overlays -- and with ``glob`` the names it does not match, skipped)."""
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder {folder} does not exist")
    if not folder.is_dir():
        raise ScoreError(f"{what} folder {folder} is not a folder")
    out: dict[str, list[Path]] = {}
    for f in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        if any(part.startswith(".") for part in f.relative_to(folder).parts) or not f.is_file():
            continue
        if f.suffix.lower() not in suffixes or (glob is not None and not fnmatch.fnmatch(f.name, glob)):
            continue
        if exclude is not None and exclude.search(f.stem):
            continue
        out.setdefault(mask_id(f), []).append(f)
    return out


def _image_index(folder: Path, recursive: bool) -> dict[str, list[Path]]:
    """id -> the photographs in ``folder`` (annotations, decoys and predict's outputs skipped)."""
    return _index(folder, "image", IMAGE_SUFFIXES, recursive=recursive, exclude=NOT_IMAGE_NAME)


def _one(index: dict[str, list[Path]], image_id: str, truth: Path, folder: Path, what: str) -> Path:
    files = index.get(image_id, [])
    if not files:
        raise ScoreError(
            f"no {what} for truth {truth} (id {image_id}) in {folder}; expected a file such as "
            f"{folder / (image_id + '.png')}"
        )
    if len(files) > 1:
        raise ScoreError(
            f"several {what} files for truth {truth} (id {image_id}): "
            f"{', '.join(str(f) for f in files)}; keep exactly one"
        )
    return files[0]


# ----------------------------------------------------------------------------------------------
# Reading masks
# ----------------------------------------------------------------------------------------------


def _open(path: Path):
    from tcnet.data.io import open_image

    return open_image(path)  # InvalidInputError (a ValueError) naming the file when unreadable


def _grey8(img, path: Path, what: str) -> np.ndarray:
    """An 8-bit single-channel image as uint8 H x W (the ISIC scorer's rule, plus grey palettes)."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode == "L":
        return np.asarray(img)
    if mode == "P":
        idx = np.asarray(img)
        palette = np.asarray(img.getpalette() or [], dtype=np.int64).reshape(-1, 3)
        used = palette[np.unique(idx)] if idx.size and palette.size else palette
        if used.size and int((used.max(axis=1) - used.min(axis=1)).max()) <= GREY_PALETTE_TOLERANCE:
            return np.asarray(img.convert("L"))
        raise ScoreError(
            f"{path}: {what} is a palette image with colours that are not grey; save it as an "
            "8-bit greyscale (mode L) image with values 0..255"
        )
    raise ScoreError(
        f"{path}: {what} is not single-channel 8-bit greyscale (PIL mode {mode}); save it as an "
        "8-bit greyscale (mode L) image with values 0..255"
    )


def load_prediction(path, threshold: int = 128) -> tuple[np.ndarray, int]:
    """A predicted mask as bool H x W: 8-bit single-channel, foreground where value ``> threshold``;
    and the file's largest value (a non-empty mask with no foreground: a 0/1 label map?)."""
    path = Path(path)
    grey = _grey8(_open(path), path, "prediction")
    return grey > threshold, int(grey.max()) if grey.size else 0


def load_truth(path) -> np.ndarray:
    """A truth (or FOV) mask as bool H x W, by the datasets' robust binarisation rule, read as the
    pipeline reads masks (TIFFs only tifffile decodes right included)."""
    from tcnet.data.adapters.base import binarize_mask_file

    return binarize_mask_file(Path(path))


def load_probs(path) -> np.ndarray:
    """A probability map as float64 H x W in [0, 1]: an 8-bit image (value / 255), a 16-bit
    greyscale image (value / 65535), or a ``.npy`` array (floats in [0, 1], or uint8 / 255)."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises ValueError/OSError/EOFError/... for bad files
            raise ScoreError(f"{path}: cannot read as a NumPy .npy array ({e})") from None
        while a.ndim > 2 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise ScoreError(f"{path}: probability array must be H x W, got shape {a.shape}")
        if a.dtype == np.uint8:
            return a.astype(np.float64) / 255.0
        if not np.issubdtype(a.dtype, np.floating):
            raise ScoreError(f"{path}: probability array must be float in [0, 1] or uint8 0..255, got {a.dtype}")
        a = a.astype(np.float64)
        if not np.isfinite(a).all() or (a.size and (a.min() < 0.0 or a.max() > 1.0)):
            raise ScoreError(f"{path}: probabilities must be finite and in [0, 1]")
        return a
    img = _open(path)
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey ("I" where Pillow < 10.3 opens it so)
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise ScoreError(f"{path}: 16-bit probability map holds values outside 0..65535")
        return a / 65535.0
    return _grey8(img, path, "probability map").astype(np.float64) / 255.0


def _check_size(a: np.ndarray, path: Path, truth: np.ndarray, truth_path: Path, what: str) -> None:
    if a.shape != truth.shape:
        raise ScoreError(
            f"{path}: {what} is {a.shape[1]}x{a.shape[0]} (WxH) but truth {truth_path} is "
            f"{truth.shape[1]}x{truth.shape[0]}; {what}s must be at the truth's (original) size"
        )


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def score_folders(
    pred_dir,
    truth_dir,
    fov_dir=None,
    threshold: int = 128,
    probs_dir=None,
    truth_glob: str | None = None,
    pred_glob: str | None = None,
    recursive: bool = False,
    fov_images_dir=None,
) -> dict:
    """Score every truth mask in ``truth_dir`` (those ``truth_glob`` matches, if given) against its
    prediction (among those ``pred_glob`` matches); returns the JSON contract. ``recursive``: every
    folder is searched with its sub-folders (PH2's folder per image). ``fov_images_dir``: instead of
    FOV masks, the images there, whose FOV is derived as for CHASE_DB1 (none ship with it).

    Raises :class:`ScoreError` (or ``FileNotFoundError``/``InvalidInputError``) naming the file
    for a missing, unreadable, non-greyscale or wrongly sized prediction (or FOV / probability map).
    """
    if not 0 <= int(threshold) <= 255:
        raise ScoreError(f"--threshold must be in 0..255 (predictions are binarised > threshold), got {threshold}")
    from tcnet.data.adapters.chase_db1 import derive_fov_of_file

    if fov_dir is not None and fov_images_dir is not None:
        raise ScoreError("give --fov (FOV masks) or --fov-from-images (images to derive them from), not both")
    pred_dir, truth_dir = Path(pred_dir), Path(truth_dir)
    truths = _index(truth_dir, "truth", MASK_SUFFIXES, truth_glob, recursive)
    if not truths:
        raise ScoreError(f"truth folder {truth_dir} holds no mask files ({', '.join(MASK_SUFFIXES)})"
                         + (f" matching --truth-glob {truth_glob!r}" if truth_glob else ""))
    for image_id, files in truths.items():
        if len(files) > 1:
            raise ScoreError(
                f"truth folder {truth_dir} has several masks for id {image_id}: "
                f"{', '.join(f.name for f in files)}; keep one truth mask per image in the folder, or pick "
                "them with --truth-glob (e.g. '*_1stHO.png' for CHASE_DB1's first observer, '*_lesion.bmp' "
                "for PH2)"
            )
    preds = _index(pred_dir, "prediction", MASK_SUFFIXES, pred_glob, recursive)
    fovs = None if fov_dir is None else _index(Path(fov_dir), "FOV", MASK_SUFFIXES, recursive=recursive)
    fov_images = None if fov_images_dir is None else _image_index(Path(fov_images_dir), recursive)
    probs = None if probs_dir is None else _index(Path(probs_dir), "probability", PROB_SUFFIXES, recursive=recursive,
                                                  exclude=None)

    acc = MetricAccumulator(with_auc=probs is not None)
    faint = []  # (file, max value): not empty, yet no pixel above the threshold
    for image_id in sorted(truths):
        truth_path = truths[image_id][0]
        pred_path = _one(preds, image_id, truth_path, pred_dir, "prediction")
        truth = load_truth(truth_path)
        pred, top = load_prediction(pred_path, threshold)
        if 0 < top <= threshold:
            faint.append((str(pred_path), top))
        _check_size(pred, pred_path, truth, truth_path, "prediction")
        valid = None
        if fovs is not None:
            fov_path = _one(fovs, image_id, truth_path, Path(fov_dir), "FOV mask")
            valid = load_truth(fov_path)
            _check_size(valid, fov_path, truth, truth_path, "FOV mask")
        if fov_images is not None:
            image_path = _one(fov_images, image_id, truth_path, Path(fov_images_dir), "image")
            valid = derive_fov_of_file(image_path)
            _check_size(valid, image_path, truth, truth_path, "image (FOV derived from it)")
        prob = None
        if probs is not None:
            prob_path = _one(probs, image_id, truth_path, Path(probs_dir), "probability map")
            prob = load_probs(prob_path)
            _check_size(prob, prob_path, truth, truth_path, "probability map")
        acc.update(image_id, prob, truth, valid=valid, pred=pred)
    return {"per_image": acc.per_image(), "mean": acc.mean(), "pooled": acc.pooled(), "faint": faint}


def _json_safe(x):
    """NaN/inf -> None (JSON has no NaN), recursively."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def write_scores(result: dict, out) -> Path:
    """Write the scores JSON atomically (fixed key order, NaN as null)."""
    from tcnet.utils.atomic import atomic_write

    out = Path(out)
    with atomic_write(out, "w", encoding="utf-8") as f:
        json.dump(_json_safe({k: result[k] for k in ("per_image", "mean", "pooled")}), f, indent=2, allow_nan=False)
        f.write("\n")
    return out


def format_table(result: dict) -> str:
    """The mean and pooled rows as a fixed-width table (``-`` where a score has no such form)."""
    keys = [k for k in TABLE_KEYS if k in result["mean"] or k in result["pooled"]]
    lines = [f"{'':<8}" + "".join(f"{k:>8}" for k in keys)]
    for name in ("mean", "pooled"):
        row = result[name]
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{'-':>8}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:>8.4f}")
        lines.append(f"{name:<8}" + "".join(cells))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


EPILOG = """\
examples, on the official layouts (docs/metrics.md); 'preds' is a folder of predicted masks, e.g.
'tcnet predict --model M --input IMAGES --out preds' (one mask per image, named as the dataset names its ground truth, e.g. ISIC_0000001_segmentation.png). The demo data
has no ISIC 2018 test ground truth: there, try the training set's
data/isic2018/ISIC2018_Task1_Training_GroundTruth.
  ISIC 2018      tcnet score --pred preds --truth data/isic2018/ISIC2018_Task1_Test_GroundTruth
  DRIVE          tcnet score --pred preds --truth data/drive/DRIVE/test/1st_manual \\
                   --fov data/drive/DRIVE/test/mask --probs preds/probs
  CHASE_DB1      tcnet score --pred preds --truth data/chase_db1 --truth-glob '*_1stHO.png' \\
                   --fov-from-images data/chase_db1
  human baseline tcnet score --pred data/chase_db1 --pred-glob '*_2ndHO.png' \\
                   --truth data/chase_db1 --truth-glob '*_1stHO.png' --fov-from-images data/chase_db1
  PH2            tcnet score --pred preds --recursive --truth "data/ph2/PH2Dataset/PH2 Dataset images" \\
                   --truth-glob '*_lesion.bmp'

Files pair by image id (ISIC_0000000_segmentation.png <-> ISIC_0000000_segmentation.png or
ISIC_0000000.png; 01_manual1.gif <-> 01_test_mask.png; Image_01L_1stHO.png <-> Image_01L_mask.png).
exit status: 0 scored; 2 a file or folder that cannot be scored (the message names it).
"""


def add_arguments(parser) -> None:
    import argparse

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--pred", required=True, metavar="DIR", help="predicted masks (8-bit greyscale, 0..255)")
    parser.add_argument("--truth", required=True, metavar="DIR", help="ground-truth masks (one per image)")
    parser.add_argument("--truth-glob", metavar="PATTERN",
                        help="only the truth files whose names match, for a folder that holds images or several "
                             "observers too (CHASE_DB1: '*_1stHO.png')")
    parser.add_argument("--pred-glob", metavar="PATTERN",
                        help="only the prediction files whose names match (e.g. '*_2ndHO.png': CHASE_DB1's second "
                             "observer scored against the first, from the official folder)")
    parser.add_argument("--recursive", action="store_true",
                        help="search every folder's sub-folders too (PH2's folder per image; the nested output "
                             "of 'tcnet predict --recursive')")
    fov = parser.add_mutually_exclusive_group()
    fov.add_argument("--fov", metavar="DIR", help="field-of-view masks: only pixels inside count (retina; DRIVE "
                     "ships them as *_mask.gif)")
    fov.add_argument("--fov-from-images", metavar="DIR",
                     help="derive each image's field of view from the fundus photograph in DIR, as the pipeline "
                          "does for CHASE_DB1, which ships no FOV masks (paired by id; annotation files skipped)")
    parser.add_argument(
        "--threshold", type=int, default=128, metavar="T",
        help="a prediction pixel is foreground where its value > T (0..255; default 128, the ISIC scorer's)",
    )
    parser.add_argument(
        "--probs", metavar="DIR",
        help="probability maps (8-bit 0..255 or 16-bit 0..65535 greyscale images, or .npy floats in [0, 1] "
             "or uint8) for per-image and pooled AUC",
    )
    parser.add_argument("--out", metavar="JSON", help="write the scores here (per_image, mean, pooled)")


def main(args) -> int:
    if args.out:  # before the scoring, not after it
        from tcnet.tools.out_file import check_out_file

        check_out_file(Path(args.out), "--out")
    result = score_folders(args.pred, args.truth, fov_dir=args.fov, threshold=args.threshold, probs_dir=args.probs,
                           truth_glob=args.truth_glob, pred_glob=args.pred_glob, recursive=args.recursive,
                           fov_images_dir=args.fov_from_images)
    if result["faint"]:
        (path, top), more = result["faint"][0], len(result["faint"]) - 1
        also = f" (and {more} more)" if more else ""
        print(f"tcnet score: warning: {path}{also} has values but none above --threshold {args.threshold} (largest "
              f"{top}): scored as all background. A 0/1 label map (nnU-Net writes them)? Score it with --threshold 0",
              file=sys.stderr)
    n = len(result["per_image"])
    print(f"scored {n} image{'s' if n != 1 else ''}: mean = per-image average (ISIC), pooled = summed counts (retina)")
    print(format_table(result))
    if args.out:
        path = write_scores(result, args.out)
        print(f"wrote {path}", file=sys.stderr)
    return 0
