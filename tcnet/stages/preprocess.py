"""Stage ``preprocess``: validate every raw image/mask pair, resize it, and index it.

For each configured dataset the adapter (:func:`tcnet.data.adapters.discover`) pairs the files of
the official layout; each pair is then checked and resized in a process pool (one pair per task),
and the parent assembles the arrays::

    <out>/<dataset>/images.npy   uint8 N x S x S x 3   (area resize)
    <out>/<dataset>/masks.npy    uint8 N x S x S, 0/1  (nearest resize)
    <out>/<dataset>/fov.npy      uint8 N x S x S, 0/1  (nearest resize)
    <out>/manifest.csv           one row per kept pair (columns: MANIFEST_COLUMNS)
    <out>/stats.json             {dataset: {n, size, fg_fraction, class_weights: [w_bg, w_fg]}}
    <out>/skipped.csv            pairs left out under ``skip_invalid: true`` (header only otherwise)
    <out>/params.yaml            the resolved ``preprocess`` config

The output folder is replaced in one step (:func:`tcnet.utils.atomic.atomic_dir`): a run that fails
or is killed half-way leaves the previous outputs as they were. A bad pair stops the run with a
:class:`PreprocessError` naming the file and the problem, unless ``skip_invalid`` is set, in which
case it is left out and reported. See ``docs/stages-data.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import csv
import hashlib
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tcnet.config import PreprocessConfig, to_dict
from tcnet.utils.atomic import atomic_dir

MANIFEST_COLUMNS = (
    "id", "dataset", "index", "official_split", "image_path", "mask_path", "fov_path",
    "orig_width", "orig_height", "fg_fraction", "checksum",
)
SKIPPED_COLUMNS = ("dataset", "id", "path", "problem")

# A raw mask is "binary-ish" when at most this fraction of its pixels lies in the mid-grey band
# (MID_LOW, MID_HIGH) of the 0..255 grey scale. Tolerates a few anti-aliased edge pixels; rejects
# soft/probability maps and JPEG-compressed masks. Masks stored as 0/1 (max <= 1) are binary.
MID_LOW, MID_HIGH = 25, 230
MAX_MID_FRACTION = 0.01
WEIGHT_CLIP = (1.0, 50.0)


class PreprocessError(ValueError):
    """A raw input the stage cannot use; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class _Task:
    dataset: str
    size: int
    raw_dir: str
    sample: Any  # tcnet.data.adapters.Sample


@dataclass
class _Result:
    ok: bool
    sample_id: str
    path: str = ""  # the offending file (errors only)
    problem: str = ""
    image: Optional[np.ndarray] = None
    mask: Optional[np.ndarray] = None
    fov: Optional[np.ndarray] = None
    row: Optional[dict] = None


# ----------------------------------------------------------------------------------------------
# Per-pair work (runs in the worker processes)
# ----------------------------------------------------------------------------------------------


class _PairProblem(Exception):
    def __init__(self, path, problem: str):
        super().__init__(problem)
        self.path = str(path) if path else ""
        self.problem = problem


def _rel(path, raw_dir: str) -> str:
    if not path:
        return ""
    try:
        return Path(os.path.relpath(Path(path), raw_dir)).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).as_posix()


def _sha256(*paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def mask_binary_problem(gray: np.ndarray) -> Optional[str]:
    """Why a raw grey mask (uint8 H x W) is not binary under the documented rule, else ``None``."""
    if gray.size == 0:
        return "mask is empty (0 pixels)"
    hist = np.bincount(np.asarray(gray, np.uint8).ravel(), minlength=256)
    n_values = int(np.count_nonzero(hist))
    if n_values <= 2 or not hist[2:].any():  # two levels (0/255, palette 3/253, 0/1 ...) are unambiguous
        return None
    mid = float(hist[MID_LOW + 1:MID_HIGH].sum()) / gray.size
    if mid > MAX_MID_FRACTION:
        return (
            f"mask is not binary: {mid:.1%} of its pixels are mid-grey ({MID_LOW + 1}..{MID_HIGH - 1}; "
            f"at most {MAX_MID_FRACTION:.0%} allowed, {n_values} distinct values); expected 0/255 "
            "(or 0/1) -- is this a soft/probability map or a JPEG-compressed mask?"
        )
    return None


def _init_worker() -> None:
    """One OpenCV thread per worker (the pool already uses every core); Ctrl-C is the parent's to
    handle (it stops the pool), so workers do not each print a KeyboardInterrupt traceback."""
    import signal

    import cv2

    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _process(task: _Task) -> _Result:
    """Validate and resize one pair. Never raises: problems come back as a failed result."""
    s = task.sample
    try:
        return _process_or_raise(task)
    except _PairProblem as e:
        return _Result(False, s.id, e.path, e.problem)
    except Exception as e:  # anything unforeseen still names the pair, never a bare traceback
        return _Result(False, s.id, str(s.image), f"unexpected {type(e).__name__}: {e}")


def _process_or_raise(task: _Task) -> _Result:
    from tcnet.data.adapters import load_fov, load_mask
    from tcnet.data.io import read_gray, read_image
    from tcnet.data.transforms import resize_image, resize_mask

    s, size = task.sample, task.size
    for what, p in (("image", s.image), ("mask", s.mask)):
        if not p:
            raise _PairProblem(s.image if what == "mask" else "", f"no {what} file for sample {s.id!r}")
        if not Path(p).is_file():
            raise _PairProblem(p, f"{what} file is missing")
    if s.fov and not Path(s.fov).is_file():
        raise _PairProblem(s.fov, "FOV mask file is missing")

    try:
        image = read_image(s.image)
    except Exception as e:
        raise _PairProblem(s.image, f"cannot read image: {_msg(e, s.image)}") from None
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise _PairProblem(s.image, f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]

    try:
        gray = read_gray(s.mask)
    except Exception as e:
        raise _PairProblem(s.mask, f"cannot read mask: {_msg(e, s.mask)}") from None
    if gray.shape[:2] != (h, w):
        raise _PairProblem(
            s.mask, f"mask size {gray.shape[1]}x{gray.shape[0]} (WxH) does not match image size {w}x{h} ({s.image})"
        )
    problem = mask_binary_problem(np.asarray(gray))
    if problem:
        raise _PairProblem(s.mask, problem)
    try:
        mask = np.asarray(load_mask(s)).astype(bool)
    except Exception as e:
        raise _PairProblem(s.mask, f"cannot load mask: {_msg(e, s.mask)}") from None

    fov_file = s.fov or s.image  # a derived FOV comes from the image
    try:
        fov = np.asarray(load_fov(s, image)).astype(bool)
    except Exception as e:
        raise _PairProblem(fov_file, f"cannot load or derive the FOV mask: {_msg(e, fov_file)}") from None
    if fov.shape != (h, w):
        raise _PairProblem(fov_file, f"FOV size {fov.shape[1]}x{fov.shape[0]} (WxH) does not match image size {w}x{h}")
    if not fov.any():
        raise _PairProblem(fov_file, "FOV mask is empty (no pixel inside the field of view)")

    n_fov = int(np.count_nonzero(fov))
    fg_fraction = float(np.count_nonzero(mask & fov)) / n_fov
    out_image = np.ascontiguousarray(resize_image(image, size), dtype=np.uint8)
    out_mask = (np.asarray(resize_mask(mask.astype(np.uint8), size)) > 0).astype(np.uint8)
    out_fov = (np.asarray(resize_mask(fov.astype(np.uint8), size)) > 0).astype(np.uint8)
    if out_image.shape != (size, size, 3) or out_mask.shape != (size, size) or out_fov.shape != (size, size):
        raise AssertionError(f"resize gave {out_image.shape}, {out_mask.shape}, {out_fov.shape}")

    row = {
        "id": s.id,
        "dataset": task.dataset,
        "index": -1,  # set by the parent
        "official_split": s.official_split or "",
        "image_path": _rel(s.image, task.raw_dir),
        "mask_path": _rel(s.mask, task.raw_dir),
        "fov_path": _rel(s.fov, task.raw_dir),
        "orig_width": w,
        "orig_height": h,
        "fg_fraction": round(fg_fraction, 6),
        "checksum": _sha256(s.image, s.mask),
    }
    return _Result(True, s.id, image=out_image, mask=out_mask, fov=out_fov, row=row)


def _msg(e: Exception, path=None) -> str:
    """The exception's text without a leading ``<path>: `` (the caller names the file once)."""
    text = str(e) or type(e).__name__
    prefix = f"{path}: " if path else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


# ----------------------------------------------------------------------------------------------
# Class statistics
# ----------------------------------------------------------------------------------------------


def class_weights(masks: np.ndarray, fov: np.ndarray) -> list[float]:
    """``[w_bg, w_fg]``: inverse pixel frequency over FOV pixels, smallest = 1, clipped to [1, 50]
    (the rule of :func:`tcnet.losses.class_weights_from_masks`, which computes it)."""
    from tcnet.losses import class_weights_from_masks

    return [float(w) for w in class_weights_from_masks(masks, fov, clip=WEIGHT_CLIP)]


# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------


def _progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)


def _discover(dataset: str, raw_dir: Path) -> list:
    from tcnet.data.adapters import discover

    root = raw_dir / dataset
    if not root.is_dir():
        raise PreprocessError(
            f"{dataset}: raw data folder {root} not found; put the dataset there in its official layout "
            f"(or write a synthetic look-alike with 'tcnet synth {dataset} --out {root}'), "
            "or remove it from preprocess.datasets"
        )
    try:
        samples = list(discover(dataset, root))
    except ValueError as e:  # LayoutError and friends: already name what was expected and found
        text = str(e)
        raise PreprocessError(text if text.startswith(f"{dataset}:") else f"{dataset}: {text}") from None
    if not samples:
        raise PreprocessError(f"{dataset}: no image/mask pairs found in {root} (empty dataset)")
    dup = sorted(i for i, c in Counter(s.id for s in samples).items() if c > 1)
    if dup:
        raise PreprocessError(f"{dataset}: duplicate sample ids in {root}: {', '.join(dup[:5])}")
    return sorted(samples, key=lambda s: s.id)


def _write_csv(path: Path, columns, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _process_dataset(dataset: str, cfg: PreprocessConfig, raw_dir: Path, pool, workers: int):
    samples = _discover(dataset, raw_dir)
    size = cfg.size_for(dataset)
    tasks = [_Task(dataset, size, str(raw_dir), s) for s in samples]
    n = len(tasks)
    images = np.zeros((n, size, size, 3), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    fovs = np.zeros((n, size, size), np.uint8)
    rows, skipped = [], []
    chunksize = max(1, min(16, n // (4 * workers)))  # few round trips, yet balanced across workers
    results = pool.map(_process, tasks, chunksize=chunksize) if pool else map(_process, tasks)
    with _progress(n, dataset) as bar:
        for r in results:
            bar.update(1)
            if not r.ok:
                where = f"{r.path}: " if r.path else ""
                if not cfg.skip_invalid:
                    raise PreprocessError(
                        f"{dataset}: {where}{r.problem} (sample {r.sample_id}; set preprocess.skip_invalid: "
                        "true to skip bad pairs)"
                    )
                skipped.append({"dataset": dataset, "id": r.sample_id, "path": r.path, "problem": r.problem})
                continue
            k = len(rows)
            images[k], masks[k], fovs[k] = r.image, r.mask, r.fov
            rows.append({**r.row, "index": k})
    k = len(rows)
    if k == 0:
        raise PreprocessError(f"{dataset}: all {n} pairs in {raw_dir / dataset} are invalid (see the skipped list)")
    return images[:k], masks[:k], fovs[:k], rows, skipped


def _dataset_stats(rows, masks, fovs, size: int) -> dict:
    splits = np.array([r["official_split"] for r in rows])
    train = splits == "train" if (splits == "train").any() else np.ones(len(rows), bool)
    n_fov = int(np.count_nonzero(fovs))
    n_fg = sum(int(np.count_nonzero(m & f)) for m, f in zip(masks, fovs))  # per image: no N x S x S temporary
    fg = n_fg / max(n_fov, 1)
    return {
        "n": len(rows),
        "size": size,
        "fg_fraction": round(fg, 6),
        "class_weights": [round(w, 6) for w in class_weights(masks[train], fovs[train])],
    }


def _import_once() -> None:
    """Import what the workers use before the pool forks, so each worker does not import it again
    (scipy for the CHASE_DB1 FOV, OpenCV, Pillow); and the class-weight rule (tcnet.losses)."""
    import cv2  # noqa: F401
    import scipy.ndimage  # noqa: F401
    from PIL import Image  # noqa: F401

    import tcnet.data.adapters  # noqa: F401
    import tcnet.data.io  # noqa: F401
    import tcnet.data.transforms  # noqa: F401
    import tcnet.losses  # noqa: F401


def run(cfg: PreprocessConfig, raw_dir: Path, out_dir: Path) -> dict:
    """Validate, resize and index ``cfg.datasets`` from ``raw_dir`` into ``out_dir`` (replaced whole).

    Returns a summary: ``{"out_dir", "seconds", "import_seconds", "images_per_s" (excluding the
    imports), "datasets": {name: {n, skipped, seconds, images_per_s}}, "skipped": [{dataset, id,
    path, problem}]}``.
    Raises :class:`PreprocessError` on the first bad pair (unless ``cfg.skip_invalid``).
    """
    cfg.validate()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"raw data folder {raw_dir} not found (preprocess.raw_dir / --raw)")
    workers = cfg.workers or os.cpu_count() or 1
    t_start = time.perf_counter()
    _import_once()
    t_imported = time.perf_counter()
    summary: dict[str, Any] = {"out_dir": str(out_dir), "datasets": {}, "skipped": []}
    manifest, stats = [], {}
    # forkserver, not fork: a worker forked from a parent whose OpenCV thread pool is alive can
    # deadlock on its first OpenCV call; forkserver children start from a clean process.
    pool = (
        cf.ProcessPoolExecutor(
            max_workers=workers, initializer=_init_worker, mp_context=multiprocessing.get_context("forkserver")
        )
        if workers > 1
        else None
    )
    try:
        with atomic_dir(out_dir) as tmp:
            for dataset in cfg.datasets:
                t0 = time.perf_counter()
                images, masks, fovs, rows, skipped = _process_dataset(dataset, cfg, raw_dir, pool, workers)
                d = tmp / dataset
                d.mkdir()
                np.save(d / "images.npy", images)
                np.save(d / "masks.npy", masks)
                np.save(d / "fov.npy", fovs)
                manifest.extend(rows)
                stats[dataset] = _dataset_stats(rows, masks, fovs, cfg.size_for(dataset))
                secs = time.perf_counter() - t0
                summary["datasets"][dataset] = {
                    "n": len(rows), "skipped": len(skipped), "seconds": round(secs, 3),
                    "images_per_s": round((len(rows) + len(skipped)) / secs, 1) if secs > 0 else None,
                }
                summary["skipped"].extend(skipped)
            _write_csv(tmp / "manifest.csv", MANIFEST_COLUMNS, manifest)
            _write_csv(tmp / "skipped.csv", SKIPPED_COLUMNS, summary["skipped"])
            (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
            _write_params(tmp / "params.yaml", replace(cfg, raw_dir=str(raw_dir)))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    t_end = time.perf_counter()
    n_total = sum(v["n"] + v["skipped"] for v in summary["datasets"].values())
    summary["seconds"] = round(t_end - t_start, 3)
    summary["import_seconds"] = round(t_imported - t_start, 3)
    work = t_end - t_imported  # pool start, decoding, checks, resizing, writing
    summary["images_per_s"] = round(n_total / work, 1) if work > 0 else None
    return summary


def _write_params(path: Path, cfg: PreprocessConfig) -> None:
    import yaml

    path.write_text(yaml.safe_dump({"preprocess": to_dict(cfg)}, sort_keys=False))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("--raw", default=None, help="raw data root (default: preprocess.raw_dir from params)")
    parser.add_argument("--out", default="outputs/preprocessed", help="output folder (default: outputs/preprocessed)")


def main(args) -> int:
    from tcnet.config import load_params

    cfg = load_params(args.params).preprocess
    raw = Path(args.raw if args.raw is not None else cfg.raw_dir)
    summary = run(cfg, raw, Path(args.out))
    for name, d in summary["datasets"].items():
        extra = f", {d['skipped']} skipped" if d["skipped"] else ""
        print(f"{name}: {d['n']} pairs at {cfg.size_for(name)} px{extra} ({d['seconds']:.1f} s)")
    for s in summary["skipped"]:
        print(f"skipped {s['dataset']}/{s['id']}: {s['path']}: {s['problem']}", file=sys.stderr)
    print(
        f"wrote {args.out} in {summary['seconds']:.1f} s ({summary['images_per_s']} images/s after "
        f"{summary['import_seconds']:.1f} s of imports)"
    )
    return 0
