"""Segmentation metrics: one confusion-matrix core, scores from its counts, AUC, aggregation.

* :func:`confusion` -- ``(tp, fp, fn, tn)`` of binary masks (NumPy or torch, per image or batched);
* :func:`scores_from_counts` -- AC SE SP JA DI (undefined ratio = 1.0, the ISIC scorer's rule);
  :func:`thresholded_jaccard` -- TJA;
* :func:`roc_auc`, :func:`roc_curve` -- scikit-learn, NaN for one-class truth;
* :class:`MetricAccumulator` -- per-image rows, ``mean()`` (macro) and ``pooled()`` (micro);
* :func:`batch_dice_jaccard` -- per-image DI/JA of a torch batch, for validation during training.

See ``docs/metrics.md``.
"""

from tcnet.metrics.accumulator import Aggregation, MetricAccumulator
from tcnet.metrics.auc import ProbabilityHistogram, downsample_curve, roc_auc, roc_curve
from tcnet.metrics.batch import batch_dice_jaccard, predict_foreground
from tcnet.metrics.confusion import confusion
from tcnet.metrics.scores import METRICS, TJA_THRESHOLD, scores_from_counts, thresholded_jaccard

__all__ = [
    "Aggregation",
    "METRICS",
    "MetricAccumulator",
    "ProbabilityHistogram",
    "TJA_THRESHOLD",
    "batch_dice_jaccard",
    "confusion",
    "downsample_curve",
    "predict_foreground",
    "roc_auc",
    "roc_curve",
    "scores_from_counts",
    "thresholded_jaccard",
]
