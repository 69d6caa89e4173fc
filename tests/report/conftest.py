"""Fixtures for the compare stage's parts: the project's params and fabricated evaluation outputs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/report/fabricate.py

from fabricate import ROOT, fabricate_eval  # noqa: E402
from tcnet.config import load_params  # noqa: E402
from tcnet.report.paper import load_reported  # noqa: E402


@pytest.fixture(scope="session")
def params():
    return load_params(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def reported():
    return load_reported(ROOT / "paper" / "reported.yaml")


@pytest.fixture(scope="session")
def eval_dir(params, tmp_path_factory):
    d = tmp_path_factory.mktemp("eval")
    fabricate_eval(params, d)
    return d
