"""Shared fixtures for the Kubeflow tests: the repository root on sys.path (``components`` and
``pipeline`` are top-level folders, not installed packages) and one compiled package per session."""

import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """``python -m pipeline compile`` on params.yaml: (path, pipeline spec, platform spec)."""
    from pipeline.__main__ import main

    out = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    assert main(["compile", "--out", str(out), "--data-repo-url", "https://git.example.com/tcnet.git",
                 "--data-rev", "v0.1.0", "--gpus", "2"]) == 0
    docs = list(yaml.safe_load_all(out.read_text()))  # the whole package is valid YAML, header included
    assert len(docs) == 2, "expected the pipeline spec and the Kubernetes platform spec"
    return out, docs[0], docs[1]
