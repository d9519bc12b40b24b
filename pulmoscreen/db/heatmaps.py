"""Heatmaps in SQL: record the ones a batch made, beside their predictions, and find them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pulmoscreen.db.queries import _insert
from pulmoscreen.db.schema import HeatmapRow, Image, ModelRow, PredictionRow, utcnow


@dataclass(frozen=True)
class HeatmapEntry:
    """A heatmap to record: its image, the label it explains and its file (stored path)."""

    image_id: int
    label: str
    path: str


def prediction_ids(session: Session, image_ids: Sequence[int], model_id: int) -> dict[int, int]:
    """Each image's prediction id under ``model_id`` (images without one are left out)."""
    if not image_ids:
        return {}
    rows = session.execute(
        select(PredictionRow.image_id, PredictionRow.id).where(
            PredictionRow.image_id.in_(list(image_ids)), PredictionRow.model_id == model_id
        )
    )
    return {int(image_id): int(prediction_id) for image_id, prediction_id in rows}


def add_heatmaps(session: Session, entries: Sequence[tuple[int, HeatmapEntry]]) -> int:
    """Record ``(prediction_id, entry)`` pairs, once per prediction; returns how many rows are
    new."""
    if not entries:
        return 0
    rows = [
        {
            "image_id": entry.image_id,
            "prediction_id": prediction_id,
            "label": entry.label,
            "path": entry.path,
            "created_at": utcnow(),
        }
        for prediction_id, entry in entries
    ]
    stmt = _insert(session, HeatmapRow).on_conflict_do_nothing(index_elements=["prediction_id"])
    return len(session.execute(stmt.returning(HeatmapRow.id), rows).all())


@dataclass(frozen=True)
class HeatmapSource:
    """What the report needs to draw one image's heatmap over its radiograph: the heatmap's
    file and label, the image's stored file and the card of the model that made it."""

    image_id: int
    label: str
    path: str
    stored_path: str | None
    card: dict[str, Any]


def heatmap_sources(session: Session, image_ids: Sequence[int]) -> list[HeatmapSource]:
    """The newest heatmap of each image of ``image_ids`` that has one, with its sources."""
    if not image_ids:
        return []
    rows = session.execute(
        select(HeatmapRow, Image.stored_path, Image.source_path, ModelRow.card)
        .join(Image, Image.id == HeatmapRow.image_id)
        .join(PredictionRow, PredictionRow.id == HeatmapRow.prediction_id)
        .join(ModelRow, ModelRow.id == PredictionRow.model_id)
        .where(HeatmapRow.image_id.in_(list(image_ids)))
        .order_by(HeatmapRow.id)
    )
    newest = {
        row.image_id: HeatmapSource(row.image_id, row.label, row.path, stored or source, card)
        for row, stored, source, card in rows
    }
    return list(newest.values())
