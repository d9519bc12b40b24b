"""Heatmaps in SQL: record the ones a batch made, beside their predictions, and find them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from pulmoscreen.db.queries import _insert
from pulmoscreen.db.schema import HeatmapRow, PredictionRow, utcnow


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


def heatmaps_of_images(session: Session, image_ids: Sequence[int]) -> dict[int, HeatmapRow]:
    """The newest heatmap of each image that has one."""
    if not image_ids:
        return {}
    rows = session.scalars(
        select(HeatmapRow).where(HeatmapRow.image_id.in_(list(image_ids))).order_by(HeatmapRow.id)
    )
    return {row.image_id: row for row in rows}
