"""Site calibrations in SQL: store one (superseding the active one), find the active one, and
the served model's results of images a site labelled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pulmoscreen.db.schema import Image, ModelRow, PredictionRow, SiteCalibrationRow, utcnow

# UIDs per IN (...) list: well under the drivers' parameter limits
_CHUNK = 500


@dataclass(frozen=True)
class ActiveCalibration:
    """The calibration in force for a model: its id and thresholds."""

    id: int
    thresholds: dict[str, float]


def add_calibration(session: Session, values: dict[str, Any]) -> int:
    """Store a calibration as the active one of its model version; the one it supersedes stays,
    inactive, with the time it was superseded. Returns the new row's id."""
    now = utcnow()
    session.execute(
        update(SiteCalibrationRow)
        .where(
            SiteCalibrationRow.model_version == values["model_version"],
            SiteCalibrationRow.active.is_(True),
        )
        .values(active=False, superseded_at=now)
    )
    row = SiteCalibrationRow(**{"created_at": now, **values, "active": True})
    session.add(row)
    session.flush()
    return row.id


def active_calibration(session: Session, *, version: str, sha256: str) -> ActiveCalibration | None:
    """The active calibration of the model with this version and weights, or None."""
    row = session.execute(
        select(SiteCalibrationRow.id, SiteCalibrationRow.thresholds).where(
            SiteCalibrationRow.model_version == version,
            SiteCalibrationRow.model_sha256 == sha256,
            SiteCalibrationRow.active.is_(True),
        )
    ).first()
    if row is None:
        return None
    return ActiveCalibration(int(row.id), {k: float(v) for k, v in row.thresholds.items()})


def calibrations(session: Session, version: str | None = None) -> Sequence[SiteCalibrationRow]:
    """Every stored calibration (of ``version`` when given), oldest first."""
    stmt = select(SiteCalibrationRow).order_by(SiteCalibrationRow.id)
    if version is not None:
        stmt = stmt.where(SiteCalibrationRow.model_version == version)
    return session.scalars(stmt).all()


def predictions_of(
    session: Session, sop_uids: Sequence[str], *, version: str, sha256: str
) -> dict[str, tuple[float, float, float]]:
    """By SOPInstanceUID, the probabilities (normal, pneumonia, tuberculosis) the model with
    this version and weights gave each of ``sop_uids`` it has scored; the others are absent."""
    found: dict[str, tuple[float, float, float]] = {}
    for start in range(0, len(sop_uids), _CHUNK):
        rows = session.execute(
            select(
                Image.sop_uid,
                PredictionRow.p_normal,
                PredictionRow.p_pneumonia,
                PredictionRow.p_tuberculosis,
            )
            .join(PredictionRow, PredictionRow.image_id == Image.id)
            .join(ModelRow, ModelRow.id == PredictionRow.model_id)
            .where(
                Image.sop_uid.in_(sop_uids[start : start + _CHUNK]),
                ModelRow.version == version,
                ModelRow.sha256 == sha256,
            )
        )
        found.update({str(r[0]): (float(r[1]), float(r[2]), float(r[3])) for r in rows})
    return found


def known_sop_uids(session: Session, sop_uids: Sequence[str]) -> set[str]:
    """Those of ``sop_uids`` the database holds an image for."""
    found: set[str] = set()
    for start in range(0, len(sop_uids), _CHUNK):
        chunk = sop_uids[start : start + _CHUNK]
        found.update(session.scalars(select(Image.sop_uid).where(Image.sop_uid.in_(chunk))))
    return found
