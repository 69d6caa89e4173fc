"""MLflow tracking for the pipeline: tracking URI, experiments, parent and nested runs, retries.

Layout (docs/training.md, "MLflow"):

    MLflow experiment  tcnet/<experiment>
      parent run       tag tcnet.pipeline_run = $TCNET_PIPELINE_RUN_ID, else <git commit>-<params hash>
        nested run     tag tcnet.run_id = <data>__<variant>__fold<k> (+ tcnet.config_hash);
                       train logs params, per-epoch metrics, the model; evaluate logs into it too

Every find-or-create is safe under concurrency: on an sqlite store it runs under an exclusive file
lock beside the database (so parallel trainings agree on one parent run); on a tracking server the
loser of a race deletes its duplicate and adopts the oldest run. Every store call is retried with
exponential backoff on ``database is locked`` / ``OperationalError`` (sqlite allows one writer at a
time; MLflow's own 20 s busy timeout is not always enough under load), so no run or metric is lost.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
PIPELINE_TAG = "tcnet.pipeline_run"
RUN_ID_TAG = "tcnet.run_id"
EVAL_CHECKPOINT_TAG = "tcnet.eval_checkpoint"  # the file of the run the eval metrics describe (evaluate)
EXPERIMENT_TAG = "tcnet.experiment"
CONFIG_HASH_TAG = "tcnet.config_hash"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# A training run started again from epoch 0 (its last.pt unusable or deleted) gets a new MLflow run;
# the old one keeps its metrics, loses the run id tag that finds it, and is marked so.
SUPERSEDED_TAG = "tcnet.superseded"

RETRY_ATTEMPTS = 12
RETRY_BASE_DELAY = 0.1  # seconds; doubles per attempt (with jitter) up to RETRY_MAX_DELAY
RETRY_MAX_DELAY = 8.0
_RETRYABLE = ("database is locked", "database table is locked", "operationalerror", "disk i/o error",
              "unable to open database file", "database schema has changed")

log = logging.getLogger(__name__)
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------
# Tracking URI and names
# ----------------------------------------------------------------------------------------------


def resolve_tracking_uri(configured: Optional[str] = None, root: Optional[Path] = None) -> str:
    """``MLFLOW_TRACKING_URI``, else ``configured`` (``mlflow.tracking_uri``), else the default.

    A relative sqlite path (``sqlite:///mlflow.db``) is made absolute against the project root
    (the nearest folder above the cwd with ``params.yaml``/``dvc.yaml``/``.git``), so every stage,
    whatever its working folder, writes to the same store.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_TRACKING_URI
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and ":memory:" not in uri:
        from tcnet.provenance import project_root

        path = uri[len(prefix):]
        if not Path(path).is_absolute():
            uri = prefix + str((Path(root) if root else project_root()) / path)
    return uri


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of an ``sqlite:///`` URI, else None."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and ":memory:" not in uri:
        return Path(uri[len(prefix):].split("?", 1)[0])
    return None


def experiment_name(exp_id: str) -> str:
    """The MLflow experiment of a tcnet experiment."""
    return f"tcnet/{exp_id}"


def pipeline_run_id(params=None) -> str:
    """The id grouping one pipeline run: ``$TCNET_PIPELINE_RUN_ID`` when set (Kubeflow sets it),
    else ``<git commit[:12]>[+dirty]-<params hash>``: the same code and params give the same parent
    run, so ``dvc repro``'s train and evaluate stages (and a resumed training) meet there."""
    env = os.environ.get("TCNET_PIPELINE_RUN_ID", "").strip()
    if env:
        return env
    from tcnet.config import params_hash
    from tcnet.provenance import git_state

    sha, dirty = git_state()
    head = "nogit" if sha == "unknown" else sha[:12] + ("+dirty" if dirty else "")
    return f"{head}-{params_hash(params) if params is not None else 'noparams'}"


def flatten(d: Mapping, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """``{"train": {"loss": {"ce_weight": .5}}} -> {"train.loss.ce_weight": .5}``; lists as JSON. An
    empty mapping gives no key: ``model_kwargs: {}`` beside ``model_kwargs: {base_channels: 32}``
    leaves ``run.model_kwargs.base_channels`` blank, where a ``"{}"`` value under the parent key
    would sit in another column of MLflow's compare view."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten(v, key, sep))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------------------------
# Retries and the store lock
# ----------------------------------------------------------------------------------------------


def is_retryable(exc: BaseException) -> bool:
    """A transient store error: sqlite locking or an OperationalError (also wrapped by MLflow)."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(s in text for s in _RETRYABLE)


def retry(fn: Callable[..., T], *args, attempts: Optional[int] = None, **kwargs) -> T:
    """``fn(*args, **kwargs)``, retried with exponential backoff + jitter on transient store errors."""
    attempts = attempts or RETRY_ATTEMPTS
    delay = RETRY_BASE_DELAY
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - filtered by is_retryable
            if attempt == attempts or not is_retryable(e):
                raise
            log.info("MLflow store busy (%s); retry %d/%d in %.2fs", str(e).splitlines()[0][:120], attempt,
                     attempts, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, RETRY_MAX_DELAY)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def store_lock(uri: str):
    """Exclusive lock for find-or-create on an sqlite store (a ``.lock`` file beside the database);
    a no-op for other stores (there the duplicate-run check of :func:`_converge` applies)."""
    db = sqlite_path(uri)
    if db is None:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / f".{db.name}.tcnet.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_INITIALISED: set[str] = set()


def without_secrets(text: str) -> str:
    """``text`` with the user/password part of every URL taken out (``postgresql://u:pw@host/db``,
    ``http://token@host`` -> ``postgresql://host/db``, ``http://host``)."""
    import re

    # Up to the LAST "@" of the URL's token: a password may hold "/" or "@" (SQLAlchemy reads
    # postgresql://u:ab/cd@db as password "ab/cd"); an "@" in a path costs that path, never a secret.
    return re.sub(r"(\w[\w+.-]*://)[^\s'\"]*@", r"\1", text)


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be opened (a server that does not answer, a database that cannot be
    created): raised before a stage's work, said in one line by the CLI."""


def init_store(uri: str):
    """Create (or migrate) the store's tables once, under the store lock, before any fan-out.

    MLflow creates the tables of an empty sqlite database on first use without a lock; two
    processes doing that at once race on the schema migration. Returns an ``MlflowClient``.
    """
    from mlflow import MlflowClient

    if uri in _INITIALISED:
        return MlflowClient(tracking_uri=uri)
    # The client's constructor already migrates a sqlite schema, so it too runs under the lock.
    try:
        with store_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            retry(client.search_experiments, max_results=1)
    except Exception as e:  # noqa: BLE001 - whatever the store's kind, the user's fix is the same
        # The first line says what failed (SQLAlchemy's last is a link to its docs). No chained
        # cause: the library's messages repeat the URI, a database's password or a server's token
        # included, and a pod's log prints the whole chain.
        reason = without_secrets((str(e).strip().splitlines() or [""])[0][:400]) or type(e).__name__
        raise TrackingStoreError(
            f"MLflow tracking store {without_secrets(uri)} cannot be used: {type(e).__name__}: {reason} -- point "
            "MLFLOW_TRACKING_URI (or mlflow.tracking_uri in params) at a store that works, or turn "
            "tracking off (--no-mlflow, TCNET_NO_MLFLOW=1)") from None
    _INITIALISED.add(uri)
    return client


# ----------------------------------------------------------------------------------------------
# Experiments and runs
# ----------------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = {_quote(v)}" for k, v in tags.items())


def _search(client, experiment_id: str, tags: Mapping[str, str]) -> list:
    runs, token = [], None
    while True:
        page = retry(client.search_runs, [experiment_id], filter_string=_filter(tags), max_results=1000,
                     order_by=["attributes.start_time ASC"], page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _oldest(runs: list):
    return min(runs, key=lambda r: (r.info.start_time or 0, r.info.run_id))


def get_or_create_experiment(client, name: str, uri: str) -> str:
    """The MLflow experiment id of ``name``, created when missing (artifacts beside an sqlite db)."""
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            retry(client.restore_experiment, exp.experiment_id)
        return exp.experiment_id
    location = None
    db = sqlite_path(uri)
    if db is not None:  # keep artifacts next to the store, not in whatever the cwd is
        location = (db.parent / "mlartifacts" / name.replace("/", "_")).resolve().as_uri()
    try:
        return retry(client.create_experiment, name, artifact_location=location)
    except Exception as e:  # noqa: BLE001 - created meanwhile by a parallel process
        exp = retry(client.get_experiment_by_name, name)
        if exp is None:
            raise e
        return exp.experiment_id


def find_or_create_run(client, uri: str, experiment_id: str, match: Mapping[str, str],
                       tags: Optional[Mapping[str, str]] = None, run_name: str = "") -> str:
    """The oldest active run of ``experiment_id`` whose tags include ``match``; created (with
    ``match`` + ``tags``) when there is none. Concurrency-safe (see the module docstring)."""
    with store_lock(uri):
        found = _search(client, experiment_id, match)
        if found:
            return _oldest(found).info.run_id
        all_tags = {**match, **(tags or {})}
        if run_name:
            all_tags.setdefault(RUN_NAME_TAG, run_name)
        run = retry(client.create_run, experiment_id, tags=all_tags)
        mine = run.info.run_id
        return _converge(client, experiment_id, match, mine)


def _converge(client, experiment_id: str, match: Mapping[str, str], mine: str) -> str:
    """After creating ``mine``: if a parallel writer created the same run too, keep the oldest."""
    found = _search(client, experiment_id, match)
    if not found:
        return mine
    keep = _oldest(found).info.run_id
    if keep != mine:
        with contextlib.suppress(Exception):
            retry(client.delete_run, mine)
    return keep


def run_exists(client, run_id: str) -> bool:
    if not run_id:
        return False
    try:
        run = retry(client.get_run, run_id)
    except Exception:  # noqa: BLE001 - not found (another store, deleted)
        return False
    return run.info.lifecycle_stage == "active"


# ----------------------------------------------------------------------------------------------
# One run: what the stages log
# ----------------------------------------------------------------------------------------------


@dataclass
class RunLogger:
    """Logging into one MLflow run through the client API (no global state), every call retried."""

    client: Any
    run_id: str
    uri: str

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None]
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, self.run_id, tags=items[i:i + 100], synchronous=True)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flattened params; a key already logged with another value is skipped with a warning
        (MLflow params are immutable)."""
        from mlflow.entities import Param

        have = retry(self.client.get_run, self.run_id).data.params
        items, clashes = [], []
        for k, v in flatten(params).items():
            value = str(v)[:6000]
            if k in have:
                if have[k] != value:
                    clashes.append(k)
                continue
            items.append(Param(k, value))
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, self.run_id, params=items[i:i + 100], synchronous=True)
        if clashes:
            log.warning("MLflow run %s already has different values for params %s; kept the old ones",
                        self.run_id, ", ".join(clashes[:10]))

    def log_metrics(self, metrics: Mapping[str, Any], step: int = 0) -> None:
        """Finite numbers only (NaN/inf and None are skipped)."""
        import math

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(step)) for k, v in metrics.items()
            if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 1000):
            retry(self.client.log_batch, self.run_id, metrics=items[i:i + 1000], synchronous=True)

    def metric_steps(self, key: str) -> set[int]:
        return {m.step for m in retry(self.client.get_metric_history, self.run_id, key)}

    def log_dict(self, data: dict, artifact_file: str) -> None:
        retry(self.client.log_dict, self.run_id, data, artifact_file)

    def log_artifact(self, path, artifact_path: Optional[str] = None) -> None:
        retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder, artifact_path: Optional[str] = None) -> None:
        retry(self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def log_table(self, data, artifact_file: str) -> None:
        retry(self.client.log_table, self.run_id, data, artifact_file)

    def log_figure(self, figure, artifact_file: str) -> None:
        retry(self.client.log_figure, self.run_id, figure, artifact_file)

    def terminate(self, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, self.run_id, status)

    @contextlib.contextmanager
    def active(self, system_metrics: bool = False):
        """Make this run MLflow's active run (fluent API) for the block: needed by
        ``mlflow.pytorch.log_model`` and by the system-metrics monitor. Ends FINISHED, or FAILED /
        KILLED when the block raises."""
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        # nested=True only when the caller already has an active run (a notebook, a sweep driver)
        retry(mlflow.start_run, run_id=self.run_id, log_system_metrics=bool(system_metrics),
              nested=mlflow.active_run() is not None)
        status = "FAILED"
        try:
            yield self
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            retry(mlflow.end_run, status)


class NullRunLogger:
    """Tracking switched off (``--no-mlflow``): every call does nothing."""

    run_id = ""
    uri = ""

    def __getattr__(self, name):
        if name == "active":
            return lambda *a, **k: contextlib.nullcontext(self)
        if name == "metric_steps":
            return lambda *a, **k: set()
        return lambda *a, **k: None


@dataclass
class ExperimentTracker:
    """One paper experiment in MLflow: its experiment and the parent run of this pipeline run."""

    client: Any
    uri: str
    exp_id: str
    experiment_id: str
    parent_run_id: str
    pipeline_run: str
    base_tags: dict = field(default_factory=dict)

    @classmethod
    def open(cls, exp_id: str, mlflow_cfg=None, params=None, base_tags: Optional[Mapping[str, str]] = None,
             uri: Optional[str] = None) -> "ExperimentTracker":
        """Initialise the store, find-or-create experiment ``tcnet/<exp_id>`` and the parent run."""
        uri = uri or resolve_tracking_uri(getattr(mlflow_cfg, "tracking_uri", None))
        client = init_store(uri)
        experiment_id = get_or_create_experiment(client, experiment_name(exp_id), uri)
        pipeline_run = pipeline_run_id(params)
        tags = {EXPERIMENT_TAG: exp_id, **(base_tags or {})}
        parent = find_or_create_run(client, uri, experiment_id, {PIPELINE_TAG: pipeline_run}, tags,
                                    run_name=f"{exp_id} @ {pipeline_run}")
        # A parent run stays "finished": children carry the work (an open parent of a killed
        # pipeline would otherwise show as running forever).
        with contextlib.suppress(Exception):
            if retry(client.get_run, parent).info.status == "RUNNING":
                retry(client.set_terminated, parent, "FINISHED")
        return cls(client, uri, exp_id, experiment_id, parent, pipeline_run, dict(base_tags or {}))

    def parent_logger(self) -> RunLogger:
        return RunLogger(self.client, self.parent_run_id, self.uri)

    def run_logger(self, run_id: str, config_hash: str, tags: Optional[Mapping[str, str]] = None,
                   known_mlflow_run_id: str = "", match_tags: Optional[Mapping[str, str]] = None,
                   run_name: str = "") -> RunLogger:
        """The nested run of ``run_id`` (this config): ``known_mlflow_run_id`` when it still exists
        in this store (from ``run.json``), else found by tags (also ``match_tags``), else created
        (named ``run_name``, default ``run_id``)."""
        if known_mlflow_run_id and run_exists(self.client, known_mlflow_run_id):
            mlflow_id = known_mlflow_run_id
        else:
            match = {RUN_ID_TAG: run_id, CONFIG_HASH_TAG: config_hash, PARENT_TAG: self.parent_run_id,
                     **(match_tags or {})}
            extra = {EXPERIMENT_TAG: self.exp_id, PIPELINE_TAG: self.pipeline_run, **self.base_tags, **(tags or {})}
            mlflow_id = find_or_create_run(self.client, self.uri, self.experiment_id, match, extra,
                                           run_name=run_name or run_id)
        logger = RunLogger(self.client, mlflow_id, self.uri)
        if tags:
            logger.set_tags(tags)
        return logger

    def supersede(self, mlflow_run_id: str, run_id: str) -> None:
        """Retire ``mlflow_run_id`` (the run ``run_id`` trained into before starting again from epoch
        0): :meth:`run_logger` no longer finds it, ``tcnet promote`` passes it over, and one left
        RUNNING by a killed process ends KILLED. Its metrics stay for the record."""
        retry(self.client.set_tag, mlflow_run_id, SUPERSEDED_TAG, "true")
        retry(self.client.set_tag, mlflow_run_id, RUN_ID_TAG, f"{run_id} (superseded)")
        if retry(self.client.get_run, mlflow_run_id).info.status == "RUNNING":
            retry(self.client.set_terminated, mlflow_run_id, "KILLED")


def pipeline_tags(params, device) -> dict[str, str]:
    """Provenance tags shared by the parent run and every nested run of a pipeline run: git commit
    and dirty flag, DVC data hash, package versions, device, params hash, seed, profile."""
    from tcnet.config import params_hash
    from tcnet.provenance import collect

    return {**collect(device), "tcnet.params_hash": params_hash(params), "tcnet.profile": params.profile,
            "tcnet.seed": str(params.train.seed)}


def open_tracker(exp_id: str, mlflow_cfg, params=None, base_tags=None, enabled: bool = True):
    """:meth:`ExperimentTracker.open`, or None when tracking is off."""
    if not enabled:
        return None
    return ExperimentTracker.open(exp_id, mlflow_cfg, params=params, base_tags=base_tags)


def run_logger_for(tracker: Optional[ExperimentTracker], run_id: str, config_hash: str,
                   tags: Optional[Mapping[str, str]] = None, known_mlflow_run_id: str = ""):
    if tracker is None:
        return NullRunLogger()
    return tracker.run_logger(run_id, config_hash, tags, known_mlflow_run_id)


def tracking_enabled(flag: Optional[bool] = None) -> bool:
    """``flag`` if given, else not ``TCNET_NO_MLFLOW=1``."""
    if flag is not None:
        return bool(flag)
    return os.environ.get("TCNET_NO_MLFLOW", "").strip() not in ("1", "true", "yes")


__all__ = [
    "DEFAULT_TRACKING_URI", "PIPELINE_TAG", "RUN_ID_TAG", "EXPERIMENT_TAG", "CONFIG_HASH_TAG", "SUPERSEDED_TAG",
    "resolve_tracking_uri", "experiment_name", "pipeline_run_id", "flatten", "retry", "is_retryable",
    "store_lock", "init_store", "TrackingStoreError", "get_or_create_experiment", "find_or_create_run", "RunLogger",
    "NullRunLogger", "ExperimentTracker", "open_tracker", "pipeline_tags", "run_logger_for", "tracking_enabled", "log_model",
]


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------

MODEL_NAME = "model"


def log_model(model, image_size: int, checkpoint=None, metadata: Optional[dict] = None,
              name: str = MODEL_NAME) -> str:
    """Log ``model`` into the ACTIVE run with ``mlflow.pytorch.log_model`` in the ``pt2`` format.

    ``pt2`` (``torch.export``) is MLflow 3's default outside Databricks and the one that loads
    without unpickling code; it needs an input example, here a float32 ``2 x 3 x S x S`` batch of
    normalised images (batch 2, so the exported batch axis stays dynamic). The logged model maps
    that tensor (``tcnet.data.transforms.prepare_image``) to logits ``N x K x S x S``.
    ``pip_requirements`` is given explicitly (torch only), which skips MLflow's slow dependency
    inference. A model ``torch.export`` cannot trace is NOT pickled instead: the checkpoint
    (weights_only-loadable) is logged as the artifact ``checkpoint/best.pt`` and a warning says so.
    Returns the model URI (``models:/<id>``), or ``""`` when only the checkpoint was logged.
    """
    import numpy as np
    import torch

    import mlflow

    model = model.cpu().eval()
    example = np.random.default_rng(0).standard_normal((2, 3, int(image_size), int(image_size))).astype(np.float32)
    try:
        info = retry(
            mlflow.pytorch.log_model, model, name=name, input_example=example, serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            metadata={"tcnet": {**(metadata or {}), "input": f"float32 N x 3 x {image_size} x {image_size}, "
                                "normalised RGB (tcnet.data.transforms.prepare_image)", "output": "logits"}},
        )
        return info.model_uri
    except Exception as e:  # noqa: BLE001 - torch.export failed for this architecture
        log.warning("mlflow.pytorch.log_model (pt2) failed for %s: %s; logging the checkpoint instead",
                    type(model).__name__, str(e).splitlines()[0][:300])
        if checkpoint is not None:
            retry(mlflow.log_artifact, str(checkpoint), "checkpoint")
        return ""
