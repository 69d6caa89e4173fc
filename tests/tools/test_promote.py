"""tcnet promote: the best finished TCNet run of an experiment (real MLflow runs in a sqlite store)
becomes a registered version with the alias ``champion``; re-running is idempotent."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

import tcnet
from tcnet.cli import main as cli
from tcnet.tools import promote as promote_mod

EXP = "isic_demo"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """An empty sqlite store (artifacts under tmp_path) with the experiment ``tcnet/<EXP>`` and its parent run."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment(f"tcnet/{EXP}", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(exp_id, tags={"tcnet.pipeline_run": "p1", "mlflow.runName": f"{EXP} (pipeline)"})
    client.set_terminated(parent.info.run_id)
    yield {"uri": uri, "client": client, "exp_id": exp_id, "parent": parent.info.run_id,
           "models": tmp_path / "outputs" / "models"}
    mlflow.set_tracking_uri(previous)


def add_run(store, run_id: str, model: str, di: float | None, status: str = "FINISHED", seed: int = 0,
            config_hash: str = "cfg", recorded_mlflow_run: str | None = None) -> str:
    """A nested training run as the pipeline makes it, with its best.pt (and run.json) under the
    models folder. ``recorded_mlflow_run``: the MLflow run run.json names (default: this one)."""
    client = store["client"]
    run = client.create_run(store["exp_id"], run_name=run_id, tags={
        "tcnet.run_id": run_id, "tcnet.experiment": EXP, "tcnet.model": model, "tcnet.config_hash": "cfg",
        "mlflow.parentRunId": store["parent"],
    })
    client.log_param(run.info.run_id, "model", model)
    if di is not None:
        client.log_metric(run.info.run_id, "eval_mean_DI", di)
        client.log_metric(run.info.run_id, "eval_mean_JA", di - 0.1)
    client.set_terminated(run.info.run_id, status=status)
    folder = store["models"] / EXP / run_id
    folder.mkdir(parents=True, exist_ok=True)  # the same run id again: a later training reuses the folder
    torch.manual_seed(seed)
    net = tcnet.create_model("tcnet_tiny")
    torch.save({"model": net.state_dict(), "model_name": "tcnet_tiny", "model_kwargs": {}, "num_classes": 1,
                "image_size": 64, "epoch": 1, "run": {"experiment": EXP}, "config_hash": config_hash}, folder / "best.pt")
    (folder / "run.json").write_text(json.dumps({"run_id": run_id, "config_hash": config_hash,
                                                 "mlflow_run_id": recorded_mlflow_run or run.info.run_id}))
    return run.info.run_id


def test_promotes_the_best_tcnet_run_and_sets_the_alias(store):
    from tcnet.tools.model_source import resolved_checkpoint

    add_run(store, "isic__lam0.1__fold0", "tcnet_tiny", 0.60, seed=1)
    best = add_run(store, "isic__lam0.3__fold0", "tcnet_tiny", 0.80, seed=2)
    add_run(store, "isic__lam0.5__fold0", "tcnet_tiny", 0.70, seed=3)
    add_run(store, "isic__unet__fold0", "unet", 0.95, seed=4)  # not a TCNet
    add_run(store, "isic__lam0.7__fold0", "tcnet_tiny", 0.99, status="FAILED", seed=5)  # did not finish
    add_run(store, "isic__lam0.9__fold0", "tcnet_tiny", None, seed=6)  # never evaluated

    result = promote_mod.promote(EXP, models_dir=store["models"], tracking_uri=store["uri"])
    assert result.tcnet_run_id == "isic__lam0.3__fold0" and result.mlflow_run_id == best
    assert result.metric == "eval_mean_DI" and result.value == pytest.approx(0.80) and result.candidates == 3
    assert result.model_uri == "models:/tcnet@champion" and not result.reused

    client = store["client"]
    version = client.get_model_version_by_alias("tcnet", "champion")
    assert str(version.version) == result.version and version.run_id == best
    assert version.tags["tcnet.run_id"] == "isic__lam0.3__fold0"
    with resolved_checkpoint("models:/tcnet@champion", uri=store["uri"]) as ckpt:
        assert sha256(ckpt) == sha256(store["models"] / EXP / "isic__lam0.3__fold0" / "best.pt")

    # Nothing new: the same version is re-aliased, nothing is logged twice.
    again = promote_mod.promote(EXP, models_dir=store["models"], tracking_uri=store["uri"])
    assert again.reused and again.version == result.version
    assert len(client.search_model_versions("name = 'tcnet'")) == 1


def test_a_better_run_moves_the_alias_and_the_cli_reports_it(store, capsys):
    add_run(store, "a__tcnet__fold0", "tcnet_tiny", 0.70, seed=1)
    assert cli(["promote", "--experiment", EXP, "--models", str(store["models"]), "--alias", "best-di",
                "--name", "lesions"]) == 0
    assert "registered lesions version 1" in capsys.readouterr().err
    newer = add_run(store, "a__tcnet__fold1", "tcnet_tiny", 0.75, seed=2)
    assert cli(["promote", "--experiment", EXP, "--models", str(store["models"]), "--alias", "best-di",
                "--name", "lesions", "--metric", "eval_mean_DI"]) == 0
    assert "version 2" in capsys.readouterr().err
    assert store["client"].get_model_version_by_alias("lesions", "best-di").run_id == newer


def test_runs_whose_checkpoint_was_replaced_are_passed_over(store):
    """The same run id trained again (another pipeline run) reuses the folder: an older, better
    MLflow run must not be registered with the newer run's weights."""
    add_run(store, "b__tcnet__fold0", "tcnet_tiny", 0.90, recorded_mlflow_run="f" * 32)  # folder now another run's
    add_run(store, "c__tcnet__fold0", "tcnet_tiny", 0.85, config_hash="other")  # checkpoint of another config
    ok = add_run(store, "d__tcnet__fold0", "tcnet_tiny", 0.60)
    result = promote_mod.promote(EXP, models_dir=store["models"])
    assert result.mlflow_run_id == ok and len(result.passed_over) == 2
    assert "b__tcnet__fold0" in result.passed_over[0] and "config other" in result.passed_over[1]
    assert "trained again since" in result.passed_over[0]


def test_a_run_trained_again_with_the_same_score_promotes_the_newest_training_quietly(store, capsys):
    """CPU training is deterministic: a run trained again (a code change) scores the same. The tie goes
    to the newest MLflow run, whose checkpoint is the one on disk: nothing to pass over."""
    add_run(store, "e__tcnet__fold0", "tcnet_tiny", 0.80, seed=1)
    newest = add_run(store, "e__tcnet__fold0", "tcnet_tiny", 0.80, seed=1)
    assert cli(["promote", "--experiment", EXP, "--models", str(store["models"])]) == 0
    err = capsys.readouterr().err
    assert "passed over" not in err and "best of 1 run(s), 2 trainings" in err, err
    assert store["client"].get_model_version_by_alias("tcnet", "champion").run_id == newest


def test_a_metric_typo_and_a_missing_models_folder_are_named(store, capsys):
    add_run(store, "f__tcnet__fold0", "tcnet_tiny", 0.80)
    assert cli(["promote", "--experiment", EXP, "--metric", "dice"]) == 2
    assert "--metric 'dice': no finished TCNet run of 'tcnet/isic_demo' holds it; valid: AC SE SP JA DI TJA AUC" \
        in capsys.readouterr().err
    assert cli(["promote", "--experiment", EXP, "--metric", "eval_pooled_AUC"]) == 2  # a real key, not logged yet
    err = capsys.readouterr().err
    assert "has no finished TCNet run with metric eval_pooled_AUC; evaluate it first" in err and "valid:" not in err
    assert cli(["promote", "--experiment", EXP, "--models", "/nonexistent/models"]) == 2
    assert "looked in /nonexistent/models, which does not exist (--models)" in capsys.readouterr().err


def test_nothing_to_promote_is_a_usage_error(store, capsys):
    assert cli(["promote", "--experiment", "nope", "--tracking-uri", store["uri"]]) == 2
    assert "no MLflow experiment 'tcnet/nope'" in capsys.readouterr().err
    assert cli(["promote", "--experiment", EXP, "--params", "absent.yaml"]) == 2
    assert "absent.yaml" in capsys.readouterr().err
    params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert cli(["promote", "--experiment", "isic2018_vc", "--params", str(params), "--tracking-uri", store["uri"]]) == 2
    assert "unknown experiment 'isic2018_vc' (did you mean 'isic2018_cv'?)" in capsys.readouterr().err
    assert cli(["promote", "--experiment", EXP, "--tracking-uri", "foo://bar"]) == 2
    assert "MLflow store foo://bar: " in capsys.readouterr().err  # one line, no traceback
    missing = Path(store["uri"].removeprefix("sqlite:///")).with_name("nonexistent.db")
    assert cli(["promote", "--experiment", EXP, "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"no MLflow store at {missing}" in capsys.readouterr().err and not missing.exists()  # none created
    add_run(store, "x__unet__fold0", "unet", 0.9)
    assert cli(["promote", "--experiment", EXP, "--tracking-uri", store["uri"]]) == 2
    assert "no finished TCNet run" in capsys.readouterr().err


def test_metric_names():
    assert promote_mod.metric_keys("DI") == ["eval_mean_DI", "eval_pooled_DI", "best_val_DI"]
    assert promote_mod.metric_keys("AUC", "pooled") == ["eval_pooled_AUC", "eval_mean_AUC"]
    assert promote_mod.metric_keys("eval_pooled_AUC") == ["eval_pooled_AUC"]


def test_a_training_runs_model_uri_resolves_to_its_checkpoint(store, tmp_path):
    """Training logs a torch (pt2) model, not a checkpoint: ``runs:/<id>/model`` as MODEL falls back
    to the run's own best.pt (tag ``tcnet.checkpoint``, as train sets it)."""
    import numpy as np
    from PIL import Image

    from tcnet.tools.model_source import resolved_checkpoint

    mlflow_id = add_run(store, "e__tcnet__fold0", "tcnet_tiny", 0.5)
    ckpt = store["models"] / EXP / "e__tcnet__fold0" / "best.pt"
    store["client"].set_tag(mlflow_id, "tcnet.checkpoint", str(ckpt.resolve()))
    with resolved_checkpoint(f"runs:/{mlflow_id}/model") as found:
        assert found == ckpt.resolve()
    Image.fromarray(np.zeros((9, 13, 3), np.uint8)).save(tmp_path / "z.png")
    assert cli(["predict", "--model", f"runs:/{mlflow_id}/model", "--input", str(tmp_path / "z.png"),
                "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "z_mask.png").is_file()
    with pytest.raises(ValueError, match="cannot be fetched"):  # a misspelt artifact is not the run's checkpoint
        with resolved_checkpoint(f"runs:/{mlflow_id}/pyfnuc"):
            pass


def test_the_file_the_metric_describes_is_registered(store):
    """When evaluate scored last.pt (its val images had chosen best.pt's epoch), promote registers last.pt."""
    from tcnet.tools.model_source import resolved_checkpoint

    mlflow_run = add_run(store, "e__tcnet__fold0", "tcnet_tiny", 0.80, seed=1)
    folder = store["models"] / EXP / "e__tcnet__fold0"
    torch.manual_seed(9)
    torch.save({"model": tcnet.create_model("tcnet_tiny").state_dict(), "model_name": "tcnet_tiny", "model_kwargs": {},
                "num_classes": 1, "image_size": 64, "epoch": 2, "run": {"experiment": EXP}, "config_hash": "cfg"},
               folder / "last.pt")
    store["client"].set_tag(mlflow_run, "tcnet.eval_checkpoint", "last.pt")
    store["client"].set_tag(mlflow_run, "tcnet.checkpoint", str(folder / "best.pt"))  # train's tag: not that file
    promote_mod.promote(EXP, models_dir=store["models"], tracking_uri=store["uri"])
    with resolved_checkpoint("models:/tcnet@champion", uri=store["uri"]) as ckpt:
        assert sha256(ckpt) == sha256(folder / "last.pt") != sha256(folder / "best.pt")


def test_a_superseded_run_is_not_a_candidate(store):
    """A training started again from epoch 0 marks its earlier MLflow run superseded (tcnet train):
    that run's metrics describe weights that no longer exist."""
    from tcnet.tracking import SUPERSEDED_TAG

    old = add_run(store, "e__tcnet__fold0", "tcnet_tiny", 0.95, seed=1)
    store["client"].set_tag(old, SUPERSEDED_TAG, "true")
    ok = add_run(store, "f__tcnet__fold0", "tcnet_tiny", 0.60, seed=2)
    result = promote_mod.promote(EXP, models_dir=store["models"])
    assert result.mlflow_run_id == ok and result.candidates == 1 and not result.passed_over
