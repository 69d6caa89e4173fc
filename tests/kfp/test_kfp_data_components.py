"""The data components under the KFP local runner, against a real git + DVC repository.

A temporary git repository tracks a tiny ISIC 2017 look-alike with DVC and pushes it to a local
remote; its cache and working copy are then deleted, so ``fetch_data`` (given a ``file://`` URL and
a commit, as a pod gets an https URL and a revision) must clone the repository and pull from the
remote. ``preprocess`` and ``split`` then run on the artifacts, and give what the stages give when
called directly on the same data.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import yaml
from PIL import Image

from tcnet.config import Params, from_dict

BIN = Path(sys.executable).parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
PARAMS = {"preprocess": {"datasets": ["isic2017"], "image_size": 32, "workers": 1}, "split": {"seed": 3}}


def sh(cmd, cwd) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **GIT_ENV}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stdout}\n{p.stderr}"
    return p.stdout.strip()


def write_isic2017(root: Path, n_train: int = 4, n_val: int = 2) -> None:
    """The official ISIC 2017 layout: JPEG images, 0/255 PNG masks named <id>_segmentation.png."""
    rng = np.random.default_rng(0)
    k = 0
    for images, masks, n in (("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth", n_train),
                             ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth", n_val)):
        (root / images).mkdir(parents=True)
        (root / masks).mkdir(parents=True)
        for _ in range(n):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / images / f"ISIC_{k:07d}.jpg")
            mask = np.zeros((40, 48), np.uint8)
            mask[5 + k:20 + k, 8:30] = 255
            Image.fromarray(mask).save(root / masks / f"ISIC_{k:07d}_segmentation.png")
            k += 1


@pytest.fixture(scope="module")
def data_repo(tmp_path_factory, remote_only_data_repo):
    """(file:// URL, commit, base) of a git repository whose data lives only on its DVC remote."""
    base = tmp_path_factory.mktemp("dvc")
    repo = base / "repo"
    repo.mkdir()
    write_isic2017(repo / "data" / "isic2017")
    return (*remote_only_data_repo(repo), base)


@pytest.fixture(scope="module")
def outputs(data_repo, tmp_path_factory):
    """The data components chained as in the pipeline, under the local runner: their artifacts."""
    from kfp import dsl, local
    from kfp.dsl import Dataset

    from components import data_params, fetch_data, preprocess, split
    from pipeline.pipeline import one_line_yaml

    @dsl.pipeline
    def data_stages(params_yaml: str, repo_url: str, rev: str) -> NamedTuple(
            "Outputs", raw=Dataset, preprocessed=Dataset, index=Dataset, splits=Dataset):
        keys = data_params(params_yaml=params_yaml, dataset="isic2017").outputs  # what each data task reads
        f = fetch_data(params_yaml=keys["fetch_data"], repo_url=repo_url, rev=rev)
        p = preprocess(params_yaml=keys["preprocess"], raw=f.outputs["raw"])
        s = split(params_yaml=keys["split"], index=p.outputs["index"])
        return NamedTuple("Outputs", raw=Dataset, preprocessed=Dataset, index=Dataset, splits=Dataset)(
            f.outputs["raw"], p.outputs["preprocessed"], p.outputs["index"], s.outputs["splits"])

    url, commit, _ = data_repo
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path_factory.mktemp("kfp")))
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:  # the tasks inherit it, as pods get it from the pipeline
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.delenv("TCNET_NO_MLFLOW", raising=False)
        outputs = dict(data_stages(params_yaml=one_line_yaml(yaml.safe_dump(PARAMS)), repo_url=url, rev=commit).outputs)
    outputs["mlflow_uri"] = uri
    return outputs


def test_fetch_data_materialises_the_dvc_tracked_data_at_the_revision(outputs, data_repo):
    raw = Path(outputs["raw"].path)
    assert len(list(raw.glob("isic2017/*/*.jpg"))) == 6
    assert len(list(raw.glob("isic2017/*/*_segmentation.png"))) == 6
    assert outputs["raw"].metadata["rev"] == data_repo[1]
    url, _, base = data_repo
    data_md5 = yaml.safe_load(sh(["git", "show", "HEAD:data.dvc"], base / "repo"))["outs"][0]["md5"]
    assert outputs["raw"].metadata["data_md5"] == data_md5  # the pod has no checkout to read it from later
    assert outputs["preprocessed"].metadata["data_md5"] == data_md5  # passed on to train
    assert outputs["index"].metadata["data_md5"] == data_md5  # and to evaluate


def test_preprocess_and_split_components_match_the_stages(outputs, tmp_path):
    from tcnet.stages import preprocess, split

    params = from_dict(Params, PARAMS).validate()
    raw = Path(outputs["raw"].path)
    preprocess.run(params.preprocess, raw, tmp_path / "pre")
    split.run(params.split, tmp_path / "pre", tmp_path / "splits")

    kfp_pre = Path(outputs["preprocessed"].path)
    assert sorted(p.name for p in (kfp_pre / "isic2017").iterdir()) == ["images.npy", "masks.npy"]  # whole-image FOV
    for name in ("images.npy", "masks.npy"):
        np.testing.assert_array_equal(np.load(kfp_pre / "isic2017" / name), np.load(tmp_path / "pre" / "isic2017" / name))
    assert (kfp_pre / "manifest.csv").read_text() == (tmp_path / "pre" / "manifest.csv").read_text()
    assert outputs["preprocessed"].metadata["images"] == {"isic2017": 6}

    # the index (what split and evaluate download): the manifest and statistics, no arrays
    index = Path(outputs["index"].path)
    assert sorted(p.name for p in index.iterdir()) == ["manifest.csv", "params.yaml", "stats.json"]
    for name in ("manifest.csv", "stats.json"):
        assert (index / name).read_bytes() == (kfp_pre / name).read_bytes()

    kfp_split = Path(outputs["splits"].path) / "isic2017.json"
    assert json.loads(kfp_split.read_text()) == json.loads((tmp_path / "splits" / "isic2017.json").read_text())


def test_the_data_tasks_log_to_mlflow_with_the_fetched_data_hash(outputs):
    from mlflow import MlflowClient

    client = MlflowClient(outputs["mlflow_uri"])
    runs = client.search_runs([client.get_experiment_by_name("tcnet/data").experiment_id])
    stages = {r.data.tags["tcnet.run_id"]: r for r in runs if "tcnet.run_id" in r.data.tags}
    assert sorted(stages) == ["preprocess", "split"] and all(r.info.status == "FINISHED" for r in stages.values())
    # the pod has no checkout: the hash is the one fetch_data read at the revision
    assert {r.data.tags["tcnet.data_hash"] for r in runs} == {outputs["raw"].metadata["data_md5"]}
    assert stages["preprocess"].data.metrics["isic2017.pairs"] == outputs["preprocessed"].metadata["images"]["isic2017"]
    assert stages["split"].data.metrics["isic2017.folds"] == 1


def test_a_user_split_file_compiled_into_the_pipeline_is_what_the_split_task_writes(outputs, data_repo, tmp_path,
                                                                                   monkeypatch):
    """A user split file reaches a pod as the bytes the compiled pipeline carries (the pod has no
    checkout): the split task validates them against the preprocessed manifest and writes them
    byte for byte, as `tcnet split` writes the file."""
    import csv

    from kfp import dsl
    from kfp.dsl import Dataset

    from components import data_params, fetch_data, preprocess, split
    from pipeline.pipeline import one_line_yaml
    from tcnet.stages.split import pack_split_file

    with open(Path(outputs["index"].path) / "manifest.csv", newline="") as f:
        ids = sorted(r["id"] for r in csv.DictReader(f))
    raw = json.dumps({"dataset": "isic2017", "source": "mine", "folds": [{"train": ids[:3], "val": ids[3:5]}],
                      "test": ids[5:]}, indent=1) + "\n"  # pretty-printed: its line breaks must survive
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TCNET_NO_MLFLOW", "1")  # logging: the test above
    Path("isic2017.json").write_text(raw)
    packed = pack_split_file("isic2017", "isic2017.json")  # what compiling does
    Path("isic2017.json").unlink()
    params = {**PARAMS, "split": {**PARAMS["split"], "split_files": {"isic2017": "isic2017.json"}}}

    @dsl.pipeline
    def data_stages(params_yaml: str, repo_url: str, rev: str) -> Dataset:
        keys = data_params(params_yaml=params_yaml, dataset="isic2017").outputs
        f = fetch_data(params_yaml=keys["fetch_data"], repo_url=repo_url, rev=rev)
        p = preprocess(params_yaml=keys["preprocess"], raw=f.outputs["raw"])
        return split(params_yaml=keys["split"], index=p.outputs["index"], embedded=packed).outputs["splits"]

    url, commit, _ = data_repo
    splits = data_stages(params_yaml=one_line_yaml(yaml.safe_dump(params)), repo_url=url, rev=commit).output
    assert (Path(splits.path) / "isic2017.json").read_text() == raw
