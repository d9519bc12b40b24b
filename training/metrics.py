"""Screening metrics with the edge cases spelled out: what cannot be computed is None."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score

from pulmoscreen.domain import Label


def wilson_lower_bound(successes: int, n: int, confidence: float) -> float | None:
    """One-sided lower confidence bound of a proportion (Wilson score interval).

    With ``confidence`` 0 it is the plain proportion ``successes / n``.
    """
    if n == 0:
        return None
    p = successes / n
    if confidence <= 0:
        return p
    z = NormalDist().inv_cdf(confidence)
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def threshold_for_sensitivity(
    scores: NDArray[np.floating],
    positive: NDArray[np.bool_],
    target: float,
    confidence: float = 0.0,
) -> float | None:
    """The highest threshold (flag when ``score >= t``) whose sensitivity reaches ``target``.

    With ``confidence`` > 0 the sensitivity's one-sided lower confidence bound (Wilson) must
    reach ``target``, not only the observed proportion: on a validation split with few
    positives, a threshold set at exactly the target misses it on new data about half the
    time. Where no threshold can give that confidence (too few positives), the lowest positive
    score is returned: every validation positive flagged.
    """
    pos = np.sort(scores[positive])[::-1]
    n = len(pos)
    if n == 0:
        return None
    k = max(1, math.ceil(target * n - 1e-9))
    while k < n and (wilson_lower_bound(k, n, confidence) or 0.0) < target - 1e-12:
        k += 1
    return float(pos[k - 1])


def sensitivity_specificity(
    flagged: NDArray[np.bool_], positive: NDArray[np.bool_]
) -> tuple[float | None, float | None]:
    """One-vs-rest sensitivity and specificity; None where a side has no cases."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    sens = float((flagged & positive).sum() / n_pos) if n_pos else None
    spec = float((~flagged & ~positive).sum() / n_neg) if n_neg else None
    return sens, spec


def safe_auc(positive: NDArray[np.bool_], scores: NDArray[np.floating]) -> float | None:
    """ROC AUC, or None when only one class is present."""
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive.astype(int), scores))


def expected_calibration_error(
    probs: NDArray[np.floating], true_idx: NDArray[np.int64], bins: int = 10
) -> float | None:
    """ECE of the top-class confidence, over equal-width bins."""
    if len(true_idx) == 0:
        return None
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == true_idx
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def compute_metrics(
    true_labels: Sequence[str],
    probs: NDArray[np.floating],
    labels: Sequence[str],
    thresholds: dict[str, float],
) -> dict[str, Any]:
    """``metrics.json`` content for one set of images.

    Diseases are flagged at their card threshold (``p >= threshold``); ``normal`` is read from
    the arg-max decision (its ``threshold`` is None). Per-class figures are one-vs-rest.
    """
    labels = list(labels)
    true_idx = np.array([labels.index(t) for t in true_labels], dtype=np.int64)
    pred_idx = probs.argmax(axis=1) if len(probs) else np.array([], dtype=np.int64)
    k = len(labels)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (true_idx, pred_idx), 1)
    per_class: dict[str, dict[str, float | None]] = {}
    for c, label in enumerate(labels):
        positive = true_idx == c
        threshold = thresholds.get(label)
        if label == Label.NORMAL.value or threshold is None:
            flagged = pred_idx == c
        else:
            flagged = probs[:, c] >= threshold
        sens, spec = sensitivity_specificity(flagged, positive)
        per_class[label] = {
            "auc": safe_auc(positive, probs[:, c]) if len(probs) else None,
            "sensitivity": sens,
            "specificity": spec,
            "threshold": threshold if label != Label.NORMAL.value else None,
            "n": int(positive.sum()),
        }
    aucs = [m["auc"] for m in per_class.values() if m["auc"] is not None]
    return {
        "n": len(true_idx),
        "labels": labels,
        "accuracy": float((pred_idx == true_idx).mean()) if len(true_idx) else None,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "confusion_matrix": confusion.tolist(),
        "per_class": per_class,
        "expected_calibration_error": expected_calibration_error(probs, true_idx),
    }
