"""Stage ``preprocess``: validate every raw image/mask pair, resize it, and index it.

For each configured dataset the adapter (:func:`tcnet.data.adapters.discover`) pairs the files of
the official layout; each pair is then checked and resized in a process pool (one pair per task),
each worker writing its pair straight into its slot of the output ``.npy`` files, and
the parent collects the manifest rows and pixel counts::

    <out>/<dataset>/images.npy   uint8 N x S x S x 3   (area resize)
    <out>/<dataset>/masks.npy    uint8 N x S x S, 0/1  (nearest resize)
    <out>/<dataset>/fov.npy      uint8 N x S x S, 0/1  (nearest resize); only where the field of
                                 view can be smaller than the image (DRIVE, CHASE_DB1): without it
                                 every pixel is in view (:func:`tcnet.data.dataset.load_arrays`)
    <out>/manifest.csv           one row per kept pair (columns: MANIFEST_COLUMNS)
    <out>/stats.json             {dataset: {n, size, fg_fraction, class_weights: [w_bg, w_fg], class_weight_clip}}
    <out>/skipped.csv            pairs left out under ``skip_invalid: true`` (header only otherwise)
    <out>/params.yaml            the resolved ``preprocess`` config
    <out>/.tcnet-output          "tcnet preprocess": the folder is this stage's to replace

The output folder is replaced in one step (:func:`tcnet.utils.atomic.atomic_dir`): a run that fails
or is killed half-way leaves the previous outputs as they were, and a folder there that this stage
did not write (the raw data, the user's files) is refused, not replaced. A bad pair stops the run with a
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
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tcnet.config import PreprocessConfig, to_dict
from tcnet.utils.atomic import atomic_dir
from tcnet.utils.cpus import available_cpus

MANIFEST_COLUMNS = (
    "id", "dataset", "index", "official_split", "image_path", "mask_path", "fov_path",
    "orig_width", "orig_height", "fg_fraction", "fov_pixels", "fg_pixels", "checksum",
)
SKIPPED_COLUMNS = ("dataset", "id", "path", "problem")
ARRAY_NAMES = ("images", "masks", "fov")

# A raw mask is "binary-ish" when at most this fraction of its pixels lies in the mid-grey band
# (MID_LOW, MID_HIGH) of the 0..255 grey scale. Tolerates a few anti-aliased edge pixels; rejects
# soft/probability maps and JPEG-compressed masks. Masks stored as 0/1 (max <= 1) are binary.
MID_LOW, MID_HIGH = 25, 230
MAX_MID_FRACTION = 0.01


class PreprocessError(ValueError):
    """A raw input the stage cannot use; the message names the file and what is wrong with it."""


@dataclass(frozen=True)
class _Task:
    dataset: str
    size: int
    raw_dir: str
    sample: Any  # tcnet.data.adapters.Sample
    index: int = -1  # slot in the output arrays
    arrays_dir: str = ""  # folder of the images/masks/fov .npy files the worker writes into
    whole_fov: bool = False  # the parent knows the FOV is the whole image (no FOV file, default rule)


@dataclass
class _Result:
    ok: bool
    sample_id: str
    path: str = ""  # the offending file (errors only)
    problem: str = ""
    index: int = -1
    row: Optional[dict] = None
    counts: tuple[int, int] = (0, 0)  # resized (background, foreground) pixels inside the FOV


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
    text, prefix = os.fspath(path), raw_dir.rstrip("/") + "/"
    # A Path found under raw_dir (the adapters' own; a Path has no "//" or "/./"): no relpath, which
    # asks for the current folder twice (~40 us a pair); anything else, a custom adapter's string say
    if os.sep == "/" and isinstance(path, Path) and text.startswith(prefix) and "/../" not in text:
        return text[len(prefix):]
    try:
        return Path(os.path.relpath(Path(path), raw_dir)).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(path).as_posix()


def file_checksum(*paths) -> str:
    """sha256 of the files' bytes in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            # whole files (raw images are megabytes): one read sized by fstat, where 1 MiB reads
            # allocated and shrank a 1 MiB buffer per file (half the checksum's time for a JPEG)
            h.update(f.read())
    return h.hexdigest()


def sample_files(sample) -> list:
    """The raw files of a sample: image, mask and FOV file where it has one (a FOV derived from the
    image is covered by the image)."""
    return [p for p in (sample.image, sample.mask, sample.fov) if p]


def sample_checksum(sample) -> str:
    """The manifest's ``checksum`` of a sample: sha256 of :func:`sample_files`. evaluate checks it
    before scoring: a FOV file edited after preprocess would otherwise be scored inside while
    training saw the old one."""
    return file_checksum(*sample_files(sample))


def mask_binary_problem(gray: np.ndarray) -> Optional[str]:
    """Why a raw grey mask (uint8 H x W) is not binary under the documented rule, else ``None``."""
    if gray.size == 0:
        return "mask is empty (0 pixels)"
    gray = np.ascontiguousarray(gray, np.uint8)
    if gray.ndim == 2:  # the common case, a clean mask, in one OpenCV pass (bincount is ~5x slower)
        import cv2

        mid = cv2.countNonZero(cv2.inRange(gray, MID_LOW + 1, MID_HIGH - 1))
        if mid <= MAX_MID_FRACTION * gray.size:
            return None
    hist = np.bincount(gray.ravel(), minlength=256)
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


def lost_foreground_problem(gray: np.ndarray, mask: np.ndarray) -> Optional[str]:
    """Why a two-level mask lost its foreground under the binarisation rule, else ``None``.

    A mask stored as 0/100, a colour mask whose lesion colour is dark in grey (red -> 76) or a
    16-bit PNG holding 0/255 (grey 0/1 once scaled to 8 bits) passes the binary check but
    binarises to all background: the lesion would silently vanish from training and scoring.
    Only an all-background result is examined (cheap: the common case returns at once).
    """
    if mask.any() or not gray.size or int(gray.max()) == 0:
        return None
    levels = np.unique(gray)
    if len(levels) != 2:  # e.g. JPEG noise on an empty mask: many low levels, no lesion meant
        return None
    return (f"mask has two grey levels {{{levels[0]}, {levels[1]}}} but no pixel counts as foreground under the "
            f"rule (0/1 data: > 0; otherwise >= 128 of 255); expected 0/255 or 0/1 -- is the foreground stored "
            f"as a dark value, a colour, or 0/255 in a 16-bit file?")


def chunk_size(n: int, workers: int) -> int:
    """Pairs per task sent to a pool worker. Small chunks: a pair is ~10 ms, and the last chunk of
    one worker is the other's idle time."""
    return max(1, min(4, n // (8 * workers)))


def _init_worker() -> None:
    """One OpenCV thread per worker (the pool already uses every core); freed image buffers kept
    for the next pair rather than faulted in afresh (:mod:`tcnet.utils.heap`: a third of the
    workers' CPU time went to page faults); Ctrl-C is the parent's to handle (it stops the pool),
    so workers do not each print a KeyboardInterrupt traceback."""
    import signal

    import cv2

    from tcnet.utils.heap import retain_freed_memory

    cv2.setNumThreads(1)
    retain_freed_memory()
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


class _Slots:
    """The output arrays of one dataset, open for writing: a worker writes its pair's slot straight
    into the ``.npy`` files (``os.pwrite`` at the slot's offset), so no image travels back through
    the pool (the parent is a third process on the cores), and no page of a memory map is faulted."""

    def __init__(self, arrays_dir: str):
        self.files = {}
        for name in ARRAY_NAMES:
            path = Path(arrays_dir) / f"{name}.npy"
            if not path.is_file():  # no fov.npy: the dataset's FOV is the whole image
                continue
            header = np.load(path, mmap_mode="r")  # reads the header only
            item = int(np.prod(header.shape[1:], dtype=np.int64)) * header.itemsize
            self.files[name] = (os.open(path, os.O_WRONLY), int(header.offset), item)
            del header

    def write(self, index: int, **arrays: np.ndarray) -> None:
        """Write each named array into its slot ``index``; names without a file are not stored."""
        for name, a in arrays.items():
            if name not in self.files:
                continue
            fd, offset, item = self.files[name]
            data = memoryview(np.ascontiguousarray(a, dtype=np.uint8)).cast("B")
            if data.nbytes != item:
                raise AssertionError(f"slot of {item} bytes, array of {data.nbytes}")
            pos, done = offset + index * item, 0
            while done < item:  # pwrite may write less than asked (signals, huge slots)
                done += os.pwrite(fd, data[done:], pos + done)

    def close(self) -> None:
        for fd, _, _ in self.files.values():
            os.close(fd)
        self.files = {}


_SLOTS: dict[str, _Slots] = {}  # per process: arrays_dir -> its open files (one dataset at a time)


def _slots(arrays_dir: str) -> _Slots:
    slots = _SLOTS.get(arrays_dir)
    if slots is None:
        _close_slots()
        slots = _SLOTS[arrays_dir] = _Slots(arrays_dir)
    return slots


def _close_slots() -> None:
    for slots in _SLOTS.values():
        slots.close()
    _SLOTS.clear()


def _read_mask(sample) -> tuple[np.ndarray, np.ndarray]:
    """``(grey, mask)``: one decode of the mask file when the dataset's adapter uses the default
    mask rule (every bundled adapter); an adapter with its own ``load_mask`` is asked for it."""
    from tcnet.data.adapters import load_mask
    from tcnet.data.adapters.base import Adapter, get_adapter, read_mask_file
    from tcnet.data.io import read_gray

    if type(get_adapter(sample.dataset)).load_mask is Adapter.load_mask:
        return read_mask_file(sample.mask)
    return read_gray(sample.mask), np.asarray(load_mask(sample)).astype(bool)


def _read_fov(sample, image) -> tuple[Optional[np.ndarray], np.ndarray]:
    """``(grey, fov)``: the FOV file's grey levels (to check it as a mask is checked) and the bool
    FOV, from one decode, when the adapter uses the default FOV rule; ``(None, fov)`` for a FOV
    that is derived or all-true, or an adapter's own ``load_fov``."""
    from tcnet.data.adapters import load_fov
    from tcnet.data.adapters.base import Adapter, get_adapter, read_mask_file

    if sample.fov and type(get_adapter(sample.dataset)).load_fov is Adapter.load_fov:
        grey, fov = read_mask_file(sample.fov)
        return grey, np.asarray(fov, dtype=bool)
    return None, np.asarray(load_fov(sample, image)).astype(bool, copy=False)


def _process_or_raise(task: _Task) -> _Result:
    from tcnet.data.io import read_image
    from tcnet.data.transforms import resize_image, resize_mask

    s, size = task.sample, task.size
    for what, p in (("image", s.image), ("mask", s.mask)):
        if not p:
            raise _PairProblem(s.image if what == "mask" else "", f"no {what} file for sample {s.id!r}")
        if not os.path.isfile(p):
            raise _PairProblem(p, f"{what} file is missing")
    if s.fov and not os.path.isfile(s.fov):
        raise _PairProblem(s.fov, "FOV mask file is missing")

    try:
        image = read_image(s.image)
    except Exception as e:
        raise _PairProblem(s.image, f"cannot read image: {_msg(e, s.image)}") from None
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise _PairProblem(s.image, f"expected a uint8 H x W x 3 image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]

    try:
        gray, mask = _read_mask(s)
    except Exception as e:
        raise _PairProblem(s.mask, f"cannot read mask: {_msg(e, s.mask)}") from None
    if gray.shape[:2] != (h, w):
        raise _PairProblem(
            s.mask, f"mask size {gray.shape[1]}x{gray.shape[0]} (WxH) does not match image size {w}x{h} ({s.image})"
        )
    problem = mask_binary_problem(gray) or lost_foreground_problem(gray, mask)
    if problem:
        raise _PairProblem(s.mask, problem)
    if mask.shape != (h, w):
        raise _PairProblem(s.mask, f"mask size {mask.shape[1]}x{mask.shape[0]} (WxH) does not match image size {w}x{h}")

    fov_file = s.fov or s.image  # a derived FOV comes from the image
    if task.whole_fov:  # ISIC/PH2: all-true by the adapter's rule; no array to make and scan
        fov, full_fov = None, True
    else:
        try:
            fov_gray, fov = _read_fov(s, image)
        except Exception as e:
            raise _PairProblem(fov_file, f"cannot load or derive the FOV mask: {_msg(e, fov_file)}") from None
        problem = None if fov_gray is None else mask_binary_problem(fov_gray) or lost_foreground_problem(fov_gray, fov)
        if problem:
            raise _PairProblem(fov_file, "FOV " + problem)
        if fov.shape != (h, w):
            raise _PairProblem(fov_file, f"FOV size {fov.shape[1]}x{fov.shape[0]} (WxH) does not match image size {w}x{h}")
        full_fov = bool(fov.all())  # skip the per-pixel FOV work
    if not full_fov and not fov.any():
        raise _PairProblem(fov_file, "FOV mask is empty (no pixel inside the field of view)")

    import cv2

    # The masks' bytes (uint8 views, no copies) are counted by OpenCV and resized; the resized ones
    # are made bool by "> 0": a bool array's bytes need not be 0/1 (Pillow gives a 1-bit image's
    # pixels as 0/255 typed bool, and an adapter's own load_mask may too)
    mask_bool = np.ascontiguousarray(mask, dtype=bool)
    mask = mask_bool.view(np.uint8)
    if full_fov:
        fg_fraction = float(cv2.countNonZero(mask)) / mask.size
    else:  # bool AND (numpy's is logical on any byte values; a byte-wise AND of 128 and 1 is 0)
        fg_fraction = float(np.count_nonzero(mask_bool & fov)) / int(np.count_nonzero(fov))
    out_image = resize_image(image, size)
    out_mask = np.asarray(resize_mask(mask, size)) > 0
    out_fov = None if full_fov else np.asarray(resize_mask(np.ascontiguousarray(fov, dtype=bool).view(np.uint8), size)) > 0
    if out_image.shape != (size, size, 3) or out_mask.shape != (size, size) or (
            out_fov is not None and out_fov.shape != (size, size)):
        raise AssertionError(f"resize gave {out_image.shape}, {out_mask.shape}, {None if out_fov is None else out_fov.shape}")
    n_fov = size * size if full_fov else int(np.count_nonzero(out_fov))
    n_fg = int(np.count_nonzero(out_mask if full_fov else out_mask & out_fov))

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
        # at the stored size, FOV pixels only: the train stage sums a run's own training images' counts
        # into its class weights (never its validation or test images')
        "fov_pixels": n_fov,
        "fg_pixels": n_fg,
        "checksum": sample_checksum(s),
    }
    slots = _slots(task.arrays_dir)
    if "fov" not in slots.files and not full_fov:  # the parent said whole-image FOV, the adapter disagrees
        raise AssertionError(f"{fov_file}: a FOV smaller than the image, but {task.dataset} stores none")
    if out_fov is None and "fov" in slots.files:  # a dataset with FOVs, this image's all in view
        out_fov = np.ones((size, size), bool)
    slots.write(task.index, images=out_image, masks=out_mask, fov=out_fov)
    return _Result(True, s.id, index=task.index, row=row, counts=(n_fov - n_fg, n_fg))


def _msg(e: Exception, path=None) -> str:
    """The exception's text without a leading ``<path>: `` (the caller names the file once)."""
    text = str(e) or type(e).__name__
    prefix = f"{path}: " if path else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


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


def _fov_is_whole_image(dataset: str, samples) -> bool:
    """Whether every pair's FOV is the whole image, known before any is read: no FOV files, and the
    adapter's ``load_fov`` is the default one (CHASE_DB1 derives its FOV from the image)."""
    from tcnet.data.adapters.base import Adapter, get_adapter

    return type(get_adapter(dataset)).load_fov is Adapter.load_fov and not any(s.fov for s in samples)


def _process_dataset(dataset: str, cfg: PreprocessConfig, raw_dir: Path, out: Path, pool, workers: int):
    """Write ``out/{images,masks,fov}.npy`` for ``dataset``; returns (rows, skipped, class counts).

    The arrays are created full-size first and filled in place by the workers (:class:`_Slots`);
    pairs left out under ``skip_invalid`` are squeezed out at the end.
    """
    samples = _discover(dataset, raw_dir)
    size = cfg.size_for(dataset)
    n = len(samples)
    shapes = {"images": (n, size, size, 3), "masks": (n, size, size), "fov": (n, size, size)}
    whole_fov = _fov_is_whole_image(dataset, samples)
    if whole_fov:
        del shapes["fov"]  # all ones: readers make them (load_arrays); 20 % fewer bytes to write and store
    for name, shape in shapes.items():
        np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
    tasks = [_Task(dataset, size, str(raw_dir), smp, i, str(out), whole_fov) for i, smp in enumerate(samples)]
    ok: list[_Result] = []
    skipped = []
    results = pool.map(_process, tasks, chunksize=chunk_size(n, workers)) if pool else map(_process, tasks)
    try:
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
                ok.append(r)
    finally:
        _close_slots()  # this process's files (single-process mode), before they are touched again
    if not ok:
        raise PreprocessError(f"{dataset}: all {n} pairs in {raw_dir / dataset} are invalid (see the skipped list)")
    keep = [r.index for r in ok]  # in sample order: pool.map keeps the order
    if len(keep) < n:
        for name in shapes:
            arr = np.load(out / f"{name}.npy", mmap_mode="r")
            kept = np.ascontiguousarray(arr[keep])
            del arr
            np.save(out / f"{name}.npy", kept)
    rows = [{**r.row, "index": k} for k, r in enumerate(ok)]
    counts = {"all": np.sum([r.counts for r in ok], axis=0),
              "train": np.sum([r.counts for r in ok if r.row["official_split"] == "train"] or [[0, 0]], axis=0)}
    return rows, skipped, counts


def _dataset_stats(rows, counts: dict, size: int, clip: tuple[float, float]) -> dict:
    """fg fraction over every kept pair; class weights from the official training pairs (all pairs
    if the dataset has no official split), both over resized FOV pixels."""
    from tcnet.losses.class_weights import class_weights_from_counts

    has_train = any(r["official_split"] == "train" for r in rows)
    bg, fg = (int(c) for c in counts["all"])
    weights = class_weights_from_counts(counts["train"] if has_train else counts["all"], clip)
    return {
        "n": len(rows),
        "size": size,
        "fg_fraction": round(fg / max(bg + fg, 1), 6),
        "class_weights": [round(float(w), 6) for w in weights],
        "class_weight_clip": [float(c) for c in clip],
    }


def _import_once() -> None:
    """Import up front what the parent (discovery, class weights) and the single-process mode use,
    so the summary can report import time apart from the per-pair work. Pool workers get the same
    modules from the forkserver's preload (:func:`_start_pool`)."""
    import cv2  # noqa: F401
    from PIL import Image  # noqa: F401

    import tcnet.data.adapters  # noqa: F401
    import tcnet.data.io  # noqa: F401
    import tcnet.data.synth.writers  # noqa: F401 - discovery's check of a look-alike's folder
    import tcnet.data.transforms  # noqa: F401
    import tcnet.losses.class_weights  # noqa: F401


_WORKER_MODULES = ["cv2", "PIL.Image", "PIL.PngImagePlugin", "PIL.JpegImagePlugin",
                   "tcnet.stages.preprocess", "tcnet.utils.heap", "tcnet.data.adapters", "tcnet.data.io",
                   "tcnet.data.transforms"]


def _start_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A pool whose workers are up and have imported what they use before the first pair.

    forkserver, not fork: a worker forked from a parent whose OpenCV thread pool is alive can
    deadlock on its first OpenCV call; forkserver children start from a clean process. The server
    imports the worker modules once (preload), so each worker forks with them already loaded.
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_WORKER_MODULES)
    pool = cf.ProcessPoolExecutor(max_workers=workers, initializer=_init_worker, mp_context=ctx)
    # The first submit starts the forkserver and a first worker, and returns only once the server
    # has imported the preload (~0.3 s in a fresh process); each further submit made before a
    # worker is idle starts one more worker (a few ms each). In a thread of its own, so that the
    # parent imports and lists the files meanwhile, and its own first submit finds every worker up.
    # A failure shows again on the parent's submits.
    threading.Thread(target=_submit_quietly, args=(pool, workers), name="tcnet-preprocess-pool-start",
                     daemon=True).start()
    return pool


def _submit_quietly(pool: cf.ProcessPoolExecutor, n: int) -> None:
    try:
        for _ in range(n):
            pool.submit(int)
    except Exception:  # noqa: BLE001 -- a pool shut down meanwhile, or broken: the parent sees it itself
        pass


def run(cfg: PreprocessConfig, raw_dir: Path, out_dir: Path) -> dict:
    """Validate, resize and index ``cfg.datasets`` from ``raw_dir`` into ``out_dir`` (replaced whole).

    Returns a summary: ``{"out_dir", "seconds", "import_seconds", "images_per_s" (excluding the
    imports), "datasets": {name: {n, skipped, seconds, images_per_s}}, "skipped": [{dataset, id,
    path, problem}], "stats": stats.json's content}``.
    Raises :class:`PreprocessError` on the first bad pair (unless ``cfg.skip_invalid``).
    """
    cfg.validate()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"raw data folder {raw_dir} not found (preprocess.raw_dir / --raw)")
    workers = cfg.workers or available_cpus()  # affinity, cgroup quota, TCNET_CPUS (a pod's request)
    t_start = time.perf_counter()
    pool = _start_pool(workers) if workers > 1 else None  # the workers import while the parent does
    try:
        _import_once()
    except BaseException:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        raise
    t_imported = time.perf_counter()
    summary: dict[str, Any] = {"out_dir": str(out_dir), "datasets": {}, "skipped": []}
    manifest, stats = [], {}
    try:
        with atomic_dir(out_dir, owner="preprocess") as tmp:
            for dataset in cfg.datasets:
                t0 = time.perf_counter()
                d = tmp / dataset
                d.mkdir()
                rows, skipped, counts = _process_dataset(dataset, cfg, raw_dir, d, pool, workers)
                manifest.extend(rows)
                stats[dataset] = _dataset_stats(rows, counts, cfg.size_for(dataset), cfg.class_weight_clip)
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
    summary["stats"] = stats
    return summary


def tracked_run(params, raw_dir, out_dir, *, mlflow: Optional[bool] = None) -> dict:
    """:func:`run` on ``params.preprocess``, logged to MLflow (``tcnet/data``, nested run
    ``preprocess``; :mod:`tcnet.stages.data_tracking`) unless ``mlflow=False`` or
    ``TCNET_NO_MLFLOW=1``: the params, each dataset's pairs, skips, seconds and images/s, its
    class statistics, and the index files (manifest, skipped, stats, params). What the CLI and
    the Kubeflow component call. Returns :func:`run`'s summary."""
    from tcnet.stages.data_tracking import stage_run

    cfg = params.preprocess
    tags = {"tcnet.workers": str(cfg.workers or available_cpus()),
            "tcnet.raw_dir": str(raw_dir)}  # --raw may differ from the params' raw_dir
    with stage_run(params, "preprocess", cfg.datasets, mlflow, tags) as logger:
        summary = run(cfg, raw_dir, out_dir)
        metrics = {"pairs": sum(d["n"] for d in summary["datasets"].values()),
                   "skipped": len(summary["skipped"]), "seconds": summary["seconds"],
                   "import_seconds": summary["import_seconds"], "images_per_s": summary["images_per_s"]}
        stats = summary["stats"]
        for name, d in summary["datasets"].items():
            metrics.update({f"{name}.pairs": d["n"], f"{name}.skipped": d["skipped"], f"{name}.seconds": d["seconds"],
                            f"{name}.images_per_s": d["images_per_s"], f"{name}.fg_fraction": stats[name]["fg_fraction"]})
            metrics.update({f"{name}.class_weight.{k}": w for k, w in enumerate(stats[name]["class_weights"])})
        logger.log_metrics(metrics)
        for f in ("manifest.csv", "skipped.csv", "stats.json", "params.yaml"):
            logger.log_artifact(Path(out_dir) / f, "preprocessed")
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
    parser.add_argument("--out", default="outputs/preprocessed", help="output folder, replaced whole; a folder holding files this command did not write is refused (default: outputs/preprocessed)")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not log to MLflow (default: a run 'preprocess' in the MLflow experiment tcnet/data; "
                        "also TCNET_NO_MLFLOW=1)")


def main(args) -> int:
    from tcnet.config import load_params

    params = load_params(args.params)
    cfg = params.preprocess
    raw = Path(args.raw if args.raw is not None else cfg.raw_dir)
    summary = tracked_run(params, raw, Path(args.out), mlflow=False if args.no_mlflow else None)
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
