"""``MetricAccumulator``: per-image scores, their mean (macro) and pooled (micro) scores.

Feed it image by image (or batch by batch) with :meth:`MetricAccumulator.update`; it keeps only
four counts per image, the per-image AUC, and (with ``with_auc``) two fixed-size probability
histograms for the pooled AUC and ROC curve, so memory does not grow with image size.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Sequence, Union

import numpy as np

from tcnet.metrics.auc import AUC_BINS, ROC_POINTS, ProbabilityHistogram, roc_auc
from tcnet.metrics.confusion import confusion, is_tensor
from tcnet.metrics.scores import METRICS, scores_from_counts, thresholded_jaccard


class Aggregation(str, Enum):
    """How per-image results become one number."""

    MEAN = "mean"  # macro: score each image, then the arithmetic mean (ISIC scorer convention)
    POOLED = "pooled"  # micro: sum the counts over images, then score once (retina convention)


def _numpy(x) -> np.ndarray:
    if is_tensor(x):
        x = x.detach()
        x = x.float() if x.is_floating_point() else x
        x = x.cpu().numpy()
    return np.asarray(x)


def _image(x, name: str, image_id: str) -> np.ndarray:
    """One image as a 2-D array (a leading singleton channel axis is dropped)."""
    a = _numpy(x)
    while a.ndim > 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"{image_id}: {name} must be one H x W image, got shape {a.shape}")
    return a


def _truth_mask(a: np.ndarray) -> np.ndarray:
    """Binary truth: bool as is, integers non-zero, floats >= 0.5."""
    if a.dtype == bool:
        return a
    return a >= 0.5 if np.issubdtype(a.dtype, np.floating) else a != 0


def _split(ids, *arrays):
    """``ids`` as a list, and each array argument as a matching list of per-image arrays."""
    if isinstance(ids, str):
        return [ids], [[a] if a is not None else None for a in arrays]
    ids = [str(i) for i in ids]
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        items = list(a) if not (is_tensor(a) or isinstance(a, np.ndarray)) else [a[i] for i in range(a.shape[0])]
        if len(items) != len(ids):
            raise ValueError(f"got {len(ids)} ids but {len(items)} images")
        out.append(items)
    return ids, out


class MetricAccumulator:
    """Scores of binary segmentations, image by image; mean (macro) and pooled (micro) aggregates.

    Args:
        threshold: a pixel is predicted foreground where ``prob >= threshold`` (the retina
            convention; a model's sigmoid output at exactly 0.5 is the only difference from ``>``).
            Ignored for images given an explicit ``pred``.
        with_auc: also compute the per-image AUC, the pooled AUC and the pooled ROC curve.
        roc_points: at most this many points in :meth:`roc`.
        auc_bins: resolution of the pooled-AUC probability histograms (see ``tcnet.metrics.auc``).
    """

    def __init__(
        self,
        threshold: float = 0.5,
        with_auc: bool = False,
        roc_points: int = ROC_POINTS,
        auc_bins: int = AUC_BINS,
    ):
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be a probability in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.with_auc = bool(with_auc)
        self.roc_points = int(roc_points)
        self.auc_bins = int(auc_bins)
        self.reset()

    def reset(self) -> None:
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._counts: list[tuple[int, int, int, int]] = []
        self._auc: list[float] = []
        self._hist = ProbabilityHistogram(self.auc_bins) if self.with_auc else None

    def __len__(self) -> int:
        return len(self._ids)

    def update(
        self,
        ids: Union[str, Sequence[str]],
        probs,
        truth,
        valid=None,
        pred=None,
    ) -> None:
        """Add images.

        Args:
            ids: one id (then the arrays are one image each) or a sequence of ids (then each array
                argument is a sequence, or an ``N x ...`` array/tensor, of per-image arrays).
                Images may differ in size; ids must be unique.
            probs: foreground probabilities in [0, 1] (floats), or bool masks when no AUC is
                wanted; may be ``None`` when ``pred`` is given and ``with_auc`` is off.
            truth: binary truth (bool; integers non-zero; floats >= 0.5).
            valid: optional mask of the pixels that count (non-zero), e.g. the retina FOV.
            pred: optional binary prediction, used instead of ``probs >= threshold`` (e.g. a mask
                read from disk while ``probs`` only feeds the AUC).

        Shape:
            per image ``H x W`` (or ``1 x H x W``); ``probs``, ``truth``, ``valid``, ``pred`` alike.
        """
        if probs is None and pred is None:
            raise ValueError("update() needs probs or pred")
        ids, (probs_l, truth_l, valid_l, pred_l) = _split(ids, probs, truth, valid, pred)
        for k, image_id in enumerate(ids):
            if image_id in self._seen:
                raise ValueError(f"image id {image_id!r} was already added; ids must be unique")
            t = _truth_mask(_image(truth_l[k], "truth", image_id))
            v = None if valid_l is None else _image(valid_l[k], "valid", image_id) != 0
            p_prob = None if probs_l is None else _image(probs_l[k], "probs", image_id)
            if p_prob is not None and p_prob.dtype != bool:
                if not np.issubdtype(p_prob.dtype, np.floating):
                    raise ValueError(f"{image_id}: probs must be floats in [0, 1] or bool masks, got {p_prob.dtype}")
                if np.isnan(p_prob).any():
                    raise ValueError(f"{image_id}: probs hold NaN")
                if p_prob.size and (p_prob.min() < 0.0 or p_prob.max() > 1.0):
                    raise ValueError(f"{image_id}: probs must lie in [0, 1], got {p_prob.min()}..{p_prob.max()}")
            if pred_l is not None:
                p = _image(pred_l[k], "pred", image_id)
                p = p if p.dtype == bool else _truth_mask(p)
            elif p_prob.dtype == bool:
                p = p_prob
            else:
                p = p_prob >= self.threshold
            for name, a in (("pred", p), ("probs", p_prob), ("valid", v)):
                if a is not None and a.shape != t.shape:
                    raise ValueError(f"{image_id}: {name} is {a.shape[1]}x{a.shape[0]} (WxH), truth is {t.shape[1]}x{t.shape[0]}")
            counts = tuple(int(c) for c in confusion(p, t, v))
            auc = math.nan
            if self.with_auc:
                if p_prob is None or p_prob.dtype == bool:
                    raise ValueError(f"{image_id}: with_auc needs probabilities (floats in [0, 1]), not binary masks")
                auc = roc_auc(p_prob, t, v)
                flat_p, flat_t = (p_prob[v], t[v]) if v is not None else (p_prob.ravel(), t.ravel())
                self._hist.add(flat_p, flat_t)
            self._ids.append(image_id)
            self._seen.add(image_id)
            self._counts.append(counts)
            self._auc.append(auc)

    # ------------------------------------------------------------------------------------------
    # Results
    # ------------------------------------------------------------------------------------------

    def _need(self) -> None:
        if not self._ids:
            raise ValueError("no images were added to the metric accumulator")

    def counts(self) -> np.ndarray:
        """Per-image ``(tp, fp, fn, tn)``, int64 ``N x 4`` in the order the images were added."""
        return np.asarray(self._counts, dtype=np.int64).reshape(-1, 4)

    def per_image(self) -> list[dict]:
        """One dict per image: ``id, AC, SE, SP, JA, DI, TJA`` (+ ``AUC``, NaN for one-class truth)."""
        self._need()
        c = self.counts()
        s = scores_from_counts(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
        tja = thresholded_jaccard(s["JA"])
        rows = []
        for k, image_id in enumerate(self._ids):
            row = {"id": image_id, **{m: float(s[m][k]) for m in METRICS}, "TJA": float(tja[k])}
            if self.with_auc:
                row["AUC"] = float(self._auc[k])
            rows.append(row)
        return rows

    def mean(self) -> dict:
        """Macro average: the mean over images of each per-image score (AUC: ``nanmean``; NaN if none)."""
        rows = self.per_image()
        keys = [*METRICS, "TJA"] + (["AUC"] if self.with_auc else [])
        out = {}
        for k in keys:
            vals = np.array([r[k] for r in rows], dtype=np.float64)
            ok = vals[~np.isnan(vals)]
            out[k] = float(ok.mean()) if ok.size else math.nan
        return out

    def pooled(self) -> dict:
        """Micro scores: AC SE SP JA DI from the counts summed over images (+ pooled ``AUC``).

        TJA is a per-image rule and has no pooled form, so it is not in this dict.
        """
        self._need()
        tp, fp, fn, tn = (int(x) for x in self.counts().sum(axis=0))
        out = scores_from_counts(tp, fp, fn, tn)
        if self.with_auc:
            out["AUC"] = self._hist.auc()
        return out

    def aggregate(self, how: Union[str, Aggregation]) -> dict:
        """:meth:`mean` or :meth:`pooled` by name."""
        how = Aggregation(how)
        return self.mean() if how is Aggregation.MEAN else self.pooled()

    def roc(self):
        """Pooled ROC curve ``(fpr, tpr)`` over every valid pixel, at most ``roc_points`` points."""
        if not self.with_auc:
            raise ValueError("roc() needs MetricAccumulator(with_auc=True)")
        self._need()
        return self._hist.roc(self.roc_points)
