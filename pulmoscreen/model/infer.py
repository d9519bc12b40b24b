"""Batched inference and the scoring rule that turns probabilities into a finding."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.domain import Label, Prediction
from pulmoscreen.model.card import ModelCard


def predict_batch(model: Any, batch_nhwc: NDArray[np.float32]) -> NDArray[np.float32]:
    """Class probabilities ``(n, n_labels)`` for a batch of model inputs, in one call."""
    if batch_nhwc.ndim != 4:
        raise ValueError(f"expected (n, h, w, c), got {batch_nhwc.shape}")
    probs = model.predict_on_batch(batch_nhwc)
    return np.asarray(probs, dtype=np.float32)


def predict_with_features(
    model: Any, batch_nhwc: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Class probabilities ``(n, n_labels)`` and penultimate features ``(n, d)`` for a batch,
    from one forward pass of a runner (:mod:`pulmoscreen.model.backends`)."""
    if batch_nhwc.ndim != 4:
        raise ValueError(f"expected (n, h, w, c), got {batch_nhwc.shape}")
    probs, features = model.predict_with_features(batch_nhwc)
    return np.asarray(probs, dtype=np.float32), np.asarray(features, dtype=np.float32)


def score_probabilities(probs: NDArray[np.float32], card: ModelCard) -> Prediction:
    """One image's probabilities -> label, abnormality score (0-100) and flag.

    The abnormality score is ``round(100 * (1 - p(normal)))``. An image is flagged when any
    disease's probability reaches that disease's threshold in the card; an untrained model's
    card has no thresholds, so it never flags.
    """
    probabilities = {label: float(p) for label, p in zip(card.labels, probs, strict=True)}
    label = card.labels[int(np.argmax(probs))]
    p_normal = probabilities.get(Label.NORMAL.value, 0.0)
    flagged = card.trained and any(
        probabilities.get(disease, 0.0) >= threshold
        for disease, threshold in card.thresholds.items()
    )
    return Prediction(
        probabilities=probabilities,
        label=label,
        abnormality_score=round(100.0 * (1.0 - p_normal)),
        flagged=bool(flagged),
    )
