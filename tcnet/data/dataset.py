"""Training-side data access: the preprocessed arrays as a torch ``Dataset``, plus split helpers.

* :func:`read_manifest` -- ``<preprocessed>/manifest.csv`` as a DataFrame (ids stay strings).
* :func:`load_split` / :func:`ids_for` -- ``<splits>/<dataset>.json`` and the ids of one part.
* :class:`SegmentationDataset` -- items ``{"image", "mask", "fov", "id"}`` read from the
  memory-mapped ``.npy`` arrays, so DataLoader workers share the page cache instead of copying.

Augmentation is deterministic per item: the random seed of item ``i`` in epoch ``e`` is derived
from ``(seed, e, i)`` only, so a batch is the same whatever the worker count or the order in which
workers fetch items. Call :meth:`SegmentationDataset.set_epoch` before each epoch; the epoch lives
in shared memory, so persistent DataLoader workers see it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

MANIFEST_COLUMNS = (
    "id", "dataset", "index", "official_split", "image_path", "mask_path", "fov_path",
    "orig_width", "orig_height", "fg_fraction", "fov_pixels", "fg_pixels", "checksum",
)
_STR_COLUMNS = ("id", "dataset", "official_split", "image_path", "mask_path", "fov_path", "checksum")
_NUMBER_COLUMNS = {"index": "int64", "orig_width": "int64", "orig_height": "int64", "fg_fraction": "float64",
                   "fov_pixels": "int64", "fg_pixels": "int64"}
PARTS = ("train", "val", "test")


def load_npy(path) -> np.ndarray:
    """A preprocessed ``.npy`` array, memory-mapped read-only; a damaged file is named in the error."""
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable .npy array ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                         "re-run the preprocess stage") from None


def load_arrays(dataset_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images, masks, fov)`` of one preprocessed dataset folder, memory-mapped (read-only).

    ``fov.npy`` exists only where the field of view is smaller than the image (DRIVE, CHASE_DB1);
    without it every pixel is in view (ISIC, PH2) and ``fov`` is a read-only all-ones view of the
    masks' shape, which costs no memory.
    """
    d = Path(dataset_dir)
    images, masks = (load_npy(d / f"{n}.npy") for n in ("images", "masks"))
    fov_path = d / "fov.npy"
    fov = load_npy(fov_path) if fov_path.is_file() else np.broadcast_to(np.uint8(1), masks.shape)
    return images, masks, fov


def _check_arrays(folder: Path, image_shape: tuple, partial_fov: int) -> None:
    """masks.npy (and fov.npy) of ``folder`` match images.npy's N x S x S; fov.npy is there when
    ``partial_fov`` images (manifest.csv's ``fov_pixels``) have a field of view smaller than the
    image: without it every pixel would silently count as in view (a partial pull, say)."""
    want = tuple(image_shape[:3])
    for name in ("masks", "fov"):
        path = folder / f"{name}.npy"
        if name == "fov" and not path.is_file():
            if partial_fov:
                raise ValueError(f"{path}: missing, but {partial_fov} image(s) of manifest.csv have a field of view "
                                 "smaller than the image; pull the preprocessed data again or re-run preprocess")
            continue
        shape = tuple(load_npy(path).shape)
        if shape != want:
            raise ValueError(f"{path}: shape {shape}, but images.npy holds {want} (N x S x S); re-run preprocess")


def read_manifest(preprocessed_dir) -> "pandas.DataFrame":  # noqa: F821
    """``manifest.csv`` of a preprocess output folder; string columns keep "" (never NaN)."""
    import pandas as pd

    path = Path(preprocessed_dir) / "manifest.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run 'tcnet preprocess' first (or pass the right folder)")
    rewrite = "run 'tcnet preprocess' again to rewrite it"
    try:
        df = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable manifest ({str(e).strip().splitlines()[0]}); {rewrite}") from None
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(MANIFEST_COLUMNS)}")
    for column, kind in _NUMBER_COLUMNS.items():  # the row and the value, not pandas' "invalid literal"
        values = pd.to_numeric(df[column], errors="coerce")
        bad = values.isna() | ((values % 1 != 0) if kind == "int64" else False)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            raise ValueError(f"{path}: line {row + 2}, column {column}: {df[column].iloc[row]!r} is not "
                             f"{'an integer' if kind == 'int64' else 'a number'}; {rewrite}")
        df[column] = values.astype(kind)
    return df


def load_split(splits_dir, dataset: str) -> dict:
    """``<splits_dir>/<dataset>.json`` as written by the split stage."""
    path = Path(splits_dir) / f"{dataset}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run 'tcnet split' first (or pass the right folder)")
    try:
        split = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not (isinstance(split, dict) and isinstance(split.get("folds"), list) and isinstance(split.get("test"), list)):
        raise ValueError(f"{path}: expected {{'dataset', 'source', 'seed', 'folds': [...], 'test': [...]}}")
    return split


def ids_for(split: dict, part: str, fold: int = 0) -> list[str]:
    """Ids of ``part`` (train | val | test); train/val come from ``split["folds"][fold]``."""
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; valid: {', '.join(PARTS)}")
    if part == "test":
        return list(split["test"])
    folds, name = split["folds"], split.get("dataset", "this dataset")
    if not folds:
        raise ValueError(f"{name} has no folds (a test-only set): only part 'test' exists")
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} does not exist for {name}; valid: 0..{len(folds) - 1}")
    return list(folds[fold][part])


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of item ``index`` in ``epoch``: a function of the three numbers only."""
    ss = np.random.SeedSequence([int(seed) % 2**32, int(epoch) % 2**32, int(index) % 2**32])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


class SegmentationDataset(Dataset):
    """Preprocessed images of ``dataset`` restricted to ``ids`` (in that order).

    Items: ``image`` float32 3xSxS (``transforms.normalize``), ``mask`` float32 1xSxS in {0, 1},
    ``fov`` float32 1xSxS in {0, 1}, ``id`` str. With ``augment`` the image, mask and FOV get the same
    geometric transform (``transforms.build_augment``, with ``augment_options``: its ``shift``,
    ``scale``, ``p``), seeded per item by :func:`item_seed`.
    """

    def __init__(self, preprocessed_dir, dataset: str, ids: Sequence[str], augment: bool, seed: int = 0,
                 augment_options: Optional[dict] = None):
        self.root = Path(preprocessed_dir)
        self.dataset = dataset
        self.ids = [str(i) for i in ids]
        self.augment = bool(augment)
        self.augment_options = dict(augment_options or {})
        self.seed = int(seed)
        manifest = read_manifest(self.root)
        rows = manifest[manifest["dataset"] == dataset]
        if rows.empty:
            present = ", ".join(sorted(manifest["dataset"].unique()))
            raise ValueError(f"dataset {dataset!r} is not in {self.root / 'manifest.csv'} (present: {present})")
        index_of = dict(zip(rows["id"], rows["index"]))
        unknown = [i for i in self.ids if i not in index_of]
        if unknown:
            raise ValueError(
                f"{len(unknown)} id(s) not in the preprocessed {dataset} data ({self.root}), "
                f"e.g. {', '.join(unknown[:5])}"
                " -- were the splits made from another preprocess run?"
            )
        self.indices = np.array([index_of[i] for i in self.ids], dtype=np.int64)
        folder = self.root / dataset
        images = load_npy(folder / "images.npy")
        n = len(images)
        if len(rows) != n or (len(self.indices) and self.indices.max() >= n):
            raise ValueError(f"{folder}: arrays hold {n} images but the manifest lists {len(rows)}")
        _check_arrays(folder, images.shape, int((rows["fov_pixels"] < images.shape[1] * images.shape[2]).sum()))
        # Shared memory: set_epoch in the main process reaches (persistent) DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._arrays = None
        self._aug = None

    # -- lazily opened per process, never pickled (a pickled memmap would copy the data) --------
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None
        state["_aug"] = None
        return state

    def _open(self):
        if self._arrays is None:
            self._arrays = load_arrays(self.root / self.dataset)
        return self._arrays

    def _augmenter(self):
        if self._aug is None:
            from tcnet.data.transforms import build_augment

            self._aug = build_augment(True, **self.augment_options)
        return self._aug

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentations of ``epoch`` (call before iterating over the epoch)."""
        self._epoch.fill_(int(epoch))

    @property
    def image_size(self) -> int:
        return int(self._open()[0].shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        from tcnet.data.transforms import normalize

        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = i % len(self)
        images, masks, fovs = self._open()
        k = int(self.indices[i])
        image, mask, fov = np.array(images[k]), np.array(masks[k]), np.array(fovs[k])
        if self.augment:
            aug = self._augmenter()
            aug.set_random_seed(item_seed(self.seed, self.epoch, i))
            out = aug(image=image, mask=mask, fov=fov)
            image, mask, fov = out["image"], out["mask"], out["fov"]
        image = np.asarray(normalize(np.ascontiguousarray(image)), dtype=np.float32)  # 3 x S x S
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)),
            "mask": torch.from_numpy((np.asarray(mask) > 0).astype(np.float32)[None]),
            "fov": torch.from_numpy((np.asarray(fov) > 0).astype(np.float32)[None]),
            "id": self.ids[i],
        }

    def __repr__(self) -> str:
        return (
            f"SegmentationDataset({self.dataset!r}, n={len(self)}, augment={self.augment}"
            # the amounts as given (the rest: build_augment's defaults), so a log line tells runs apart
            + "".join(f", {k}={v!r}" for k, v in sorted(self.augment_options.items()) if self.augment)
            + f", seed={self.seed}, root={str(self.root)!r})"
        )


__all__ = ["SegmentationDataset", "read_manifest", "load_split", "ids_for", "item_seed", "MANIFEST_COLUMNS"]
