"""Screening results written straight into the database, at chosen receive times.

For report tests and the report benchmark: rows look like what ingest and the worker write
(rejected-at-ingest files have no study; a prediction's flag follows the model's thresholds).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from pulmoscreen.db import Image, PredictionRow, Study
from pulmoscreen.db.queries import register_model
from pulmoscreen.domain import DISEASE_LABELS, LABELS, ImageStatus, StudyStatus
from pulmoscreen.model.card import ModelCard

THRESHOLDS = {"pneumonia": 0.5, "tuberculosis": 0.4}
REJECT_REASONS = ("not_dicom", "not_chest", "truncated", "not_frontal", "duplicate")


def add_model(
    session: Session,
    *,
    version: str = "seeded-model-1",
    thresholds: dict[str, float] | None = None,
    trained: bool = True,
) -> int:
    """Register (and activate) a model row; returns its id."""
    card = ModelCard(
        version=version,
        labels=LABELS,
        thresholds=dict(THRESHOLDS if thresholds is None else thresholds),
        trained=trained,
        sha256="0" * 64,
    )
    return register_model(session, card)


@dataclass
class Seeder:
    """Adds files with a running counter for unique UIDs and patient ids."""

    model_id: int
    thresholds: dict[str, float] = field(default_factory=lambda: dict(THRESHOLDS))
    n: int = 0

    def _study(
        self, session: Session, received_at: datetime, status: StudyStatus, study_date: date
    ) -> Study:
        study = Study(
            study_uid=f"1.2.826.0.1.3680043.8.498.{self.n}",
            patient_id=f"PAT{self.n:06d}",
            accession=f"ACC{self.n:06d}",
            study_date=study_date,
            status=status.value,
            created_at=received_at,
            updated_at=received_at,
        )
        session.add(study)
        session.flush()
        return study

    def screened(
        self,
        session: Session,
        received_at: datetime,
        probs: dict[str, float],
        *,
        screened_after: timedelta = timedelta(seconds=30),
    ) -> int:
        """A file that was screened: study, image and prediction; returns the image id."""
        study_date, received_at = received_at.date(), received_at.astimezone(UTC)
        self.n += 1
        study = self._study(session, received_at, StudyStatus.SCREENED, study_date)
        image = self._image(session, received_at, study.id, ImageStatus.PREDICTED)
        flagged = any(probs.get(d, 0.0) >= t for d, t in self.thresholds.items())
        session.add(
            PredictionRow(
                image_id=image.id,
                model_id=self.model_id,
                p_normal=probs["normal"],
                p_pneumonia=probs["pneumonia"],
                p_tuberculosis=probs["tuberculosis"],
                predicted_label=max(probs, key=probs.__getitem__),
                abnormality_score=round(100 * (1 - probs["normal"])),
                flagged=flagged,
                worker="seed@host",
                created_at=received_at + screened_after,
            )
        )
        return image.id

    def pending(self, session: Session, received_at: datetime) -> int:
        """A file still queued for inference."""
        study_date, received_at = received_at.date(), received_at.astimezone(UTC)
        self.n += 1
        study = self._study(session, received_at, StudyStatus.RECEIVED, study_date)
        return self._image(session, received_at, study.id, ImageStatus.QUEUED).id

    def rejected(self, session: Session, received_at: datetime, reason: str) -> int:
        """A file quarantined at ingest: no study, a coded reason."""
        received_at = received_at.astimezone(UTC)
        self.n += 1
        image = self._image(session, received_at, None, ImageStatus.REJECTED, reason=reason)
        image.sop_uid = None
        return image.id

    def _image(
        self,
        session: Session,
        received_at: datetime,
        study_id: int | None,
        status: ImageStatus,
        *,
        reason: str | None = None,
    ) -> Image:
        image = Image(
            sop_uid=f"1.2.826.0.1.3680043.8.498.{self.n}.1",
            study_id=study_id,
            source_path=f"/data/inbox/site/IM{self.n:06d}.dcm",
            stored_path=f"/data/inbox/processed/IM{self.n:06d}.dcm",
            status=status.value,
            reject_reason=reason,
            reject_detail=f"seeded {reason}" if reason else None,
            created_at=received_at,
            updated_at=received_at,
        )
        session.add(image)
        session.flush()
        return image


def random_probs(rng: random.Random) -> dict[str, float]:
    """Softmax-like probabilities; about a third of files lean to a disease."""
    weights = [rng.random() ** 2 for _ in LABELS]
    weights[0] += 1.2 * rng.random()
    total = sum(weights)
    return {label: w / total for label, w in zip(LABELS, weights, strict=True)}


@dataclass(frozen=True)
class SeededDay:
    received: int
    screened: int
    rejected: int
    pending: int
    flagged: int


def seed_day(
    session: Session, seeder: Seeder, *, day: date, tz: ZoneInfo, files: int, seed: int = 0
) -> SeededDay:
    """``files`` files spread over local ``day``: ~90% screened, ~7% rejected, ~3% pending."""
    rng = random.Random(seed)
    start = datetime.combine(day, time(0), tzinfo=tz)
    counts = {"screened": 0, "rejected": 0, "pending": 0, "flagged": 0}
    for i in range(files):
        received_at = start + timedelta(seconds=int(86_399 * (i + rng.random()) / files))
        roll = rng.random()
        if roll < 0.07:
            seeder.rejected(session, received_at, rng.choice(REJECT_REASONS))
            counts["rejected"] += 1
        elif roll < 0.10:
            seeder.pending(session, received_at)
            counts["pending"] += 1
        else:
            probs = random_probs(rng)
            seeder.screened(session, received_at, probs)
            counts["screened"] += 1
            counts["flagged"] += any(probs[d] >= seeder.thresholds[d] for d in DISEASE_LABELS)
    return SeededDay(received=files, **counts)
