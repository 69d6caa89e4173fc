"""``tcnet promote``: register an experiment's best TCNet run in the MLflow model registry.

1. Find the MLflow experiment ``tcnet/<experiment>`` and its training runs (the nested runs tagged
   ``tcnet.run_id``, not ``tcnet.superseded``) that finished, trained a TCNet (model name starting with ``tcnet``) and hold
   the metric (``--metric DI`` -> the evaluate stage's ``eval_mean_DI``, or ``eval_pooled_DI``
   where the experiment's headline aggregation is pooled; a full metric key is taken as given). Every metric tcnet reports is higher-is-better; the best run wins (ties: the
   newest training, whose checkpoint is the one on disk).
2. Take the checkpoint that run's metric describes: the file the evaluate stage scored (tag
   ``tcnet.eval_checkpoint``: ``best.pt``, or ``last.pt`` where the scored val images had chosen
   best.pt's epoch; ``best.pt`` without the tag): the path recorded on the run (tag
   ``tcnet.checkpoint``), else ``<models>/<experiment>/<run_id>/<file>``, else such an artifact of the run.
3. Log it as the :class:`tcnet.tools.serving.TCNetSegmenter` pyfunc model (``pyfunc``) into that
   run, register it as a new version of ``--name`` (default ``tcnet``) and point ``--alias``
   (default ``champion``) at it: serve it as ``models:/tcnet@champion``. Registry stages are
   deprecated in MLflow; aliases replace them.

Running it again with nothing new is a no-op apart from re-pointing the alias: a version already
registered from the same run and checkpoint (same SHA-256) is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tcnet.tracking import CONFIG_HASH_TAG, EVAL_CHECKPOINT_TAG, RUN_ID_TAG, SUPERSEDED_TAG, experiment_name, retry

PYFUNC_NAME = "pyfunc"  # the logged pyfunc model's name inside the run
CHECKPOINT_SHA_TAG = "tcnet.checkpoint_sha256"
DEFAULT_METRIC = "DI"
SHORT_METRICS = ("AC", "SE", "SP", "JA", "DI", "TJA", "AUC")
AGGREGATION_TAG = "tcnet.eval_aggregation"  # set by the evaluate stage: mean | pooled
DEFAULT_ALIAS = "champion"
DEFAULT_NAME = "tcnet"
DEFAULT_MODELS_DIR = "outputs/models"


@dataclass
class PromoteResult:
    name: str
    version: str
    alias: str
    model_uri: str  # models:/<name>@<alias>
    mlflow_run_id: str
    tcnet_run_id: str
    metric: str
    value: float
    checkpoint: str
    reused: bool  # True: an existing version was re-aliased, nothing new was logged
    candidates: int  # finished TCNet runs with the metric
    passed_over: list[str]  # better runs whose own checkpoint is gone (re-trained since), with why
    trainings: int = 0  # MLflow training runs behind the candidates (a run trained again has several)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def metric_keys(metric: str, aggregation: str = "mean") -> list[str]:
    """MLflow metric keys to look for, in order. A short name (``DI``) means what the evaluate
    stage logs, ``eval_<aggregation>_DI`` with the experiment's headline aggregation first (``mean``
    for ISIC/PH2, ``pooled`` for the retina sets), then the other one, then (DI only) training's
    ``best_val_DI`` for runs never evaluated. Anything else is taken as the full key."""
    if metric in SHORT_METRICS:
        other = "pooled" if aggregation == "mean" else "mean"
        keys = [f"eval_{aggregation}_{metric}", f"eval_{other}_{metric}"]
        return keys + ([f"best_val_{metric}"] if metric == "DI" else [])
    return [metric]


def model_name_of(run) -> str:
    tags, params = run.data.tags, run.data.params
    for key in ("tcnet.model", "tcnet.model_name", "model"):
        value = tags.get(key) or params.get(key)
        if value:
            return str(value)
    return ""


def find_candidates(client, experiment_id: str, metric: str) -> tuple[list, str]:
    """Finished TCNet training runs holding the metric, and the metric key used."""
    runs = []
    token = None
    while True:
        page = retry(client.search_runs, [experiment_id], max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    train_runs = [
        r for r in runs
        if r.data.tags.get(RUN_ID_TAG) and r.info.status == "FINISHED" and model_name_of(r).startswith("tcnet")
        and not r.data.tags.get(SUPERSEDED_TAG)  # trained again from epoch 0: its checkpoint is the new run's
    ]
    aggregations = [r.data.tags[AGGREGATION_TAG] for r in train_runs if r.data.tags.get(AGGREGATION_TAG)]
    aggregation = max(set(aggregations), key=aggregations.count) if aggregations else "mean"
    for key in metric_keys(metric, aggregation):
        with_metric = [r for r in train_runs if key in r.data.metrics]
        if with_metric:
            return with_metric, key
    return [], metric_keys(metric, aggregation)[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checkpoint_artifact(client, run_id: str, dst: str, folder: str | None = None, depth: int = 0,
                         name: str = "best.pt") -> Path | None:
    """Download a checkpoint ``name`` logged as an artifact of the run (searched up to two folders deep)."""
    for item in client.list_artifacts(run_id, folder):
        if not item.is_dir and Path(item.path).name == name:
            return Path(client.download_artifacts(run_id, item.path, dst))
        if item.is_dir and depth < 2:
            found = _checkpoint_artifact(client, run_id, dst, item.path, depth + 1, name)
            if found is not None:
                return found
    return None


def promote(
    experiment: str,
    *,
    metric: str = DEFAULT_METRIC,
    alias: str = DEFAULT_ALIAS,
    name: str = DEFAULT_NAME,
    models_dir: str | Path = DEFAULT_MODELS_DIR,
    tracking_uri: str | None = None,
) -> PromoteResult:
    """Register the best TCNet run of ``experiment`` as ``models:/<name>@<alias>`` (see module doc)."""
    import mlflow

    from tcnet.tools.model_source import require_store, tracking_uri as resolve_uri
    from tcnet.tools.serving import log_pyfunc_model

    if not alias or not alias.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"alias {alias!r}: use letters, digits, '_' or '-' (e.g. champion)")
    uri = resolve_uri(tracking_uri)
    require_store(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    exp_name = experiment_name(experiment)
    exp = retry(client.get_experiment_by_name, exp_name)
    if exp is None:
        raise ValueError(f"no MLflow experiment {exp_name!r} in {uri}; train and evaluate {experiment!r} first")
    candidates, key = find_candidates(client, exp.experiment_id, metric)
    if not candidates:
        ours = "|".join(SHORT_METRICS)
        if not re.fullmatch(rf"({ours})|(eval_(mean|pooled)|best_val)_({ours})", metric):  # a typo, not "not yet"
            raise ValueError(f"--metric {metric!r}: no finished TCNet run of {exp_name!r} holds it; valid: "
                             f"{' '.join(SHORT_METRICS)}, or a full MLflow metric key such as eval_mean_DI")
        raise ValueError(
            f"experiment {exp_name!r} ({uri}) has no finished TCNet run with metric "
            f"{' / '.join(metric_keys(metric))}; evaluate it first (tcnet evaluate --experiment {experiment})"
        )
    # Ties (a run trained again with the same result: CPU training is deterministic) go to the newest
    # training, whose checkpoint is the one on disk.
    ranked = sorted(candidates, key=lambda r: (-r.data.metrics[key], -(r.info.start_time or 0), r.info.run_id))

    with tempfile.TemporaryDirectory(prefix="tcnet-promote-") as tmp:
        passed_over: list[str] = []
        for best in ranked:
            ckpt, why = _own_checkpoint(client, best, models_dir, tmp)
            if ckpt is not None:
                break
            passed_over.append(f"{best.data.tags[RUN_ID_TAG]} ({key} = {best.data.metrics[key]:.4f}, MLflow run "
                               f"{best.info.run_id}): {why}")
        else:
            where = f"{models_dir}" if Path(models_dir).is_dir() else f"{models_dir}, which does not exist (--models)"
            shown = "; ".join(passed_over[:3]) + (f"; and {len(passed_over) - 3} more" if len(passed_over) > 3 else "")
            raise FileNotFoundError(f"experiment {exp_name!r}: none of its {len(passed_over)} candidate runs has its "
                                    f"own checkpoint (looked in {where} and in the runs' artifacts): {shown}")
        run_id, tcnet_run_id, value = best.info.run_id, best.data.tags[RUN_ID_TAG], float(best.data.metrics[key])
        sha = _sha256(ckpt)
        existing = []
        if retry(client.search_registered_models, f"name = '{name}'"):
            existing = [v for v in retry(client.search_model_versions, f"name = '{name}' and run_id = '{run_id}'")
                        if v.tags.get(CHECKPOINT_SHA_TAG) == sha]
        if existing:
            version, reused = str(max(int(v.version) for v in existing)), True
        else:
            retry(mlflow.start_run, run_id=run_id)
            try:
                info = log_pyfunc_model(ckpt, PYFUNC_NAME, registered_model_name=name)
            finally:
                retry(mlflow.end_run, "FINISHED")  # the training run was finished; it stays so
            version, reused = str(info.registered_model_version), False
            for tag, tag_value in {
                CHECKPOINT_SHA_TAG: sha, RUN_ID_TAG: tcnet_run_id, "tcnet.experiment": experiment,
                "tcnet.metric": key, "tcnet.metric_value": repr(value), "tcnet.model": model_name_of(best),
            }.items():
                retry(client.set_model_version_tag, name, version, tag, tag_value)
        retry(client.set_registered_model_alias, name, alias, version)
    return PromoteResult(
        name=name, version=version, alias=alias, model_uri=f"models:/{name}@{alias}",
        mlflow_run_id=run_id, tcnet_run_id=tcnet_run_id, metric=key, value=value,
        checkpoint=str(ckpt), reused=reused, candidates=len({r.data.tags[RUN_ID_TAG] for r in candidates}),
        trainings=len(candidates), passed_over=passed_over,
    )


def _own_checkpoint(client, run, models_dir, tmp: str) -> tuple[Path | None, str]:
    """The run's own ``best.pt`` (on disk or as an artifact), or None and why not.

    A checkpoint whose ``config_hash`` differs from the run's tag ``tcnet.config_hash`` belongs
    to a later training of the same run id (the folder is reused), not to this run.
    """
    from tcnet.checkpoint import CheckpointError, load_checkpoint
    from tcnet.tools.model_source import checkpoint_for_run

    # The file the evaluate stage scored (tag tcnet.eval_checkpoint): the metric that ranked the
    # runs describes it. best.pt unless that file was last.pt (its val images had chosen best.pt).
    name = run.data.tags.get(EVAL_CHECKPOINT_TAG) or "best.pt"
    ckpt = checkpoint_for_run(run, models_dir, names=(name,)) or _checkpoint_artifact(client, run.info.run_id, tmp,
                                                                                      name=name)
    if ckpt is None:
        other = checkpoint_for_run(run, models_dir, names=(name,), owned=False)
        if other is not None:  # there, but its run.json names another MLflow run
            return None, f"trained again since: {other} is a later training's, and none was logged as an artifact"
        return None, f"no {name} on disk and none logged as an artifact"
    want = run.data.tags.get(CONFIG_HASH_TAG)
    try:
        have = load_checkpoint(ckpt).get("config_hash")
    except CheckpointError as e:
        return None, str(e)
    if want and have and str(have) != want:
        return None, f"{ckpt} was trained with config {have}, this run with {want}"
    return ckpt, ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Finds the experiment's best finished TCNet training run by the metric, logs the checkpoint that\n"
        "metric describes (best.pt; last.pt where evaluate scored last.pt, because the scored val images\n"
        "had chosen best.pt's epoch) as the tcnet pyfunc model, registers a version under --name and\n"
        "points --alias at it.\n"
        "Tracking URI: --tracking-uri, else MLFLOW_TRACKING_URI, else mlflow.tracking_uri in --params.\n"
        "Then: mlflow models serve -m models:/tcnet@champion --env-manager local --host 127.0.0.1 --port 5001"
    )
    parser.add_argument("--experiment", default=None, metavar="ID",
                        help="experiment id in params.yaml (default: compare.champion_experiment)")
    parser.add_argument("--params", default=None,
                        help="params file for the tracking URI and defaults (default: params.yaml when present)")
    parser.add_argument("--metric", default=DEFAULT_METRIC,
                        help="AC SE SP JA DI TJA AUC (-> eval_<A>_<M>, A = the experiment's headline aggregation: "
                             "mean, or pooled for the retina experiments) or a full MLflow metric key (default DI)")
    parser.add_argument("--alias", default=DEFAULT_ALIAS, help="registry alias to set (default champion)")
    parser.add_argument("--name", default=None, help="registered model name (default: compare.registered_model, tcnet)")
    parser.add_argument("--models", default=DEFAULT_MODELS_DIR, help="training outputs (default outputs/models)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (overrides everything)")


def main(args: argparse.Namespace) -> int:
    from tcnet.config import Params, load_params
    from tcnet.tracking import resolve_tracking_uri

    if args.params is not None:
        params = load_params(args.params)
    else:
        params = load_params("params.yaml") if Path("params.yaml").is_file() else Params()
    experiment = args.experiment or params.compare.champion_experiment
    if params.experiments:  # a typo is named with the valid choices before MLflow is touched
        from tcnet.config import ConfigError

        try:
            params.experiment(experiment)
        except ConfigError as e:
            if args.experiment:
                raise
            where = args.params or "params.yaml"  # the user named no experiment: say where it came from
            raise ConfigError(f"{where}: compare.champion_experiment: {e} (or pass --experiment)") from None
    uri = args.tracking_uri or resolve_tracking_uri(params.mlflow.tracking_uri)
    from mlflow.exceptions import MlflowException

    from tcnet.cli import CliError

    try:
        result = promote(
            experiment,
            metric=args.metric, alias=args.alias, name=args.name or params.compare.registered_model,
            models_dir=args.models, tracking_uri=uri,
        )
    except MlflowException as e:  # an unusable store URI, a server that refuses: one line, not a traceback
        raise CliError(f"MLflow store {uri}: {e.message.strip().splitlines()[0] if e.message.strip() else e}") from None
    for note in result.passed_over:
        print(f"tcnet promote: passed over {note}", file=sys.stderr)
    verb = "re-pointed" if result.reused else "registered"
    print(
        f"tcnet promote: {verb} {result.name} version {result.version} = run {result.tcnet_run_id} "
        f"({result.metric} = {result.value:.4f}, best of {result.candidates} run(s)"
        f"{f', {result.trainings} trainings' if result.trainings > result.candidates else ''}); alias {result.model_uri}",
        file=sys.stderr,
    )
    return 0


__all__ = ["promote", "PromoteResult", "find_candidates", "metric_keys", "add_arguments", "main"]
