"""MLflow runs of the data stages, ``preprocess`` and ``split``.

They belong to no paper experiment (every experiment reads their outputs), so they log into an
MLflow experiment of their own:

    MLflow experiment  tcnet/data
      parent run       tag tcnet.pipeline_run (tcnet.tracking.pipeline_run_id: under dvc repro the
                       id of the experiments' parent runs; a Kubeflow data task, given only its
                       params sections and cached across jobs, gets <commit>-<hash of them>)
        nested run     tag tcnet.run_id = preprocess | split, tcnet.datasets (+ tcnet.config_hash
                       of the stage's params section): params, counts and timings as metrics, the
                       index files

The run is opened before the stage's work, so a tracking URI that does not work fails before any
output is written; it ends FINISHED, FAILED (with the error as a tag) or KILLED.
"""

from __future__ import annotations

import contextlib
import logging
import platform
from typing import Optional, Sequence

from tcnet.config import RESERVED_EXPERIMENT, Params, params_hash, to_dict

DATA_EXPERIMENT = RESERVED_EXPERIMENT  # MLflow experiment tcnet/data; no paper experiment may take the name
STAGE_TAG = "tcnet.stage"
ERROR_TAG = "tcnet.error"
DATASETS_TAG = "tcnet.datasets"

log = logging.getLogger(__name__)


def data_tags(params: Params) -> dict[str, str]:
    """The provenance tags of a training run (:func:`tcnet.tracking.pipeline_tags`: commit, data hash,
    package versions, host) for a stage that uses no torch device (no torch import);
    ``tcnet.params_hash`` is that of the params the stage was given (a Kubeflow data task gets only
    the sections it reads)."""
    from tcnet.provenance import collect

    return {**collect(None, description=f"cpu ({platform.machine()})"), "tcnet.params_hash": params_hash(params)}


@contextlib.contextmanager
def stage_run(params: Params, stage: str, datasets: Sequence[str], enabled: Optional[bool] = None,
              tags: Optional[dict] = None):
    """The nested run of ``stage`` over ``datasets`` in ``tcnet/data`` for this pipeline run, as a
    :class:`tcnet.tracking.RunLogger` with the stage's params section and ``tags`` logged (a
    :class:`tcnet.tracking.NullRunLogger` when tracking is off: ``enabled=False`` or
    ``TCNET_NO_MLFLOW=1``). The run is found again by stage, params section and datasets (the
    Kubeflow pipeline runs one chain per dataset with the same sections)."""
    from tcnet.tracking import ExperimentTracker, NullRunLogger, retry, tracking_enabled

    if not tracking_enabled(enabled):
        yield NullRunLogger()
        return
    section = getattr(params, stage)
    names = ",".join(datasets)
    tracker = ExperimentTracker.open(DATA_EXPERIMENT, params.mlflow, params=params, base_tags=data_tags(params))
    logger = tracker.run_logger(stage, params_hash(section), tags={STAGE_TAG: stage, **(tags or {})},
                                match_tags={DATASETS_TAG: names}, run_name=f"{stage} ({names})")
    status = "FAILED"
    try:
        retry(tracker.client.update_run, logger.run_id, "RUNNING")  # a run found again from an earlier call
        with contextlib.suppress(Exception):  # that call's error, if it failed (absent: nothing to delete)
            tracker.client.delete_tag(logger.run_id, ERROR_TAG)
        logger.log_params({stage: to_dict(section)})
        yield logger
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception as e:
        with contextlib.suppress(Exception):  # the stage's own error is the one to raise
            logger.set_tags({ERROR_TAG: f"{type(e).__name__}: {e}"[:5000]})
        raise
    finally:
        try:
            logger.terminate(status)
        except Exception as e:  # noqa: BLE001 - the stage's own outcome stands; say so, do not mask it
            log.warning("MLflow: could not end run %s of %s as %s: %s", logger.run_id, stage, status, e)


__all__ = ["DATA_EXPERIMENT", "STAGE_TAG", "ERROR_TAG", "DATASETS_TAG", "data_tags", "stage_run"]
