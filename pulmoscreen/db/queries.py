"""Query functions shared by ingest, worker and the CLI. Sessions are passed in; callers commit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pulmoscreen.db.schema import Image, ModelRow, PredictionRow, Study, utcnow
from pulmoscreen.domain import ImageStatus, Prediction, Rejected, RejectReason, StudyStatus
from pulmoscreen.imaging.dicom import DicomMeta
from pulmoscreen.model.card import ModelCard


def _insert(session: Session, table: Any) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)


def upsert_study(session: Session, meta: DicomMeta) -> int:
    """Id of the study with ``meta.study_uid``, created if new (safe under concurrency).

    Raises:
        Rejected: ``patient_mismatch`` when the study is already recorded under another
            PatientID.
    """
    stmt = (
        _insert(session, Study)
        .values(
            study_uid=meta.study_uid,
            patient_id=meta.patient_id,
            accession=meta.accession,
            study_date=meta.study_date,
            status=StudyStatus.RECEIVED.value,
            created_at=utcnow(),
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["study_uid"])
    )
    session.execute(stmt)
    study_id, patient_id = session.execute(
        select(Study.id, Study.patient_id).where(Study.study_uid == meta.study_uid)
    ).one()
    if (patient_id or "") != (meta.patient_id or ""):
        # One StudyInstanceUID under two PatientIDs (UIDs made badly, or an ID corrected
        # mid-study): listing the image under the study's patient would call back the wrong
        # person. The detail names no ID: they are PHI.
        raise Rejected(
            RejectReason.PATIENT_MISMATCH,
            f"StudyInstanceUID already belongs to study {study_id} under another PatientID",
        )
    return int(study_id)


def image_by_sop(session: Session, sop_uid: str) -> Image | None:
    return session.scalars(select(Image).where(Image.sop_uid == sop_uid)).one_or_none()


def _meta_columns(meta: DicomMeta | None) -> dict[str, Any]:
    if meta is None:
        return {}
    return {
        "modality": meta.modality,
        "body_part": meta.body_part,
        "view_position": meta.view_position,
        "transfer_syntax": meta.transfer_syntax,
        "rows": meta.rows or None,
        "cols": meta.cols or None,
    }


def add_queued_image(
    session: Session,
    *,
    study_id: int,
    meta: DicomMeta,
    source_path: str,
    stored_path: str,
    sha256: str,
    size_bytes: int,
) -> int:
    """Register an accepted image, ready for inference."""
    file = {"source_path": source_path, "stored_path": stored_path, "sha256": sha256}
    return _insert_image(
        session,
        meta,
        **file,
        sop_uid=meta.sop_uid,
        study_id=study_id,
        size_bytes=size_bytes,
        status=ImageStatus.QUEUED.value,
    )


def _insert_image(session: Session, meta: DicomMeta | None, **columns: Any) -> int:
    image = Image(**columns, **_meta_columns(meta))
    session.add(image)
    session.flush()
    return image.id


def add_rejected_image(
    session: Session,
    *,
    source_path: str,
    stored_path: str | None,
    sha256: str | None,
    size_bytes: int | None,
    reason: RejectReason,
    detail: str,
    meta: DicomMeta | None = None,
) -> int:
    """Record a file rejected at ingest; duplicates keep no SOPInstanceUID (it is unique)."""
    file = {"source_path": source_path, "stored_path": stored_path, "sha256": sha256}
    rejection = {"reject_reason": reason.value, "reject_detail": detail[:2000]}
    return _insert_image(
        session, meta, **file, **rejection, size_bytes=size_bytes, status=ImageStatus.REJECTED.value
    )


# What the rejected row of an earlier copy keeps when a later copy reopens the image.
_COPIED_COLUMNS = (
    "study_id",
    "source_path",
    "stored_path",
    "sha256",
    "size_bytes",
    "reject_reason",
    "modality",
    "body_part",
    "view_position",
    "transfer_syntax",
    "rows",
    "cols",
)

# Rejections a fresh copy of the same file may undo: the transfer or the machine failed, not
# necessarily the content.
REOPENABLE = frozenset(
    {
        RejectReason.TRUNCATED.value,
        RejectReason.UNREADABLE.value,
        RejectReason.DECODE_FAILED.value,
        RejectReason.WORKER_CRASH.value,
    }
)


def reopen_rejected(
    session: Session,
    image: Image,
    *,
    study_id: int,
    stored_path: str,
    sha256: str,
    size_bytes: int,
) -> None:
    """Queue ``image`` (rejected with a reason in ``REOPENABLE``) again for a re-sent file.

    The earlier copy keeps its own rejected row (without the SOPInstanceUID, which is unique)
    naming its place in quarantine, so each file still has one outcome.
    """
    kept = {name: getattr(image, name) for name in _COPIED_COLUMNS}
    detail = f"{image.reject_detail} (a later copy was received as image {image.id})"
    session.add(
        Image(**kept, sop_uid=None, status=ImageStatus.REJECTED.value, reject_detail=detail[:2000])
    )
    session.execute(
        update(Image)
        .where(Image.id == image.id)
        .values(
            status=ImageStatus.QUEUED.value,
            study_id=study_id,
            stored_path=stored_path,
            sha256=sha256,
            size_bytes=size_bytes,
            reject_reason=None,
            reject_detail=None,
            attempts=0,
            retry_reason=None,
            retry_detail=None,
            resends=0,
            updated_at=utcnow(),
        )
    )
    refresh_study_status(session, [s for s in (image.study_id, study_id) if s is not None])


def rejected_image_at(session: Session, stored_path: str, sha256: str | None) -> int | None:
    """A rejected row whose file was never moved to quarantine (a crash in between)."""
    return session.scalar(
        select(Image.id)
        .where(
            Image.status == ImageStatus.REJECTED.value,
            Image.stored_path == stored_path,
            Image.sha256.is_(None) if sha256 is None else Image.sha256 == sha256,
        )
        .order_by(Image.id.desc())
        .limit(1)
    )


def rejected_elsewhere(
    session: Session, quarantine: str, *, updated_before: datetime | None = None
) -> list[Image]:
    """Rejected rows whose stored path is not in ``quarantine`` (its stored-path form): a crash
    came between the row and the file's move, or between the move and the row's update."""
    escaped = quarantine.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    query = select(Image).where(
        Image.status == ImageStatus.REJECTED.value,
        Image.stored_path.is_not(None),
        Image.stored_path.not_like(f"{escaped}/%", escape="\\"),
    )
    if updated_before is not None:
        query = query.where(Image.updated_at < updated_before)
    return list(session.scalars(query.order_by(Image.id)))


def image_at(session: Session, stored_path: str) -> Image | None:
    """The row that names ``stored_path``, if any."""
    return session.scalars(
        select(Image).where(Image.stored_path == stored_path).order_by(Image.id.desc()).limit(1)
    ).first()


def forget_queued_image(session: Session, image_id: int) -> None:
    """Remove a queued image whose file vanished before ingest could move it (the sender
    deleted or renamed it): nothing was received. Its study goes too when it holds no other
    image."""
    study_id = session.scalar(
        select(Image.study_id).where(Image.id == image_id, Image.status == ImageStatus.QUEUED.value)
    )
    done = session.execute(
        delete(Image).where(Image.id == image_id, Image.status == ImageStatus.QUEUED.value)
    )
    if not done.rowcount or study_id is None:
        return
    if session.scalar(select(func.count()).where(Image.study_id == study_id)):
        refresh_study_status(session, [study_id])
    else:
        session.execute(delete(Study).where(Study.id == study_id))


def reject_image(
    session: Session, image_id: int, *, reason: RejectReason, detail: str, stored_path: str | None
) -> bool:
    """Mark a queued image rejected (its pixels could not be used) and update its study;
    False when the image is no longer queued (a result won the race)."""
    done = session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status == ImageStatus.QUEUED.value)
        .values(
            status=ImageStatus.REJECTED.value,
            reject_reason=reason.value,
            reject_detail=detail[:2000],
            stored_path=stored_path,
            updated_at=utcnow(),
        )
    )
    if not done.rowcount:
        return False
    study_id = session.scalar(select(Image.study_id).where(Image.id == image_id))
    if study_id is not None:
        refresh_study_status(session, [study_id])
    return True


def set_content_scores(session: Session, scores: Sequence[tuple[int, float]]) -> None:
    """Record the content check's score of each image (accepted or refused alike)."""
    for image_id, score in scores:
        session.execute(
            update(Image).where(Image.id == image_id).values(content_score=float(score))
        )


def set_stored_path(session: Session, image_id: int, stored_path: str) -> None:
    """Record where an image's file now lies (after a move)."""
    session.execute(
        update(Image)
        .where(Image.id == image_id)
        .values(stored_path=stored_path, updated_at=utcnow())
    )


def register_model(session: Session, card: ModelCard) -> int:
    """Id of the model row for ``card.version``, created if new.

    A model becomes the active one when it is first registered (a new deployment); a worker
    that still serves an older version registers it again without taking ``active`` back, so
    the active model does not flip to whichever process started last.
    """
    stmt = (
        _insert(session, ModelRow)
        .values(
            version=card.version,
            sha256=card.sha256,
            labels=list(card.labels),
            thresholds=dict(card.thresholds),
            card=card.summary_dict(),
            trained=card.trained,
            active=False,
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["version"])
    )
    created = session.execute(stmt.returning(ModelRow.id)).scalar_one_or_none()
    model_id = int(
        session.scalars(select(ModelRow.id).where(ModelRow.version == card.version)).one()
    )
    if created is not None:
        session.execute(update(ModelRow).values(active=ModelRow.id == model_id))
    return model_id


def model_id_for(session: Session, card: ModelCard) -> int | None:
    """Id of the row registered for ``card`` (same version and weights), or None."""
    return session.scalar(
        select(ModelRow.id).where(ModelRow.version == card.version, ModelRow.sha256 == card.sha256)
    )


def images_to_predict(session: Session, image_ids: Sequence[int], model_id: int) -> list[Image]:
    """Those of ``image_ids`` still queued and without a prediction from ``model_id``."""
    done = select(PredictionRow.image_id).where(PredictionRow.model_id == model_id)
    return list(
        session.scalars(
            select(Image).where(
                Image.id.in_(image_ids),
                Image.status == ImageStatus.QUEUED.value,
                Image.id.not_in(done),
            )
        )
    )


def save_predictions(
    session: Session,
    *,
    model_id: int,
    results: Sequence[tuple[int, Prediction]],
    worker: str | None,
    calibration_id: int | None = None,
) -> int:
    """Write predictions idempotently (one per image and model); returns how many were new.

    ``calibration_id`` names the site calibration whose thresholds decided the flags (None:
    the model card's, or the configured override's)."""
    if not results:
        return 0
    rows = [
        {
            "image_id": image_id,
            "model_id": model_id,
            "p_normal": pred.probabilities.get("normal", 0.0),
            "p_pneumonia": pred.probabilities.get("pneumonia", 0.0),
            "p_tuberculosis": pred.probabilities.get("tuberculosis", 0.0),
            "predicted_label": pred.label,
            "abnormality_score": pred.abnormality_score,
            "flagged": pred.flagged,
            "worker": worker,
            "calibration_id": calibration_id,
            "created_at": utcnow(),
        }
        for image_id, pred in results
    ]
    # Only images still queued get a result: one rejected meanwhile (by another worker, or
    # given up) keeps its rejection and is never also flagged.
    ids = [image_id for image_id, _ in results]
    open_ids = set(
        session.scalars(
            update(Image)
            .where(Image.id.in_(ids), Image.status == ImageStatus.QUEUED.value)
            .values(status=ImageStatus.PREDICTED.value, updated_at=utcnow())
            .returning(Image.id)
        )
    )
    rows = [row for row in rows if row["image_id"] in open_ids]
    if not rows:
        return 0
    stmt = _insert(session, PredictionRow).on_conflict_do_nothing(
        index_elements=["image_id", "model_id"]
    )
    inserted = session.execute(stmt.returning(PredictionRow.id), rows).all()
    study_ids = session.scalars(select(Image.study_id).where(Image.id.in_(open_ids)).distinct())
    refresh_study_status(session, [s for s in study_ids if s is not None])
    return len(inserted)


def refresh_study_status(session: Session, study_ids: Iterable[int]) -> None:
    """A study is screened once no image is queued (rejected if none was predicted)."""
    for study_id in set(study_ids):
        queued, predicted = session.execute(
            select(
                func.sum(case((Image.status == ImageStatus.QUEUED.value, 1), else_=0)),
                func.sum(case((Image.status == ImageStatus.PREDICTED.value, 1), else_=0)),
            ).where(Image.study_id == study_id)
        ).one()
        if queued:
            status = StudyStatus.RECEIVED
        elif predicted:
            status = StudyStatus.SCREENED
        else:
            status = StudyStatus.REJECTED
        session.execute(
            update(Study)
            .where(Study.id == study_id)
            .values(status=status.value, updated_at=utcnow())
        )


def queued_image_ids(session: Session) -> list[int]:
    """Every image still waiting for a prediction (re-enqueued after a crash or restart)."""
    return list(
        session.scalars(
            select(Image.id).where(Image.status == ImageStatus.QUEUED.value).order_by(Image.id)
        )
    )


def claim_stale_queued(session: Session, *, older_than: datetime, limit: int = 1000) -> list[int]:
    """Queued images untouched since ``older_than`` (their task may have been lost), oldest
    first, claimed for a re-send: ``resends`` goes up and ``updated_at`` is set to now, so each
    is claimed at most once a period. Giving up on an image is the worker's decision, by its
    attempts (see :func:`claim_for_prediction`), never by lost tasks alone."""
    ids = list(
        session.scalars(
            select(Image.id)
            .where(Image.status == ImageStatus.QUEUED.value, Image.updated_at < older_than)
            .order_by(Image.updated_at, Image.id)
            .limit(limit)
        )
    )
    if ids:
        session.execute(
            update(Image)
            .where(Image.id.in_(ids), Image.status == ImageStatus.QUEUED.value)
            .values(updated_at=utcnow(), resends=Image.resends + 1)
        )
    return ids


def claim_for_prediction(session: Session, image_ids: Sequence[int]) -> None:
    """Count a worker attempt at each still-queued image of ``image_ids``, before it is read.

    Committed before the pixels are touched, so an attempt that kills its worker (a file that
    crashes the decoder or exhausts memory) is counted although nothing else is written.
    """
    if image_ids:
        session.execute(
            update(Image)
            .where(Image.id.in_(image_ids), Image.status == ImageStatus.QUEUED.value)
            .values(attempts=Image.attempts + 1)
        )


def release_claim(session: Session, image_ids: Sequence[int]) -> None:
    """Take back the attempt counted at images that a failure of the worker itself (database,
    model, memory of the whole batch) left untried: that failure is not theirs."""
    if image_ids:
        session.execute(
            update(Image)
            .where(
                Image.id.in_(image_ids),
                Image.status == ImageStatus.QUEUED.value,
                Image.attempts > 0,
            )
            .values(attempts=Image.attempts - 1)
        )


def defer_image(session: Session, image_id: int, *, reason: RejectReason, detail: str) -> bool:
    """Record a temporary failure at a queued image, which stays queued to be tried again;
    False when it is no longer queued."""
    done = session.execute(
        update(Image)
        .where(Image.id == image_id, Image.status == ImageStatus.QUEUED.value)
        .values(retry_reason=reason.value, retry_detail=detail[:2000], updated_at=utcnow())
    )
    return bool(done.rowcount)


@dataclass(frozen=True)
class ImageOutcome:
    """One row of the screening table."""

    image_id: int
    study_uid: str | None
    sop_uid: str | None
    source_path: str
    status: str
    reject_reason: str | None
    reject_detail: str | None
    predicted_label: str | None
    p_pneumonia: float | None
    p_tuberculosis: float | None
    abnormality_score: int | None
    flagged: bool | None
    model_version: str | None


def latest_prediction_id() -> Any:
    """The id of an image's latest prediction, correlated with the enclosing query's image."""
    return (
        select(func.max(PredictionRow.id))
        .where(PredictionRow.image_id == Image.id)
        .correlate(Image)
        .scalar_subquery()
    )


def image_outcomes(session: Session, image_ids: Sequence[int]) -> list[ImageOutcome]:
    """Status and latest result of each image in ``image_ids`` (as ``screening_results``)."""
    latest = latest_prediction_id()
    stmt = (
        select(Image, Study.study_uid, PredictionRow, ModelRow.version)
        .outerjoin(Study, Study.id == Image.study_id)
        .outerjoin(PredictionRow, PredictionRow.id == latest)
        .outerjoin(ModelRow, ModelRow.id == PredictionRow.model_id)
        .where(Image.id.in_(image_ids))
        .order_by(Image.id)
    )
    out = []
    for image, study_uid, pred, version in session.execute(stmt):
        out.append(
            ImageOutcome(
                image_id=image.id,
                study_uid=study_uid,
                sop_uid=image.sop_uid,
                source_path=image.source_path,
                status=image.status,
                reject_reason=image.reject_reason,
                reject_detail=image.reject_detail,
                predicted_label=pred.predicted_label if pred else None,
                p_pneumonia=pred.p_pneumonia if pred else None,
                p_tuberculosis=pred.p_tuberculosis if pred else None,
                abnormality_score=pred.abnormality_score if pred else None,
                flagged=pred.flagged if pred else None,
                model_version=version,
            )
        )
    return out


def count_pending(session: Session, image_ids: Sequence[int]) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Image)
            .where(Image.id.in_(image_ids), Image.status == ImageStatus.QUEUED.value)
        )
        or 0
    )
