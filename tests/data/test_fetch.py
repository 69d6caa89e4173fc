"""tcnet.data.fetch against a real git + DVC repository whose data lives only on its (local) remote:
a Kubeflow evaluate task fetches exactly the raw files its run is scored on, and scores as it would
on the whole raw folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tcnet.config import Params, expand_runs, from_dict
from tcnet.data import fetch

DATASETS = ("isic2017", "drive")


@pytest.fixture(scope="module")
def world(synth_root, tmp_path_factory, remote_only_data_repo):
    """``(repo URL, commit, raw, pre, splits, params)``: the look-alikes of DATASETS in a git + DVC
    repository (data and cache deleted after the push), and their preprocess and split outputs."""
    from tcnet.stages import preprocess, split

    base = tmp_path_factory.mktemp("fetch")
    raw = base / "raw"
    for d in DATASETS:
        shutil.copytree(synth_root / d, raw / d)
    params = from_dict(Params, {
        "preprocess": {"datasets": list(DATASETS), "image_size": 32, "workers": 1},
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
        "experiments": {
            "skin": {"title": "t", "reproduces": "test", "model": "tcnet_tiny", "runs": [{"name": "tiny"}],
                     "data": [{"name": "isic2017", "train": "isic2017"}]},
            "retina": {"title": "t", "reproduces": "test", "model": "tcnet_tiny", "runs": [{"name": "tiny"}],
                       "data": [{"name": "drive", "train": "drive"}]},
        },
    }).validate()
    preprocess.run(params.preprocess, raw, base / "pre")
    split.run(params.split, base / "pre", base / "splits")

    repo = base / "repo"
    shutil.copytree(raw, repo / "data")
    return (*remote_only_data_repo(repo), raw, base / "pre", base / "splits", params)


def the_spec(params, experiment):
    (spec,) = expand_runs(params, experiment)
    return spec


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("experiment", ["skin", "retina"])
def test_an_evaluate_task_fetches_only_what_its_run_is_scored_on(world, tmp_path, experiment):
    from tcnet.data.dataset import read_manifest
    from tcnet.stages.evaluate import eval_ids

    url, commit, raw, pre, splits, params = world
    spec = the_spec(params, experiment)
    n = fetch.fetch_run_eval_data(params, experiment, spec.run_id, pre, splits, tmp_path / "raw", url, commit)
    got = files_under(tmp_path / "raw")

    dataset, ids = eval_ids(spec, splits)
    rows = read_manifest(pre).set_index("id")
    want = {f"{dataset}/SYNTHETIC.txt"}
    for i in ids:
        want |= {p for p in rows.loc[i, ["image_path", "mask_path", "fov_path"]] if p}
    assert set(got) == want and n == len(want)
    assert any(rows.loc[i, "fov_path"] for i in ids) == (dataset == "drive")  # DRIVE's FOV masks came too
    assert len(want) < len(files_under(raw / dataset)) / 2  # not the whole dataset: its training images stay
    assert all(got[p] == (raw / p).read_bytes() for p in got)  # the very bytes preprocess read


def test_scores_from_the_fetched_files_equal_those_from_the_whole_raw_folder(world, tmp_path):
    from tcnet.stages import evaluate, train

    url, commit, raw, pre, splits, params = world
    spec = the_spec(params, "skin")
    train.run(params, "skin", pre, splits, tmp_path / "models", mlflow=False)
    fetch.fetch_run_eval_data(params, "skin", spec.run_id, pre, splits, tmp_path / "fetched", url, commit)
    a = evaluate.run(params, "skin", pre, splits, raw, tmp_path / "models", tmp_path / "a", mlflow=False)
    b = evaluate.run(params, "skin", pre, splits, tmp_path / "fetched", tmp_path / "models", tmp_path / "b",
                     mlflow=False)
    run_a, run_b = (tmp_path / x / "skin" / spec.run_id for x in "ab")
    assert (run_a / "per_image.csv").read_text() == (run_b / "per_image.csv").read_text()
    assert a["runs"][spec.run_id]["mean"] == b["runs"][spec.run_id]["mean"]
    assert b["runs"][spec.run_id]["synthetic"] == ["isic2017"]  # the marker came along


def test_fetch_datasets_copies_each_whole_raw_folder(world, tmp_path):
    url, commit, raw, *_ = world
    fetch.fetch_datasets(fetch.open_repo(url, commit), "data", ["drive"], tmp_path)
    assert files_under(tmp_path / "drive") == files_under(raw / "drive")
    assert not (tmp_path / "isic2017").exists()


def test_a_failed_read_of_the_synthetic_marker_is_an_error_not_real_data(world, tmp_path):
    """fs.exists would say False for any error, and the look-alike would then be scored as real data."""
    url, commit, raw, pre, splits, params = world

    class Flaky:  # the real DVC filesystem, whose metadata read fails once for the marker
        def __init__(self, fs):
            self.fs = fs

        def info(self, path):
            if path.endswith("SYNTHETIC.txt"):
                raise OSError("remote unreachable")
            return self.fs.info(path)

        def get_file(self, *a, **k):
            return self.fs.get_file(*a, **k)

    with pytest.raises(OSError, match="remote unreachable"):
        fetch.fetch_eval_files(Flaky(fetch.open_repo(url, commit)), "data", the_spec(params, "skin"), pre, splits,
                               tmp_path / "raw")
