"""Site calibrations in the worker and in ``calibrate``'s SQL path (SQLite, the tiny model).

The active calibration of the served model flags from the worker's next batch, with no restart;
each prediction names it; PULMO_THRESHOLDS overrides it; a newer calibration supersedes the
older, which stays. A CSV of screened images calibrates without scoring any image again.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from ingest import Ingestor
from pulmoscreen.cli.calibration import CalibrationRequest, run_calibration
from pulmoscreen.config import Settings
from pulmoscreen.db import Image, PredictionRow, session_factory
from pulmoscreen.db.calibrations import calibrations
from tests.factories import make_cxr_dicom, make_tiny_model, store_calibration
from training.calibration import CalibrationError
from worker import inference
from worker.inference import predict_images


def ingest(drop: Path, url: str, n: int, *, seed: int) -> list[int]:
    for k in range(n):
        make_cxr_dicom(drop, seed=seed + k, filename=f"{seed}_{k:02d}.dcm")
    sessions = session_factory(url)
    outcomes = Ingestor(drop, sessions=sessions, enqueue=lambda ids: None, stable_seconds=0)
    return [o.image_id for o in outcomes.scan_once()]


def results(url: str, ids: list[int]) -> list[tuple[bool, int | None, float, float]]:
    stmt = (
        select(
            PredictionRow.flagged,
            PredictionRow.calibration_id,
            PredictionRow.p_tuberculosis,
            PredictionRow.p_pneumonia,
        )
        .where(PredictionRow.image_id.in_(ids))
        .order_by(PredictionRow.image_id)
    )
    with session_factory(url)() as session:
        return [tuple(row) for row in session.execute(stmt)]


class TestWorkerThresholds:
    def test_the_active_calibration_flags_and_a_newer_one_supersedes_it(
        self, sqlite_url, tiny_model_path, tmp_path
    ):
        settings = Settings(database_url=sqlite_url, model_path=tiny_model_path)
        everyone = store_calibration(sqlite_url, tiny_model_path, {"tuberculosis": 0.0})
        first = ingest(tmp_path / "in", sqlite_url, 3, seed=10)
        predict_images(settings, first, worker="w1")
        assert [(f, c) for f, c, *_ in results(sqlite_url, first)] == [(True, everyone)] * 3

        nobody = store_calibration(
            sqlite_url, tiny_model_path, {"tuberculosis": 1.01, "pneumonia": 1.01}
        )
        second = ingest(tmp_path / "in", sqlite_url, 3, seed=20)
        predict_images(settings, second, worker="w1")  # same process, model still cached
        assert [(f, c) for f, c, *_ in results(sqlite_url, second)] == [(False, nobody)] * 3

        with session_factory(sqlite_url)() as session:
            stored = calibrations(session)
            view = session.execute(
                text(
                    "SELECT calibration_id, calibrated_by, threshold_tuberculosis, "
                    "threshold_pneumonia FROM screening_results ORDER BY image_id"
                )
            ).all()
        assert [(c.id, c.active, c.superseded_at is not None) for c in stored] == [
            (everyone, False, True),
            (nobody, True, False),
        ]
        assert view == [(everyone, "amina", 0.0, 0.5)] * 3 + [(nobody, "amina", 1.01, 1.01)] * 3

    def test_pulmo_thresholds_override_the_calibration(self, sqlite_url, tiny_model_path, tmp_path):
        store_calibration(sqlite_url, tiny_model_path, {"tuberculosis": 0.0})
        ids = ingest(tmp_path / "in", sqlite_url, 2, seed=30)
        settings = Settings(
            database_url=sqlite_url, model_path=tiny_model_path, thresholds={"tuberculosis": 1.01}
        )
        predict_images(settings, ids, worker="w1")
        assert [(f, c) for f, c, *_ in results(sqlite_url, ids)] == [(False, None)] * 2

    def test_a_calibration_of_another_model_is_not_used(
        self, sqlite_url, tiny_model_path, tmp_path
    ):
        other = make_tiny_model(tmp_path / "other", version="tiny-test-2")
        store_calibration(sqlite_url, other, {"tuberculosis": 0.0})
        ids = ingest(tmp_path / "in", sqlite_url, 2, seed=40)
        predict_images(
            Settings(database_url=sqlite_url, model_path=tiny_model_path), ids, worker="w"
        )
        assert [c for _, c, *_ in results(sqlite_url, ids)] == [None, None]


def screened_csv(url: str, ids: list[int], path: Path) -> Path:
    """A reference-label CSV for screened images: alternately tuberculosis and normal."""
    with session_factory(url)() as session:
        uids = session.scalars(select(Image.sop_uid).where(Image.id.in_(ids)).order_by(Image.id))
        lines = [f"{u},{'tuberculosis' if k % 2 else 'normal'}" for k, u in enumerate(uids)]
    path.write_text("sop_uid,label\n" + "\n".join(lines) + "\n")
    return path


class TestCalibrateFromDatabase:
    def test_screened_images_calibrate_without_being_scored_again(
        self, sqlite_url, tiny_model_path, tmp_path, monkeypatch
    ):
        settings = Settings(database_url=sqlite_url, model_path=tiny_model_path)
        ids = ingest(tmp_path / "in", sqlite_url, 6, seed=50)
        predict_images(settings, ids, worker="w1")
        labels = screened_csv(sqlite_url, ids, tmp_path / "labels.csv")

        def no_scoring(*args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("an image was scored again")

        monkeypatch.setattr(inference, "served_model", no_scoring)
        monkeypatch.setattr("training.calibration.predict_batch", no_scoring)
        request = CalibrationRequest(
            out=tmp_path / "cal",
            labels_csv=labels,
            target=0.5,
            confidence=0.0,
            apply=True,
            by="amina",
        )
        calibration, report, stored = run_calibration(settings, request)
        assert report.exists()
        assert stored is not None
        assert calibration.sample_counts == {"normal": 3, "pneumonia": 0, "tuberculosis": 3}
        with session_factory(sqlite_url)() as session:
            assert session.scalar(select(func.count()).select_from(PredictionRow)) == 6
            [row] = calibrations(session)
        assert row.thresholds == calibration.thresholds
        assert row.report_path == str(report)
        assert row.sample_counts["tuberculosis"] == 3

    def test_images_not_screened_by_the_served_model_are_refused(
        self, sqlite_url, tiny_model_path, tmp_path
    ):
        settings = Settings(database_url=sqlite_url, model_path=tiny_model_path)
        ids = ingest(tmp_path / "in", sqlite_url, 4, seed=60)
        predict_images(settings, ids[:2], worker="w1")
        labels = screened_csv(sqlite_url, ids, tmp_path / "labels.csv")
        with labels.open("a") as fh:
            fh.write("1.2.3.999,normal\n")
        request = CalibrationRequest(out=tmp_path / "cal", labels_csv=labels, confidence=0.0)
        with pytest.raises(CalibrationError, match=r"3 of the 5 listed images .* \(1 are not"):
            run_calibration(settings, request)

    def test_a_model_other_than_the_served_one_is_refused(
        self, sqlite_url, tiny_model_path, tmp_path
    ):
        other = make_tiny_model(tmp_path / "other", version="tiny-test-2")
        settings = Settings(database_url=sqlite_url, model_path=tiny_model_path)
        request = CalibrationRequest(out=tmp_path / "cal", data=(tmp_path,), model=other)
        with pytest.raises(CalibrationError, match="not the one served"):
            run_calibration(settings, request)
