"""Resolve a MODEL argument to a TCNet checkpoint file, and load it.

MODEL is any of:

- a checkpoint file (``outputs/models/<exp>/<run_id>/best.pt``);
- a training run folder holding ``best.pt`` (or ``last.pt``);
- a saved MLflow pyfunc model folder (one written by :func:`tcnet.tools.serving.log_pyfunc_model`);
- an MLflow model URI: ``runs:/<mlflow_run_id>/<name>``, ``models:/<name>/<version>``,
  ``models:/<name>@<alias>`` (e.g. ``models:/tcnet@champion``) or ``models:/<model_id>``.

A URI is downloaded from the tracking server (``MLFLOW_TRACKING_URI``, else the project's
``params.yaml`` ``mlflow.tracking_uri``, else ``sqlite:///mlflow.db``: :func:`tracking_uri`) into a
temporary folder; the checkpoint inside is found from the model's
``MLmodel`` file (the pyfunc's ``checkpoint`` artifact), else as the one ``*.pt`` file it holds.
A ``runs:/<id>`` URI whose artifacts hold no checkpoint (e.g. a torch-flavour model) falls back to
the run's own checkpoint on local disk (see :func:`checkpoint_for_run`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

URI_SCHEMES = ("runs:/", "models:/")
CHECKPOINT_ARTIFACT = "checkpoint"  # the pyfunc artifact key holding the checkpoint file
CHECKPOINT_NAMES = ("best.pt", "last.pt")


def is_mlflow_uri(spec: str) -> bool:
    return str(spec).startswith(URI_SCHEMES)


def tracking_uri(explicit: str | None = None) -> str:
    """The MLflow tracking URI: ``explicit``, else :func:`tcnet.tracking.resolve_tracking_uri`
    (``MLFLOW_TRACKING_URI``, else the project's ``params.yaml`` ``mlflow.tracking_uri``, else
    ``sqlite:///mlflow.db`` at the project root): the store ``tcnet promote`` registers in."""
    from tcnet.tracking import resolve_tracking_uri

    return explicit or resolve_tracking_uri(_params_tracking_uri())


def _params_tracking_uri() -> str | None:
    """``mlflow.tracking_uri`` of the project's params.yaml, if it has one; a params file that does
    not parse is left to the commands that need it (predict and export do not)."""
    import yaml

    from tcnet.provenance import project_root

    try:
        params = yaml.safe_load((project_root() / "params.yaml").read_text()) or {}
        uri = (params.get("mlflow") or {}).get("tracking_uri")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None
    return str(uri) if uri else None


def resolve_device(name: str = "auto", option: str = "--device"):
    """The device of predict / serve: :func:`tcnet.training.runtime.resolve_device`'s rule; ``option``
    names the setting in its errors (``--device``, ``TCNET_DEVICE``)."""
    from tcnet.training.runtime import resolve_device as resolve

    return resolve(name, option=option)


def require_store(uri: str, prefix: str = "") -> None:
    """Refuse an ``sqlite:///`` tracking URI whose database file does not exist: MLflow would create
    an empty store there, then find nothing in it (predict, export, serving, promote)."""
    from tcnet.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise FileNotFoundError(f"{prefix}no MLflow store at {db} (tracking URI {uri}); run from the project root, "
                                "or set MLFLOW_TRACKING_URI (promote: --tracking-uri) to the store that holds it")


def checkpoint_in_dir(folder: Path) -> Path | None:
    """The checkpoint a folder stands for: a pyfunc model's artifact, ``best.pt``/``last.pt``, or its one ``*.pt``."""
    folder = Path(folder)
    mlmodel = folder / "MLmodel"
    if mlmodel.is_file():
        import yaml

        conf = yaml.safe_load(mlmodel.read_text()) or {}
        art = ((conf.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
        entry = art.get(CHECKPOINT_ARTIFACT)
        if entry and (folder / entry["path"]).is_file():
            return folder / entry["path"]
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.rglob("*.pt") if p.is_file())
    if len(found) == 1:
        return found[0]
    return None


def _recorded_mlflow_run_ids(run_json: Path) -> set[str]:
    """The MLflow run a training folder's ``run.json`` records (``mlflow_run_id``, written by train)."""
    import json

    try:
        data = json.loads(run_json.read_text())
    except (OSError, ValueError):
        return set()
    value = data.get("mlflow_run_id") if isinstance(data, dict) else None
    return {value} if isinstance(value, str) and value else set()


def checkpoint_for_run(run, models_dir: str | Path = "outputs/models",
                       names: tuple[str, ...] = CHECKPOINT_NAMES, owned: bool = True) -> Path | None:
    """The local checkpoint of a tcnet MLflow run (an ``mlflow.entities.Run``), if it is on disk.

    Looked up, in order: the tag or param ``tcnet.checkpoint`` / ``checkpoint`` (a path), then
    ``<models_dir>/<experiment>/<tcnet.run_id>/<name>`` for ``names`` (``best.pt``, ``last.pt``),
    with the experiment from the tag ``tcnet.experiment`` or the MLflow experiment ``tcnet/<exp>``.
    A folder whose ``run.json`` records a different MLflow run (the run was trained again since,
    by another pipeline run) is not this run's checkpoint and is not returned (``owned=False``: it is,
    to say why a run has no checkpoint of its own).
    """
    tags, params = dict(run.data.tags), dict(run.data.params)

    def own(folder: Path) -> bool:
        recorded = _recorded_mlflow_run_ids(folder / "run.json")
        return not owned or not recorded or run.info.run_id in recorded

    tagged = [Path(v) for v in (tags.get(k) or params.get(k) for k in
                                ("tcnet.checkpoint", "checkpoint", "tcnet.best_checkpoint", "best_checkpoint")) if v]
    for path in tagged:
        if path.is_file() and path.name in names and own(path.parent):
            return path
    # The wanted file beside a tagged one (a tag naming best.pt where last.pt is scored): the tag's
    # folder is an absolute path, found from any working directory, unlike models_dir's default.
    for path in tagged:
        if path.is_file() and own(path.parent):
            for fname in names:
                if (path.parent / fname).is_file():
                    return path.parent / fname
    run_id = tags.get("tcnet.run_id")
    if not run_id:
        return None
    exps = [tags.get("tcnet.experiment"), params.get("experiment")]
    try:
        import mlflow

        name = mlflow.MlflowClient().get_experiment(run.info.experiment_id).name
        exps.append(name.split("/", 1)[1] if name.startswith("tcnet/") else name)
    except Exception:  # noqa: BLE001 - best effort; the tags usually say it
        pass
    for exp in dict.fromkeys(e for e in exps if e):
        folder = Path(models_dir) / exp / run_id
        if not own(folder):
            continue
        for fname in names:
            if (folder / fname).is_file():
                return folder / fname
    return None


@contextlib.contextmanager
def _quiet_download():
    """No per-file download progress bar off a terminal (a model holds ~90 files), unless asked for."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    if key in os.environ or sys.stderr.isatty():
        yield
        return
    os.environ[key] = "false"
    try:
        yield
    finally:
        os.environ.pop(key, None)


@contextlib.contextmanager
def resolved_checkpoint(spec: str | os.PathLike, *, uri: str | None = None,
                        models_dir: str | Path = "outputs/models") -> Iterator[Path]:
    """Yield the checkpoint file MODEL ``spec`` stands for (a download lives until the block ends)."""
    text = str(spec)
    if not is_mlflow_uri(text):
        path = Path(text).expanduser()
        if path.is_file():
            yield path
            return
        if path.is_dir():
            found = checkpoint_in_dir(path)
            if found is None:
                several = sorted(p.name for p in path.glob("*.pt"))
                what = (f"{len(several)} *.pt files ({', '.join(several)}) and no best.pt or last.pt: pass one of them"
                        if len(several) > 1 else "no checkpoint in this folder")
                raise ValueError(
                    f"{path}: {what} (expected best.pt, last.pt, one *.pt file or an MLflow pyfunc model folder)"
                )
            yield found
            return
        raise FileNotFoundError(
            f"model {text!r}: no such file or folder; MODEL is a checkpoint (.pt), a run folder, "
            "or an MLflow URI such as models:/tcnet@champion (after tcnet promote) or runs:/<run_id>/pyfunc"
        )

    import mlflow
    from mlflow.exceptions import MlflowException

    turi = tracking_uri(uri)
    from tcnet.tracking import MODEL_NAME

    require_store(turi, f"model {text!r}: ")
    mlflow.set_tracking_uri(turi)
    with tempfile.TemporaryDirectory(prefix="tcnet-model-") as tmp:
        try:
            with _quiet_download():
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tmp, tracking_uri=turi))
        except MlflowException as e:
            local = None
            error = e
        found = None
        if local is not None:
            found = local if local.is_file() else checkpoint_in_dir(local)
        if found is None and text.startswith("runs:/"):
            run_id, _, artifact = text[len("runs:/"):].partition("/")
            # The run's own checkpoint stands in for the run itself, for the torch model training logs
            # (tcnet.tracking.MODEL_NAME: pt2, not a checkpoint; absent with mlflow.log_models false), and
            # for an artifact that holds no checkpoint -- never for a misspelt artifact path.
            if local is not None or artifact.strip("/") in ("", MODEL_NAME):
                with contextlib.suppress(MlflowException):
                    found = checkpoint_for_run(mlflow.MlflowClient(turi).get_run(run_id), models_dir)
        if found is None:
            if local is None:
                raise ValueError(f"model {text!r}: cannot be fetched from {turi}: {error.message}") from None
            raise ValueError(
                f"model {text!r} (tracking {turi}): holds no tcnet checkpoint; register the pyfunc "
                "model with 'tcnet promote', or pass a checkpoint file"
            )
        yield found


def load(spec: str | os.PathLike, device: str = "auto", *, uri: str | None = None,
         models_dir: str | Path = "outputs/models"):
    """``(model, meta, device)`` for MODEL ``spec``: the model in eval mode on ``device``.

    ``meta`` is :func:`tcnet.checkpoint.load_model`'s (``model_name``, ``model_kwargs``,
    ``num_classes``, ``image_size``, ``run``), plus ``source`` (``spec`` as given).
    """
    from tcnet.checkpoint import CheckpointError, load_model

    dev = resolve_device(device)
    with resolved_checkpoint(spec, uri=uri, models_dir=models_dir) as ckpt:
        try:
            model, meta = load_model(ckpt, dev)
        except CheckpointError as e:
            if not str(spec).startswith(("models:/", "runs:/")):
                raise
            # a registry or run artifact is fetched to a temporary folder, gone when the error is read
            raise CheckpointError(f"model {str(spec)!r}: {str(e).replace(str(ckpt), Path(ckpt).name)}") from None
    model.eval()
    meta = dict(meta)
    meta["source"] = str(spec)
    return model, meta, dev


__all__ = [
    "is_mlflow_uri", "tracking_uri", "resolve_device", "checkpoint_in_dir", "checkpoint_for_run",
    "resolved_checkpoint", "load",
]
