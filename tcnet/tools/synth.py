"""``tcnet synth``: write a deterministic synthetic look-alike of a dataset in its official layout.

    tcnet synth drive --out data/drive                 # one dataset, straight into the folder
    tcnet synth all --out data                         # every dataset, into data/<dataset>/
    tcnet synth isic2018 --out /tmp/isic --n 200 --size 384x288 --seed 7

The same (dataset, --n, --size, --seed) always gives byte-identical files; ``tcnet synth all --out
data`` with the defaults reproduces the DVC-tracked demo data exactly. Look-alikes imitate the
layout, names, formats and encodings of the real datasets; they are not real data, and results on
them are not the paper's (docs/datasets.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tcnet.config import DATASETS

ALL = "all"


def parse_size(text: str) -> tuple[int, int]:
    """``"WxH"`` -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 192x144, got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError(f"image size must be at least 16x16, got {text!r}")
    return w, h


def add_arguments(parser) -> None:
    from tcnet.data.synth.writers import DEFAULT_SEED, SPECS

    defaults = "; ".join(f"{d}: n={s.n} ({s.n_help}), {s.size[0]}x{s.size[1]}" for d, s in SPECS.items())
    parser.add_argument("dataset", choices=[*DATASETS, ALL],
                        help=f"which look-alike to write; '{ALL}' writes OUT/<dataset>/ for each")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder (the dataset root, e.g. data/drive; with 'all' the parent, e.g. data)")
    parser.add_argument("--n", type=int, default=None, help=f"number of images (defaults -- {defaults})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--size", type=parse_size, default=None, metavar="WxH",
                        help="image size, width x height (default: per dataset, see --n)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier look-alike in the output folder (otherwise refused); a folder "
                        "holding anything else (real data, other datasets, other files) is always refused")


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def run(dataset: str, out: Path, n=None, seed: int = 0, size=None, force: bool = False) -> dict[str, Path]:
    """Write the look-alike(s); each dataset folder appears whole or not at all. Returns {dataset: folder}."""
    from tcnet.cli import CliError
    from tcnet.data.synth.writers import SYNTHETIC_MARKER, is_synthetic, write_dataset
    from tcnet.utils.atomic import atomic_dir

    out = Path(out)
    targets = {d: out / d for d in DATASETS} if dataset == ALL else {dataset: out}
    from tcnet.data.synth.writers import SPECS

    for d, folder in targets.items():
        if n is not None and not 1 <= n <= SPECS[d].n_max:  # checked for all before writing any
            raise CliError(f"--n {n}: {d} takes 1..{SPECS[d].n_max} ({SPECS[d].n_help})")
        if folder.exists() and not folder.is_dir():
            raise CliError(f"{folder} exists and is not a folder")
        if folder.is_dir() and any(folder.iterdir()):
            if not is_synthetic(folder):  # real data, other datasets (the parent), one's own files: never
                found = ", ".join(sorted(p.name for p in folder.iterdir())[:3])
                hint = (f"; '{ALL}' writes each dataset into its own folder under --out" if dataset == ALL else
                        f" (--out is the dataset's own folder, e.g. {folder / d}, not the parent of several)")
                raise CliError(f"{folder} holds files that are not a look-alike 'tcnet synth' wrote ({found}; no "
                               f"{SYNTHETIC_MARKER}); --force replaces only an earlier look-alike: remove or move "
                               f"the folder yourself, or name another{hint}")
            if not force:
                raise CliError(f"{folder} already holds a look-alike; pass --force to replace it with the {d} "
                               "look-alike")
    for d, folder in targets.items():
        with atomic_dir(folder, owner=None) as tmp:  # checked above (--force), and no mark in the data
            write_dataset(d, tmp, n=n, seed=seed, size=size)
    return targets


def main(args) -> int:
    t0 = time.perf_counter()
    targets = run(args.dataset, args.out, n=args.n, seed=args.seed, size=args.size, force=args.force)
    for d, folder in targets.items():
        n_files = sum(1 for p in folder.rglob("*") if p.is_file())
        print(f"{d}: {n_files} files, {_size_mb(folder):.2f} MB -> {folder}")
    print(f"synthetic look-alikes (seed {args.seed}) written in {time.perf_counter() - t0:.1f} s; "
          "not real data: results on them are not the paper's")
    return 0
