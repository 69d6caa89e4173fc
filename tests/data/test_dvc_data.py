"""The DVC-versioned demo data: data.dvc + the bundled remote restore it, and it is regenerable.

No mocks: a real temporary git + DVC repository pulls from the real ``dvc-remote/`` folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA_DVC = ROOT / "data.dvc"
REMOTE = ROOT / "dvc-remote"

pytestmark = pytest.mark.skipif(not DATA_DVC.is_file(), reason="data.dvc not present in this checkout")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tree_md5(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): _md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tracked() -> dict:
    """data.dvc's single output and its directory manifest ({relpath: md5}) read from the remote."""
    out = yaml.safe_load(DATA_DVC.read_text())["outs"][0]
    assert out["path"] == "data" and out["md5"].endswith(".dir")
    digest = out["md5"]
    manifest_file = REMOTE / "files" / "md5" / digest[:2] / digest[2:]
    assert manifest_file.is_file(), f"{manifest_file} missing: run 'dvc push' after 'dvc add data'"
    manifest = {e["relpath"]: e["md5"] for e in json.loads(manifest_file.read_text())}
    assert len(manifest) == out["nfiles"]
    return {"out": out, "manifest": manifest}


def _git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)


def test_remote_config_ships_with_the_repo():
    cfg = (ROOT / ".dvc" / "config").read_text()
    assert "remote = demo" in cfg and "url = ../dvc-remote" in cfg  # relative to .dvc/: the repo's dvc-remote/
    assert _git("check-ignore", "-q", "dvc-remote/files/md5", cwd=ROOT).returncode == 1  # NOT ignored
    assert _git("check-ignore", "-q", "data/isic2017", cwd=ROOT).returncode == 0  # raw data ignored


def test_demo_data_is_regenerable_by_tcnet_synth(tracked, tmp_path):
    """``tcnet synth all --out data`` (default seed and sizes) writes exactly the tracked bytes."""
    from tcnet.tools.synth import run

    run("all", tmp_path / "data")
    assert _tree_md5(tmp_path / "data") == tracked["manifest"]


def test_dvc_pull_into_a_fresh_repo_restores_the_tracked_files(tracked, tmp_path):
    repo = tmp_path / "clone"
    (repo / ".dvc").mkdir(parents=True)
    shutil.copy(DATA_DVC, repo / "data.dvc")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    if (ROOT / ".dvcignore").exists():
        shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    shutil.copytree(REMOTE, repo / "dvc-remote")
    assert _git("init", "-q", cwd=repo).returncode == 0
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache")}
    r = subprocess.run([sys.executable, "-m", "dvc", "pull"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    restored = _tree_md5(repo / "data")
    assert restored == tracked["manifest"]
    assert sum((repo / "data" / p).stat().st_size for p in restored) == tracked["out"]["size"]
    from tcnet.data.adapters import discover

    counts = {d: len(discover(d, repo / "data" / d)) for d in ("isic2017", "isic2018", "ph2", "drive", "chase_db1")}
    assert counts == {"isic2017": 32, "isic2018": 24, "ph2": 12, "drive": 16, "chase_db1": 28}
