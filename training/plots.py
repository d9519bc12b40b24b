"""Evaluation charts: one function per chart, data in, PNG bytes out (matplotlib Agg)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.metrics import roc_curve


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def confusion_matrix_png(confusion: Sequence[Sequence[int]], labels: Sequence[str]) -> bytes:
    matrix = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        ax.text(j, i, str(value), ha="center", va="center", color=colour)
    ax.set(
        xticks=range(len(labels)),
        yticks=range(len(labels)),
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix",
    )
    ax.set_xticklabels(labels, rotation=30)
    ax.set_yticklabels(labels)
    return _png(fig)


def roc_png(
    true_idx: NDArray[np.int64], probs: NDArray[np.floating], labels: Sequence[str]
) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    for c, label in enumerate(labels):
        positive = true_idx == c
        if positive.any() and not positive.all():
            fpr, tpr, _ = roc_curve(positive.astype(int), probs[:, c])
            ax.plot(fpr, tpr, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, one-vs-rest")
    ax.legend(loc="lower right")
    return _png(fig)


def reliability_png(
    true_idx: NDArray[np.int64], probs: NDArray[np.floating], labels: Sequence[str], bins: int = 10
) -> bytes:
    fig, ax = plt.subplots(figsize=(4.5, 4))
    edges = np.linspace(0, 1, bins + 1)
    for c, label in enumerate(labels):
        which = np.clip(np.digitize(probs[:, c], edges) - 1, 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            in_bin = which == b
            if in_bin.sum() >= 5:
                xs.append(probs[in_bin, c].mean())
                ys.append((true_idx[in_bin] == c).mean())
        ax.plot(xs, ys, marker="o", label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set(
        xlabel="predicted probability",
        ylabel="observed frequency",
        title="Reliability (calibration)",
    )
    ax.legend(loc="upper left")
    return _png(fig)


def score_histograms_png(
    true_idx: NDArray[np.int64],
    probs: NDArray[np.floating],
    labels: Sequence[str],
    thresholds: dict[str, float],
) -> bytes:
    diseases = [label for label in labels if label != "normal"]
    fig, axes = plt.subplots(1, len(diseases), figsize=(4.5 * len(diseases), 3.5), squeeze=False)
    for ax, disease in zip(axes[0], diseases, strict=True):
        c = list(labels).index(disease)
        for t, truth in enumerate(labels):
            scores = probs[true_idx == t, c]
            if len(scores):
                ax.hist(scores, bins=20, range=(0, 1), alpha=0.5, label=f"true {truth}")
        if disease in thresholds:
            ax.axvline(thresholds[disease], color="red", linestyle="--", label="threshold")
        ax.set(xlabel=f"P({disease})", ylabel="images", title=f"{disease} score by true label")
        ax.legend(fontsize=7)
    return _png(fig)
