"""What a trained run depends on besides its configuration: the training code and the training inputs.

A run's ``config_hash`` (:meth:`tcnet.config.RunSpec.config_hash`) covers its resolved settings
only. Under ``dvc repro`` the train stage also re-runs when the model code or the preprocessed data
change, and it must not then keep a finished run, or resume one, trained by other code or on other
data. The train stage records both hashes below in ``run.json`` and every checkpoint, and trains a
run afresh when either differs (docs/training.md, "Resume").

* :func:`code_hash` -- the sources that decide what training computes: the models, losses, the
  training loop, the dataset and its augmentation, the train stage itself.
* :func:`inputs_hash` -- one dataset's preprocessed arrays, its manifest rows, its split file and
  its class weights: everything a run reads from the ``preprocess`` and ``split`` outputs.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Iterable

# Paths inside the tcnet package (folders: their *.py files) whose change changes a trained model.
# metrics: the validation Dice picks best.pt's epoch
TRAINING_CODE = ("models", "losses", "training", "metrics", "data/dataset.py", "data/transforms.py", "stages/train.py")
PACKAGE = Path(__file__).resolve().parent


def _short(h) -> str:
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def code_hash(parts: tuple[str, ...] = TRAINING_CODE, root: Path = PACKAGE) -> str:
    """sha256 (16 hex digits) of the sources under ``parts`` of ``root`` (the tcnet package), names and
    bytes (cached per process: the code a process runs does not change under it)."""
    files: set[Path] = set()
    for part in parts:
        path = root / part
        if path.is_dir():
            files.update(p for p in path.rglob("*.py") if "__pycache__" not in p.parts)
        elif path.is_file():
            files.add(path)
        else:
            raise FileNotFoundError(f"{path}: listed in tcnet.fingerprint.TRAINING_CODE but missing")
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return _short(h)


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of one file; cached by (path, size, mtime) so that the runs of one dataset hash its arrays once."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_hash(paths: Iterable[Path], root: Path) -> str:
    """sha256 (16 hex) over each file's name relative to ``root`` and its content digest."""
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        st = p.stat()
        h.update(p.relative_to(root).as_posix().encode() + b"\0"
                 + _file_digest(str(p.resolve()), st.st_size, st.st_mtime_ns).encode() + b"\0")
    return _short(h)


def inputs_hash(preprocessed_dir, splits_dir, dataset: str) -> str:
    """sha256 (16 hex) of what a run on ``dataset`` reads: ``<preprocessed>/<dataset>/*``, the dataset's
    rows of ``manifest.csv``, its class weights and their clip in ``stats.json`` and ``<splits>/<dataset>.json``."""
    from tcnet.data.dataset import read_manifest

    pre, splits = Path(preprocessed_dir), Path(splits_dir)
    arrays = [p for p in (pre / dataset).iterdir() if p.is_file()] if (pre / dataset).is_dir() else []
    split_file = splits / f"{dataset}.json"
    manifest = read_manifest(pre)
    rows = manifest[manifest["dataset"] == dataset].to_csv(index=False)
    try:
        stats = json.loads((pre / "stats.json").read_text()).get(dataset, {})
    except (OSError, ValueError):
        stats = {}
    h = hashlib.sha256()
    h.update(files_hash(arrays, pre).encode() + b"\0")
    h.update((files_hash([split_file], splits) if split_file.is_file() else "").encode() + b"\0")
    h.update(rows.encode() + b"\0")
    # the clip too: a run's class weights come from its own images' counts (manifest rows) and the clip
    h.update(json.dumps([stats.get("class_weights"), stats.get("class_weight_clip")]).encode())
    return _short(h)


__all__ = ["TRAINING_CODE", "code_hash", "files_hash", "inputs_hash"]
