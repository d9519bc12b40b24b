"""Deliveries: DICOM results built into the outbox and sent back, with their retries.

A sender claims due rows with one UPDATE that names it (``claimed_by``) until a lease ends
(``claimed_until``). The UPDATE re-checks on each row that nobody holds it, so of two senders
racing for a row exactly one gets it: PostgreSQL re-evaluates the WHERE clause on a row another
transaction just changed, SQLite runs one writer at a time. A sender that dies loses its claim
when the lease ends, and the row is sent by another. Sessions are passed in; callers commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session

from pulmoscreen.db.queries import _insert
from pulmoscreen.db.schema import (
    DeliveryRow,
    HeatmapRow,
    Image,
    ModelRow,
    PredictionRow,
    SiteCalibrationRow,
    utcnow,
)
from pulmoscreen.results_dicom import ScreeningResult

PENDING = "pending"
SENT = "sent"
FAILED = "failed"
# After this many failed attempts a row reads "failed" (still retried, at the longest wait).
FAILED_AFTER = 5


def retry_delay(attempts: int, *, first: float, longest: float) -> float:
    """Seconds to wait after the ``attempts``-th failure: ``first``, doubling, capped."""
    if attempts < 1:
        return 0.0
    # 2**60 s is beyond any cap: stop doubling before floats grow without use
    return float(min(longest, first * 2 ** min(attempts - 1, 60)))


def new_sender_id() -> str:
    """A name unique to one sender process, for ``claimed_by``."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Undelivered:
    """A prediction that lacks a result object, with what its SR and SC need.

    ``kinds`` are the objects still to build (``sr``, ``sc``).
    """

    prediction_id: int
    image_id: int
    stored_path: str
    result: ScreeningResult
    heatmap_path: str | None
    kinds: tuple[str, ...]
    # The model's served centre crop (PreprocessSpec.crop): the heatmap covers that centre.
    crop: float = 0.0


def _has(prediction_id: Any, kind: str) -> Any:
    return exists().where(DeliveryRow.prediction_id == prediction_id, DeliveryRow.kind == kind)


def undelivered_predictions(
    session: Session, *, limit: int = 100, skip: Collection[int] = ()
) -> list[Undelivered]:
    """Predictions of stored images that lack their SR, or their SC (a flagged image with a
    heatmap), oldest first; the ids in ``skip`` are left out (their build failed lately)."""
    stmt = (
        select(
            PredictionRow,
            Image,
            ModelRow,
            SiteCalibrationRow.thresholds,
            HeatmapRow.path,
            _has(PredictionRow.id, "sr"),
            _has(PredictionRow.id, "sc"),
        )
        .join(Image, Image.id == PredictionRow.image_id)
        .join(ModelRow, ModelRow.id == PredictionRow.model_id)
        .outerjoin(SiteCalibrationRow, SiteCalibrationRow.id == PredictionRow.calibration_id)
        .outerjoin(HeatmapRow, HeatmapRow.prediction_id == PredictionRow.id)
        .where(Image.stored_path.is_not(None), PredictionRow.id.not_in(list(skip)))
        .where(
            or_(
                ~_has(PredictionRow.id, "sr"),
                and_(HeatmapRow.id.is_not(None), ~_has(PredictionRow.id, "sc")),
            )
        )
        .order_by(PredictionRow.id)
        .limit(limit)
    )
    return [_undelivered(*row) for row in session.execute(stmt)]


def _undelivered(
    p: PredictionRow,
    image: Image,
    model: ModelRow,
    calibrated: dict[str, float] | None,
    heatmap_path: str | None,
    has_sr: bool,
    has_sc: bool,
) -> Undelivered:
    kinds: tuple[str, ...] = () if has_sr else ("sr",)
    if heatmap_path is not None and not has_sc:
        kinds += ("sc",)
    result = ScreeningResult(
        p_normal=p.p_normal,
        p_pneumonia=p.p_pneumonia,
        p_tuberculosis=p.p_tuberculosis,
        abnormality_score=p.abnormality_score,
        predicted_label=p.predicted_label,
        flagged=p.flagged,
        model_version=model.version,
        # the thresholds that decided the flag: the site calibration's, else the model's
        thresholds=dict(calibrated or model.thresholds or {}),
    )
    return Undelivered(
        prediction_id=p.id,
        image_id=image.id,
        stored_path=str(image.stored_path),
        result=result,
        heatmap_path=heatmap_path,
        kinds=kinds,
        crop=float((model.card or {}).get("preprocess", {}).get("crop", 0.0)),
    )


def record_delivery(
    session: Session, *, image_id: int, prediction_id: int, kind: str, path: str, sop_uid: str
) -> None:
    """A pending delivery, due now; a second one for the same prediction and kind is ignored."""
    now = utcnow()
    stmt = (
        _insert(session, DeliveryRow)
        .values(
            image_id=image_id,
            prediction_id=prediction_id,
            kind=kind,
            path=path,
            sop_uid=sop_uid,
            status=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["prediction_id", "kind"])
    )
    session.execute(stmt)


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender holds: what to send, and how often it failed before."""

    id: int
    kind: str
    path: str
    sop_uid: str
    attempts: int


def _claimable(now: datetime) -> Any:
    return and_(
        DeliveryRow.status.in_((PENDING, FAILED)),
        DeliveryRow.next_attempt_at <= now,
        or_(DeliveryRow.claimed_until.is_(None), DeliveryRow.claimed_until < now),
    )


def claim_due(
    session: Session, *, sender: str, lease_seconds: float, limit: int = 50
) -> list[Claimed]:
    """Claim up to ``limit`` due, unsent deliveries for ``sender`` until the lease ends.

    Rows another sender holds are skipped; the caller commits, then sends.
    """
    now = utcnow()
    due = (
        select(DeliveryRow.id)
        .where(_claimable(now))
        .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
        .limit(limit)
    )
    session.execute(
        update(DeliveryRow)
        # the outer condition again: it is what PostgreSQL re-checks on a row that a
        # concurrent claim changed, so the later claimer skips it
        .where(DeliveryRow.id.in_(due.scalar_subquery()), _claimable(now))
        .values(claimed_by=sender, claimed_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    rows = session.execute(
        select(
            DeliveryRow.id,
            DeliveryRow.kind,
            DeliveryRow.path,
            DeliveryRow.sop_uid,
            DeliveryRow.attempts,
        )
        .where(DeliveryRow.claimed_by == sender, DeliveryRow.status != SENT)
        .order_by(DeliveryRow.id)
    )
    return [Claimed(*row) for row in rows]


def mark_sent(session: Session, delivery_ids: Sequence[int], *, sender: str) -> None:
    """Deliveries the destination acknowledged; the claim ends."""
    session.execute(
        update(DeliveryRow)
        .where(DeliveryRow.id.in_(delivery_ids), DeliveryRow.claimed_by == sender)
        .values(status=SENT, sent_at=utcnow(), claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )


def mark_failed(
    session: Session, claimed: Claimed, *, sender: str, error: str, retry_in: float
) -> None:
    """A failed send: one more attempt, its error, the next try ``retry_in`` seconds from now;
    ``failed`` once it failed ``FAILED_AFTER`` times. The row stays to be retried."""
    attempts = claimed.attempts + 1
    session.execute(
        update(DeliveryRow)
        .where(DeliveryRow.id == claimed.id, DeliveryRow.claimed_by == sender)
        .values(
            attempts=attempts,
            status=FAILED if attempts >= FAILED_AFTER else PENDING,
            last_error=error[:2000],
            next_attempt_at=utcnow() + timedelta(seconds=retry_in),
            claimed_by=None,
            claimed_until=None,
        )
        .execution_options(synchronize_session=False)
    )


def release(session: Session, *, sender: str) -> None:
    """Give back every claim of ``sender`` that was not settled (a sender shutting down)."""
    session.execute(
        update(DeliveryRow)
        .where(DeliveryRow.claimed_by == sender)
        .values(claimed_by=None, claimed_until=None)
        .execution_options(synchronize_session=False)
    )
