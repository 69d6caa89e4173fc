"""Code and inputs hashes: what changes them, and what does not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tcnet.fingerprint import TRAINING_CODE, code_hash, files_hash, inputs_hash


def _tree(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "models" / "net.py").write_text("x = 1\n")
    (root / "models" / "__pycache__").mkdir()
    (root / "models" / "__pycache__" / "net.cpython-311.pyc").write_bytes(b"\0junk")
    (root / "stages").mkdir()
    (root / "stages" / "train.py").write_text("y = 2\n")
    (root / "stages" / "evaluate.py").write_text("z = 3\n")
    return root


def test_code_hash_follows_the_listed_sources_only(tmp_path):
    root = _tree(tmp_path / "a")
    parts = ("models", "stages/train.py")
    h = code_hash(parts, root)
    assert len(h) == 16 and h == code_hash(parts, _tree(tmp_path / "b"))  # same sources, same hash
    (root / "stages" / "evaluate.py").write_text("z = 4\n")  # not listed
    (root / "models" / "__pycache__" / "net.cpython-311.pyc").write_bytes(b"other")  # bytecode
    code_hash.cache_clear()
    assert code_hash(parts, root) == h
    (root / "models" / "net.py").write_text("x = 2\n")
    code_hash.cache_clear()
    assert code_hash(parts, root) != h
    (root / "models" / "net.py").write_text("x = 1\n")
    (root / "models" / "extra.py").write_text("")  # a new module in a listed folder
    code_hash.cache_clear()
    assert code_hash(parts, root) != h


def test_code_hash_names_a_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.py"):
        code_hash(("nothing.py",), tmp_path)


def test_the_package_lists_existing_training_sources():
    h = code_hash()
    assert len(h) == 16 and h == code_hash(TRAINING_CODE)


def _preprocessed(root: Path) -> tuple[Path, Path]:
    pre, splits = root / "pre", root / "splits"
    for name, n in (("a", 3), ("b", 2)):
        (pre / name).mkdir(parents=True)
        np.save(pre / name / "images.npy", np.zeros((n, 4, 4, 3), np.uint8))
        np.save(pre / name / "masks.npy", np.zeros((n, 4, 4), np.uint8))
    splits.mkdir()
    for name in ("a", "b"):
        (splits / f"{name}.json").write_text(json.dumps({"dataset": name, "folds": [{"train": ["0"], "val": []}]}))
    rows = ["dataset,id,index"] + [f"a,a{i},{i}" for i in range(3)] + [f"b,b{i},{i}" for i in range(2)]
    (pre / "manifest.csv").write_text("\n".join(rows) + "\n")
    (pre / "stats.json").write_text(json.dumps({"a": {"class_weights": [1.0, 2.0]}, "b": {"class_weights": [1.0, 3.0]}}))
    return pre, splits


def _manifest_columns_ok(pre: Path) -> bool:
    from tcnet.data.dataset import read_manifest

    try:
        read_manifest(pre)
    except Exception:  # noqa: BLE001 -- the fake manifest lacks columns the real reader wants
        return False
    return True


@pytest.fixture
def pre_splits(tmp_path, monkeypatch):
    pre, splits = _preprocessed(tmp_path)
    if not _manifest_columns_ok(pre):  # read the fake manifest with pandas as it is
        import pandas as pd

        import tcnet.data.dataset as dataset

        monkeypatch.setattr(dataset, "read_manifest", lambda d: pd.read_csv(Path(d) / "manifest.csv", dtype=str))
    return pre, splits


def test_inputs_hash_changes_with_what_a_run_reads(pre_splits):
    pre, splits = pre_splits
    h = inputs_hash(pre, splits, "a")
    assert len(h) == 16 and h == inputs_hash(pre, splits, "a") and h != inputs_hash(pre, splits, "b")

    def changed(edit) -> bool:
        before = inputs_hash(pre, splits, "a")
        edit()
        return inputs_hash(pre, splits, "a") != before

    images = pre / "a" / "images.npy"
    stat = images.stat()
    assert changed(lambda: np.save(images, np.ones((3, 4, 4, 3), np.uint8)))  # other pixels
    assert changed(lambda: (splits / "a.json").write_text("{}"))  # another split
    stats = json.loads((pre / "stats.json").read_text())
    assert changed(lambda: (pre / "stats.json").write_text(json.dumps({**stats, "a": {"class_weights": [1, 5]}})))
    assert changed(lambda: np.save(pre / "a" / "fov.npy", np.ones((3, 4, 4), np.uint8)))  # a new array
    # another dataset's arrays, split, rows and weights are not this run's inputs
    assert not changed(lambda: np.save(pre / "b" / "images.npy", np.ones((2, 4, 4, 3), np.uint8)))
    assert not changed(lambda: (splits / "b.json").write_text("{}"))
    assert not changed(lambda: (pre / "stats.json").write_text(json.dumps({**stats, "a": {"class_weights": [1, 5]},
                                                                            "b": {"class_weights": [9, 9]}})))
    assert stat.st_size > 0


def test_files_hash_reads_a_rewritten_file_again(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"one")
    h = files_hash([f], tmp_path)
    f.write_bytes(b"two")  # same size: the mtime tells the cache it is another file
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1_000_000))
    assert files_hash([f], tmp_path) != h


def test_every_training_source_is_a_dependency_of_the_train_stage():
    """DVC re-runs train@<exp> when a dependency changes; the stage then retrains by code hash. A
    source in the hash but not in the stage's deps would never get the stage re-run."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    deps = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["train"]["do"]["deps"]
    for part in TRAINING_CODE + ("../fingerprint.py",):
        path = (Path("tcnet") / part).as_posix().replace("tcnet/../", "tcnet/")
        assert any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps), (path, deps)
