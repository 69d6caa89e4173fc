"""The DVC-versioned raw data, read from a git repository and its DVC remote without a checkout: what
a Kubeflow pod does (components ``fetch_data`` and ``evaluate``).

``DVCFileSystem(repo_url, rev=...)`` clones the repository at ``rev``, reads ``data.dvc`` there and
downloads files from the remote named in ``.dvc/config`` (credentials from the environment). DVC
keeps every file of a tracked folder as its own object, so one file can be fetched alone: an
evaluate task takes only the images, masks and FOVs its run scores (:func:`fetch_eval_files`), not
every dataset's full-size raw data.
"""

from __future__ import annotations

import sys
from pathlib import Path


def open_repo(repo_url: str, rev: str = "", remote: str = ""):
    """The DVC filesystem of ``repo_url`` at ``rev`` ("" = its working tree, for a local path), pulling
    from ``remote`` ("" = the default remote of its ``.dvc/config``)."""
    from dvc.api import DVCFileSystem

    return DVCFileSystem(repo_url, rev=rev or None, remote=remote or None)


def fetch_datasets(fs, data_path: str, datasets, out) -> None:
    """``<out>/<dataset>/`` for every dataset: its whole raw folder ``<data_path>/<dataset>``."""
    for dataset in datasets:
        fs.get(f"{data_path}/{dataset}", f"{out}/{dataset}", recursive=True)


def eval_files(spec, preprocessed_dir, splits_dir) -> list[str]:
    """What evaluating run ``spec`` reads from the raw root (paths relative to it): each evaluation
    image, its mask and its FOV file (the manifest's paths), in the split's order."""
    from tcnet.data.dataset import read_manifest
    from tcnet.stages.evaluate import eval_ids

    dataset, ids = eval_ids(spec, splits_dir)
    manifest = read_manifest(preprocessed_dir)
    rows = {r.id: r for r in manifest[manifest["dataset"] == dataset].itertuples(index=False)}
    paths = []
    for image_id in ids:  # an id missing from the manifest: evaluate's own check names it
        r = rows.get(image_id)
        if r is not None:
            paths += [p for p in (r.image_path, r.mask_path, r.fov_path) if p]
    return list(dict.fromkeys(paths))


def fetch_eval_files(fs, data_path: str, spec, preprocessed_dir, splits_dir, out) -> int:
    """Fetch into ``out`` (a raw root for ``tcnet evaluate --raw``) what evaluating ``spec`` reads:
    :func:`eval_files`, and the SYNTHETIC marker of its train and evaluation datasets where they have
    one (evaluate labels look-alike data). Returns the number of files."""
    from tqdm.auto import tqdm

    from tcnet.data.synth.writers import SYNTHETIC_MARKER

    paths = eval_files(spec, preprocessed_dir, splits_dir)
    for dataset in dict.fromkeys((spec.data.train, spec.data.eval_dataset)):
        marker = f"{dataset}/{SYNTHETIC_MARKER}"
        try:  # not fs.exists, which says False for any error: a failed read must not label data "real"
            fs.info(f"{data_path}/{marker}")
        except FileNotFoundError:
            continue
        paths.append(marker)
    out = Path(out)
    # One file at a time (a HEAD and a GET each on S3; fsspec's list form of get is the same loop):
    # seconds to a minute for a test set of hundreds of pairs, where the whole datasets are tens of GB.
    for rel in tqdm(paths, desc=f"{spec.run_id} fetch", unit="file", file=sys.stderr, leave=False):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{data_path}/{rel}", str(out / rel))
    return len(paths)


def fetch_run_eval_data(params, experiment: str, run_id: str, preprocessed_dir, splits_dir, out, repo_url: str,
                        rev: str = "", remote: str = "") -> int:
    """:func:`fetch_eval_files` of one run of ``params`` from ``repo_url`` at ``rev``."""
    from tcnet.config import expand_runs
    from tcnet.provenance import without_credentials
    from tcnet.stages.train import select_runs

    (spec,) = select_runs(expand_runs(params, experiment), [run_id], experiment)
    fs = open_repo(repo_url, rev, remote)
    n = fetch_eval_files(fs, params.preprocess.repo_data_path(), spec, preprocessed_dir, splits_dir, out)
    print(f"tcnet: fetched {n} raw file(s) that run {run_id} is scored on from {without_credentials(repo_url)}"
          f"{f' at {rev}' if rev else ''}", file=sys.stderr, flush=True)
    return n


__all__ = ["open_repo", "fetch_datasets", "eval_files", "fetch_eval_files", "fetch_run_eval_data"]
