"""Read one experiment's evaluation outputs (``outputs/eval/<exp>/<run_id>/``) into memory.

The runs an experiment should have come from ``params.yaml`` (``expand_runs``), never from what
happens to lie on disk: a run that was not evaluated is reported as missing, and a folder left over
from a removed variant is ignored. Input format: docs/architecture.md, "evaluate".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from tcnet.config import (
    RETINA_DATASETS, ExperimentConfig, Params, RunSpec, expand_runs, setting_differences, to_dict,
)
from tcnet.tracking import flatten


class EvalOutputError(ValueError):
    """An evaluation output file that exists but cannot be used; the message names the file."""


@dataclass
class RunResult:
    """One evaluated run: its spec (from params) and what the evaluate stage wrote for it."""

    spec: RunSpec
    path: Path
    scores: dict
    per_image: Optional[pd.DataFrame] = None  # id, AC, SE, SP, JA, DI, TJA[, AUC]
    roc: Optional[pd.DataFrame] = None  # fpr, tpr (pooled)
    history: Optional[pd.DataFrame] = None  # epoch, train_loss, val_loss, ...
    stale: str = ""  # why the evaluated run config differs from params ("" = it matches)
    parts: Optional[dict] = None  # pooled_parts.npz: ids, counts (n x 4), pos/neg (n x bins)

    def value(self, metric: str, aggregation: str) -> float:
        """The run's score (a fraction) for ``metric`` under ``aggregation`` (``mean``/``pooled``).

        Taken from ``scores.json``; a per-image mean missing there is computed from ``per_image.csv``.
        NaN when neither has it.
        """
        v = (self.scores.get(aggregation) or {}).get(metric)
        if v is not None:
            return float(v)
        if aggregation == "mean" and self.per_image is not None and metric in self.per_image:
            return float(self.per_image[metric].mean())
        return math.nan

    @property
    def n_images(self) -> int:
        if "n" in self.scores:
            return int(self.scores["n"])
        return 0 if self.per_image is None else len(self.per_image)


@dataclass
class ExperimentResults:
    exp_id: str
    exp: ExperimentConfig
    specs: list[RunSpec]  # every run params declares, in expand_runs order
    runs: dict[str, RunResult] = field(default_factory=dict)  # run_id -> result (evaluated runs only)
    unit: str = "percent"  # how tables print values: percent (ISIC/PH2) or fraction (retina)
    # tcnet.report.pairing.compare_groups' results: the stats table and the claims' verdicts ask for
    # many of the same comparisons, each a bootstrap
    comparisons: dict = field(default_factory=dict, repr=False)

    @property
    def missing(self) -> list[str]:
        return [s.run_id for s in self.specs if s.run_id not in self.runs]

    @property
    def scale(self) -> float:
        return 100.0 if self.unit == "percent" else 1.0

    @property
    def digits(self) -> int:
        """Decimals of a difference: 3 for percent, 4 for fractions (a CI of [+0.0004, +0.003] must not
        print as [+0.000, ...] beside an 'agrees')."""
        return 3 if self.unit == "percent" else 4

    def folds(self, data_name: str) -> list[int]:
        """The folds params declares for a data pair (evaluated or not)."""
        return sorted({s.fold for s in self.specs if s.data.name == data_name})

    @property
    def multi_fold(self) -> bool:
        """Whether params declares more than one fold for any data pair (a figure then shows folds' means)."""
        return any(len(self.folds(d.name)) > 1 for d in self.exp.data)

    def run_of(self, data_name: str, variant: str, fold: int) -> Optional[RunResult]:
        """One variant's evaluated run of one fold (None when it was not evaluated)."""
        return next((r for r in self.variant_runs(data_name, variant) if r.spec.fold == fold), None)

    def variant_runs(self, data_name: str, variant: str) -> list[RunResult]:
        """The evaluated folds of one variant on one data pair, in fold order."""
        return [
            self.runs[s.run_id]
            for s in self.specs
            if s.data.name == data_name and s.variant == variant and s.run_id in self.runs
        ]


def unit_for(exp: ExperimentConfig) -> str:
    """Percent for the skin-lesion experiments, fractions for retinal vessels: as the paper prints."""
    return "fraction" if all(d.eval_dataset in RETINA_DATASETS for d in exp.data) else "percent"


def _read_csv(path: Path, required: tuple[str, ...]) -> Optional[pd.DataFrame]:
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise EvalOutputError(f"{path}: not a readable CSV ({e})") from None
    lost = [c for c in required if c not in df.columns]
    if lost:
        raise EvalOutputError(
            f"{path}: missing column(s) {', '.join(lost)} (has {', '.join(map(str, df.columns))}); "
            "re-run the evaluate stage"
        )
    return df


def _plain(obj):
    return json.loads(json.dumps(obj, default=str))


# Settings that may legitimately differ between the declared and the executed run.
RUNTIME_KEYS = {"train.device", "train.num_workers"}


def _staleness(spec: RunSpec, recorded: dict) -> str:
    """Differences between the run as params declares it and as the evaluate stage recorded it
    (keys present in both only; runtime-only settings ignored)."""
    if not recorded:
        return ""
    diffs = [f"{k}: params {a!r}, evaluated {b!r}" for k, a, b in
             setting_differences(_plain(to_dict(spec)), _plain(recorded), ignore=RUNTIME_KEYS, common_only=True)]
    return "; ".join(sorted(diffs))


def load_run(spec: RunSpec, path: Path) -> Optional[RunResult]:
    """A run's evaluation outputs, or None when its ``scores.json`` does not exist."""
    scores_path = path / "scores.json"
    if not scores_path.is_file():
        return None
    try:
        scores = json.loads(scores_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvalOutputError(f"{scores_path}: not valid JSON ({e}); re-run the evaluate stage") from None
    if not isinstance(scores, dict):
        raise EvalOutputError(f"{scores_path}: expected a JSON object with 'mean' and 'pooled'")
    per_image = _read_csv(path / "per_image.csv", ("id",))
    if per_image is not None:
        per_image["id"] = per_image["id"].astype(str)
    return RunResult(
        spec=spec,
        path=path,
        scores=scores,
        per_image=per_image,
        roc=_read_csv(path / "roc.csv", ("fpr", "tpr")),
        history=_read_csv(path / "history.csv", ("epoch",)),
        stale=_staleness(spec, scores.get("run") or {}),
        parts=_read_parts(path / "pooled_parts.npz"),
    )


PARTS_KEYS = ("ids", "counts", "pos", "neg")


def _read_parts(path: Path) -> Optional[dict]:
    """``pooled_parts.npz`` (evaluate, pooled scoring) as arrays, and its histograms' ``layout``
    (:class:`tcnet.metrics.ProbabilityHistogram`); None when absent (older outputs)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            parts = {k: z[k] for k in PARTS_KEYS}
            layout = str(z["layout"]) if "layout" in z.files else None
    except (OSError, ValueError, KeyError) as e:
        raise EvalOutputError(f"{path}: not a readable pooled_parts.npz ({e}); re-run the evaluate stage") from None
    if layout is None:  # an AUC from these would differ from the table's, which re-run evaluations give
        raise EvalOutputError(f"{path}: written by an older tcnet, whose probability histograms tie every "
                              "probability within 1/16383 of 0 or 1; re-run the evaluate stage")
    parts["layout"] = layout
    n = len(parts["ids"])
    if parts["counts"].shape != (n, 4) or parts["pos"].shape != parts["neg"].shape or len(parts["pos"]) != n:
        raise EvalOutputError(f"{path}: arrays of different lengths; re-run the evaluate stage")
    parts["ids"] = parts["ids"].astype(str)
    return parts


def load_experiment(params: Params, exp_id: str, eval_dir: str | Path) -> ExperimentResults:
    """Every run ``params`` declares for ``exp_id``, with the outputs found under ``eval_dir/exp_id``."""
    exp = params.experiment(exp_id)
    specs = expand_runs(params, exp_id)
    res = ExperimentResults(exp_id=exp_id, exp=exp, specs=specs, unit=unit_for(exp))
    for spec in specs:
        run = load_run(spec, Path(eval_dir) / exp_id / spec.run_id)
        if run is not None:
            res.runs[spec.run_id] = run
    return res


def varying_settings(res: ExperimentResults) -> dict[str, list]:
    """Settings that differ between the variants: key -> one value per variant (``exp.runs`` order).

    Keys are ``train.<path>`` (e.g. ``train.loss.ce_weight``), ``model.name`` and ``model.<kwarg>``
    (e.g. ``model.attention_placement``), taken from each variant's first run.
    """
    first: dict[str, RunSpec] = {}
    for s in res.specs:
        first.setdefault(s.variant, s)
    per_variant = [
        flatten({"train": to_dict(s.train), "model": {"name": s.model, **s.model_kwargs}})
        for s in (first[v.name] for v in res.exp.runs)
    ]
    keys = sorted(set().union(*per_variant))
    return {k: [p.get(k) for p in per_variant] for k in keys if len({repr(p.get(k)) for p in per_variant}) > 1}
