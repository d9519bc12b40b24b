"""Deliveries on SQLite: claims, failures and their backoff, and builds that fail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import select, update

from pulmoscreen.config import Settings
from pulmoscreen.db import Image, session_factory
from pulmoscreen.db.deliveries import (
    FAILED_AFTER,
    claim_due,
    mark_failed,
    mark_sent,
    record_delivery,
)
from pulmoscreen.db.schema import DeliveryRow, PredictionRow
from tests.seeding import Seeder, add_model
from worker.delivery import BuildFailures, build_pending

CALM = {"normal": 0.9, "pneumonia": 0.05, "tuberculosis": 0.05}


def seed(url: str, folder: Path, count: int) -> list[int]:
    """Screened, unflagged images stored as copies of RG1; their prediction ids."""
    folder.mkdir(parents=True, exist_ok=True)
    with session_factory(url).begin() as session:
        seeder = Seeder(add_model(session))
        for n in range(count):
            image = session.get(Image, seeder.screened(session, datetime.now(UTC), CALM))
            assert image is not None
            ds = dcmread(get_testdata_file("RG1_UNCR.dcm"))
            ds.SOPInstanceUID = image.sop_uid
            image.stored_path = str(folder / f"IM{n}.dcm")
            ds.save_as(image.stored_path)
        return list(session.scalars(select(PredictionRow.id).order_by(PredictionRow.id)))


def one_delivery(url: str, tmp_path: Path) -> None:
    (pid,) = seed(url, tmp_path / "src", 1)
    with session_factory(url).begin() as session:
        record_delivery(session, image_id=1, prediction_id=pid, kind="sr", path="/x",
                        sop_uid="1.2.3")  # fmt: skip


def make_due(url: str) -> None:
    with session_factory(url).begin() as session:
        session.execute(
            update(DeliveryRow).values(next_attempt_at=datetime(2000, 1, 1, tzinfo=UTC))
        )


class TestClaimAndFail:
    def test_a_failure_waits_its_backoff_and_keeps_the_error(self, sqlite_url, tmp_path):
        one_delivery(sqlite_url, tmp_path)
        factory = session_factory(sqlite_url)
        with factory.begin() as session:
            (claimed,) = claim_due(session, sender="s", lease_seconds=60)
            mark_failed(session, claimed, sender="s", error="refused", retry_in=30)
        with factory.begin() as session:
            row = session.scalars(select(DeliveryRow)).one()
            assert (row.status, row.attempts, row.last_error) == ("pending", 1, "refused")
            due = row.next_attempt_at.replace(tzinfo=UTC) - datetime.now(UTC)
            assert timedelta(seconds=25) < due <= timedelta(seconds=30)
            assert claim_due(session, sender="s", lease_seconds=60) == []  # not yet due

    def test_after_repeated_failures_it_reads_failed_and_is_still_retried(
        self, sqlite_url, tmp_path
    ):
        one_delivery(sqlite_url, tmp_path)
        factory = session_factory(sqlite_url)
        for _ in range(FAILED_AFTER):
            make_due(sqlite_url)
            with factory.begin() as session:
                (claimed,) = claim_due(session, sender="s", lease_seconds=60)
                mark_failed(session, claimed, sender="s", error="down", retry_in=3600)
        make_due(sqlite_url)
        with factory.begin() as session:
            assert session.scalars(select(DeliveryRow.status)).one() == "failed"
            (claimed,) = claim_due(session, sender="s", lease_seconds=60)
            assert claimed.attempts == FAILED_AFTER
            mark_sent(session, [claimed.id], sender="s")
        make_due(sqlite_url)
        with factory.begin() as session:
            assert session.scalars(select(DeliveryRow.status)).one() == "sent"
            assert claim_due(session, sender="s", lease_seconds=60) == []


class TestBuildPending:
    def test_an_unreadable_source_waits_and_the_others_are_built(self, sqlite_url, tmp_path):
        first, second = seed(sqlite_url, tmp_path / "src", 2)
        (tmp_path / "src" / "IM0.dcm").unlink()  # the oldest prediction's file is gone
        settings = Settings(database_url=sqlite_url, outbox_dir=tmp_path / "outbox")
        failures = BuildFailures()
        factory = session_factory(sqlite_url)
        assert build_pending(factory, settings, failures=failures, limit=1) == 0
        assert failures.waiting() == {first}
        assert build_pending(factory, settings, failures=failures, limit=1) == 1
        with factory() as session:
            rows = session.scalars(select(DeliveryRow)).all()
        assert [(r.prediction_id, r.kind) for r in rows] == [(second, "sr")]
        assert dcmread(rows[0].path).Modality == "SR"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    for name in ("PULMO_OUTBOX_DIR", "PULMO_THRESHOLDS", "PULMO_STORAGE_ROOT"):
        monkeypatch.delenv(name, raising=False)


def test_the_heatmap_is_placed_on_the_centre_a_cropping_model_saw(sqlite_url, tmp_path):
    """A model served with a centre crop computed its heatmap on that centre: the delivery
    carries the card's crop, so the secondary capture lays the heatmap where the model looked."""
    from sqlalchemy.orm.attributes import flag_modified

    from pulmoscreen.db.deliveries import undelivered_predictions
    from pulmoscreen.db.schema import ModelRow

    seed(sqlite_url, tmp_path / "src", 1)
    factory = session_factory(sqlite_url)
    with factory() as session:
        assert [item.crop for item in undelivered_predictions(session)] == [0.0]
    with factory.begin() as session:
        model = session.scalars(select(ModelRow)).one()
        model.card = {**model.card, "preprocess": {**model.card["preprocess"], "crop": 0.1}}
        flag_modified(model, "card")
    with factory() as session:
        assert [item.crop for item in undelivered_predictions(session)] == [0.1]
