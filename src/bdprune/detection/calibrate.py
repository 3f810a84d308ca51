"""Detector quality from scores of clean (negative) and backdoored (positive) models: ROC, ROC-AUC, the true
positive rate at a false positive rate, and the choice of a threshold on a calibration set.

A model is called backdoored when its score is strictly above the threshold (`record.verdict_of`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _finite(values: Sequence[float]) -> list[float]:
    """NaN scores (a statistic that could not be computed) count as the lowest score: never flagged."""
    return [v if v == v else -math.inf for v in values]


def roc_auc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(score of a random positive > score of a random negative), ties counting one half (Mann-Whitney U)."""
    neg, pos = _finite(negatives), _finite(positives)
    if not neg or not pos:
        return math.nan
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def flagged(scores: Sequence[float], threshold: float) -> float:
    """The share of `scores` strictly above `threshold`."""
    values = _finite(scores)
    return sum(v > threshold for v in values) / len(values) if values else math.nan


def threshold_at_fpr(negatives: Sequence[float], max_fpr: float) -> float:
    """The lowest threshold that flags at most `max_fpr` of the negatives (one of their scores)."""
    neg = sorted(_finite(negatives), reverse=True)
    allowed = math.floor(max_fpr * len(neg) + 1e-9)  # negatives that may lie above the threshold
    return neg[allowed] if allowed < len(neg) else -math.inf


def tpr_at_fpr(negatives: Sequence[float], positives: Sequence[float], max_fpr: float = 0.05) -> float:
    """The true positive rate at the threshold that flags at most `max_fpr` of the negatives."""
    return flagged(positives, threshold_at_fpr(negatives, max_fpr))


def roc_curve(negatives: Sequence[float], positives: Sequence[float]) -> list[tuple[float, float]]:
    """(FPR, TPR) at every threshold between the scores, from (0, 0) to (1, 1)."""
    cuts = sorted(set(_finite(negatives)) | set(_finite(positives)), reverse=True)
    points = [(0.0, 0.0)]
    for t in cuts:
        points.append((flagged(negatives, t - 1e-12), flagged(positives, t - 1e-12)))
    if points[-1] != (1.0, 1.0):
        points.append((1.0, 1.0))
    return points


def choose_threshold(negatives: Sequence[float], positives: Sequence[float], max_fpr: float = 0.05) -> float:
    """A threshold chosen on a calibration set: the midpoint between the highest negative score it may not
    flag (`threshold_at_fpr`) and the lowest positive score above it, so that neither side sits on the edge;
    when no positive lies above, that negative score itself."""
    low = threshold_at_fpr(negatives, max_fpr)
    above = [p for p in _finite(positives) if p > low]
    if not above or low == -math.inf:
        return low
    return (low + min(above)) / 2
