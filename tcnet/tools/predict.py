"""``tcnet predict``: segment new images with a trained model.

Every image (JPEG/PNG/BMP/TIFF/GIF, any size) is read with :func:`tcnet.data.io.read_image`, turned
into the network input by the SAME :func:`tcnet.data.transforms.prepare_image` training used (at the
checkpoint's ``image_size``), batched through the model, and its foreground probability is resized
back to the image's ORIGINAL size (:func:`tcnet.data.transforms.resize_prob`) and thresholded.

Outputs under ``--out`` (each file written atomically):

- ``<stem>_mask.png``: the binary mask, 8-bit, 0 = background, 255 = foreground, at the input's
  size; an ISIC image ``ISIC_0012345.jpg`` gives ``ISIC_0012345_segmentation.png`` (the challenge's
  submission name), so ``--out`` is a ready submission folder;
- ``probs/<stem>_prob.png`` (``--probs``): the probability as 16-bit grey, ``round(65535 * p)``
  (``--probs-bits 8``: ``round(255 * p)``, smaller, but too coarse for AUC);
- ``overlays/<stem>_overlay.png`` (``--overlay``): the image with the mask tinted and outlined.

With ``--recursive`` the input folder's sub-folders are kept under ``--out``.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from tcnet.models.outputs import foreground_prob, main_output
from tcnet.tools.score import ANNOTATION_SUFFIXES, IMAGE_SUFFIXES
from tcnet.tools.score import NOT_IMAGE_NAME as IGNORED_NAME  # annotations, decoys, our outputs: not inputs

ISIC_ID = re.compile(r"^ISIC_\d{7}$")
PROBS_DIR, OVERLAYS_DIR = "probs", "overlays"
# Stamped into every PNG predict writes: it overwrites its own outputs, never another file (a
# ground-truth mask of the same name when --out is the input folder).
STAMP = {"Software": "tcnet predict"}

EXIT_OK, EXIT_SKIPPED, EXIT_NOTHING = 0, 1, 2

EPILOG = """\
MODEL: a checkpoint (outputs/models/<exp>/<run_id>/best.pt), a run folder, a saved MLflow model
folder, or an MLflow URI: runs:/<mlflow_run_id>/pyfunc (the model tcnet promote logs),
models:/tcnet/3, models:/tcnet@champion.

outputs: OUT/<stem>_mask.png (ISIC_xxxxxxx images: OUT/ISIC_xxxxxxx_segmentation.png), 8-bit
0/255 at each image's original size; --probs adds OUT/probs/<stem>_prob.png (16-bit), --overlay
adds OUT/overlays/<stem>_overlay.png. Not treated as inputs: hidden files, our outputs (_prob,
_overlay), ISIC's _superpixels, and the datasets' annotations, names ending in
{annotations} (and PH2's _R1_Label4).
A mask file is overwritten only if tcnet predict wrote it (a PNG text field says so): OUT may be
the input folder; its ground-truth masks stay as they are.

exit status: 0 every image was segmented; 1 some inputs were skipped (unreadable, corrupt, not an
image, or an output that could not be written) -- the others are still written and every skipped
file is listed with its reason; 2 nothing could be done (bad MODEL, no images found, bad option, or
every input skipped).
""".format(annotations=", ".join(ANNOTATION_SUFFIXES))


# ----------------------------------------------------------------------------------------------
# Inference (shared with serving and export)
# ----------------------------------------------------------------------------------------------


def image_size_of(meta: dict) -> int:
    size = meta.get("image_size")
    if isinstance(size, (list, tuple)):
        size = size[0]
    if not size:
        raise ValueError(f"model {meta.get('source', '')!r}: its checkpoint records no image_size")
    return int(size)


def predict_probs(model, images: Sequence[np.ndarray], image_size: int, device) -> list[np.ndarray]:
    """Foreground probability of each uint8 ``H x W x 3`` image at its own size (float32 ``H x W``)."""
    import torch

    from tcnet.data.transforms import prepare_image, resize_prob

    if not images:
        return []
    batch = torch.cat([prepare_image(img, image_size) for img in images]).to(device)
    with torch.inference_mode():
        prob = foreground_prob(model(batch)).cpu()
    return [resize_prob(p, (img.shape[1], img.shape[0])) for p, img in zip(prob, images)]


def binarize(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """uint8 0/255 mask: foreground where ``prob >= threshold`` (the evaluate stage's rule, docs/metrics.md)."""
    return np.where(prob >= threshold, 255, 0).astype(np.uint8)


PROB_LEVELS = {8: (255, np.uint8), 16: (65535, np.uint16)}  # --probs-bits -> (top grey level, dtype)


def prob_to_png(prob: np.ndarray, bits: int = 16) -> np.ndarray:
    """The probability as grey levels: uint16 ``round(65535 p)`` or uint8 ``round(255 p)``. 8 bits
    tie most of a weak model's pixels and bias AUC (tcnet score reads both)."""
    top, dtype = PROB_LEVELS[bits]
    return np.clip(np.round(prob * float(top)), 0, top).astype(dtype)


def overlay(image: np.ndarray, mask: np.ndarray, color=(255, 0, 0), alpha: float = 0.4) -> np.ndarray:
    """The image with the mask tinted in ``color`` and its outline drawn (uint8 ``H x W x 3``)."""
    import cv2

    out = image.astype(np.float32)
    fg = mask > 0
    out[fg] = (1 - alpha) * out[fg] + alpha * np.asarray(color, np.float32)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours((fg * 255).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(image.shape[:2]) / 300))
    cv2.drawContours(out, contours, -1, (255, 255, 0), thickness)
    return out


def example_image(width: int = 48, height: int = 32) -> np.ndarray:
    """A small deterministic RGB image (a bright disc on a darker background) for input examples."""
    yy, xx = np.mgrid[0:height, 0:width]
    disc = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < (min(width, height) / 3) ** 2
    img = np.full((height, width, 3), (150, 110, 90), np.uint8)
    img[disc] = (70, 40, 30)
    return img


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def output_stem(stem: str) -> str:
    """Mask file name for an input stem: ``ISIC_xxxxxxx_segmentation`` for ISIC ids, else ``<stem>_mask``."""
    return f"{stem}_segmentation" if ISIC_ID.match(stem) else f"{stem}_mask"


def collect_inputs(path: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """Image files to segment: ``path`` itself, or the images in the folder (sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"input {path}: no such file or folder")
    pattern = path.rglob("*") if recursive else path.glob("*")
    exclude = exclude.resolve() if exclude is not None else None
    if exclude is not None and (exclude == path.resolve() or exclude in path.resolve().parents):
        exclude = None  # OUT is the input folder or above it: the outputs' names keep them out (IGNORED_NAME)
    found = []
    for p in pattern:
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        if p.suffix.lower() not in IMAGE_SUFFIXES or IGNORED_NAME.search(p.stem):
            continue
        if exclude is not None and exclude in p.resolve().parents:
            continue
        found.append(p)
    return sorted(found)


@dataclass
class PredictResult:
    written: list[dict] = field(default_factory=list)  # {input, mask, width, height, foreground_fraction}
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)

    @property
    def exit_code(self) -> int:
        """0 all written; 1 some skipped, the rest written; 2 every input skipped (nothing written)."""
        if not self.skipped:
            return EXIT_OK
        return EXIT_SKIPPED if self.written else EXIT_NOTHING


def mask_path(out: Path, stem: Path) -> Path:
    """Where the mask of the input with relative output stem ``stem`` goes under ``out``."""
    return out / stem.parent / f"{output_stem(stem.name)}.png"


def foreign_mask_error(path: Path) -> FileExistsError | None:
    """The error for a mask name that holds a file tcnet predict did not write (a ground truth), else None.
    probs/ and overlays/ are predict's own folders (an unstamped file there is an older predict's
    output): only the mask's name can be a ground truth's."""
    if path.exists() and not written_by_predict(path):
        return FileExistsError(errno.EEXIST, "exists and tcnet predict did not write it (a ground-truth mask, or a "
                               "mask from an older tcnet predict, which did not stamp its files); move it or choose "
                               "another --out", str(path))
    return None


def _plan(inputs: list[Path], root: Path | None, out: Path, result: PredictResult) -> list[tuple[Path, Path]]:
    """(input, relative output stem) per input. Skipped before the model loads: an input whose mask
    name another input already claims (``a.jpg`` and ``a.png``), and one whose mask name holds a file
    predict did not write."""
    planned, claimed = [], {}
    for p in inputs:
        rel_dir = p.parent.relative_to(root) if root is not None else Path()
        stem = rel_dir / p.stem
        key = str(stem).lower()
        if key in claimed:
            result.skipped.append((str(p), f"same output name as {claimed[key]}; rename one of them"))
            continue
        claimed[key] = p
        clash = foreign_mask_error(mask_path(out, stem))
        if clash is not None:
            result.skipped.append((str(p), f"{clash.filename}: {clash.strerror}"))
            continue
        planned.append((p, stem))
    return planned


def run(
    model: str,
    inputs: str | Path,
    out: str | Path,
    *,
    overlays: bool = False,
    probs: bool = False,
    probs_bits: int = 16,
    threshold: float = 0.5,
    batch_size: int = 8,
    device: str = "auto",
    recursive: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> PredictResult:
    """Segment ``inputs`` (a file or folder) with MODEL into ``out``; see the module docstring.

    ``progress``: None = a progress bar only on a terminal. Bad inputs are reported in the
    result's ``skipped`` and never stop the batch.
    """
    from tqdm import tqdm

    from tcnet.data.io import InvalidInputError, read_image, write_png
    from tcnet.tools.model_source import load

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"--threshold must be in [0, 1], got {threshold}")
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if probs_bits not in PROB_LEVELS:
        raise ValueError(f"--probs-bits must be 8 or 16, got {probs_bits}")
    inputs, out = Path(inputs), Path(out)
    log = log or (lambda msg: None)
    files = collect_inputs(inputs, recursive=recursive, exclude=out)
    if not files:
        raise ValueError(
            f"input {inputs}: no images found ({', '.join(IMAGE_SUFFIXES)})"
            + ("" if recursive else "; add --recursive to search sub-folders")
        )
    if out.exists() and not out.is_dir():  # before the model loads: nothing could be written
        raise FileExistsError(errno.EEXIST, "exists and is not a folder (--out)", str(out))
    result = PredictResult()
    plan = _plan(files, inputs if inputs.is_dir() else None, out, result)
    if not plan:  # every input skipped: no model to load, nothing to write
        return result
    net, meta, dev = load(model, device)
    size = image_size_of(meta)  # a checkpoint without a usable image_size fails before --out is made
    out.mkdir(parents=True, exist_ok=True)  # an unwritable place fails here, naming it, not per image
    if dev.type == "cpu":
        from tcnet.utils.heap import retain_freed_memory_for_inference

        # As the evaluate stage: batches of large images no longer fault their activations in anew
        # on every forward (tcnet/utils/heap.py). Process-wide, for life.
        retain_freed_memory_for_inference()
    skipped = f" ({len(result.skipped)} skipped)" if result.skipped else ""
    log(f"model {meta.get('model_name', '?')} ({model}) at {size}x{size} on {dev}; {len(plan)} image(s){skipped}")

    bar = tqdm(total=len(plan), unit="img", disable=(None if progress is None else not progress), file=sys.stderr)
    try:
        for start in range(0, len(plan), batch_size):
            chunk = plan[start:start + batch_size]
            images, ok = [], []
            for src, stem in chunk:
                try:
                    images.append(read_image(src, exif_orientation=True))  # the mask fits the image as shown
                    ok.append((src, stem))
                except InvalidInputError as e:
                    result.skipped.append((str(src), str(e)))
                except Exception as e:  # noqa: BLE001 - permission denied, decompression bomb, ...: skip it
                    result.skipped.append((str(src), f"{src}: cannot read: {type(e).__name__}: {e}"))
            for (src, stem), img, prob in zip(ok, images, predict_probs(net, images, size, dev)):
                try:
                    result.written.append(_write_outputs(src, stem, img, prob, out, threshold, probs, overlays,
                                                         write_png, probs_bits))
                except FileExistsError as e:
                    result.skipped.append((str(src), f"{e.filename}: {e.strerror}"))
                except OSError as e:
                    result.skipped.append((str(src), f"cannot write its outputs under {out}: {e}"))
            bar.update(len(chunk))
    finally:
        bar.close()
    return result


def written_by_predict(path: Path) -> bool:
    """Whether ``path`` is a PNG that tcnet predict wrote (its :data:`STAMP`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:  # info, not text: write_png puts the stamp before the pixels, so no decode
            return im.format == "PNG" and im.info.get("Software") == STAMP["Software"]
    except Exception:  # noqa: BLE001 - not an image, unreadable: not ours either way
        return False


def _write_outputs(src, stem: Path, img, prob, out: Path, threshold, probs, overlays, write_png,
                   probs_bits: int = 16) -> dict:
    mask = binarize(prob, threshold)
    mpath = mask_path(out, stem)
    clash = foreign_mask_error(mpath)  # checked again: the file may have appeared while the model ran
    if clash is not None:
        raise clash
    files = []  # the mask last: an input reported as skipped leaves none of its files behind
    if probs:
        files.append((out / PROBS_DIR / stem.parent / f"{stem.name}_prob.png", prob_to_png(prob, probs_bits)))
    if overlays:
        files.append((out / OVERLAYS_DIR / stem.parent / f"{stem.name}_overlay.png", overlay(img, mask)))
    files.append((mpath, mask))
    done = []
    try:
        for path, data in files:
            write_png(path, data, text=STAMP)
            done.append(path)
    except OSError:
        for path in done:
            path.unlink(missing_ok=True)
        raise
    h, w = mask.shape
    return {
        "input": str(src), "mask": str(mpath), "width": w, "height": h,
        "foreground_fraction": float((mask > 0).mean()),
    }


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("--model", required=True, metavar="MODEL", help="checkpoint, run folder or MLflow model URI (below)")
    parser.add_argument("--input", required=True, metavar="DIR|FILE", help="an image, or a folder of images")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the masks (created)")
    parser.add_argument("--recursive", action="store_true", help="also segment images in sub-folders (kept under --out)")
    parser.add_argument("--overlay", action="store_true", help="also write overlays/<stem>_overlay.png")
    parser.add_argument("--probs", action="store_true", help="also write probs/<stem>_prob.png (the probability, "
                        "16-bit grey: what tcnet score --probs reads for AUC)")
    parser.add_argument("--probs-bits", type=int, choices=(8, 16), default=16,
                        help="grey levels of --probs: 16 (default) or 8 (smaller; too coarse for AUC)")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground where probability >= this (default 0.5, as evaluate)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N (default auto)")


def main(args: argparse.Namespace) -> int:
    def log(msg: str) -> None:
        print(f"tcnet predict: {msg}", file=sys.stderr)

    result = run(
        args.model, args.input, args.out, overlays=args.overlay, probs=args.probs, probs_bits=args.probs_bits,
        threshold=args.threshold, batch_size=args.batch_size, device=args.device,
        recursive=args.recursive, log=log,
    )
    for src, reason in result.skipped:
        log(f"skipped: {reason}" if src in reason else f"skipped: {src}: {reason}")
    log(f"{len(result.written)} image(s) segmented into {args.out}, {len(result.skipped)} skipped")
    return result.exit_code


__all__ = [
    "main_output", "foreground_prob", "predict_probs", "binarize", "overlay", "output_stem",
    "collect_inputs", "PredictResult", "run", "add_arguments", "main",
]
