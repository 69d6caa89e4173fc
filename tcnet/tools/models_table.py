"""``tcnet models``: every registered model with its parameters (M) and GFLOPs at ``--size``.

GFLOPs: one forward of one image, 1 multiply-add = 2 FLOPs, large kernels counted as the direct
convolution (see :mod:`tcnet.models.flops`). Models are built on the ``meta`` device: no compute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=448, help="square input side, a multiple of 32 (default 448)")
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="alone: print the table as JSON instead (as 'tcnet experiments --json'); with PATH: "
                        "print the table and write it as JSON to PATH")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME", help="only these models (default: all)")


def table(rows: list[dict]) -> str:
    lines = [f"{'model':<12} {'params (M)':>11} {'GFLOPs':>10}", "-" * 35]
    # from the exact counts: params_m is already rounded to 3 decimals, and rounding twice can miss
    # (26,965,249 -> 26.965 -> "26.96")
    lines += [f"{r['model']:<12} {r['params'] / 1e6:>11.2f} {r['flops'] / 1e9:>10.2f}" for r in rows]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from tcnet.models.flops import model_complexity
    from tcnet.models.registry import list_models

    if args.size <= 0 or args.size % 32:
        raise ValueError(f"--size must be a positive multiple of 32, got {args.size}")
    to_file = args.json not in (None, "-")
    if to_file:  # before the models are counted, not after the table
        from tcnet.tools.out_file import check_out_file

        check_out_file(Path(args.json), "--json")
    names = args.models or list_models()
    rows = [model_complexity(n, args.size) for n in names]
    text = json.dumps({"size": args.size, "models": rows}, indent=2) + "\n"
    if args.json == "-":
        print(text, end="")
        return 0
    print(f"models at {args.size}x{args.size}, batch 1, forward (GFLOPs: 1 multiply-add = 2 FLOPs)")
    print(table(rows))
    if to_file:
        from tcnet.utils.atomic import atomic_write

        with atomic_write(args.json) as f:
            f.write(text)
        print(f"wrote {args.json}")
    return 0
