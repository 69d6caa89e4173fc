"""Folder trees handed between Kubeflow tasks: merged evaluation folders, a preprocess output's index.

A Kubeflow task downloads every input artifact whole before it starts, so the pipeline hands each
task only what it reads (docs/deploy.md, "Data traffic"): evaluate and split get a preprocess
output's *index* (its manifest, kilobytes; they read nothing else of it), not its arrays
(gigabytes); compare gets the evaluation folders of every run, merged from several loops.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

# A preprocess output but its arrays: split and evaluate read manifest.csv alone; the statistics and
# settings come along (bytes) so that the index describes its dataset whole.
INDEX_FILES = ("manifest.csv", "stats.json", "params.yaml")


class TreeClashError(ValueError):
    """Two source trees hold the same file with different bytes."""


def copy_index(preprocessed_dir, index_dir) -> Path:
    """Copy the :data:`INDEX_FILES` that ``preprocessed_dir`` has into ``index_dir`` (created);
    ``manifest.csv`` must be there. Returns ``index_dir``."""
    src, dst = Path(preprocessed_dir), Path(index_dir)
    if not (src / "manifest.csv").is_file():
        raise FileNotFoundError(f"{src / 'manifest.csv'} not found: not a preprocess output folder")
    dst.mkdir(parents=True, exist_ok=True)
    for name in INDEX_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    return dst


def merge_trees(dst, *sources, pattern: str = "*", min_depth: int = 1) -> Path:
    """Copy every file of every source folder (those matching ``pattern``, a ``Path.rglob``
    pattern, at least ``min_depth`` path parts below the source) into ``dst`` at the same relative
    path (``None`` sources are skipped). The same file from two sources is copied once; the same path with
    different bytes raises :class:`TreeClashError` naming both (two runs wrote one run's folder:
    a merged tree must never keep one of them silently). Returns ``dst``."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    origin: dict[Path, Path] = {}
    for src in sources:
        if src is None:
            continue
        src = Path(src)
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: not a folder")
        for path in sorted(p for p in src.rglob(pattern) if p.is_file()):
            rel = path.relative_to(src)
            if len(rel.parts) < min_depth:
                continue
            target = dst / rel
            if target.exists():
                if not filecmp.cmp(path, target, shallow=False):
                    first = origin.get(rel, dst) / rel
                    raise TreeClashError(f"{rel}: {first} and {path} differ; each run's files must come from one task")
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            origin[rel] = src
    return dst


def merge_evaluations(dst, *sources) -> Path:
    """:func:`merge_trees` of evaluation folders, their run folders (``<experiment>/<run_id>/...``)
    only: an evaluate task's ``<experiment>/summary.json`` covers its own run alone, so a merged tree
    leaves those partial summaries out (compare reads the run folders; ``tcnet evaluate`` over all
    runs writes the whole summary)."""
    return merge_trees(dst, *sources, min_depth=3)


__all__ = ["INDEX_FILES", "TreeClashError", "copy_index", "merge_evaluations", "merge_trees"]
