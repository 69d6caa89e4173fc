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


def test_a_runs_scored_checkpoint_is_found_beside_its_tagged_one_from_any_directory(tmp_path, monkeypatch):
    """Promote scores last.pt where the run's tcnet.checkpoint tag names best.pt (an absolute path):
    the file beside the tag is the run's, wherever the command runs (models_dir's default,
    outputs/models, is relative to the working directory)."""
    import json
    import types

    folder = tmp_path / "outputs" / "models" / "exp" / "run0"
    folder.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (folder / name).write_bytes(b"x")
    (folder / "run.json").write_text(json.dumps({"mlflow_run_id": "abc"}))
    run = types.SimpleNamespace(data=types.SimpleNamespace(tags={"tcnet.checkpoint": str(folder / "best.pt"),
                                                                 "tcnet.run_id": "run0", "tcnet.experiment": "exp"},
                                                           params={}),
                                info=types.SimpleNamespace(run_id="abc", experiment_id="0"))
    monkeypatch.chdir(tmp_path / "outputs")  # not the project root
    assert model_source.checkpoint_for_run(run, names=("last.pt",)) == folder / "last.pt"
    assert model_source.checkpoint_for_run(run) == folder / "best.pt"  # the tagged file itself first
    (folder / "run.json").write_text(json.dumps({"mlflow_run_id": "other"}))  # trained again since: not this run's
    assert model_source.checkpoint_for_run(run, names=("last.pt",)) is None
