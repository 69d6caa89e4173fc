"""preprocess and split in MLflow: nested runs of experiment tcnet/data, in a real sqlite store."""

import json

import pytest
import yaml
from mlflow import MlflowClient

from tcnet.cli import main
from tcnet.config import ConfigError, Params, from_dict
from tcnet.data.synth.writers import write_dataset


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A params file, a tiny ISIC 2017 look-alike and a store of its own; tracking on."""
    write_dataset("isic2017", tmp_path / "raw" / "isic2017", n=6, size=(48, 40))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preprocess": {"datasets": ["isic2017"], "image_size": 32, "workers": 1,
                                                     "raw_dir": str(tmp_path / "raw")}, "split": {"seed": 3}}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.delenv("TCNET_NO_MLFLOW", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TCNET_PIPELINE_RUN_ID", "pipeline-1")
    return tmp_path, params, uri


def _runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tcnet/data")
    assert exp is not None
    return client, {r.data.tags.get("tcnet.run_id", "parent"): r for r in client.search_runs([exp.experiment_id])}


def test_preprocess_and_split_log_their_params_counts_and_files_under_the_pipeline_run(project):
    root, params, uri = project
    pre, splits = root / "pre", root / "splits"
    assert main(["preprocess", "--params", str(params), "--out", str(pre)]) == 0
    assert main(["split", "--params", str(params), "--preprocessed", str(pre), "--out", str(splits)]) == 0

    client, runs = _runs(uri)
    assert set(runs) == {"parent", "preprocess", "split"}
    parent = runs["parent"]
    assert parent.data.tags["tcnet.pipeline_run"] == "pipeline-1"
    for stage in ("preprocess", "split"):
        run = runs[stage]
        assert run.info.status == "FINISHED" and run.info.run_name == f"{stage} (isic2017)"
        assert run.data.tags["tcnet.datasets"] == "isic2017"
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["tcnet.pipeline_run"] == "pipeline-1"
        assert run.data.tags["tcnet.git_commit"] and run.data.tags["tcnet.data_hash"]  # provenance, as train's
        assert run.data.tags["tcnet.version.opencv"] and run.data.tags["tcnet.device"].startswith("cpu")

    p = runs["preprocess"].data
    assert p.params["preprocess.image_size"] == "32" and p.params["preprocess.datasets"] == '["isic2017"]'
    stats = json.loads((pre / "stats.json").read_text())
    assert p.metrics["isic2017.pairs"] == p.metrics["pairs"] == 12  # 6 training + 6 validation images
    assert p.metrics["isic2017.class_weight.1"] == pytest.approx(stats["isic2017"]["class_weights"][1])
    assert p.metrics["isic2017.fg_fraction"] == pytest.approx(stats["isic2017"]["fg_fraction"])
    assert p.metrics["images_per_s"] > 0 and p.tags["tcnet.workers"] == "1"
    assert p.tags["tcnet.raw_dir"] == str(root / "raw")
    manifest = client.download_artifacts(runs["preprocess"].info.run_id, "preprocessed/manifest.csv", str(root))
    assert open(manifest).read() == (pre / "manifest.csv").read_text()

    s = runs["split"].data
    split = json.loads((splits / "isic2017.json").read_text())
    assert s.params["split.seed"] == "3"
    assert s.metrics["isic2017.folds"] == len(split["folds"]) and s.metrics["isic2017.test"] == len(split["test"])
    assert s.metrics["isic2017.fold0.train"] == len(split["folds"][0]["train"])
    assert s.metrics["isic2017.fold0.val"] == len(split["folds"][0]["val"])
    assert s.tags["tcnet.split.isic2017"].startswith("official ISIC 2017")
    logged = client.download_artifacts(runs["split"].info.run_id, "splits/isic2017.json", str(root / "dl"))
    assert json.loads(open(logged).read()) == split


def test_a_failed_preprocess_is_marked_failed_with_its_error_and_a_good_rerun_clears_it(project):
    root, params, uri = project
    image = sorted((root / "raw" / "isic2017").rglob("*.jpg"))[0]
    good = image.read_bytes()
    image.write_bytes(b"not a jpeg")
    assert main(["preprocess", "--params", str(params), "--out", str(root / "pre")]) == 2
    assert not (root / "pre").exists()
    _, runs = _runs(uri)
    failed = runs["preprocess"]
    assert failed.info.status == "FAILED" and str(image) in failed.data.tags["tcnet.error"]

    image.write_bytes(good)
    assert main(["preprocess", "--params", str(params), "--out", str(root / "pre")]) == 0
    _, runs = _runs(uri)
    again = runs["preprocess"]  # the same params in the same pipeline run: the same MLflow run
    assert again.info.run_id == failed.info.run_id
    assert again.info.status == "FINISHED" and "tcnet.error" not in again.data.tags


def test_no_mlflow_logs_nothing(project, monkeypatch):
    root, params, _ = project
    assert main(["preprocess", "--params", str(params), "--out", str(root / "pre"), "--no-mlflow"]) == 0
    assert main(["split", "--params", str(params), "--preprocessed", str(root / "pre"), "--out", str(root / "s"),
                 "--no-mlflow"]) == 0
    monkeypatch.setenv("TCNET_NO_MLFLOW", "1")
    assert main(["split", "--params", str(params), "--preprocessed", str(root / "pre"), "--out", str(root / "s")]) == 0
    assert not (root / "mlflow.db").exists()


def test_a_store_that_cannot_be_reached_is_one_line_before_any_output(project, monkeypatch, capsys):
    root, params, _ = project
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["preprocess", "--params", str(params), "--out", str(root / "pre")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcnet preprocess: error: MLflow tracking store http://127.0.0.1:9 cannot be used: ")
    assert "--no-mlflow" in err and "secret" not in err and err.count("\n") == 1
    assert not (root / "pre").exists()


def test_the_store_error_keeps_the_cause_and_no_password(tmp_path):
    from tcnet.tracking import TrackingStoreError, init_store, without_secrets

    bad = tmp_path / "bad.db"
    bad.write_text("not a database")
    with pytest.raises(TrackingStoreError, match="file is not a database"):  # SQLAlchemy's first line, not its link
        init_store(f"sqlite:///{bad}")
    with pytest.raises(TrackingStoreError) as e:  # whatever the driver says, the password stays out
        init_store("postgresql://alice:S3CRET@127.0.0.1:1/db")
    assert "S3CRET" not in str(e.value) and "postgresql://127.0.0.1:1/db" in str(e.value)
    assert e.value.__cause__ is None and e.value.__suppress_context__  # a pod's log prints no chained message
    assert without_secrets("mysql+pymysql://u:p@h/d and https://tok@h/r") == "mysql+pymysql://h/d and https://h/r"
    # a password may hold "/" or "@" (SQLAlchemy reads both so)
    assert without_secrets("postgresql://u:ab/cd@db/mlflow x") == "postgresql://db/mlflow x"
    assert without_secrets("'postgresql://u:p@ss@db/m'") == "'postgresql://db/m'"


def test_the_same_stage_on_other_datasets_is_another_run(project):
    """The Kubeflow pipeline runs one data chain per dataset, each with the same params sections:
    each chain's split is a run of its own, and one failing does not mark another."""
    root, params, uri = project
    write_dataset("drive", root / "raw" / "drive", n=2, size=(72, 76))
    p = yaml.safe_load(params.read_text())
    p["preprocess"]["datasets"] = ["isic2017", "drive"]
    params.write_text(yaml.safe_dump(p))
    assert main(["preprocess", "--params", str(params), "--out", str(root / "pre")]) == 0
    for d in ("isic2017", "drive"):
        assert main(["split", "--params", str(params), "--preprocessed", str(root / "pre"), "--out",
                     str(root / f"s-{d}"), "--datasets", d]) == 0
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tcnet/data")
    splits = {r.data.tags["tcnet.datasets"]: r for r in client.search_runs([exp.experiment_id],
                                                                           "tags.`tcnet.run_id` = 'split'")}
    assert sorted(splits) == ["drive", "isic2017"]
    assert "drive.folds" in splits["drive"].data.metrics and "drive.folds" not in splits["isic2017"].data.metrics
    assert splits["isic2017"].info.run_name == "split (isic2017)"


def test_a_paper_experiment_may_not_take_the_data_stages_name():
    exp = {"title": "t", "reproduces": "r", "data": [{"name": "x", "train": "isic2017"}],
           "runs": [{"name": "tcnet", "model": "tcnet_tiny"}]}
    with pytest.raises(ConfigError, match="'data' is taken by the MLflow experiment of the data stages"):
        from_dict(Params, {"experiments": {"data": exp}}).validate()
    from_dict(Params, {"experiments": {"data2": exp}}).validate()
