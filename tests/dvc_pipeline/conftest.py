"""A temporary copy of the repository as a real git + DVC project, for end-to-end pipeline tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def sh(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    run_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=run_env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def copy_repo(dst: Path) -> Path:
    """Copy what a clone would hold (tracked + untracked-not-ignored files) into ``dst``."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh(["git", "init", "-q"], dst)
    sh(["git", "add", "-A"], dst)
    sh(["git", "commit", "-qm", "copy"], dst, env=env)
    return dst


def tiny_params(params: dict) -> dict:
    """The demo params cut to a few seconds of training per run (same stages, same code paths)."""
    p = yaml.safe_load(yaml.safe_dump(params))
    p["train"].update(epochs=1, batch_size=4, max_train_images=8)
    p["split"]["cv_folds"] = 2
    p["preprocess"]["image_size_overrides"] = {"drive": 64, "chase_db1": 64}
    p["mlflow"]["log_models"] = False
    p["compare"]["bootstrap"] = 200
    exps = p["experiments"]
    exps["loss_sweep"]["runs"] = exps["loss_sweep"]["runs"][:2]
    exps["isic2018_cv"]["runs"] = [r for r in exps["isic2018_cv"]["runs"] if r["name"] in ("unetpp", "tcnet")]
    exps["ablation"]["runs"] = exps["ablation"]["runs"][:1] + exps["ablation"]["runs"][-1:]
    exps["ablation"]["data"] = exps["ablation"]["data"][:1]
    del exps["attention"]
    del exps["ph2_transfer"]
    for e in exps.values():  # experiment-level train overrides (the demo's ablation: 20 epochs) win over train.*
        e.pop("train", None)
    return p


@pytest.fixture(scope="session")
def run_cmd():
    """``run_cmd(cmd, cwd, check=True, env=None)``: run a command with the venv's tools on PATH."""
    return sh


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    params = tiny_params(yaml.safe_load((repo / "params.yaml").read_text()))
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    sh(["git", "commit", "-qam", "tiny params"], repo, env=env)
    return repo
