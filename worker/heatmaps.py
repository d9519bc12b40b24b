"""Heatmaps of a batch's flagged images: from the batch's own forward pass, written as 8-bit
grey PNGs and recorded beside their predictions. Nothing here may cost a prediction: every
failure is logged (ids and error classes only) and the batch goes on without the heatmap."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session

from pulmoscreen.db.heatmaps import HeatmapEntry, add_heatmaps, prediction_ids
from pulmoscreen.domain import Prediction
from pulmoscreen.model import LoadedModel
from pulmoscreen.model.explain import (
    heatmap_png,
    heatmaps_for,
    label_to_explain,
    predict_with_maps,
)
from pulmoscreen.storage import heatmap_destination, to_stored_path, write_durably

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Explained:
    """One flagged image's heatmap: floats in [0, 1] at the model input size."""

    image_id: int
    label: str
    heatmap: NDArray[np.float32]


def forward_with_maps(
    loaded: LoadedModel, inputs: NDArray[np.float32]
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]] | None:
    """Probabilities, penultimate features and the last feature map from one forward pass;
    None when the model cannot flag (no heatmap is needed), its runner gives no map, or the
    pass failed for any reason but exhausted memory (the caller then scores the batch
    without maps: the prediction never waits on its heatmap)."""
    card = loaded.card
    if not (card.trained and card.thresholds and hasattr(loaded.model, "predict_with_maps")):
        return None
    try:
        return predict_with_maps(loaded.model, inputs)
    except MemoryError:
        raise  # the worker's failure, not the heatmap's: the batch is tried again later
    except Exception as exc:
        log.error("no feature maps for this batch (%s): no heatmaps", type(exc).__name__)
        return None


def explain_flagged(
    loaded: LoadedModel,
    ids: Sequence[int],
    probs: NDArray[np.float32],
    maps: NDArray[np.float32] | None,
    results: Sequence[tuple[int, Prediction]],
) -> list[Explained]:
    """A heatmap for each flagged result, for its flagged disease with the highest
    probability (``ids``, ``probs`` and ``maps`` in batch order)."""
    flagged = {image_id for image_id, pred in results if pred.flagged}
    if maps is None or not flagged:
        return []
    try:
        kernel = loaded.model.classifier_kernel()
        rows = [k for k, image_id in enumerate(ids) if image_id in flagged]
        labels = [label_to_explain(probs[k], loaded.card) for k in rows]
        found = [(k, label) for k, label in zip(rows, labels, strict=True) if label is not None]
        heatmaps = heatmaps_for(
            maps[[k for k, _ in found]],
            kernel,
            [loaded.card.labels.index(label) for _, label in found],
            size=loaded.card.preprocess.size,
        )
    except Exception as exc:  # never the prediction's failure
        log.error("heatmaps of %d flagged images failed (%s)", len(flagged), type(exc).__name__)
        return []
    return [
        Explained(ids[k], label, heat) for (k, label), heat in zip(found, heatmaps, strict=True)
    ]


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write_durably(path, lambda out: out.write(data), temp=temp)


def store_heatmaps(
    session: Session,
    explained: Sequence[Explained],
    *,
    folders: Mapping[int, Path],
    model_id: int,
    storage_root: Path | None,
) -> int:
    """Write each heatmap's PNG into its image's folder and record it in ``session``'s
    transaction, beside its prediction, in a savepoint: a failure loses the heatmaps, never
    the predictions. Returns how many rows are new."""
    if not explained:
        return 0
    try:
        with session.begin_nested():
            by_image = prediction_ids(session, [e.image_id for e in explained], model_id)
            entries: list[tuple[int, HeatmapEntry]] = []
            for item in explained:
                if item.image_id not in by_image:
                    continue  # no prediction (rejected meanwhile): no heatmap
                folder = folders[item.image_id]
                path = heatmap_destination(folder, image_id=item.image_id, model_id=model_id)
                try:
                    _write_atomically(path, heatmap_png(item.heatmap))
                except (OSError, ValueError) as exc:
                    log.error(
                        "image %d: heatmap not written (%s)", item.image_id, type(exc).__name__
                    )
                    continue
                entry = HeatmapEntry(item.image_id, item.label, to_stored_path(path, storage_root))
                entries.append((by_image[item.image_id], entry))
            return add_heatmaps(session, entries)
    except Exception as exc:  # never the prediction's failure
        log.error("heatmaps of %d images not stored (%s)", len(explained), type(exc).__name__)
        return 0
