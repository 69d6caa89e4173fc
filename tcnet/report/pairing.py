"""Two groups of variants compared on the same images: the one pairing behind ``stats.csv`` and
behind the verdicts on the paper's claims (``tcnet.report.paper``).

A group is one variant (TCNet against UNet) or several whose per-image scores are averaged (every
attention placement with and without deep supervision). Images are paired by id within a fold;
cross-validation folds hold disjoint images and are concatenated for the image-level test, and give
one mean difference each for the fold-level test (each fold is a separately trained model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pandas as pd

from tcnet.metrics import METRICS, scores_from_counts
from tcnet.report.results import PARTS_KEYS, ExperimentResults
from tcnet.report.stats import (MIN_NONZERO, PERCENTILE_NOTE, FoldResult, PairedResult, bootstrap_interval, direction,
                                fold_test, paired_test, rng_for)


@dataclass(frozen=True)
class Inference:
    """``compare.bootstrap`` resamples, ``compare.confidence`` and the seed of every interval."""

    n_resamples: int
    confidence: float
    seed: int


def paired_images(res: ExperimentResults, data: str, a: list[str], b: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """Per-image scores of groups ``a`` and ``b`` on the same images, joined on image id per fold.

    A group's score of an image is the mean over its variants, over the images every one of them
    was scored on. Columns ``fold``, ``id``, ``<metric>_a``, ``<metric>_b``; and notes of what was
    left out (a fold some run of either group lacks, images not scored by both)."""
    notes, parts, lost = [], [], 0

    def group(variants: list[str], fold: int):
        frames = []
        for v in variants:
            run = res.run_of(data, v, fold)
            if run is None or run.per_image is None:
                return None, v
            frames.append(run.per_image.set_index("id"))
        common = frames[0].index
        for f in frames[1:]:
            common = common.intersection(f.index)
        cols = [c for c in frames[0].columns if all(c in f for f in frames)]
        return sum(f.loc[common, cols].astype(float) for f in frames) / len(frames), None

    for k in res.folds(data):
        ga, missing_a = group(a, k)
        gb, missing_b = group(b, k)
        if ga is None or gb is None:
            notes.append(f"fold {k}: {missing_a or missing_b} not evaluated")
            continue
        j = ga.merge(gb, left_index=True, right_index=True, suffixes=("_a", "_b")).reset_index()
        lost += len(ga) + len(gb) - 2 * len(j)
        parts.append(j.assign(fold=k))
    if lost:
        notes.append(f"{lost} image(s) not scored by both, left out")
    return (pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()), notes


@dataclass
class Comparison:
    """``a - b`` on one metric: the image-level test, the fold-level one where cross-validated."""

    cross_validated: bool
    images: Optional[PairedResult]
    folds: Optional[FoldResult]
    notes: list[str] = field(default_factory=list)

    @property
    def primary(self):
        """What a verdict rests on: the fold level where there are folds, else the image level."""
        return self.folds if self.cross_validated else self.images

    @property
    def has_interval(self) -> bool:
        """A finite CI at the primary level (no paired scores, or no spread to test: False)."""
        p = self.primary
        return p is not None and math.isfinite(p.ci_low) and math.isfinite(p.ci_high)

    @property
    def too_few(self) -> str:
        """Why an image-level comparison has too few images to rest a verdict on, else ``""``: fewer
        than ``MIN_NONZERO`` non-zero differences (pooled scores: images), where the signed-rank test
        cannot reach p < 0.05 at all and a bootstrap interval is little more than the data's range."""
        p = self.primary
        if self.cross_validated or p is None:
            return ""
        if p.n_nonzero is None or math.isnan(p.n_nonzero):  # pooled scores: no test, the images count
            n, what = p.n, "images"
        else:
            n, what = int(p.n_nonzero), f"of {p.n} images with a non-zero difference"
        return f"only {n} {what} (at least {MIN_NONZERO} needed)" if n < MIN_NONZERO else ""

    @property
    def direction(self) -> int:
        """+1: ``a`` ahead (the CI above 0), -1: behind, 0: not resolved (or nothing to compare, or too
        few images: :attr:`too_few`)."""
        p = self.primary
        return 0 if p is None or self.too_few else direction(p.ci_low, p.ci_high)

    @property
    def level(self) -> str:
        return "folds" if self.cross_validated else "images"

    def text(self, digits: int = 3) -> str:  # digits: ExperimentResults.digits
        """``+0.52 [−0.31, +1.20]`` (mean difference and CI at the primary level) or why there is none;
        fractions (retina) need ``digits=4``: their differences are thousandths."""
        p = self.primary
        if p is None or not math.isfinite(p.mean_diff):
            return "no paired scores"
        ci = f" [{p.ci_low:+.{digits}f}, {p.ci_high:+.{digits}f}]" if math.isfinite(p.ci_low) else " (no CI)"
        return f"{p.mean_diff:+.{digits}f}{ci}"


POOLED_METRICS = (*METRICS, "AUC")
SUMMED = PARTS_KEYS[1:]  # the per-image parts a pooled score sums: counts, pos, neg


def _auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """ROC AUC from foreground/background counts of probability bins, over the last axis (one AUC
    per leading index): P(a foreground pixel scores above a background one), a tie (one bin) counted
    half; NaN where a class is absent. The evaluate stage's pooled AUC at ``PARTS_BINS`` bins."""
    pos = np.asarray(pos, dtype=np.float64)
    neg = np.asarray(neg, dtype=np.float64)
    below = np.cumsum(neg, axis=-1) - neg  # background pixels in lower bins
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + 0.5 * neg)).sum(axis=-1) / (pos.sum(axis=-1) * neg.sum(axis=-1))


def pooled_score(metric: str, counts: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """A pooled score from summed per-image parts (``counts`` ``... x 4``; histograms ``... x bins``)."""
    if metric == "AUC":
        return _auc_from_histograms(pos, neg)
    return np.asarray(scores_from_counts(*(counts[..., i] for i in range(4)))[metric], dtype=np.float64)


def _pooled_parts(res: ExperimentResults, data: str, a: str, b: str):
    """Both runs' ``pooled_parts`` per fold, joined on image id: [(fold, parts_a, parts_b)], notes."""
    notes, folds, lost = [], [], 0
    for k in res.folds(data):
        ra, rb = res.run_of(data, a, k), res.run_of(data, b, k)
        why = [f"{v} not evaluated" if r is None else f"no pooled_parts.npz of {v} (re-run evaluate)"
               for v, r in ((a, ra), (b, rb)) if r is None or r.parts is None]
        if why:
            notes.append(f"fold {k}: {'; '.join(why)}")
            continue
        ids_b = {i: n for n, i in enumerate(rb.parts["ids"])}
        ia = [n for n, i in enumerate(ra.parts["ids"]) if i in ids_b]
        ib = [ids_b[ra.parts["ids"][n]] for n in ia]
        lost += len(ra.parts["ids"]) + len(rb.parts["ids"]) - 2 * len(ia)
        if not ia:
            notes.append(f"fold {k}: no image scored by both")
            continue
        folds.append((k, {key: ra.parts[key][ia] for key in SUMMED}, {key: rb.parts[key][ib] for key in SUMMED}))
    if lost:
        notes.append(f"{lost} image(s) not scored by both, left out")
    return folds, notes


def _pooled_diff(metric: str, pa: dict, pb: dict, idx=None) -> np.ndarray:
    """Pooled ``metric`` of run a minus run b over the images ``idx`` (``... x n`` indices; all: None)."""
    # Only the parts the metric reads: AC/SE/SP/JA/DI never touch the (bins-wide) histograms.
    keys = SUMMED if metric == "AUC" else SUMMED[:1]
    weights = None if idx is None else _resample_weights(np.asarray(idx), len(pa["counts"]))

    def total(p):
        summed = {k: p[k].sum(axis=0) if weights is None else weights @ p[k] for k in keys}
        return [summed.get(k) for k in SUMMED]
    return pooled_score(metric, *total(pa)) - pooled_score(metric, *total(pb))


def _resample_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """How often each of ``n`` images is drawn in each resample (``... x m`` indices -> ``... x n``):
    summing parts is then one matrix product, not a ``... x m x bins`` gather. Exact in float64."""
    flat = idx.reshape(-1, idx.shape[-1])
    w = np.zeros((flat.shape[0], n))
    np.add.at(w, (np.arange(flat.shape[0])[:, None], flat), 1.0)
    return w.reshape(*idx.shape[:-1], n)


def compare_pooled(res: ExperimentResults, data: str, a: str, b: str, metric: str, inference: Inference) -> Comparison:
    """Run ``a`` minus run ``b`` on a POOLED score (Table 3's convention): the difference of the
    scores over the same images, and its CI by a paired bootstrap over images (each resample sums
    the same images' counts and histograms for both runs; BCa). No test statistic. With folds, the
    fold level too: the t-test over the per-fold pooled differences."""
    cv = len(res.folds(data)) > 1
    folds, notes = _pooled_parts(res, data, a, b)
    if not folds:
        return Comparison(cv, None, None, notes + ["no pooled per-image parts"])
    pa = {key: np.concatenate([f[1][key] for f in folds]) for key in SUMMED}
    pb = {key: np.concatenate([f[2][key] for f in folds]) for key in SUMMED}
    n = len(pa["counts"])
    point = float(_pooled_diff(metric, pa, pb)) * res.scale
    lo = hi = math.nan
    if n >= 2:
        def statistic(idx, axis=-1):
            assert axis == -1  # scipy passes the resampled indices on the last axis
            return _pooled_diff(metric, pa, pb, np.asarray(idx, dtype=np.int64)) * res.scale
        rng = rng_for(inference.seed, res.exp_id, data, a, b, metric, "pooled")
        lo, hi, method = bootstrap_interval(statistic, n, inference.n_resamples, inference.confidence, rng)
        note = PERCENTILE_NOTE if method == "percentile" else ""
    else:
        note = "fewer than 2 images"
    images = PairedResult(n, point, lo, hi, math.nan, math.nan, note, math.nan)
    fold_result = None
    if cv:
        fold_result = fold_test([float(_pooled_diff(metric, f[1], f[2])) * res.scale for f in folds],
                                inference.confidence)
    return Comparison(cv, images, fold_result, notes)


def compare_groups(res: ExperimentResults, data: str, a: list[str], b: list[str], metric: str,
                   inference: Inference) -> Comparison:
    """Group ``a`` minus group ``b`` on ``metric`` (in the experiment's unit): per-image scores, or
    for a pooled experiment the pooled score of two single runs (:func:`compare_pooled`). Computed
    once per experiment results (``res.comparisons``): the stats table and the verdicts share them."""
    key = (data, tuple(a), tuple(b), metric, inference)
    if key not in res.comparisons:
        res.comparisons[key] = _compare_groups(res, data, list(a), list(b), metric, inference)
    return res.comparisons[key]


def _compare_groups(res: ExperimentResults, data: str, a: list[str], b: list[str], metric: str,
                    inference: Inference) -> Comparison:
    cv = len(res.folds(data)) > 1
    if not a or not b:
        return Comparison(cv, None, None, ["a group without variants"])
    if res.exp.aggregation == "pooled":
        if len(a) > 1 or len(b) > 1:
            return Comparison(cv, None, None, ["pooled scores are compared between single runs only"])
        return compare_pooled(res, data, a[0], b[0], metric, inference)
    j, notes = paired_images(res, data, a, b)
    if f"{metric}_a" not in j or f"{metric}_b" not in j:
        return Comparison(cv, None, None, notes + ["no paired per-image scores"])
    x, y = j[f"{metric}_a"] * res.scale, j[f"{metric}_b"] * res.scale
    images = paired_test(x.to_numpy(), y.to_numpy(), inference.n_resamples, inference.confidence,
                         rng_for(inference.seed, res.exp_id, data, "|".join(a), "|".join(b), metric))
    folds = fold_test((x - y).groupby(j["fold"]).mean().to_list(), inference.confidence) if cv else None
    return Comparison(cv, images, folds, notes)


__all__ = ["Inference", "Comparison", "paired_images", "compare_groups", "compare_pooled", "pooled_score",
           "POOLED_METRICS"]
