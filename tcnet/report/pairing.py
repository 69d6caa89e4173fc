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

import pandas as pd

from tcnet.report.results import ExperimentResults
from tcnet.report.stats import FoldResult, PairedResult, direction, fold_test, paired_test, rng_for


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
            run = next((r for r in res.variant_runs(data, v) if r.spec.fold == fold), None)
            if run is None or run.per_image is None:
                return None, v
            frames.append(run.per_image.set_index("id"))
        common = frames[0].index
        for f in frames[1:]:
            common = common.intersection(f.index)
        cols = [c for c in frames[0].columns if all(c in f for f in frames)]
        return sum(f.loc[common, cols].astype(float) for f in frames) / len(frames), None

    for k in sorted({s.fold for s in res.specs if s.data.name == data}):
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
    def direction(self) -> int:
        """+1: ``a`` ahead (the CI above 0), -1: behind, 0: not resolved (or nothing to compare)."""
        p = self.primary
        return 0 if p is None else direction(p.ci_low, p.ci_high)

    @property
    def level(self) -> str:
        return "folds" if self.cross_validated else "images"

    def text(self) -> str:
        """``+0.52 [−0.31, +1.20]`` (mean difference and CI at the primary level) or why there is none."""
        p = self.primary
        if p is None or not math.isfinite(p.mean_diff):
            return "no paired scores"
        ci = f" [{p.ci_low:+.3f}, {p.ci_high:+.3f}]" if math.isfinite(p.ci_low) else " (no CI)"
        return f"{p.mean_diff:+.3f}{ci}"


def compare_groups(res: ExperimentResults, data: str, a: list[str], b: list[str], metric: str,
                   inference: Inference) -> Comparison:
    """Group ``a`` minus group ``b`` on per-image ``metric`` (in the experiment's unit)."""
    cv = len({s.fold for s in res.specs if s.data.name == data}) > 1
    if not a or not b:
        return Comparison(cv, None, None, ["a group without variants"])
    j, notes = paired_images(res, data, a, b)
    if f"{metric}_a" not in j or f"{metric}_b" not in j:
        return Comparison(cv, None, None, notes + ["no paired per-image scores"])
    x, y = j[f"{metric}_a"] * res.scale, j[f"{metric}_b"] * res.scale
    images = paired_test(x.to_numpy(), y.to_numpy(), inference.n_resamples, inference.confidence,
                         rng_for(inference.seed, res.exp_id, data, "|".join(a), "|".join(b), metric))
    folds = fold_test((x - y).groupby(j["fold"]).mean().to_list(), inference.confidence) if cv else None
    return Comparison(cv, images, folds, notes)


__all__ = ["Inference", "Comparison", "paired_images", "compare_groups"]
