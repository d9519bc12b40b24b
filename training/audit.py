"""Shortcut audit: how well the model's own features tell which collection an image came from.

A screening model should encode the disease, not the scanner, hospital or file format. On
images of one label and one population (``normal`` adults: children are told apart from adults
by anatomy, which is no shortcut), a linear probe on the penultimate features that tells the
source apart far better than chance shows the features carry acquisition cues that a new
hospital will not share. Lower is better; chance is the share of the largest source.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.domain import Label
from pulmoscreen.model import LoadedModel
from training.dataset import Sample, population

MIN_PER_SOURCE = 10


def penultimate_features(
    loaded: LoadedModel, grey: NDArray[np.float32], *, batch_size: int = 64
) -> NDArray[np.float32]:
    """The input of the classifier layer (``probs``) for grey model-input planes."""
    import keras

    model = loaded.model
    extractor = keras.Model(model.inputs, model.get_layer("probs").input)
    channels = loaded.card.preprocess.channels
    out = [
        np.asarray(
            extractor(np.repeat(np.asarray(grey[i : i + batch_size])[..., None], channels, -1)),
            dtype=np.float32,
        )
        for i in range(0, len(grey), batch_size)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def probe_accuracy(
    features: NDArray[np.float32], groups: Sequence[str], *, folds: int = 5
) -> float:
    """Stratified k-fold accuracy of a standardised logistic regression predicting ``groups``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return float(cross_val_score(probe, features, np.asarray(groups), cv=cv).mean())


def source_probe(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    grey: NDArray[np.float32],
    *,
    label: str = Label.NORMAL.value,
    among: str = "adults",
) -> dict[str, Any] | None:
    """Cross-validated accuracy of telling the source of ``label`` images of the ``among``
    population from the model's features, beside chance; None when fewer than two sources
    have enough such images."""
    counts = Counter(
        s.source for s in samples if s.label == label and population(s.source) == among
    )
    sources = sorted(src for src, n in counts.items() if n >= MIN_PER_SOURCE)
    if len(sources) < 2:
        return None
    keep = np.array([s.label == label and s.source in sources for s in samples])
    groups = [s.source for s, k in zip(samples, keep, strict=True) if k]
    features = penultimate_features(loaded, np.asarray(grey)[keep])
    return {
        "label": label,
        "population": among,
        "sources": {src: counts[src] for src in sources},
        "accuracy": probe_accuracy(features, groups),
        "chance": max(counts[src] for src in sources) / len(groups),
    }
