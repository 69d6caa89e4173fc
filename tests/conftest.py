"""Fixtures shared by several test folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def _sh(cmd, cwd) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **GIT_ENV}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))}: {p.stdout}\n{p.stderr}"
    return p.stdout.strip()


@pytest.fixture(scope="session")
def remote_only_data_repo():
    """``make(repo) -> (file:// URL, commit)``: ``repo/data/`` (already written) committed to a new git +
    DVC repository and pushed to a DVC remote beside it (``repo/../remote``); the working copy of the
    data and the DVC cache are then deleted, so a reader must clone and pull, as a pod does."""

    def make(repo: Path) -> tuple[str, str]:
        _sh(["git", "init", "-q"], repo)
        _sh(["dvc", "init", "-q"], repo)
        _sh(["dvc", "add", "-q", "data"], repo)
        _sh(["dvc", "remote", "add", "-d", "storage", str(repo.parent / "remote")], repo)
        _sh(["dvc", "push", "-q"], repo)
        _sh(["git", "add", "-A"], repo)
        _sh(["git", "commit", "-qm", "data"], repo)
        _sh(["rm", "-rf", "data", ".dvc/cache"], repo)
        return f"file://{repo}", _sh(["git", "rev-parse", "HEAD"], repo)

    return make
