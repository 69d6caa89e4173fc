"""tcnet.tools.model_source: errors about a fetched model name what the user passed."""

from __future__ import annotations

import contextlib

import pytest

from tcnet.checkpoint import CheckpointError
from tcnet.tools import model_source


def test_a_bad_registry_checkpoint_is_named_by_its_uri_not_the_deleted_temporary_copy(tmp_path, monkeypatch):
    fetched = tmp_path / "tcnet-model-x1" / "artifacts" / "last.pt"  # where an artifact is downloaded to
    fetched.parent.mkdir(parents=True)
    fetched.write_bytes(b"not a checkpoint")

    @contextlib.contextmanager
    def fetch(spec, **kw):
        yield fetched

    monkeypatch.setattr(model_source, "resolved_checkpoint", fetch)
    with pytest.raises(CheckpointError) as e:
        model_source.load("models:/tcnet@champion", device="cpu")
    assert str(e.value).startswith("model 'models:/tcnet@champion': ") and "last.pt" in str(e.value)
    assert str(fetched.parent) not in str(e.value)
    with pytest.raises(CheckpointError, match=str(fetched).replace(".", r"\.")):  # a file of the user's: its path
        model_source.load(str(fetched), device="cpu")
