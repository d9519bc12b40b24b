"""SQLAlchemy 2.0 tables. Alembic (``migrations/``) is the schema's source of truth."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Study(Base):
    """One DICOM study (StudyInstanceUID); its status follows its images."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    accession: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    images: Mapped[list[Image]] = relationship(back_populates="study")


class Image(Base):
    """One received file: a queued/predicted image, or a rejected one with its reason."""

    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_uid: Mapped[str | None] = mapped_column(String(64), unique=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    source_path: Mapped[str] = mapped_column(Text)
    stored_path: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part: Mapped[str | None] = mapped_column(String(64))
    view_position: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax: Mapped[str | None] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    cols: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reject_reason: Mapped[str | None] = mapped_column(String(32), index=True)
    reject_detail: Mapped[str | None] = mapped_column(Text)
    # times ingest re-sent this image's task because it went missing (see claim_stale_queued)
    resends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # worker attempts without a result, and the temporary error of the last one (see
    # queries.claim_for_prediction)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    retry_reason: Mapped[str | None] = mapped_column(String(32))
    retry_detail: Mapped[str | None] = mapped_column(Text)
    # the content check's score (1.0 or more: not a frontal chest radiograph), kept for every
    # image it scored, accepted or not, so a site can audit the check
    content_score: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    study: Mapped[Study | None] = relationship(back_populates="images")


class ModelRow(Base):
    """A model that produced predictions; exactly one is active at a time."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(128), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[str]] = mapped_column(JSON)
    thresholds: Mapped[dict[str, float]] = mapped_column(JSON)
    card: Mapped[dict[str, Any]] = mapped_column(JSON)
    trained: Mapped[bool] = mapped_column(Boolean)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PredictionRow(Base):
    """One image's result under one model (unique per image and model)."""

    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("image_id", "model_id", name="uq_predictions_image_model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    p_normal: Mapped[float] = mapped_column(Float)
    p_pneumonia: Mapped[float] = mapped_column(Float)
    p_tuberculosis: Mapped[float] = mapped_column(Float)
    predicted_label: Mapped[str] = mapped_column(String(32))
    abnormality_score: Mapped[int] = mapped_column(Integer)
    flagged: Mapped[bool] = mapped_column(Boolean, index=True)
    worker: Mapped[str | None] = mapped_column(String(255))
    # the site calibration whose thresholds decided ``flagged``; NULL: the model card's, or
    # PULMO_THRESHOLDS'
    calibration_id: Mapped[int | None] = mapped_column(ForeignKey("site_calibrations.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HeatmapRow(Base):
    """Where the model looked for one flagged prediction: an 8-bit grey PNG at the model's input
    size for the flagged disease with the highest probability (docs/explain.md)."""

    __tablename__ = "heatmaps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"), unique=True)
    label: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeliveryRow(Base):
    """One DICOM result object (``sr``, or ``sc`` for a flagged image) built into the outbox
    and sent back to the PACS: ``pending`` until a C-STORE succeeds (``sent``); ``failed``
    after repeated failures, and still retried (migration 0009)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("prediction_id", "kind", name="uq_deliveries_prediction_kind"),
        CheckConstraint("kind IN ('sr', 'sc')", name="ck_deliveries_kind"),
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="ck_deliveries_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"), index=True)
    prediction_id: Mapped[int] = mapped_column(ForeignKey("predictions.id"))
    kind: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    sop_uid: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # the sender holding the row while it sends, until claimed_until (a dead sender's lapses)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SiteCalibrationRow(Base):
    """Flag thresholds chosen on a site's own labelled sample (``pulmoscreen calibrate
    --apply``), for one model version. At most one per model is active; a newer one supersedes
    it, and both stay."""

    __tablename__ = "site_calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version: Mapped[str] = mapped_column(String(128), index=True)
    model_sha256: Mapped[str] = mapped_column(String(64))
    thresholds: Mapped[dict[str, float]] = mapped_column(JSON)
    target_sensitivity: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    rule: Mapped[str] = mapped_column(Text)
    # per label, the number of sample images (e.g. {"normal": 60, "tuberculosis": 60})
    sample_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    # per calibrated disease: AUC and its 95 % interval, sensitivity and specificity there
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)
    sample_source: Mapped[str] = mapped_column(Text)
    report_path: Mapped[str] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    superseded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReportRow(Base):
    """One nightly report per local day: where its files are and the totals it showed."""

    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    report_date: Mapped[date] = mapped_column(Date, unique=True)
    site_timezone: Mapped[str] = mapped_column(String(64))
    generated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    duration_seconds: Mapped[float] = mapped_column(Float)
    out_dir: Mapped[str] = mapped_column(Text)
    html_path: Mapped[str] = mapped_column(Text)
    pdf_path: Mapped[str] = mapped_column(Text)
    csv_path: Mapped[str] = mapped_column(Text)
    files_received: Mapped[int] = mapped_column(Integer)
    studies_received: Mapped[int] = mapped_column(Integer)
    screened: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    pending: Mapped[int] = mapped_column(Integer)
    flagged: Mapped[int] = mapped_column(Integer)
    model_versions: Mapped[list[str]] = mapped_column(JSON)


class SiteUtcOffsetRow(Base):
    """The site zone's UTC offset from ``valid_from`` (UTC) until the next row's: SQLite knows
    no named zones, so its views look a file's offset up here (daylight saving included)."""

    __tablename__ = "site_utc_offsets"

    valid_from: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    utc_offset_minutes: Mapped[int] = mapped_column(Integer)


class SiteSettingsRow(Base):
    """The site's time zone, one row; the SQL views use it to put each file on a local day."""

    __tablename__ = "site_settings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timezone: Mapped[str] = mapped_column(String(64))
    utc_offset_minutes: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
