"""Log one experiment's comparison onto its MLflow parent run.

The parent run is the one ``train`` and ``evaluate`` use (``tcnet.tracking.ExperimentTracker``:
experiment ``tcnet/<exp>``, tag ``tcnet.pipeline_run`` = ``$TCNET_PIPELINE_RUN_ID``, else the git
commit and params hash), found or created there. What is logged on it:

- tags ``tcnet.data_label`` (so synthetic numbers are never mistaken for the paper's),
  ``tcnet.compare.aggregation``, ``tcnet.compare.unit``;
- ``compare/table.json`` and ``compare/stats.json`` via ``log_table`` (the MLflow UI's table view);
- ``compare/<file>`` for ``table.md``, ``table.csv``, ``stats.csv`` and every figure PNG;
- metrics ``compare.<data>.<variant>.<metric>``: our value in the table's unit, and beside it
  ``paper.<data>.<variant>.<metric>``, the paper's value where it prints one (a stated difference:
  ``compare.<data>.delta.<label>.<metric>`` and ``paper.<data>.delta.<label>.<metric>``), so the
  MLflow UI's compare view sets ours and the paper's side by side.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from tcnet.config import Params, params_hash


def _metric_key(*parts: str) -> str:
    return ".".join(re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(p)) for p in parts)


def _json_safe(df: pd.DataFrame) -> pd.DataFrame:
    return df.astype(object).where(df.notna(), None)


def log_experiment(params: Params, exp_id: str, exp_dir: Path, summary: pd.DataFrame, stats: pd.DataFrame,
                   figure_paths: list[Path], aggregation: str, unit: str) -> str:
    """Log tables, files, figures and tags of one experiment to its parent run; returns the run id."""
    from tcnet.tracking import ExperimentTracker

    tracker = ExperimentTracker.open(
        exp_id, params.mlflow, params=params,
        base_tags={"tcnet.params_hash": params_hash(params), "tcnet.profile": params.profile},
    )
    log = tracker.parent_logger()
    log.set_tags({"tcnet.data_label": params.compare.data_label, "tcnet.compare.aggregation": aggregation,
                  "tcnet.compare.unit": unit})
    log.log_table(_json_safe(summary), "compare/table.json")
    if not stats.empty:
        log.log_table(_json_safe(stats), "compare/stats.json")
    for f in ["table.md", "table.csv", "stats.csv", "comparisons.csv"]:
        if (exp_dir / f).is_file():
            log.log_artifact(exp_dir / f, "compare")
    for p in figure_paths:
        log.log_artifact(p, "compare")
    metrics = {}
    for r in summary[summary.kind.isin(["value", "delta"])].itertuples():
        where = (r.data, r.variant) if r.kind == "value" else (r.data, "delta", r.label)
        for prefix, v in (("compare", r.ours), ("paper", r.paper)):
            if pd.notna(v):
                metrics[_metric_key(prefix, *where, r.metric)] = float(v)
    log.log_metrics(metrics)
    return log.run_id
