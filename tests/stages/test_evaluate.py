"""Stage evaluate: every declared output, original-size masks, FOV-restricted pooled retina scores,
summary.json, and eval metrics/tables logged into the training's MLflow run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tcnet.cli import main as cli
from tcnet.config import Params, expand_runs, from_dict

EXPERIMENT = "e"
ISIC_RUN, DRIVE_RUN = "isic2017__tiny__fold0", "drive__tiny__fold0"
ISIC_SIZE, DRIVE_SIZE = (50, 40), (45, 40)  # original (width, height) of the look-alikes


def params_dict(root: Path, uri: str) -> dict:
    return {
        "preprocess": {"datasets": ["isic2017", "drive"], "image_size": 32},
        "train": {"epochs": 1, "batch_size": 2, "device": "cpu"},
        "evaluate": {"n_overlays": 2, "batch_size": 2},
        "mlflow": {"tracking_uri": uri, "log_models": False, "system_metrics": False},
        "experiments": {EXPERIMENT: {
            "title": "tiny", "reproduces": "test", "model": "tcnet_tiny", "runs": [{"name": "tiny"}],
            "aggregation": "mean",  # skin and retina together: the experiment must choose
            "data": [{"name": "isic2017", "train": "isic2017", "part": "val"},
                     {"name": "drive", "train": "isic2017", "eval": "drive", "part": "test"}],
        }},
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Raw look-alikes -> preprocess (32 px) -> split -> both runs trained 1 epoch, logged to MLflow."""
    from tcnet.config import PreprocessConfig, SplitConfig
    from tcnet.data.synth.writers import write_dataset
    from tcnet.stages import preprocess, split, train

    root = tmp_path_factory.mktemp("eval_data")
    write_dataset("isic2017", root / "raw" / "isic2017", n=6, seed=1, size=ISIC_SIZE)
    write_dataset("drive", root / "raw" / "drive", n=3, seed=1, size=DRIVE_SIZE)
    preprocess.run(PreprocessConfig(datasets=("isic2017", "drive"), image_size=32, workers=1), root / "raw", root / "pre")
    split.run(SplitConfig(), root / "pre", root / "splits")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    (root / "params.yaml").write_text(json.dumps(params_dict(root, uri)))  # JSON is YAML
    params = from_dict(Params, params_dict(root, uri)).validate()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("TCNET_PIPELINE_RUN_ID", "eval-test")
        result = train.run(params, EXPERIMENT, root / "pre", root / "splits", root / "models", mlflow=True,
                           progress=False)
    return root, params, uri, {r["run_id"]: r for r in result["runs"]}


def args(root: Path, *extra: str, params: str = "params.yaml", out: str = "eval") -> list[str]:
    return ["evaluate", "--params", str(root / params), "--experiment", EXPERIMENT,
            "--preprocessed", str(root / "pre"), "--splits", str(root / "splits"), "--raw", str(root / "raw"),
            "--models", str(root / "models"), "--out", str(root / out), *extra]


def read_csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_every_output_at_original_size(trained, monkeypatch):
    from tcnet.utils import heap

    root, params, uri, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TCNET_PIPELINE_RUN_ID", "eval-test")
    heap_calls = []
    monkeypatch.setattr(heap, "retain_freed_memory", lambda **kw: heap_calls.append(kw) or True)
    assert cli(args(root)) == 0
    # On CPU each evaluated run keeps its freed heap (large blocks still mapped): the next batch
    # reuses the activations' pages (cpu_settings --only heap_infer).
    assert heap_calls and all(kw == {"trim_threshold": None, "large_blocks": False} for kw in heap_calls)

    out = root / "eval" / EXPERIMENT / ISIC_RUN
    assert {p.name for p in out.iterdir()} == {"per_image.csv", "scores.json", "roc.csv", "history.csv", "masks",
                                               "overlays", ".tcnet-output"}
    scores = json.loads((out / "scores.json").read_text())
    assert {"mean", "pooled", "n", "dataset", "part", "aggregation", "run"} <= set(scores)
    assert scores["n"] == 3 and scores["dataset"] == "isic2017" and scores["part"] == "val"
    assert scores["aggregation"] == "mean" and scores["run"]["run_id"] == ISIC_RUN
    assert set(scores["mean"]) == {"AC", "SE", "SP", "JA", "DI", "TJA", "AUC"}
    assert all(0.0 <= v <= 1.0 for v in scores["mean"].values() if v is not None)
    split = json.loads((root / "splits" / "isic2017.json").read_text())  # the sizes behind the numbers, for compare
    assert scores["splits"] == {"isic2017": {"folds": [[len(f["train"]), len(f["val"])] for f in split["folds"]],
                                             "test": len(split["test"]), "source": split["source"]}}
    assert scores["splits"]["isic2017"]["folds"][0][1] == scores["n"] == 3

    rows = read_csv(out / "per_image.csv")
    assert list(rows[0]) == ["id", "AC", "SE", "SP", "JA", "DI", "TJA", "AUC"]
    ids = [r["id"] for r in rows]
    assert ids == ["ISIC_0001000", "ISIC_0001001", "ISIC_0001002"]  # the fold's val ids
    assert np.mean([float(r["DI"]) for r in rows]) == pytest.approx(scores["mean"]["DI"])
    assert list(read_csv(out / "roc.csv")[0]) == ["fpr", "tpr", "threshold"]
    assert (out / "history.csv").read_bytes() == (root / "models" / EXPERIMENT / ISIC_RUN / "history.csv").read_bytes()

    for image_id in ids:  # 0/255 masks at the ORIGINAL size
        mask = np.asarray(Image.open(out / "masks" / f"{image_id}.png"))
        assert mask.shape == ISIC_SIZE[::-1] and set(np.unique(mask)) <= {0, 255}
    overlays = sorted(p.name for p in (out / "overlays").iterdir())
    assert overlays == [f"{i}.png" for i in ids[:2]]  # evaluate.n_overlays
    assert np.asarray(Image.open(out / "overlays" / overlays[0])).shape == (*ISIC_SIZE[::-1], 3)

    summary = json.loads((root / "eval" / EXPERIMENT / "summary.json").read_text())
    assert set(summary["runs"]) == {ISIC_RUN, DRIVE_RUN}
    assert summary["runs"][ISIC_RUN]["mean"] == scores["mean"]


def test_retina_scores_are_pooled_inside_the_fov(trained):
    """DRIVE test images (the FOV gif ships): AC inside the FOV only, pooled headline with AUC."""
    from tcnet.data.adapters import discover, load_fov, load_mask

    root, _, uri, _ = trained
    pooled = params_dict(root, uri)
    pooled["experiments"][EXPERIMENT]["aggregation"] = "pooled"  # the experiment's choice, not the dataset's
    (root / "params_pooled.yaml").write_text(json.dumps(pooled))
    out = root / "eval_pooled" / EXPERIMENT / DRIVE_RUN
    if not out.is_dir():
        assert cli(args(root, "--no-mlflow", "--run", DRIVE_RUN, params="params_pooled.yaml", out="eval_pooled")) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["aggregation"] == "pooled" and scores["dataset"] == "drive" and scores["part"] == "test"
    assert scores["n"] == 3 and 0.0 <= scores["pooled"]["AUC"] <= 1.0
    samples = {s.id: s for s in discover("drive", root / "raw" / "drive")}
    for row in read_csv(out / "per_image.csv"):
        s = samples[row["id"]]
        pred = np.asarray(Image.open(out / "masks" / f"{row['id']}.png")) > 0
        truth, fov = load_mask(s), load_fov(s)
        assert pred.shape == truth.shape == DRIVE_SIZE[::-1]
        assert float(row["AC"]) == pytest.approx(np.mean(pred[fov] == truth[fov]))  # FOV pixels only
    # the per-image parts compare bootstraps: they add up to the pooled scores
    from tcnet.report.pairing import pooled_score
    from tcnet.metrics import ProbabilityHistogram
    from tcnet.stages.evaluate import PARTS_BINS

    with np.load(out / "pooled_parts.npz") as z:
        assert list(z["ids"]) == [r["id"] for r in read_csv(out / "per_image.csv")]
        total = z["counts"].sum(0), z["pos"].sum(0), z["neg"].sum(0)
        coarse = ProbabilityHistogram(PARTS_BINS)
        assert z["pos"].shape == (3, coarse.size) and str(z["layout"]) == coarse.layout
        assert int(z["pos"].sum() + z["neg"].sum()) == int(z["counts"].sum())
    assert float(pooled_score("AC", *total)) == pytest.approx(scores["pooled"]["AC"])
    assert float(pooled_score("AUC", *total)) == pytest.approx(scores["pooled"]["AUC"], abs=2e-3)
    isic = root / "eval_pooled" / EXPERIMENT / ISIC_RUN  # a skin set under an experiment that pools
    assert cli(args(root, "--no-mlflow", "--run", ISIC_RUN, params="params_pooled.yaml", out="eval_pooled")) == 0
    assert json.loads((isic / "scores.json").read_text())["aggregation"] == "pooled" and (isic / "pooled_parts.npz").is_file()
    for run in (ISIC_RUN, DRIVE_RUN):  # the experiment that averages images: DRIVE too, and no parts
        out = root / "eval" / EXPERIMENT / run
        if not out.is_dir():
            assert cli(args(root, "--no-mlflow", "--run", run)) == 0
        assert json.loads((out / "scores.json").read_text())["aggregation"] == "mean"
        assert (out / "per_image.csv").is_file() and not (out / "pooled_parts.npz").exists()  # mean-of-images scoring has no use for them


def test_eval_metrics_and_tables_land_in_the_training_mlflow_run(trained, monkeypatch):
    from mlflow import MlflowClient

    root, params, uri, runs = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TCNET_PIPELINE_RUN_ID", "eval-test")
    from tcnet.stages import evaluate

    evaluate.run(params, EXPERIMENT, root / "pre", root / "splits", root / "raw", root / "models", root / "eval",
                 run_ids=[ISIC_RUN], progress=False)
    client = MlflowClient(uri)
    run = client.get_run(runs[ISIC_RUN]["mlflow_run_id"])  # the nested run training created
    scores = json.loads((root / "eval" / EXPERIMENT / ISIC_RUN / "scores.json").read_text())
    assert run.data.metrics["eval_mean_DI"] == pytest.approx(scores["mean"]["DI"])
    assert run.data.metrics["eval_pooled_AUC"] == pytest.approx(scores["pooled"]["AUC"])
    assert "train_loss" in run.data.metrics and run.data.tags["tcnet.eval_part"] == "val"
    eval_files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/per_image.json", "eval/scores.json", "eval/roc.csv", "eval/roc.png", "eval/overlays"} <= eval_files
    assert run.data.tags["tcnet.eval_checkpoint"] == "last.pt" and not client.list_artifacts(run.info.run_id, "checkpoint")
    # with mlflow.log_models the scored checkpoint goes into the run too (promote's source without a shared disk)
    from dataclasses import replace

    logging = replace(params, mlflow=replace(params.mlflow, log_models=True))
    evaluate.run(logging, EXPERIMENT, root / "pre", root / "splits", root / "raw", root / "models", root / "eval",
                 run_ids=[ISIC_RUN], progress=False)
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")] == ["checkpoint/last.pt"]
    exp = client.get_experiment_by_name(f"tcnet/{EXPERIMENT}")
    tops = [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
    assert len(tops) == 1  # one parent run for the pipeline run: train and evaluate met there


def test_errors_name_what_is_missing_or_stale(trained, tmp_path):
    from tcnet.stages import evaluate

    root, params, _, _ = trained
    spec = next(s for s in expand_runs(params, EXPERIMENT) if s.run_id == ISIC_RUN)
    with pytest.raises(FileNotFoundError, match="last.pt"):  # its val images chose best.pt: last.pt is scored
        evaluate.evaluate_run(spec, params.evaluate, root / "pre", root / "splits", root / "raw", tmp_path / "none",
                              tmp_path / "out")
    import shutil

    raw = tmp_path / "raw"  # the same files, but one image changed since preprocess read it (same size)
    shutil.copytree(root / "raw", raw)
    image = next((raw / "isic2017" / "ISIC-2017_Validation_Data").glob("*.jpg"))
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)
    with pytest.raises(ValueError, match=r"not the bytes preprocess read .*re-run 'tcnet preprocess'"):
        evaluate.evaluate_run(spec, params.evaluate, root / "pre", root / "splits", raw,
                              root / "models" / EXPERIMENT / ISIC_RUN, tmp_path / "out")
    # a DRIVE FOV file edited since preprocess (training saw the old field of view): named, not scored
    drive_spec = next(s for s in expand_runs(params, EXPERIMENT) if s.data.eval == "drive")
    raw = tmp_path / "raw_fov"
    shutil.copytree(root / "raw", raw)
    fov_file = sorted((raw / "drive").rglob("test/mask/*"))[0]
    with Image.open(fov_file) as im:
        pixels = np.asarray(im.convert("L")).copy()
    pixels[:3, :3] = 255 - pixels[:3, :3]
    Image.fromarray(pixels).save(fov_file)
    with pytest.raises(ValueError, match=rf"{fov_file.name}: not the bytes preprocess read"):
        evaluate.evaluate_run(drive_spec, params.evaluate, root / "pre", root / "splits", raw,
                              root / "models" / EXPERIMENT / drive_spec.run_id, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"raw data folder not found.*preprocess.raw_dir in params, or --raw"):
        evaluate.run(params, EXPERIMENT, root / "pre", root / "splits", tmp_path / "no-raw", root / "models",
                     tmp_path / "out", mlflow=False)
    with pytest.raises(FileNotFoundError, match=r"models folder not found \(--models.*no-models"):
        evaluate.run(params, EXPERIMENT, root / "pre", root / "splits", root / "raw", tmp_path / "no-models",
                     tmp_path / "out", mlflow=False)
    raw = params_dict(root, "sqlite:///x.db")
    raw["train"]["lr"] = 0.5
    changed = next(s for s in expand_runs(from_dict(Params, raw).validate(), EXPERIMENT) if s.run_id == ISIC_RUN)
    with pytest.raises(ValueError, match="another configuration"):
        evaluate.evaluate_run(changed, params.evaluate, root / "pre", root / "splits", root / "raw",
                              root / "models" / EXPERIMENT / ISIC_RUN, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_run_folder_holding_a_users_files_is_refused_before_any_model_loads(trained, tmp_path, monkeypatch):
    """OUT/<exp>/<run_id>/ is replaced whole: one holding anything else is refused up front (not
    after the runs before it were scored); an evaluation written before the mark is evaluate's."""
    import shutil

    from tcnet.stages import evaluate

    root, params, _, _ = trained
    runs = [s.run_id for s in expand_runs(params, EXPERIMENT)]
    mine = tmp_path / "out" / EXPERIMENT / runs[-1]
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    loads = []
    monkeypatch.setattr(evaluate, "evaluate_run", lambda *a, **k: loads.append(a) or {})
    with pytest.raises(FileExistsError, match=r"'tcnet evaluate' did not write \(notes.txt\)"):
        evaluate.run(params, EXPERIMENT, root / "pre", root / "splits", root / "raw", root / "models",
                     tmp_path / "out", mlflow=False)
    assert not loads and (mine / "notes.txt").read_text() == "mine"
    shutil.rmtree(mine)
    mine.mkdir()
    for name in ("scores.json", "per_image.csv", "masks"):  # before the mark: evaluate's own
        (mine / name).mkdir() if name == "masks" else (mine / name).write_text("{}")
    evaluate.run(params, EXPERIMENT, root / "pre", root / "splits", root / "raw", root / "models",
                 tmp_path / "out", mlflow=False)
    assert len(loads) == len(runs)


def test_the_checkpoint_scored_is_never_one_chosen_on_the_scored_images(trained, tmp_path):
    """best.pt is the epoch with the best val Dice: scoring it on those val images would report a
    maximum over epochs. auto scores last.pt there, and best.pt on a test set or another dataset."""
    from tcnet.config import EvaluateConfig
    from tcnet.stages import evaluate

    root, params, _, _ = trained
    specs = {s.run_id: s for s in expand_runs(params, EXPERIMENT)}
    auto = EvaluateConfig()
    assert evaluate.checkpoint_choice(specs[ISIC_RUN], auto)[0] == "last.pt"  # isic2017 val, trained on isic2017
    assert evaluate.checkpoint_choice(specs[DRIVE_RUN], auto)[0] == "best.pt"  # another dataset's test part
    assert evaluate.checkpoint_choice(specs[ISIC_RUN], EvaluateConfig(checkpoint="best"))[0] == "best.pt"
    with pytest.raises(ValueError, match="valid: auto, best, last"):
        EvaluateConfig(checkpoint="final").validate()
    out = tmp_path / "out"
    evaluate.run(params, EXPERIMENT, root / "pre", root / "splits", root / "raw", root / "models", out, mlflow=False)
    for run_id, name in ((ISIC_RUN, "last.pt"), (DRIVE_RUN, "best.pt")):
        ckpt = json.loads((out / EXPERIMENT / run_id / "scores.json").read_text())["checkpoint"]
        assert ckpt["name"] == name and ckpt["path"] == str((root / "models" / EXPERIMENT / run_id / name).resolve())
