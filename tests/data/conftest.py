"""Shared fixtures for the data tests: small synthetic look-alikes of every dataset (written once)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tcnet.data.synth.writers import write_dataset

# Small but complete: every split and every decoy file present. CHASE keeps all 28 images so the
# first-20/last-8 convention holds.
SMALL = {
    "isic2017": dict(n=4, size=(64, 48)),  # 4 train / 2 val / 2 test
    "isic2018": dict(n=4, size=(64, 48), n_val=2),
    "ph2": dict(n=3, size=(64, 48)),
    "drive": dict(n=2, size=(72, 76)),  # 2 train / 2 test
    "chase_db1": dict(n=28, size=(96, 92)),
}


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A pristine tree ``<root>/<dataset>/`` of small look-alikes. Do not modify: use ``synth_copy``."""
    root = tmp_path_factory.mktemp("synth")
    for dataset, kw in SMALL.items():
        write_dataset(dataset, root / dataset, seed=3, **kw)
    return root


@pytest.fixture
def synth_copy(synth_root, tmp_path):
    """``synth_copy(dataset) -> Path``: a private, modifiable copy of one look-alike."""

    def copy(dataset: str) -> Path:
        dst = tmp_path / dataset
        shutil.copytree(synth_root / dataset, dst)
        return dst

    return copy
