"""Stage ``split``: train/val/test lists and cross-validation folds, one JSON per dataset.

Reads ``<preprocessed>/manifest.csv`` (ids and official splits) and writes ``<out>/<dataset>.json``
in nnU-Net's ``splits_final.json`` shape plus a test list::

    {"dataset": "drive", "source": "<how the split was made, in words>", "seed": 42,
     "folds": [{"train": [ids], "val": [ids]}, ...], "test": [ids]}

Conventions per dataset (``docs/stages-data.md``):

* ``isic2017``  official train / validation / test; one fold.
* ``isic2018``  seeded ``KFold(cv_folds, shuffle=True)`` over the official training images;
  test = the official test ids when present, else [] (the official validation images are not used).
* ``ph2``       no folds; every image is a test image (ISIC 2017 -> PH2 transfer).
* ``drive``     official 20/20: test = official test; one fold whose val is a seeded
  ``retina_val_fraction`` hold-out of the official training images (checkpoint selection).
* ``chase_db1`` first 20 sorted images train / last 8 test; same val hold-out rule.

Ids are sorted inside every list and the JSON is written with fixed formatting, so a re-run with the
same inputs and seed gives the same bytes. A user split (``split.split_files[dataset]``) is validated
and copied byte for byte. Outputs are replaced atomically; files of datasets not re-split in this run
are carried over unchanged when ``datasets`` is given (a full run rewrites the folder).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from tcnet.config import DATASETS, SplitConfig, check_choice, n_folds, to_dict
from tcnet.utils.atomic import atomic_dir



class SplitError(ValueError):
    """A split that cannot be made or a user split file that does not fit; says how to fix it."""


# ----------------------------------------------------------------------------------------------
# Split rules
# ----------------------------------------------------------------------------------------------


def holdout(ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded hold-out: ``(train, val)``, ``val`` = ``round(fraction * n)`` ids (at least 1 when
    ``fraction > 0`` and n >= 2). Uses the legacy ``RandomState`` stream, stable across NumPy versions."""
    ids = sorted(ids)
    n_val = int(round(fraction * len(ids)))
    if fraction > 0 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    else:
        n_val = 0
    order = np.random.RandomState(seed).permutation(len(ids))
    val = {ids[i] for i in order[:n_val]}
    return [i for i in ids if i not in val], sorted(val)


def _by_split(rows) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"train": [], "val": [], "test": [], "": []}
    for r in rows:
        out.setdefault(r["official_split"], []).append(r["id"])
    return {k: sorted(v) for k, v in out.items()}


def _split_isic2017(ids, by, cfg):
    train, val, test = by["train"], by["val"], by["test"]
    if not train or not val:
        raise SplitError(
            "isic2017: the official split needs training and validation images "
            f"(found train {len(train)}, val {len(val)}, test {len(test)}); "
            "put ISIC-2017_Training_* and ISIC-2017_Validation_* under the raw folder "
            "or supply split.split_files.isic2017"
        )
    source = (
        f"official ISIC 2017 Part 1 split: train {len(train)} / validation {len(val)} (fold 0 val) / test {len(test)}"
    )
    return source, [{"train": train, "val": val}], test


def _split_isic2018(ids, by, cfg):
    from sklearn.model_selection import KFold

    # The official test set alone: the challenge's leaderboard scores it, and a blend with the
    # validation images would be neither that number nor the validation one. Without an official
    # training split there is no official split at all: every image is in the pool.
    pool = by["train"] if by["train"] else sorted(ids)
    test = sorted(by["test"]) if by["train"] else []
    k = cfg.cv_folds
    if len(pool) < k:
        raise SplitError(f"isic2018: {k}-fold cross-validation (split.cv_folds) needs at least {k} training images, "
                         f"found {len(pool)}; lower split.cv_folds in params.yaml")
    arr = np.array(pool)
    folds = [
        {"train": sorted(arr[tr].tolist()), "val": sorted(arr[va].tolist())}
        for tr, va in KFold(n_splits=k, shuffle=True, random_state=cfg.seed).split(arr)
    ]
    what = "official training images" if by["train"] else "images (no official split found)"
    unused = f"; the {len(by['val'])} official validation images are not used" if by["val"] and by["train"] else ""
    if test:
        tail = f"test = the {len(test)} official test images{unused}"
    elif by["val"]:
        tail = f"test = [] (no official test images present){unused}"
    else:
        tail = "test = [] (no official validation/test images present)"
    source = (
        f"seeded {k}-fold cross-validation (sklearn KFold, shuffle=True, random_state={cfg.seed}) "
        f"over the {len(pool)} {what}; {tail}"
    )
    return source, folds, test


def _split_ph2(ids, by, cfg):
    return f"no official split: all {len(ids)} images are a test set (ISIC 2017 -> PH2 transfer)", [], sorted(ids)


def _retina_fold(pool, cfg):
    train, val = holdout(pool, cfg.retina_val_fraction, cfg.seed)
    return [{"train": train, "val": val}], (
        f"fold 0: {len(train)} train + a seeded hold-out of {len(val)} training images as val "
        f"(retina_val_fraction={cfg.retina_val_fraction}, seed={cfg.seed}) for checkpoint selection"
    )


def _split_drive(ids, by, cfg):
    pool, test = by["train"], by["test"]
    if not pool:
        raise SplitError(
            f"drive: no official training images found ({len(ids)} images, none under training/); "
            "the official split is training/ 20 + test/ 20"
        )
    folds, how = _retina_fold(pool, cfg)
    return f"official DRIVE split: training {len(pool)} / test {len(test)}; {how}", folds, test


def _split_chase_db1(ids, by, cfg):
    from tcnet.data.adapters.chase_db1 import split_ids

    try:
        pool, test, rule = split_ids(ids)
    except ValueError as e:
        raise SplitError(str(e)) from None
    folds, how = _retina_fold(pool, cfg)
    source = (
        f"no official split; convention {rule} of the sorted ids: train {pool[0]}..{pool[-1]}, "
        f"test {test[0]}..{test[-1]}; {how}"
    )
    return source, folds, test


RULES = {
    "isic2017": _split_isic2017,
    "isic2018": _split_isic2018,
    "ph2": _split_ph2,
    "drive": _split_drive,
    "chase_db1": _split_chase_db1,
}


def make_split(dataset: str, rows, cfg: SplitConfig) -> dict:
    """The split of one dataset from its manifest rows (dicts with ``id`` and ``official_split``)."""
    check_choice("dataset", dataset, DATASETS)
    ids = sorted(r["id"] for r in rows)
    source, folds, test = RULES[dataset](ids, _by_split(rows), cfg)
    split = {"dataset": dataset, "source": source, "seed": cfg.seed, "folds": folds, "test": test}
    check_split(split, dataset, set(ids), cfg, where=dataset)
    return split


def dumps(split: dict) -> str:
    return json.dumps(split, indent=2) + "\n"


# ----------------------------------------------------------------------------------------------
# Validation (also of user-supplied split files)
# ----------------------------------------------------------------------------------------------


def _id_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(i, str) for i in value):
        raise SplitError(f"{where}: expected a list of id strings, got {type(value).__name__}")
    dup = sorted({i for i in value if value.count(i) > 1}) if len(set(value)) != len(value) else []
    if dup:
        raise SplitError(f"{where}: duplicate ids {', '.join(dup[:5])}")
    return value


def check_split(split, dataset: str, known_ids: set[str], cfg: SplitConfig, where: str) -> None:
    """Raise :class:`SplitError` unless ``split`` has the contract's shape and consistent ids."""
    shape = '{"dataset", "source", "seed", "folds": [{"train": [ids], "val": [ids]}, ...], "test": [ids]}'
    if not isinstance(split, dict) or not isinstance(split.get("folds"), list) or "test" not in split:
        raise SplitError(f"{where}: expected a JSON object of the shape {shape}")
    if split.get("dataset", dataset) != dataset:
        raise SplitError(f"{where}: is a split of {split.get('dataset')!r}, not of {dataset!r}")
    test = set(_id_list(split["test"], f"{where}: test"))
    want = n_folds(dataset, cfg)  # 0 for test-only PH2
    if want is not None and len(split["folds"]) != want:
        hint = " (set split.cv_folds to match)" if dataset == "isic2018" else ""
        raise SplitError(f"{where}: has {len(split['folds'])} fold(s), expected {want}{hint}")
    used = set(test)
    for k, fold in enumerate(split["folds"]):
        if not isinstance(fold, dict) or set(fold) != {"train", "val"}:
            raise SplitError(f"{where}: fold {k} must be an object with exactly the keys 'train' and 'val'")
        train = set(_id_list(fold["train"], f"{where}: fold {k} train"))
        val = set(_id_list(fold["val"], f"{where}: fold {k} val"))
        if not train:
            raise SplitError(f"{where}: fold {k} has no training ids")
        for name, a, b in (("train and val", train, val), ("train and test", train, test), ("val and test", val, test)):
            both = sorted(a & b)
            if both:
                raise SplitError(f"{where}: fold {k}: ids in both {name}: {', '.join(both[:5])}")
        used |= train | val
    unknown = sorted(used - known_ids)
    if unknown:
        raise SplitError(
            f"{where}: {len(unknown)} id(s) not in the preprocessed {dataset} manifest, e.g. {', '.join(unknown[:5])}"
        )


# A Kubeflow task's inputs travel as one command-line argument, at most 128 KiB on Linux, and so does
# the pipeline's root DAG (KFP's driver; ~26 KB for params.yaml's 40 runs), which holds every split
# task's constant inputs: the carried split files, compressed, share this much of it (an ISIC 2018
# 5-fold split, 310 KB of JSON, packs to 48 KB).
MAX_PACKED_CHARS = 80_000


def pack_split_file(dataset: str, path: str) -> str:
    """A user split file for a Kubeflow pipeline, whose pods have no checkout: its path and bytes
    (gzip, base64; byte for byte, CRLF and BOM included), read when the pipeline is compiled, as
    one line of JSON ``{"dataset", "path", "gzip_base64"}``. Refuses a missing file, a file that is
    not JSON and one too large for a task input, naming it."""
    import base64
    import gzip

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise SplitError(f"split.split_files.{dataset}: {path} not found (relative to {Path.cwd()}, where "
                         "`tcnet split` reads it too)") from None
    try:
        json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SplitError(f"{path}: not valid JSON: {e}") from None
    packed = json.dumps({"dataset": dataset, "path": path,
                         "gzip_base64": base64.b64encode(gzip.compress(data, mtime=0)).decode("ascii")})
    if len(packed) > MAX_PACKED_CHARS:
        raise SplitError(f"split.split_files.{dataset}: {path} is {len(data) / 1024:.0f} KiB, "
                         f"{len(packed) / 1024:.0f} KiB compressed: over the {MAX_PACKED_CHARS / 1024:.0f} KiB a "
                         "Kubeflow task input can carry; leave out what the stage does not read (it reads "
                         "folds[].train/val and test) or split with `dvc repro`")
    return packed


def check_packed_total(packed: dict[str, str]) -> None:
    """Refuse split files that together are more than a pipeline can carry (MAX_PACKED_CHARS)."""
    total = sum(len(p) for p in packed.values())
    if total > MAX_PACKED_CHARS:
        sizes = ", ".join(f"{d} {len(p) / 1024:.0f} KiB" for d, p in packed.items())
        raise SplitError(f"split.split_files: {total / 1024:.0f} KiB compressed in all ({sizes}): over the "
                         f"{MAX_PACKED_CHARS / 1024:.0f} KiB a Kubeflow pipeline can carry (its inputs travel as "
                         "command-line arguments); split the largest with `dvc repro`, or trim what the stage does "
                         "not read")


def _unpack(packed: str) -> dict:
    """``{dataset: (path, bytes)}`` from the split task's ``embedded`` input ('' = none)."""
    import base64
    import gzip

    out = {}
    for line in filter(None, (packed or "").splitlines()):
        entry = json.loads(line)
        out[entry["dataset"]] = (entry["path"], gzip.decompress(base64.b64decode(entry["gzip_base64"])))
    return out


def _read_user_split(path: Path, dataset: str, known_ids: set[str], cfg: SplitConfig,
                     embedded: Optional[dict] = None) -> bytes:
    """The user split file's bytes, validated; in a Kubeflow task (``embedded`` not None) the file
    the pipeline carries since it was compiled (pack_split_file), which must be the one named."""
    where = str(path)
    if embedded is not None:
        if dataset not in embedded:
            raise SplitError(f"split.split_files.{dataset}: {path} is not in this Kubeflow pipeline (its pods have no "
                             "checkout; split files are read into the package when it is compiled): compile the "
                             "pipeline again with these params (python -m pipeline compile)")
        carried, data = embedded[dataset]
        if carried != str(path):
            raise SplitError(f"split.split_files.{dataset}: {path}, but the pipeline was compiled with {carried}: "
                             "compile it again with these params (python -m pipeline compile)")
        where = f"{path} (read into the pipeline when it was compiled)"
    else:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise SplitError(f"split.split_files.{dataset}: {path} not found") from None
    try:
        split = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SplitError(f"{where}: not valid JSON: {e}") from None
    check_split(split, dataset, known_ids, cfg, where=where)
    return data


# ----------------------------------------------------------------------------------------------
# Stage
# ----------------------------------------------------------------------------------------------


def _manifest_rows(preprocessed_dir: Path) -> list[dict]:
    from tcnet.data.dataset import read_manifest

    df = read_manifest(preprocessed_dir)
    unknown = sorted(set(df["dataset"]) - set(DATASETS))
    if unknown:  # a hand-edited manifest: say where, before the splits are made
        line = int((df["dataset"] == unknown[0]).to_numpy().argmax()) + 2
        raise SplitError(f"{Path(preprocessed_dir) / 'manifest.csv'}: line {line}: unknown dataset {unknown[0]!r}; "
                         f"valid: {', '.join(DATASETS)}; run 'tcnet preprocess' again to rewrite it")
    return df[["id", "dataset", "official_split"]].to_dict("records")


def run(cfg: SplitConfig, preprocessed_dir: Path, out_dir: Path, datasets: Optional[Sequence[str]] = None,
        embedded: Optional[str] = None) -> dict:
    """Write ``<out_dir>/<dataset>.json`` for ``datasets`` (default: every dataset preprocessed).

    ``embedded``: in a Kubeflow task, the user split files the pipeline carries (one
    :func:`pack_split_file` line each; '' = none): ``split.split_files`` are taken from there, not
    read from disk.

    Returns ``{dataset: {"source", "folds": [(n_train, n_val), ...], "test": n_test, "user_file"}}``.
    """
    cfg.validate()
    carried = None if embedded is None else _unpack(embedded)
    for d, (path, _) in (carried or {}).items():
        if d not in cfg.split_files:
            raise SplitError(f"this Kubeflow pipeline was compiled with a split file for {d} ({path}), which the "
                             "run's params do not name (split.split_files): compile it again with these params")
    preprocessed_dir, out_dir = Path(preprocessed_dir), Path(out_dir)
    rows = _manifest_rows(preprocessed_dir)
    present = sorted({r["dataset"] for r in rows}, key=DATASETS.index)
    keep_others = datasets is not None
    datasets = list(present if datasets is None else datasets)
    for d in datasets:
        check_choice("dataset", d, DATASETS)
        if d not in present:
            raise SplitError(f"{d}: not in {preprocessed_dir / 'manifest.csv'} (preprocessed: {', '.join(present)})")

    outputs: dict[str, bytes] = {}
    summary = {}
    for d in datasets:
        d_rows = [r for r in rows if r["dataset"] == d]
        user = cfg.split_files.get(d)
        if user:
            data = _read_user_split(Path(user), d, {r["id"] for r in d_rows}, cfg, carried)
            split = json.loads(data)
        else:
            split = make_split(d, d_rows, cfg)
            data = dumps(split).encode()
        outputs[f"{d}.json"] = data
        summary[d] = {
            "source": split.get("source", f"user split file {user}"),
            "folds": [(len(f["train"]), len(f["val"])) for f in split["folds"]],
            "test": len(split["test"]),
            "user_file": user or "",
        }

    with atomic_dir(out_dir, owner="split") as tmp:
        if keep_others and out_dir.is_dir():  # keep the splits of datasets not re-split in this run
            for old in sorted(out_dir.glob("*.json")):
                if old.name not in outputs and old.stem in DATASETS:
                    shutil.copy2(old, tmp / old.name)
        for name, data in outputs.items():
            (tmp / name).write_bytes(data)
        _write_params(tmp / "params.yaml", cfg)
    return summary


def tracked_run(params, preprocessed_dir, out_dir, datasets: Optional[Sequence[str]] = None,
                embedded: Optional[str] = None, *, mlflow: Optional[bool] = None) -> dict:
    """:func:`run` on ``params.split``, logged to MLflow (``tcnet/data``, nested run ``split``;
    :mod:`tcnet.stages.data_tracking`) unless ``mlflow=False`` or ``TCNET_NO_MLFLOW=1``: the params,
    each dataset's fold sizes and test size as metrics, its source as a tag, and the split files
    written. What the CLI and the Kubeflow component call. Returns :func:`run`'s summary."""
    from tcnet.stages.data_tracking import stage_run

    if datasets is None:  # every dataset preprocessed, as run() finds them (its errors: before any run opens)
        names = sorted({r["dataset"] for r in _manifest_rows(Path(preprocessed_dir))}, key=DATASETS.index)
    else:  # in one order whatever the command line's: "a b" and "b a" are the same run
        names = sorted(set(datasets), key=lambda d: DATASETS.index(d) if d in DATASETS else len(DATASETS))
    with stage_run(params, "split", names, mlflow) as logger:
        summary = run(params.split, preprocessed_dir, out_dir, datasets, embedded)
        metrics, tags = {}, {}
        for d, s in summary.items():
            metrics.update({f"{d}.folds": len(s["folds"]), f"{d}.test": s["test"]})
            for k, (n_train, n_val) in enumerate(s["folds"]):
                metrics.update({f"{d}.fold{k}.train": n_train, f"{d}.fold{k}.val": n_val})
            tags[f"tcnet.split.{d}"] = s["source"]
        logger.log_metrics(metrics)
        logger.set_tags(tags)
        for d in summary:
            logger.log_artifact(Path(out_dir) / f"{d}.json", "splits")
        logger.log_artifact(Path(out_dir) / "params.yaml", "splits")
    return summary


def _write_params(path: Path, cfg: SplitConfig) -> None:
    import yaml

    path.write_text(yaml.safe_dump({"split": to_dict(cfg)}, sort_keys=False))


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--preprocessed", default="outputs/preprocessed",
        help="preprocess output folder (default: outputs/preprocessed)",
    )
    parser.add_argument("--out", default="outputs/splits", help="output folder, replaced whole; a folder holding files this command did not write is refused (default: outputs/splits)")
    parser.add_argument(
        "--datasets", nargs="+", default=None, metavar="DATASET",
        help="datasets to split (default: every preprocessed dataset)",
    )
    parser.add_argument("--no-mlflow", action="store_true",
                        help="do not log to MLflow (default: a run 'split' in the MLflow experiment tcnet/data; "
                        "also TCNET_NO_MLFLOW=1)")


def check_dvc_tracks(split_files: dict[str, str], environ=None) -> None:
    """Under ``dvc repro`` / ``dvc exp run`` (DVC sets ``DVC_STAGE``), refuse a user split file that is
    not among the running stage's deps in its ``dvc.yaml``: DVC would not re-split when it changes,
    and the next ``dvc repro`` would keep serving the old folds. Paths are taken from the working
    folder, where DVC runs the stage (the project, or a temporary copy of it for ``--temp`` and
    queued experiments, whose ``DVC_ROOT`` names the original)."""
    import os

    import yaml

    environ = os.environ if environ is None else environ
    stage = environ.get("DVC_STAGE")
    if not stage or not split_files:
        return
    dvcfile, _, name = stage.rpartition(":")  # "split", or "sub/dvc.yaml:split" (run in sub/)
    here = Path.cwd()
    path = here / (Path(dvcfile).name if dvcfile else "dvc.yaml")
    if not path.is_file():  # a stage run from elsewhere (wdir): not ours to judge
        return
    spec = (yaml.safe_load(path.read_text()) or {}).get("stages", {}).get(name.split("@")[0], {})
    deps = [(here / d).resolve() for d in spec.get("do", spec).get("deps", []) if "${" not in d]
    for dataset, f in split_files.items():
        file = (here / f).resolve()
        if not any(file == d or d in file.parents for d in deps):
            raise SplitError(
                f"split.split_files.{dataset}: {f} is not a dependency of the {stage!r} stage in {path.name}, so "
                "`dvc repro` would not split again when the file changes: put it under splits/ (a dependency "
                "of the stage) or add it to the stage's deps")


def main(args) -> int:
    from tcnet.config import load_params

    params = load_params(args.params)
    check_dvc_tracks(params.split.split_files)
    summary = tracked_run(params, Path(args.preprocessed), Path(args.out), args.datasets,
                          mlflow=False if args.no_mlflow else None)
    for d, s in summary.items():
        folds = ", ".join(f"{a}/{b}" for a, b in s["folds"]) or "none"
        print(f"{d}: folds (train/val) {folds}; test {s['test']}")
        print(f"  {s['source']}")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0
