"""The whole Kubeflow pipeline under the KFP local runner gives the same numbers as ``dvc repro``.

A temporary copy of the repository (real git, real DVC with the bundled local remote) and a tiny
configuration: two experiments, three runs, one epoch on a few images. Two runs train and are
evaluated on ISIC 2017, one trains on ISIC 2017 and is evaluated on PH2: two runs loops (one per
pair of datasets), two data chains, a ``gather`` between the loops and compare. The pipeline fetches the data
from that repository at its HEAD commit through DVC (as a pod does), runs every stage as a
subprocess (``kfp.local.SubprocessRunner(use_venv=False)``); ``dvc pull`` + ``dvc repro`` runs the
same stages through the ``tcnet`` CLI. Every run's scores and compare's headline metrics must agree.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
EXPERIMENT = "loss_sweep"
TRANSFER = "ph2_transfer"  # trains on isic2017, evaluated on ph2: a second loop


def sh(cmd, cwd, env=None) -> str:
    run_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **GIT_ENV, **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=run_env)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout


def tiny(params: dict) -> dict:
    """Two experiments (three runs), two datasets, one epoch on 8 images: seconds per stage."""
    p = yaml.safe_load(yaml.safe_dump(params))
    p["preprocess"].update(datasets=["isic2017", "ph2"], image_size=32, image_size_overrides={}, workers=1)
    p["train"].update(epochs=1, batch_size=4, max_train_images=8, device="cpu", num_workers=0)
    p["evaluate"].update(n_overlays=1)
    p["mlflow"].update(log_models=False, system_metrics=False)
    p["compare"]["bootstrap"] = 50
    exp, transfer = p["experiments"][EXPERIMENT], p["experiments"][TRANSFER]
    exp["runs"] = exp["runs"][:2]
    transfer["runs"] = [r for r in transfer["runs"] if r["name"] == "tcnet"]
    p["experiments"] = {EXPERIMENT: exp, TRANSFER: transfer}
    return p


def missing_prerequisites() -> str:
    for stage in ("preprocess", "split", "train", "evaluate", "compare"):
        if importlib.util.find_spec(f"tcnet.stages.{stage}") is None:
            return f"tcnet/stages/{stage}.py does not exist yet"
    if not (ROOT / "data.dvc").is_file() or not (ROOT / ".dvc" / "config").is_file():
        return "the DVC-tracked demo data (data.dvc, .dvc/config) does not exist yet"
    return ""


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """What a clone holds (tracked + untracked-not-ignored files), committed, with tiny params."""
    reason = missing_prerequisites()
    if reason:
        pytest.skip(reason)
    dst = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    params = tiny(yaml.safe_load((dst / "params.yaml").read_text()))
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(["git", "init", "-q"], dst)
    sh(["git", "add", "-A"], dst)
    sh(["git", "commit", "-qm", "tiny params"], dst)
    return dst


def scores(eval_root: Path) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(eval_root.rglob("*/*/scores.json"))
            if p.parent.parent.name in (EXPERIMENT, TRANSFER)}


def numbers(obj, prefix=""):
    """Flatten to {path: number} (strings and the like are compared separately)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(numbers(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): float(obj)} if isinstance(obj, (int, float)) and not isinstance(obj, bool) else {}


def test_local_kfp_run_matches_dvc_repro(repo, tmp_path):
    sys.path.insert(0, str(ROOT))
    from pipeline.pipeline import PipelineOptions, local_run

    # 1. The pipeline, with the KFP local runner; data from the repository's HEAD through DVC.
    opts = PipelineOptions(params=repo / "params.yaml", reported=repo / "paper" / "reported.yaml",
                           mlflow_uri=f"sqlite:///{tmp_path / 'kfp-mlflow.db'}", train_retries=0)
    with pytest.warns(UserWarning, match="have no effect in the current local runner"):
        run_dir = local_run(opts, tmp_path / "kfp", {"data_repo_url": str(repo), "data_rev": "HEAD"})
    assert run_dir is not None and run_dir.is_dir()

    # 2. The same stages through DVC and the tcnet CLI.
    sh(["dvc", "pull", "-q", "data.dvc"], repo)
    sh(["dvc", "repro", "compare"], repo, env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'dvc-mlflow.db'}"})

    # Every run: same evaluation scores.
    kfp_scores, dvc_scores = scores(run_dir), scores(repo / "outputs" / "eval")
    assert sorted(kfp_scores) == sorted(dvc_scores) and len(dvc_scores) == 3
    assert {s["dataset"] for s in dvc_scores.values()} == {"isic2017", "ph2"}
    for run_id, want in dvc_scores.items():
        got = kfp_scores[run_id]
        assert numbers(got["mean"]) == pytest.approx(numbers(want["mean"]), abs=1e-6), run_id
        assert numbers(got["pooled"]) == pytest.approx(numbers(want["pooled"]), abs=1e-6), run_id
        assert got["n"] == want["n"]

    # compare: same headline metrics, and the typed outputs the KFP UI shows exist.
    (kfp_metrics,) = run_dir.rglob("compare/reports/metrics.json")
    want = json.loads((repo / "outputs" / "reports" / "metrics.json").read_text())
    got = json.loads(kfp_metrics.read_text())
    assert numbers(got) == pytest.approx(numbers(want), abs=1e-6)
    assert got["data_label"] == want["data_label"]
    assert (run_dir / "compare" / "report").read_text().lstrip().lower().startswith(("<!doctype", "<html"))
    assert "lambda" in (run_dir / "compare" / "tables").read_text()
    executor = json.loads((run_dir / "compare" / "executor_output.json").read_text())
    headline = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert headline and all(isinstance(v, float) for v in headline.values())

    # two loops (isic2017; isic2017 -> ph2): the first one's evaluations reached compare through gather
    (gathered,) = [p for p in run_dir.iterdir() if p.name.startswith("gather")]
    assert sorted(p.name for p in (gathered / "merged").glob("*/*")) == sorted(
        r for r, sc in dvc_scores.items() if sc["dataset"] == "isic2017")

    # MLflow: one parent run for this pipeline run (TCNET_PIPELINE_RUN_ID = the KFP run id), the two
    # trainings nested under it with their evaluation metrics, compare's numbers on the parent.
    from mlflow import MlflowClient

    client = MlflowClient(opts.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(f"tcnet/{EXPERIMENT}").experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.tags["tcnet.run_id"] for r in children) == sorted(r for r, sc in dvc_scores.items()
                                                                          if sc["dataset"] == "isic2017")
    assert {r.data.tags["tcnet.pipeline_run"] for r in runs} == {parent.data.tags["tcnet.pipeline_run"]}
    assert all("eval_mean_AUC" in r.data.metrics for r in children)
    assert any(k.startswith("compare.") for k in parent.data.metrics)
    # the data tasks, one chain per dataset, in tcnet/data: grouped by their own params (they are
    # cached across pipeline runs, so they never see the job's id), each chain's runs its own
    data = client.search_runs([client.get_experiment_by_name("tcnet/data").experiment_id], "tags.`tcnet.run_id` != ''")
    datasets = yaml.safe_load((repo / "params.yaml").read_text())["preprocess"]["datasets"]
    assert sorted((r.data.tags["tcnet.run_id"], r.data.tags["tcnet.datasets"]) for r in data) == sorted(
        (stage, d) for stage in ("preprocess", "split") for d in datasets)
    assert all(r.info.status == "FINISHED" for r in data)
    assert parent.data.tags["tcnet.pipeline_run"] not in {r.data.tags["tcnet.pipeline_run"] for r in data}
