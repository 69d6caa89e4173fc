"""MLflow tracking: URI resolution, retries, and concurrent writers on one sqlite store losing nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from tcnet import tracking
from tcnet.provenance import collect, dvc_data_hash, package_versions


def test_tracking_uri_env_wins_and_relative_sqlite_is_anchored(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri("sqlite:///m.db", root=tmp_path) == f"sqlite:///{tmp_path}/m.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert tracking.resolve_tracking_uri("http://mlflow:5000") == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking.resolve_tracking_uri("sqlite:///m.db") == "http://server:5000"


def test_pipeline_run_id_from_env_or_commit_and_params(monkeypatch):
    monkeypatch.setenv("TCNET_PIPELINE_RUN_ID", "kfp-123")
    assert tracking.pipeline_run_id({"a": 1}) == "kfp-123"
    monkeypatch.delenv("TCNET_PIPELINE_RUN_ID")
    a, b = tracking.pipeline_run_id({"a": 1}), tracking.pipeline_run_id({"a": 2})
    assert a != b and a == tracking.pipeline_run_id({"a": 1})  # stable for the same code and params


def test_retry_backs_off_on_locked_database_only(monkeypatch):
    monkeypatch.setattr(tracking, "RETRY_BASE_DELAY", 0.001)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert tracking.retry(flaky) == "ok" and len(calls) == 3

    def broken():
        calls.append(1)
        raise KeyError("not transient")

    calls.clear()
    with pytest.raises(KeyError):
        tracking.retry(broken)
    assert len(calls) == 1


def test_flatten_and_null_logger():
    assert tracking.flatten({"t": {"loss": {"w": 0.5}, "sizes": [1, 2]}, "x": None}) == {
        "t.loss.w": 0.5, "t.sizes": "[1, 2]", "x": None}
    # an empty mapping gives no key, so runs with and without an override line up in MLflow's compare view
    assert tracking.flatten({"kw": {}, "o": 1}) == {"o": 1}
    assert tracking.flatten({"kw": {"base_channels": 32}, "o": 1}) == {"kw.base_channels": 32, "o": 1}
    null = tracking.NullRunLogger()
    null.log_metrics({"a": 1}, step=1)
    with null.active(system_metrics=True):
        assert null.metric_steps("a") == set()


def test_provenance_has_versions_and_data_hash(tmp_path):
    (tmp_path / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    assert dvc_data_hash(tmp_path) == "abc123.dir"
    assert dvc_data_hash(tmp_path / "nowhere") == ""
    versions = package_versions()
    assert {"torch", "mlflow", "numpy", "smp", "tcnet"} <= set(versions)
    tags = collect("cpu", root=tmp_path)
    assert tags["tcnet.data_hash"] == "abc123.dir" and tags["tcnet.device"].startswith("cpu")
    assert tags["tcnet.git_commit"]  # a sha, or "unknown" outside git


def test_a_pod_without_a_checkout_takes_commit_and_data_hash_from_the_environment(tmp_path, monkeypatch):
    """A Kubeflow pod has no .git and no data.dvc: the image's build arg and fetch_data's read fill in."""
    from tcnet import provenance
    from tcnet.provenance import git_state, without_credentials

    pod = tmp_path / "app"
    pod.mkdir()
    monkeypatch.setattr(provenance, "code_root", lambda: pod)  # the package installed outside any checkout
    (pod / "params.yaml").write_text("{}\n")
    git_state.cache_clear()
    assert collect("cpu", root=pod)["tcnet.git_commit"] == "unknown"
    monkeypatch.setenv("TCNET_GIT_COMMIT", "0123abcd" * 5)
    monkeypatch.setenv("TCNET_DATA_HASH", "c4659d94.dir")
    git_state.cache_clear()
    tags = collect("cpu", root=pod)
    assert tags["tcnet.git_commit"] == "0123abcd" * 5 and tags["mlflow.source.git.commit"] == "0123abcd" * 5
    assert tags["tcnet.data_hash"] == "c4659d94.dir"
    (pod / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    # the component's value wins over a checkout's file (the local runner runs inside one, and the
    # task's data is the fetched revision's)
    assert dvc_data_hash(pod) == "c4659d94.dir"
    monkeypatch.delenv("TCNET_DATA_HASH")
    assert dvc_data_hash(pod) == "abc123.dir"
    git_state.cache_clear()
    assert without_credentials("https://user:TOKEN@github.com/o/r.git") == "https://github.com/o/r.git"
    assert without_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from tcnet.tracking import ExperimentTracker

    uri, wid, runs, steps, sync = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5])
    (sync / f"ready{wid}").touch()
    while not (sync / "go").exists():
        time.sleep(0.01)
    tracker = ExperimentTracker.open("concurrency", uri=uri)  # every writer races on the parent run
    for r in range(runs):
        log = tracker.run_logger(f"w{wid}_r{r}", "hash", {"writer": str(wid)})
        log.log_params({"writer": wid, "run": r})
        for s in range(steps):  # one transaction per step: maximal lock contention
            log.log_metrics({"loss": wid + s / 1000, "step_copy": s}, step=s)
        log.terminate("FINISHED")
    print(tracker.parent_run_id)
    """
)


@pytest.mark.slow
def test_concurrent_writers_lose_no_run_and_no_metric(tmp_path):
    """>= 4 processes log runs and metrics into ONE sqlite store at once; everything is read back."""
    from mlflow import MlflowClient

    writers, runs, steps = 4, 2, 25
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.init_store(uri)  # the documented protocol: initialise the store once, then fan out
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "TCNET_PIPELINE_RUN_ID": "concurrency-test", "MLFLOW_TRACKING_URI": uri}
    procs = [
        subprocess.Popen([sys.executable, str(script), uri, str(w), str(runs), str(steps), str(sync)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for w in range(writers)
    ]
    deadline = time.time() + 120
    while len(list(sync.glob("ready*"))) < writers and time.time() < deadline:
        time.sleep(0.05)
    (sync / "go").touch()
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    parents = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(parents) == 1, f"writers disagree on the parent run: {parents}"

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tcnet/concurrency")
    all_runs = client.search_runs([exp.experiment_id], max_results=1000)
    top = [r for r in all_runs if "mlflow.parentRunId" not in r.data.tags]
    assert [r.info.run_id for r in top] == list(parents)  # exactly one parent run
    children = {r.data.tags["tcnet.run_id"]: r for r in all_runs if r.data.tags.get("mlflow.parentRunId") in parents}
    assert sorted(children) == sorted(f"w{w}_r{r}" for w in range(writers) for r in range(runs))
    for name, r in children.items():
        assert r.info.status == "FINISHED" and r.data.params["writer"] == name[1]
        for key in ("loss", "step_copy"):
            history = client.get_metric_history(r.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(steps)), (name, key)


def test_the_commit_is_the_codes_not_the_working_folders(tmp_path, monkeypatch):
    """Run from another folder (or another repository), the commit recorded is the tcnet checkout's."""
    from tcnet.provenance import code_root, git_state

    monkeypatch.chdir(tmp_path)
    git_state.cache_clear()
    sha, _ = git_state()
    expected = subprocess.run(["git", "-C", str(code_root()), "rev-parse", "HEAD"], capture_output=True, text=True)
    if expected.returncode:  # an installed wheel, outside any checkout
        pytest.skip("tcnet is not running from a git checkout")
    assert sha == expected.stdout.strip() and collect("cpu", root=tmp_path)["tcnet.git_commit"] == sha


def test_dvc_lock_rewritten_by_dvc_repro_does_not_make_the_checkout_dirty(tmp_path):
    """dvc repro rewrites dvc.lock after every stage: the later stages of one run are not 'dirty'."""
    import subprocess

    from tcnet.provenance import git_state

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    (tmp_path / "params.yaml").write_text("a: 1\n")
    git("add", "-A")
    git("commit", "-qm", "x")
    git_state.cache_clear()
    assert git_state(str(tmp_path))[1] is False
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    git_state.cache_clear()
    assert git_state(str(tmp_path))[1] is False
    (tmp_path / "notes.txt").write_text("untracked, outside the package: not the code\n")
    (tmp_path / "tcnet").mkdir()
    (tmp_path / ".gitignore").write_text("__pycache__/\n")
    (tmp_path / "tcnet" / "__pycache__").mkdir()
    (tmp_path / "tcnet" / "__pycache__" / "x.pyc").write_bytes(b"ignored")
    (tmp_path / "tcnet" / "models").mkdir()
    (tmp_path / "tcnet" / "models" / "notes.txt").write_text("not code\n")
    git_state.cache_clear()
    assert git_state(str(tmp_path))[1] is False
    for new in ("zz_new.py", "models/zz_new.py"):  # a module the commit does not hold, at any depth
        (tmp_path / "tcnet" / new).write_text("X = 1\n")
        git_state.cache_clear()
        assert git_state(str(tmp_path))[1] is True
        (tmp_path / "tcnet" / new).unlink()
    (tmp_path / "params.yaml").write_text("a: 2\n")  # a real change still counts
    git_state.cache_clear()
    assert git_state(str(tmp_path))[1] is True
    git_state.cache_clear()
