"""Throughput of the preprocess stage against the limit of decoding + resizing the same files.

Data: an ISIC 2018 look-alike written by ``tcnet synth isic2018`` at an ISIC-like size (JPEG
1024×768 images, PNG masks), resized to 448 (the paper profile). Kept between runs in the system's
temporary folder (``--data`` to choose; ``--fresh`` to rewrite).

- candidate: the real stage, ``tcnet.stages.preprocess.run`` (isic2018 only, workers = all cores),
  wall time of the call: pool start, decoding, mask checks, resizing, checksums, ``.npy`` writing
  (into a new output folder each call, as under ``dvc repro``, which deletes outputs first);
- limit over the same files: ``tcnet.data.io.read_image`` + ``tcnet.data.transforms.resize_image``
  of each image and ``read_gray`` + ``resize_mask`` of its mask -- every file the stage decodes --
  in a ``ProcessPoolExecutor`` of ``common.cpu_count()`` workers (the stage's "all cores") with
  the stage's worker settings (its initializer: one OpenCV thread, :func:`tcnet.utils.heap.retain_freed_memory`) and chunk size,
  results dropped in the worker (a tight loop: decode + resize and nothing else); pool start
  included. The target (>= 0.9) is the stage over this limit;
- limit over the images alone: the same without the masks (the stage cannot reach it: it must
  decode every mask to check it);
- beside them, not the target's reference: the loop over the same files that also writes the
  resized arrays into their slots of new ``.npy`` files with the stage's writer (the stage's output
  bytes, ``os.pwrite``, new folder per call): what writing the output costs on this machine, and the stage over the loop plus the
  writes it cannot skip (on a VM that hands free memory back to its host, every new page-cache page
  is dear: docs/performance.md §3);
- the two limits again with the default worker settings (one OpenCV thread, glibc's allocator as
  it comes), to show what the allocator setting is worth on its own.

All run interleaved, after one warm-up each (so the files are in the page cache for all).
Images/s = N / median wall time. The full mode adds a per-step breakdown of the stage's per-pair
work (one process) and its per-run fixed costs. The synthetic data is written once (about 1-2 s
per 1024×768 image on the 2-core machine) and reused.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import shutil
import tempfile
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import Col

HELP = "preprocess stage images/s vs decode+resize of the same files on all cores"
TARGET_RATIO = 0.9
DATASET = "isic2018"


def add_arguments(p) -> None:
    p.add_argument("--n", type=int, default=None, help="images (default 160; quick 64; tiny 6)")
    p.add_argument("--image-size", default=None, help="raw image WxH (default 1024x768; tiny 256x192)")
    p.add_argument("--out-size", type=int, default=None, help="preprocessed side (default 448; tiny 64)")
    p.add_argument("--data", type=Path, default=None, help="where the synthetic raw data lives (default: a temp folder)")
    p.add_argument("--fresh", action="store_true", help="rewrite the synthetic data even if present")


def _wh(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def ensure_data(root: Path, n: int, size: tuple[int, int], fresh: bool) -> Path:
    """``root/isic2018`` holding the look-alike (written unless already there with the same spec)."""
    from tcnet.tools.synth import run as synth

    stamp = root / f".spec-{DATASET}-{n}-{size[0]}x{size[1]}"
    folder = root / DATASET
    if fresh or not stamp.exists() or not folder.is_dir():
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        common.progress(f"writing {n} synthetic {DATASET} images {size[0]}x{size[1]} to {folder}")
        t = time.perf_counter()
        synth(DATASET, folder, n=n, seed=0, size=size, force=True)
        common.progress(f"  written in {time.perf_counter() - t:.1f} s")
        stamp.touch()
    return folder


def _init_default_worker() -> None:
    """One OpenCV thread, the allocator as it comes: the worker settings before the stage's own."""
    import cv2

    cv2.setNumThreads(1)


def _decode_resize(args) -> None:
    """Decode and resize one image (and its mask); the arrays are dropped here, not sent back, or
    -- with an output folder -- written into their slots of its ``.npy`` files by the stage's own
    writer (``tcnet.stages.preprocess._slots``), as the stage's workers do."""
    from tcnet.data.io import read_gray, read_image
    from tcnet.data.transforms import resize_image, resize_mask

    path, mask_path, size, out, index = args
    image = resize_image(read_image(path), size)
    mask = resize_mask(read_gray(mask_path), size) if mask_path is not None else None
    if out is not None:
        from tcnet.stages.preprocess import _slots

        _slots(out).write(index, images=image, **({} if mask is None else {"masks": mask}))


def limit_run(paths: list[str], size: int, workers: int, mask_paths: list[str] | None = None,
              stage_settings: bool = True, write_to: Path | None = None) -> None:
    """Decode + resize every file on ``workers`` processes; ``stage_settings``: with the stage's
    worker initializer (:func:`tcnet.stages.preprocess._init_worker`), else one OpenCV thread only.
    ``write_to``: a new folder (must not exist) whose ``images.npy`` / ``masks.npy``, created full
    size as the stage creates them, each worker fills at its pairs' slots with the stage's writer:
    the stage's output bytes, without the stage's checks."""
    import numpy as np

    from tcnet.stages.preprocess import _init_worker, chunk_size

    n = len(paths)
    masks = mask_paths or [None] * n
    out = None
    if write_to is not None:
        write_to.mkdir(parents=True)
        shapes = {"images": (n, size, size, 3), **({"masks": (n, size, size)} if mask_paths else {})}
        for name, shape in shapes.items():
            np.lib.format.open_memmap(write_to / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape).flush()
        out = str(write_to)
    init = _init_worker if stage_settings else _init_default_worker
    with cf.ProcessPoolExecutor(max_workers=workers, initializer=init) as pool:
        tasks = [(p, m, size, out, i) for i, (p, m) in enumerate(zip(paths, masks))]
        for _ in pool.map(_decode_resize, tasks, chunksize=chunk_size(n, workers)):
            pass


def fault_counts(paths: list[str], mask_paths: list[str], size: int, workers: int) -> list[dict]:
    """Minor page faults and CPU time per pair of the pool's workers (``RUSAGE_CHILDREN``: the
    limit's pool forks children of this process, reaped at shutdown), with either worker setting."""
    import resource

    rows = []
    for stage_settings, label in ((False, "default (allocator as it comes)"),
                                  (True, "the stage's (tcnet.utils.heap.retain_freed_memory)")):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        limit_run(paths, size, workers, mask_paths, stage_settings=stage_settings)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        rows.append({"settings": label, "faults_per_pair": (after.ru_minflt - before.ru_minflt) / len(paths),
                     "cpu_ms_per_pair": 1000 * cpu / len(paths)})
    return rows


def _touch_worker(_):
    """What a stage worker imports before its first pair (``_process_or_raise``'s imports)."""
    import tcnet.data.adapters  # noqa: F401
    import tcnet.data.io  # noqa: F401
    import tcnet.data.transforms  # noqa: F401
    import tcnet.stages.preprocess  # noqa: F401

    return os.getpid()


def pool_start_s(workers: int) -> float:
    """Seconds to start the stage's pool (:func:`tcnet.stages.preprocess._start_pool`: forkserver,
    preloaded modules) until every worker has run a task -- paid once per run, before the first pair
    (the stage overlaps part of it with its own imports and file discovery)."""
    from tcnet.stages.preprocess import _start_pool

    t = time.perf_counter()
    pool = _start_pool(workers)
    try:
        list(pool.map(_touch_worker, range(workers)))
    finally:
        pool.shutdown(wait=True)
    return time.perf_counter() - t


def fixed_costs(out_size: int, n: int, workers: int, repeats: int) -> list[dict]:
    """The per-run costs outside the per-pair work: pool start, and creating the output arrays
    (memory-mapped ``.npy`` files the workers fill in place)."""
    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix="tcnet-bench-save-"))
    shapes = {"images": (n, out_size, out_size, 3), "masks": (n, out_size, out_size)}  # ISIC: no fov.npy

    def create():
        for name, shape in shapes.items():
            np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape).flush()

    try:
        times = common.time_interleaved({
            f"pool start (forkserver with preload, {workers} workers, first task each)": lambda: pool_start_s(workers),
            "create the output .npy memory maps (parent)": create,
        }, repeats, warmup=1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return [{"step": k, "seconds": common.median(v)} for k, v in times.items()]


def breakdown(samples, size: int, n: int) -> list[dict]:
    """Per-pair milliseconds of each step of the stage's worker, in this process (one core)."""
    import numpy as np

    from tcnet.data.adapters import load_fov
    from tcnet.data.io import read_image
    from tcnet.data.transforms import resize_image, resize_mask
    from tcnet.stages.preprocess import _fov_is_whole_image, _read_mask, file_checksum, mask_binary_problem

    acc: dict[str, float] = {}
    whole = _fov_is_whole_image(samples[0].dataset, samples[:n])  # ISIC: the stage makes no FOV array

    def tick(name, t0):
        acc[name] = acc.get(name, 0.0) + time.perf_counter() - t0

    for s in samples[:n]:
        t = time.perf_counter(); image = read_image(s.image); tick("read_image (JPEG decode)", t)
        t = time.perf_counter(); gray, mask = _read_mask(s); tick("_read_mask (PNG decode, binarise)", t)
        t = time.perf_counter(); mask_binary_problem(gray); tick("mask_binary_problem", t)
        if whole:
            full = True
        else:
            t = time.perf_counter(); fov = np.asarray(load_fov(s, image)).astype(bool, copy=False); full = fov.all()
            tick("load_fov (+ all-true check)", t)
        t = time.perf_counter(); float(np.count_nonzero(mask)) / mask.size; tick("fg fraction", t)
        t = time.perf_counter(); resize_image(image, size); tick("resize_image (area)", t)
        t = time.perf_counter()
        m = np.asarray(resize_mask(np.ascontiguousarray(mask).view(np.uint8), size)) > 0
        if not full:
            resize_mask(fov.view(np.uint8), size)
        np.count_nonzero(m)
        tick("resize_mask (mask; fov if not all-true) + counts", t)
        t = time.perf_counter(); file_checksum(s.image, s.mask); tick("sha256 (image + mask files)", t)
    total = sum(acc.values())
    rows = [{"step": k, "ms_per_pair": v / n * 1000, "pct": 100 * v / total} for k, v in acc.items()]
    rows.append({"step": "total per pair (one core)", "ms_per_pair": total / n * 1000, "pct": 100.0})
    return rows


FAULT_COLS = [Col("settings", "worker settings"), Col("faults_per_pair", "minor faults / pair", ".0f"),
              Col("cpu_ms_per_pair", "worker CPU ms / pair (start included)", ".2f")]
COLS = [Col("what", "what"), Col("seconds", "s (median)", ".3f"), Col("min_s", "min s", ".3f"),
        Col("images_per_s", "images/s", ".1f"), Col("ratio", "stage / this", ".2f")]
BREAK_COLS = [Col("step", "step of the stage's per-pair work"), Col("ms_per_pair", "ms / pair", ".2f"),
              Col("pct", "%", ".1f")]
FIXED_COLS = [Col("step", "per-run cost outside the per-pair work"), Col("seconds", "s (median)", ".3f")]


def run(args, mode: common.Mode) -> dict:
    from tcnet.config import PreprocessConfig
    from tcnet.data.adapters import discover
    from tcnet.stages.preprocess import run as preprocess_run

    n = args.n or mode.pick(6, 64, 160)
    raw_size = _wh(args.image_size) if args.image_size else mode.pick((256, 192), (1024, 768), (1024, 768))
    out_size = args.out_size or mode.pick(64, 448, 448)
    repeats = args.repeats or mode.pick(1, 3, 5)
    workers = common.cpu_count()  # what the stage's workers = 0 means (tcnet.utils.cpus)
    root = args.data or Path(tempfile.gettempdir()) / f"tcnet-bench-{os.getuid()}" / f"preprocess-{mode.name}"
    ensure_data(Path(root), n, raw_size, args.fresh)
    samples = sorted(discover(DATASET, Path(root) / DATASET), key=lambda s: s.id)
    paths = [str(s.image) for s in samples]
    mask_paths = [str(s.mask) for s in samples]
    cfg = PreprocessConfig(raw_dir=str(root), datasets=(DATASET,), image_size=out_size, workers=0)
    out_dir = Path(tempfile.mkdtemp(prefix="tcnet-bench-preprocess-out-"))
    summaries = []

    def stage():
        # A new output folder per call, as under `dvc repro` (DVC deletes a stage's outputs before
        # running it): replacing the previous call's 96 MB would add ~35 ms of unlinking to the call.
        summaries.append(preprocess_run(cfg, Path(root), out_dir / f"preprocessed-{len(summaries)}"))

    writes = []

    def limit_with_writes():
        # A new folder per call, kept to the end, as the stage's outputs are.
        writes.append(out_dir / f"written-{len(writes)}")
        limit_run(paths, out_size, workers, mask_paths, write_to=writes[-1])

    candidates = {
        "stage": (f"preprocess stage (tcnet.stages.preprocess.run, {workers} workers)", stage),
        "limit_files": (f"limit, same files: image + mask decode and resize, pool of {workers}, stage's worker settings",
                        lambda: limit_run(paths, out_size, workers, mask_paths)),
        "limit_files_write": ("same files, decode + resize + write the resized arrays into new files (the stage's "
                              "output bytes), same pool", limit_with_writes),
        "limit_images": ("limit, images alone: image decode and resize, same pool",
                         lambda: limit_run(paths, out_size, workers)),
        "limit_files_default": ("limit, same files, default worker settings (allocator as it comes)",
                                lambda: limit_run(paths, out_size, workers, mask_paths, stage_settings=False)),
        "limit_images_default": ("limit, images alone, default worker settings",
                                 lambda: limit_run(paths, out_size, workers, stage_settings=False)),
    }
    try:
        common.progress(f"timing stage vs limits, {len(paths)} images, {workers} workers (interleaved)")
        times = common.time_interleaved({k: fn for k, (_, fn) in candidates.items()}, repeats,
                                        warmup=mode.warmup())
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    n_img = len(paths)
    faults = fault_counts(paths, mask_paths, out_size, workers)
    rows = []
    for key, (what, _) in candidates.items():
        st = common.stats(times[key])
        rows.append({"key": key, "what": what, "seconds": st["median_s"], "min_s": st["min_s"],
                     "images_per_s": n_img / st["median_s"], "times_s": st})
    by = {r["key"]: r for r in rows}
    for r in rows:
        r["ratio"] = by["stage"]["images_per_s"] / r["images_per_s"]
    ratio = by["limit_files"]["ratio"]
    ratio_images = by["limit_images"]["ratio"]
    ratio_write = by["limit_files_write"]["ratio"]
    write_cost = by["limit_files_write"]["seconds"] - by["limit_files"]["seconds"]
    out_mb = n_img * out_size * out_size * 4 / 1e6
    common.print_table(
        f"## preprocess: {n_img} {DATASET} look-alike pairs, JPEG {raw_size[0]}x{raw_size[1]} -> {out_size}², "
        f"median of {repeats} (wall time); 'stage / this' = the stage's images/s over the row's", COLS, rows)
    common.print_table("## minor page faults per pair in the workers, decode loop over the same files (one run each)",
                       FAULT_COLS, faults)
    stage_own = [s["images_per_s"] for s in summaries]
    common.say(f"the stage's own images_per_s (excludes its imports): median "
               f"{sorted(stage_own)[len(stage_own) // 2]:.1f}")
    tables = {"throughput": rows, "page_faults": faults}
    if mode.full or mode.tiny:
        k = min(len(samples), mode.pick(2, 16, 24))
        common.progress(f"per-step breakdown over {k} pairs (one process)")
        br = breakdown(samples, out_size, k)
        common.print_table(f"## where a pair's time goes (one core, mean of {k} pairs)", BREAK_COLS, br)
        tables["breakdown"] = br
        common.progress("per-run fixed costs")
        fixed = fixed_costs(out_size, n_img, workers, mode.pick(1, 3, 3))
        common.print_table(f"## per-run costs of the stage outside the per-pair work ({n_img} pairs)", FIXED_COLS,
                           fixed)
        tables["fixed_costs"] = fixed
    common.say("")
    common.say(f"writing the stage's {out_mb:.1f} MB of output adds {write_cost:.3f} s to the loop over the same files "
               f"on this machine; the stage over decode + resize + write: {ratio_write:.2f}x (what the stage adds "
               f"beyond the writes it cannot skip)")
    common.say(f"stage over the images-alone limit (no mask decoded; out of reach for a stage that checks masks): "
               f"{ratio_images:.2f}x")
    common.say(common.summary_line("preprocess images/s over the decode+resize limit of the same files", ratio,
                                   TARGET_RATIO))
    return {
        "settings": {"dataset": DATASET, "n": n_img, "raw_size": list(raw_size), "out_size": out_size,
                     "workers": workers, "repeats": repeats, "data": str(root)},
        "tables": tables,
        "summary": {"metric": "preprocess stage images/s / decode+resize of the same files (images and masks) "
                              "on all cores, images/s",
                    "value": ratio, "target": TARGET_RATIO, "met": common.verdict(ratio, TARGET_RATIO),
                    "ratio_vs_images_alone": ratio_images, "ratio_vs_decode_resize_write": ratio_write,
                    "output_write_s": write_cost},
        "notes": [],
    }
