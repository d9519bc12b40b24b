"""The day's numbers: files received in a time window -> one :class:`DailySummary`.

Pure aggregation with pandas; no database, no files. A file belongs to the local calendar day
(in the site's time zone) on which it was received.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pandas as pd

from pulmoscreen.domain import LABELS, ImageStatus
from pulmoscreen.storage import resolve_stored_path

TREND_DAYS = 7


@dataclass(frozen=True)
class FlaggedImage:
    """One row of the flagged patients list."""

    patient_id: str | None
    accession: str | None
    study_date: date | None
    received_local: datetime
    label: str
    p_tuberculosis: float
    p_pneumonia: float
    abnormality_score: int
    threshold_tuberculosis: float | None
    threshold_pneumonia: float | None
    model_version: str
    source_path: str
    image_link: str
    image_id: int


@dataclass(frozen=True)
class ModelUsed:
    """A model that produced some of the day's results, with the thresholds it flagged by and
    the site calibration they came from (None: the model card's, or the configured override)."""

    version: str
    trained: bool
    thresholds: dict[str, float]
    images: int
    calibration: str | None = None


@dataclass(frozen=True)
class TrendDay:
    """Volume and flag rate of one local day."""

    day: date
    received: int
    screened: int
    flagged: int

    @property
    def flag_rate(self) -> float | None:
        """Flagged share of screened files, or None when nothing was screened."""
        return self.flagged / self.screened if self.screened else None


@dataclass(frozen=True)
class DailySummary:
    """Everything the nightly report shows for one local day."""

    day: date
    timezone: str
    generated_at: datetime
    files_received: int
    studies_received: int
    screened: int
    rejected: int
    pending: int
    flagged: int
    reject_reasons: dict[str, int]
    labels: dict[str, int]
    flagged_images: tuple[FlaggedImage, ...]
    p_tuberculosis: tuple[float, ...]
    p_pneumonia: tuple[float, ...]
    hourly_received: tuple[int, ...]
    hourly_screened: tuple[int, ...]
    models: tuple[ModelUsed, ...]
    trend: tuple[TrendDay, ...]

    @property
    def is_empty(self) -> bool:
        return self.files_received == 0

    @property
    def untrained(self) -> bool:
        """True when any result of the day came from an untrained network."""
        return any(not m.trained for m in self.models)

    def thresholds(self, label: str) -> list[float]:
        """Distinct thresholds for ``label`` in force during the day (one per model, usually)."""
        found = {m.thresholds[label] for m in self.models if label in m.thresholds}
        return sorted(found)


def day_window(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of local ``day`` in UTC; 23 or 25 hours apart on DST days.

    UTC, because Python subtracts two datetimes of one zone by wall clock, not elapsed time.
    """
    start = datetime.combine(day, time(0), tzinfo=tz)
    end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
    return start.astimezone(UTC), end.astimezone(UTC)


def trend_window(day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """The window the report loads: the :data:`TREND_DAYS` local days ending with ``day``."""
    return day_window(day - timedelta(days=TREND_DAYS - 1), tz)[0], day_window(day, tz)[1]


def previous_day(tz: ZoneInfo, now: datetime) -> date:
    """Yesterday in ``tz`` as of ``now`` (an aware datetime)."""
    return now.astimezone(tz).date() - timedelta(days=1)


def image_link(
    template: str,
    *,
    stored_path: str | None,
    source_path: str,
    study_uid: Any,
    sop_uid: Any,
    storage_root: Path | None = None,
) -> str:
    """A viewer URL built from ``template``, or a file:// link to the stored DICOM.

    Stored paths may be relative to the shared storage (``PULMO_STORAGE_ROOT``); the file link
    points to where this host sees the file.
    """
    if template:
        return template.format(
            study_uid=quote(str(study_uid or ""), safe=""),
            sop_uid=quote(str(sop_uid or ""), safe=""),
            stored_path=quote(stored_path or source_path),
        )
    return resolve_stored_path(stored_path or source_path, storage_root).absolute().as_uri()


def _localise(frame: pd.DataFrame, tz: ZoneInfo) -> pd.DataFrame:
    frame = frame.copy()
    frame["received_local"] = pd.to_datetime(frame["received_at"], utc=True).dt.tz_convert(tz)
    frame["received_day"] = frame["received_local"].dt.date
    frame["screened_local"] = pd.to_datetime(frame["screened_at"], utc=True).dt.tz_convert(tz)
    frame["is_flagged"] = frame["flagged"].eq(True)
    return frame


def _hourly(moments: pd.Series) -> tuple[int, ...]:
    counts = moments.dt.hour.value_counts()
    return tuple(int(counts.get(hour, 0)) for hour in range(24))


def _calibration(row: pd.Series) -> str | None:
    """``site calibration 3 of 2026-12-03 by amina``, or None for the card's thresholds."""
    if pd.isna(row["calibration_id"]):
        return None
    when = pd.Timestamp(row["calibrated_at"]).strftime("%Y-%m-%d")
    return f"site calibration {int(row['calibration_id'])} of {when} by {row['calibrated_by']}"


def _models(predicted: pd.DataFrame) -> tuple[ModelUsed, ...]:
    """One entry per model and set of thresholds (a calibration applied during the day
    splits a model's results in two)."""
    models = []
    calibration = predicted["calibration_id"].map(lambda v: -1 if pd.isna(v) else int(v))
    for _, group in predicted.groupby([predicted["model_version"], calibration], sort=True):
        first = group.iloc[0]
        models.append(
            ModelUsed(
                version=str(first["model_version"]),
                trained=bool(first["model_trained"]),
                thresholds={k: float(v) for k, v in (first["thresholds"] or {}).items()},
                images=len(group),
                calibration=_calibration(first),
            )
        )
    return tuple(models)


def _trend(frame: pd.DataFrame, day: date) -> tuple[TrendDay, ...]:
    out = []
    for offset in range(TREND_DAYS - 1, -1, -1):
        d = day - timedelta(days=offset)
        rows = frame[frame["received_day"] == d]
        out.append(
            TrendDay(
                day=d,
                received=len(rows),
                screened=int((rows["status"] == ImageStatus.PREDICTED.value).sum()),
                flagged=int(rows["is_flagged"].sum()),
            )
        )
    return tuple(out)


def _flagged_images(
    rows: pd.DataFrame, image_url_template: str, storage_root: Path | None
) -> tuple[FlaggedImage, ...]:
    """Flagged rows by urgency: highest abnormality score, then highest P(TB), then earliest."""
    flagged = rows[rows["is_flagged"]].sort_values(
        ["abnormality_score", "p_tuberculosis", "received_at", "image_id"],
        ascending=[False, False, True, True],
    )
    out = []
    for r in flagged.itertuples(index=False):
        thresholds = r.thresholds or {}
        out.append(
            FlaggedImage(
                patient_id=r.patient_id,
                accession=r.accession,
                study_date=r.study_date,
                received_local=r.received_local.to_pydatetime(),
                label=str(r.predicted_label),
                p_tuberculosis=float(r.p_tuberculosis),
                p_pneumonia=float(r.p_pneumonia),
                abnormality_score=int(r.abnormality_score),
                threshold_tuberculosis=thresholds.get("tuberculosis"),
                threshold_pneumonia=thresholds.get("pneumonia"),
                model_version=str(r.model_version),
                source_path=str(r.source_path),
                image_link=image_link(
                    image_url_template,
                    stored_path=r.stored_path,
                    source_path=str(r.source_path),
                    study_uid=r.study_uid,
                    sop_uid=r.sop_uid,
                    storage_root=storage_root,
                ),
                image_id=int(r.image_id),
            )
        )
    return tuple(out)


def summarise_day(
    frame: pd.DataFrame,
    *,
    day: date,
    tz: ZoneInfo,
    generated_at: datetime,
    image_url_template: str = "",
    storage_root: Path | None = None,
) -> DailySummary:
    """Aggregate the files of :func:`trend_window` (columns of ``RECEIVED_COLUMNS``) for ``day``."""
    frame = _localise(frame, tz)
    rows = frame[frame["received_day"] == day]
    status = rows["status"]
    predicted = rows[status == ImageStatus.PREDICTED.value]
    rejected = rows[status == ImageStatus.REJECTED.value]
    labels = predicted["predicted_label"].value_counts()
    reasons = rejected["reject_reason"].fillna("unknown").value_counts()
    screened_today = frame[frame["screened_local"].dt.date == day]["screened_local"]
    return DailySummary(
        day=day,
        timezone=str(tz.key),
        generated_at=generated_at,
        files_received=len(rows),
        studies_received=int(rows["study_uid"].nunique()),
        screened=len(predicted),
        rejected=len(rejected),
        pending=int((status == ImageStatus.QUEUED.value).sum()),
        flagged=int(rows["is_flagged"].sum()),
        reject_reasons={str(k): int(v) for k, v in reasons.items()},
        labels={label: int(labels.get(label, 0)) for label in LABELS},
        flagged_images=_flagged_images(rows, image_url_template, storage_root),
        p_tuberculosis=tuple(float(p) for p in predicted["p_tuberculosis"]),
        p_pneumonia=tuple(float(p) for p in predicted["p_pneumonia"]),
        hourly_received=_hourly(rows["received_local"]),
        hourly_screened=_hourly(screened_today),
        models=_models(predicted),
        trend=_trend(frame, day),
    )
