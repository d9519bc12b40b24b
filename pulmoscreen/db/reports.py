"""Queries behind the nightly report: files received in a time window, report rows, site zone."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from pulmoscreen.db.queries import latest_prediction_id
from pulmoscreen.db.schema import (
    Image,
    ModelRow,
    PredictionRow,
    ReportRow,
    SiteCalibrationRow,
    SiteSettingsRow,
    SiteUtcOffsetRow,
    Study,
    utcnow,
)

#: Columns of :func:`received_files`, in order.
RECEIVED_COLUMNS: tuple[str, ...] = (
    "image_id",
    "received_at",
    "status",
    "reject_reason",
    "source_path",
    "stored_path",
    "sop_uid",
    "study_uid",
    "patient_id",
    "accession",
    "study_date",
    "predicted_label",
    "p_normal",
    "p_pneumonia",
    "p_tuberculosis",
    "abnormality_score",
    "flagged",
    "screened_at",
    "model_version",
    "model_trained",
    "thresholds",
    "calibration_id",
    "calibrated_at",
    "calibrated_by",
)


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("report windows need time-zone-aware datetimes")
    return moment.astimezone(UTC)


def received_files(session: Session, *, start: datetime, end: datetime) -> list[tuple[Any, ...]]:
    """Every file received in ``[start, end)`` with its study and latest prediction.

    Rows follow :data:`RECEIVED_COLUMNS`; files rejected at ingest have no study and no result.
    ``thresholds`` are those in force for the result: the site calibration's (``calibration_id``)
    over the model's.
    """
    latest = latest_prediction_id()
    stmt = (
        select(
            Image.id,
            Image.created_at,
            Image.status,
            Image.reject_reason,
            Image.source_path,
            Image.stored_path,
            Image.sop_uid,
            Study.study_uid,
            Study.patient_id,
            Study.accession,
            Study.study_date,
            PredictionRow.predicted_label,
            PredictionRow.p_normal,
            PredictionRow.p_pneumonia,
            PredictionRow.p_tuberculosis,
            PredictionRow.abnormality_score,
            PredictionRow.flagged,
            PredictionRow.created_at,
            ModelRow.version,
            ModelRow.trained,
            ModelRow.thresholds,
            PredictionRow.calibration_id,
            SiteCalibrationRow.created_at,
            SiteCalibrationRow.created_by,
            SiteCalibrationRow.thresholds,
        )
        .outerjoin(Study, Study.id == Image.study_id)
        .outerjoin(PredictionRow, PredictionRow.id == latest)
        .outerjoin(ModelRow, ModelRow.id == PredictionRow.model_id)
        .outerjoin(SiteCalibrationRow, SiteCalibrationRow.id == PredictionRow.calibration_id)
        .where(Image.created_at >= _utc(start), Image.created_at < _utc(end))
        .order_by(Image.id)
    )
    in_force = RECEIVED_COLUMNS.index("thresholds")
    rows = []
    for *row, calibrated in session.execute(stmt):
        if calibrated:
            row[in_force] = {**(row[in_force] or {}), **calibrated}
        rows.append(tuple(row))
    return rows


def save_report(session: Session, values: dict[str, Any]) -> int:
    """Insert or replace the report row of ``values["report_date"]``; returns its id."""
    dialect = session.get_bind().dialect.name
    insert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(ReportRow)
    updates = {k: v for k, v in values.items() if k != "report_date"}
    stmt = insert.values(**values).on_conflict_do_update(
        index_elements=["report_date"], set_=updates
    )
    session.execute(stmt)
    return int(
        session.scalars(
            select(ReportRow.id).where(ReportRow.report_date == values["report_date"])
        ).one()
    )


def days_to_report(session: Session, latest: date, *, window: int = 7) -> list[date]:
    """``latest`` and, oldest first, the days before it (at most ``window - 1``) that have no
    report although an earlier day has one: nights missed while the database or the report
    worker was down. A new site (no report yet) starts with ``latest`` alone."""
    first = session.scalar(select(func.min(ReportRow.report_date)))
    earliest = latest - timedelta(days=window - 1)
    done = set(
        session.scalars(
            select(ReportRow.report_date).where(ReportRow.report_date >= earliest)
        ).all()
    )
    missed = [
        day
        for k in range(window - 1, 0, -1)
        if (day := latest - timedelta(days=k)) not in done and first is not None and day > first
    ]
    return [*missed, latest]


def report_rows(session: Session) -> Sequence[ReportRow]:
    """Every stored report, oldest day first."""
    return session.scalars(select(ReportRow).order_by(ReportRow.report_date)).all()


#: Offset changes are tabulated from 1970 to 2100 (UTC); the first row stands for all before.
_OFFSET_SPAN = (datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
_FIRST_ROW = datetime(1900, 1, 1, tzinfo=UTC)


def _offset_minutes(moment: datetime) -> int:
    """Minutes east of UTC of an aware ``moment`` (0 when its zone gives no offset)."""
    offset = moment.utcoffset()
    return int(offset.total_seconds() // 60) if offset is not None else 0


@cache
def utc_offset_periods(tz_name: str) -> tuple[tuple[datetime, int], ...]:
    """``(valid_from, minutes east of UTC)`` at every change of ``tz_name``'s offset."""
    zone = ZoneInfo(tz_name)

    def minutes(ts: int) -> int:
        return _offset_minutes(datetime.fromtimestamp(ts, zone))

    day = 86_400
    ts, end = (int(t.timestamp()) for t in _OFFSET_SPAN)
    periods = [(_FIRST_ROW, minutes(ts))]
    while ts < end:
        if minutes(ts + day) != minutes(ts):
            lo, hi = ts, ts + day  # the change lies in (lo, hi]: find its second
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if minutes(mid) == minutes(lo) else (lo, mid)
            periods.append((datetime.fromtimestamp(hi, UTC), minutes(hi)))
        ts += day
    return tuple(periods)


def store_utc_offsets(session: Session, tz_name: str) -> None:
    """Replace the ``site_utc_offsets`` table with ``tz_name``'s offset periods."""
    session.execute(delete(SiteUtcOffsetRow))
    session.execute(
        insert(SiteUtcOffsetRow),
        [{"valid_from": f, "utc_offset_minutes": m} for f, m in utc_offset_periods(tz_name)],
    )


def set_site_timezone(session: Session, tz_name: str, *, now: datetime | None = None) -> None:
    """Record the site's time zone for the SQL views: its name (PostgreSQL converts with it),
    its current offset, and the table of its offsets over time (SQLite looks each file up)."""
    minutes = _offset_minutes((now or utcnow()).astimezone(ZoneInfo(tz_name)))
    row = session.get(SiteSettingsRow, 1)
    stale = row is None or row.timezone != tz_name
    if row is None:
        session.add(SiteSettingsRow(id=1, timezone=tz_name, utc_offset_minutes=minutes))
    elif (row.timezone, row.utc_offset_minutes) != (tz_name, minutes):
        row.timezone, row.utc_offset_minutes, row.updated_at = tz_name, minutes, utcnow()
    if stale or session.scalar(select(func.count()).select_from(SiteUtcOffsetRow)) == 0:
        store_utc_offsets(session, tz_name)
