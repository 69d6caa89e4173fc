"""What every dataset adapter shares: ``Sample``, ``LayoutError``, the registry, mask binarisation.

An adapter recognises one dataset's official layout (``docs/datasets.md``) under a root folder,
pairs every image with its mask (and FOV mask), and refuses anything else with a
:class:`LayoutError` that shows the layout it expected, what it found, and where the files go.

    discover("drive", "data/drive") -> [Sample(id="01_test", dataset="drive", image=..., ...), ...]
    load_mask(sample) -> bool H x W          load_fov(sample, image) -> bool H x W
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

SPLITS = ("train", "val", "test", "")
SKIP_DIRS = ("__MACOSX",)  # macOS zip debris; hidden folders (".x") are skipped too


@dataclass(frozen=True)
class Sample:
    """One image/mask pair. Paths point into the raw root; ``fov`` is None where none ships."""

    id: str
    dataset: str
    image: Path
    mask: Path
    fov: Optional[Path]
    official_split: str  # train | val | test | "" (no official split)


class LayoutError(ValueError):
    """A dataset folder that does not match its official layout (message: expected, found, fix)."""


class MissingMaskError(LayoutError):
    """An image whose mask (or FOV mask) is not where the layout puts it; names the image."""


class MissingImageError(LayoutError):
    """A mask (or FOV mask) that no image claims: a partial unzip or a deleted image; names the file."""


# ----------------------------------------------------------------------------------------------
# Adapter base class and registry
# ----------------------------------------------------------------------------------------------


class Adapter:
    """One dataset. Subclasses set ``name``, ``title``, ``layout`` and implement ``find``."""

    name: str = ""
    title: str = ""
    layout: str = ""  # a short tree of the expected layout, shown in errors

    def discover(self, root) -> list[Sample]:
        root = Path(root)
        if not root.exists():
            raise self.error(root, f"folder {root} does not exist")
        if not root.is_dir():
            raise self.error(root, f"{root} is not a folder")
        from tcnet.data.synth.writers import is_synthetic, synthetic_pairs

        mixed = (f"{root} also holds SYNTHETIC.txt, the bundled look-alike: real files unpacked over it mix with it; "
                 f"remove the folder first (rm -rf {root}) and unpack the real archives into an empty one "
                 "(docs/datasets.md)")
        try:
            samples = sorted(self.find(root), key=lambda s: s.id)
        except LayoutError as e:
            if not is_synthetic(root):  # the look-alike alone always fits its layout
                raise
            raise type(e)(f"{e} -- {mixed}") from None
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise self.error(root, f"the same image id appears more than once ({', '.join(dup[:5])}); "
                             "is a split unpacked twice?")
        written = synthetic_pairs(root, self.name)
        # more pairs than the look-alike has: files that fit the layout, added to it (fewer: parts of it
        # deleted, e.g. an optional split, which mixes nothing in; real files under the look-alike's
        # own names replace it instead, which no count can see)
        if written is not None and len(samples) > written:
            raise self.error(root, f"found {len(samples)} image/mask pairs where tcnet synth wrote {written} -- {mixed}")
        return samples

    def find(self, root: Path) -> list[Sample]:  # pragma: no cover - abstract
        raise NotImplementedError

    def load_mask(self, sample: Sample) -> np.ndarray:
        return binarize_mask_file(sample.mask)

    def load_fov(self, sample: Sample, image: Optional[np.ndarray] = None) -> np.ndarray:
        """The FOV mask: the shipped file if any, else all-true at the image's size."""
        if sample.fov:
            return binarize_mask_file(sample.fov)
        h, w = image_hw(sample, image)
        return np.ones((h, w), dtype=bool)

    def error(self, root: Path, problem: str) -> LayoutError:
        return layout_error(self.name, self.title, self.layout, root, problem)


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(cls):
    """Class decorator: make ``cls`` (an :class:`Adapter`) available to :func:`get_adapter`."""
    _REGISTRY[cls.name] = cls()
    return cls


def _ensure_loaded() -> None:
    if not _REGISTRY:
        import tcnet.data.adapters  # noqa: F401  (imports every adapter module, which registers)


def list_adapters() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_adapter(name: str) -> Adapter:
    """The adapter of dataset ``name``; an unknown name raises with the valid names listed."""
    _ensure_loaded()
    if name not in _REGISTRY:
        from tcnet.config import did_you_mean

        raise ValueError(
            f"unknown dataset {name!r}{did_you_mean(name, _REGISTRY)}; valid: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def discover(dataset: str, root) -> list[Sample]:
    """Every sample of ``dataset`` under ``root`` (its official layout), sorted by id."""
    return get_adapter(dataset).discover(root)


def load_mask(sample: Sample) -> np.ndarray:
    """The ground-truth mask of ``sample`` as bool H x W (foreground = lesion / vessel)."""
    return get_adapter(sample.dataset).load_mask(sample)


def load_fov(sample: Sample, image: Optional[np.ndarray] = None) -> np.ndarray:
    """The field-of-view mask of ``sample`` as bool H x W (all true for ISIC/PH2; derived for CHASE)."""
    return get_adapter(sample.dataset).load_fov(sample, image)


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------


def binarize_mask_image(img) -> np.ndarray:
    """A PIL mask image -> bool H x W under the datasets' robust rules (docs/datasets.md):

    - mode ``1`` (1-bit): the bit;
    - mode ``P`` (palette, DRIVE ``2nd_manual``): foreground = bright palette colour, i.e.
      luminance >= 128 -- for DRIVE identical to ``index > 0`` (palette 0=(4,2,4), 1=(252,254,252)).
      Never ``convert("L") > 0``: that gives {3, 253} > 0 = every pixel a vessel. A palette whose
      colours are all dark falls back to ``index > 0``;
    - anything else: grey = ``convert("L")``; 0/1 data (max <= 1) -> ``grey > 0``, else ``grey >= 128``
      (ISIC/PH2/DRIVE 1st_manual 0/255; CHASE 1-bit or 0/255).
    """
    if img.mode == "1":
        return np.asarray(img).view(np.uint8) > 0  # Pillow's bool array of a 1-bit image holds bytes 0/255
    if img.mode == "P":
        lum = np.asarray(img.convert("L"))
        if lum.size and int(lum.max()) >= 128:
            return lum >= 128
        return np.asarray(img) > 0
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return binarize_mask_array(np.asarray(img))
    g = np.asarray(img) if img.mode == "L" else np.asarray(img.convert("L"))
    return _binarize_gray(g)


def _binarize_gray(g: np.ndarray) -> np.ndarray:
    if g.size and int(g.max()) <= 1:
        return g > 0
    return g >= 128


def binarize_mask_file(path) -> np.ndarray:
    """Read and binarise a mask file (see :func:`binarize_mask_image`); errors name the file. A TIFF
    Pillow cannot open (float, planar, ...) goes through tifffile and :func:`binarize_mask_array`."""
    from tcnet.data.io import InvalidInputError, TIFF_SUFFIXES, open_image, tifffile_samples

    try:
        img = open_image(path)
    except InvalidInputError:
        if Path(path).suffix.lower() not in TIFF_SUFFIXES:
            raise
        return binarize_mask_array(tifffile_samples(Path(path)))
    with img:
        return binarize_mask_image(img)


def binarize_mask_array(arr: np.ndarray) -> np.ndarray:
    """The masks' rule for samples as stored (16-bit and float PIL modes, a TIFF only tifffile reads,
    unscaled): one channel (:func:`tcnet.data.io.single_channel`); 0/1 data -> ``> 0``; else ``>=``
    half the range (65535 for 16-bit or values above 255, else 255)."""
    from tcnet.data.io import single_channel

    g = single_channel(arr)
    if g.size and float(g.max()) <= 1:
        return g > 0
    hi = 65535 if (arr.dtype.kind == "u" and arr.dtype.itemsize == 2) or float(g.max()) > 255 else 255
    return g >= (hi + 1) / 2


def read_mask_file(path) -> tuple[np.ndarray, np.ndarray]:
    """``(grey, mask)`` from one decode of a mask file: ``grey`` as :func:`tcnet.data.io.read_gray`
    gives it (for the preprocess stage's binary check), ``mask`` as :func:`binarize_mask_file`."""
    from tcnet.data.io import InvalidInputError, TIFF_SUFFIXES, gray_of, open_image, read_gray

    try:
        img = open_image(path)
    except InvalidInputError:
        if Path(path).suffix.lower() not in TIFF_SUFFIXES:
            raise
        return read_gray(path), binarize_mask_file(path)  # tifffile fallbacks of each
    with img:
        grey = gray_of(img, path)
        mask = _binarize_gray(grey) if img.mode == "L" else binarize_mask_image(img)
    return grey, mask


def image_hw(sample: Sample, image: Optional[np.ndarray] = None) -> tuple[int, int]:
    """(H, W) of the sample's image: from ``image`` if given, else from the file header."""
    if image is not None:
        return tuple(np.asarray(image).shape[:2])
    from PIL import Image

    from tcnet.data.io import read_image

    try:
        with Image.open(sample.image) as img:  # header only: no decode
            w, h = img.size
        return h, w
    except Exception:
        return read_image(sample.image).shape[:2]  # raises InvalidInputError naming the file


# ----------------------------------------------------------------------------------------------
# Folder helpers shared by the adapters
# ----------------------------------------------------------------------------------------------


def _visible(entry: os.DirEntry) -> bool:
    return not entry.name.startswith(".") and entry.name not in SKIP_DIRS


def _entries(folder: Path, dirs: bool) -> list[Path]:
    try:
        with os.scandir(folder) as it:
            names = sorted((e.name for e in it if _visible(e) and (e.is_dir() if dirs else e.is_file())),
                           key=os.path.normcase)
    except OSError:
        return []
    # by name (case-folded where Path compares so): the order of sorted Paths, without ~20 slow
    # Path comparisons per file
    return [folder / name for name in names]


def list_files(folder: Path) -> list[Path]:
    """Plain files directly in ``folder`` (sorted, hidden files skipped)."""
    return _entries(folder, dirs=False)


def list_dirs(folder: Path) -> list[Path]:
    """Sub-folders directly in ``folder`` (sorted, hidden and tool folders skipped)."""
    return _entries(folder, dirs=True)


def find_dirs(root: Path, names: Iterable[str], max_depth: int = 3) -> list[Path]:
    """Folders under ``root`` (``root`` itself included, depth <= ``max_depth``) whose name is one
    of ``names`` (case-insensitive), breadth first."""
    wanted = {n.lower() for n in names}
    found, level = [], [root]
    for depth in range(max_depth + 1):
        nxt = []
        for d in level:
            if d.name.lower() in wanted:
                found.append(d)
            if depth < max_depth:
                nxt.extend(list_dirs(d))
        level = nxt
    return found


def shallowest_dirs(root: Path, accept, max_depth: int) -> list[Path]:
    """The folders ``accept``-ed at the shallowest level that has any (``root`` = level 0, down to
    ``max_depth``), breadth first: where a dataset was unpacked, however deep the archive put it."""
    level = [root]
    for _ in range(max_depth + 1):
        found = [d for d in level if accept(d)]
        if found:
            return found
        level = [c for d in level for c in list_dirs(d)]
    return []


def child(folder: Path, name: str) -> Optional[Path]:
    """``folder/name`` matched case-insensitively (exact name preferred); None if absent."""
    exact = folder / name
    if exact.is_dir():
        return exact
    for d in list_dirs(folder):
        if d.name.lower() == name.lower():
            return d
    return None


def matching(files: Iterable[Path], pattern: re.Pattern) -> list[Path]:
    return [f for f in files if pattern.fullmatch(f.name)]


def pick_folder(candidates: list[Path], pattern: re.Pattern, what: str, error) -> Optional[Path]:
    """The one candidate folder holding files that match ``pattern`` (None if none does).

    Mirrors that double the folder (``X/X/*.jpg``) resolve to the inner one; two folders that both
    hold files are ambiguous and raise ``error(problem)``.
    """
    holding = [c for c in candidates if matching(list_files(c), pattern)]
    if len(holding) > 1:
        raise error(f"{what} found in more than one place ({', '.join(str(h) for h in holding)}); keep one copy")
    return holding[0] if holding else None


def describe_entries(root: Path, limit: int = 15) -> str:
    """The top-level entries of ``root`` as a short listing for error messages."""
    if not root.is_dir():
        return "(folder missing)"
    try:
        with os.scandir(root) as it:
            entries = sorted((e.name + ("/" if e.is_dir() else "")) for e in it)
    except OSError as e:
        return f"(cannot list: {e})"
    if not entries:
        return "(empty folder)"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def layout_error(dataset: str, title: str, layout: str, root: Path, problem: str) -> LayoutError:
    tree = "\n".join("    " + line for line in layout.strip("\n").splitlines())
    return LayoutError(
        f"{title or dataset}: {problem}.\n"
        f"  Expected layout (under {root}):\n{tree}\n"
        f"  Found in {root}: {describe_entries(root)}\n"
        f"  Unpack the official archives unchanged into data/{dataset}/ (or pass that folder as the "
        f"root); see docs/datasets.md. For a synthetic stand-in: tcnet synth {dataset} --out data/{dataset}"
    )


def missing_mask(dataset: str, image: Path, expected: Path, what: str = "mask") -> MissingMaskError:
    return MissingMaskError(
        f"{dataset}: no {what} for image {image}: expected {expected}. Every image needs its "
        f"ground-truth file; restore it, or remove the image if it does not belong to the dataset."
    )


def check_no_orphans(dataset: str, candidates: Iterable[Path], used: Iterable[Path], image_for) -> None:
    """Refuse a ground-truth or FOV file that no image claims (``image_for(file)``: where its image
    should be). Without this a partial unzip or a deleted image shrinks the dataset silently."""
    left = sorted(set(candidates) - set(used))
    if left:
        more = f" ({len(left) - 1} more such files)" if len(left) > 1 else ""
        raise MissingImageError(
            f"{dataset}: {left[0]} has no image: expected {image_for(left[0])}{more}. Restore the image, "
            "or remove the file if it does not belong to the dataset."
        )


__all__ = [
    "Sample", "LayoutError", "MissingMaskError", "MissingImageError", "Adapter", "register_adapter", "get_adapter",
    "list_adapters", "discover", "load_mask", "load_fov", "binarize_mask_image", "binarize_mask_file",
]
