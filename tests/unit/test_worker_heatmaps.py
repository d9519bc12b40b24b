"""Heatmaps in the worker (SQLite, the tiny model): one per flagged prediction, in its
transaction; none for an unflagged image; a failure to explain never costs the prediction."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import cv2
import pytest
from sqlalchemy import func, select

from pulmoscreen.config import Settings
from pulmoscreen.db import Image, PredictionRow, session_factory
from pulmoscreen.db.schema import HeatmapRow
from pulmoscreen.imaging import read_dicom
from pulmoscreen.storage import resolve_stored_path
from tests.unit.test_worker_calibration import ingest
from worker import heatmaps
from worker.inference import predict_images

FLAG_ALL = {"tuberculosis": 0.0, "pneumonia": 1.01}
FLAG_NONE = {"tuberculosis": 1.01, "pneumonia": 1.01}


def stored(url: str) -> tuple[int, list[HeatmapRow]]:
    """(predictions, heatmap rows) in the database."""
    with session_factory(url)() as session:
        n = session.scalar(select(func.count()).select_from(PredictionRow)) or 0
        return n, list(session.scalars(select(HeatmapRow).order_by(HeatmapRow.image_id)))


def screen(url: str, model: Path, ids: list[int], **settings: Any) -> tuple[int, list[HeatmapRow]]:
    """Predict ``ids`` in the worker's code under ``settings``; (predictions, heatmap rows)."""
    predict_images(Settings(database_url=url, model_path=model, **settings), ids, worker="w1")
    return stored(url)


class TestHeatmapsInTheWorker:
    def test_each_flagged_prediction_gets_its_heatmap(self, sqlite_url, tiny_model_path, tmp_path):
        ids = ingest(tmp_path / "in", sqlite_url, 3, seed=10)
        predictions, rows = screen(sqlite_url, tiny_model_path, ids, thresholds=FLAG_ALL)
        assert predictions == 3
        assert [r.image_id for r in rows] == ids
        with session_factory(sqlite_url)() as session:
            by_image = dict(session.execute(select(PredictionRow.image_id, PredictionRow.id)).all())
        for row in rows:
            assert row.prediction_id == by_image[row.image_id]
            assert row.label == "tuberculosis"  # the only disease flagged
            path = resolve_stored_path(row.path, None)
            assert path.parent.parent == tmp_path / "in" / "heatmaps"  # beside processed/
            grey = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            assert grey.shape == (32, 32)  # the model input size, one 8-bit channel
            assert grey.dtype.name == "uint8"
            assert grey.max() == 255  # scaled to its hottest place

        again, after = screen(sqlite_url, tiny_model_path, ids, thresholds=FLAG_ALL)  # again

        assert again == 3
        assert [(r.id, r.path) for r in after] == [(r.id, r.path) for r in rows]

    def test_an_unflagged_image_gets_none(self, sqlite_url, tiny_model_path, tmp_path):
        ids = ingest(tmp_path / "in", sqlite_url, 2, seed=20)
        assert screen(sqlite_url, tiny_model_path, ids, thresholds=FLAG_NONE) == (2, [])
        assert not (tmp_path / "in" / "heatmaps").exists()

    def test_the_heatmap_dir_setting_is_used(self, sqlite_url, tiny_model_path, tmp_path):
        ids = ingest(tmp_path / "in", sqlite_url, 1, seed=25)
        _, (row,) = screen(
            sqlite_url,
            tiny_model_path,
            ids,
            thresholds=FLAG_ALL,
            heatmap_dir=tmp_path / "maps",
            storage_root=tmp_path,
        )
        assert row.path.startswith("maps/")  # relative to the storage root, as images are
        assert (tmp_path / row.path).is_file()


class TestFailuresCostNoPrediction:
    def test_an_unwritable_heatmap_folder(self, sqlite_url, tiny_model_path, tmp_path, caplog):
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("a file where the folder should be")
        ids = ingest(tmp_path / "in", sqlite_url, 2, seed=30)
        with caplog.at_level(logging.ERROR):
            found = screen(
                sqlite_url, tiny_model_path, ids, thresholds=FLAG_ALL, heatmap_dir=blocker
            )
        assert found == (2, [])
        assert "heatmap not written" in caplog.text
        with session_factory(sqlite_url)() as session:
            statuses = session.scalars(select(Image.status).where(Image.id.in_(ids))).all()
        assert statuses == ["predicted", "predicted"]
        self.assert_no_phi(caplog.text, tmp_path / "in")

    def test_a_model_that_gives_no_feature_maps(
        self, sqlite_url, tiny_model_path, tmp_path, caplog, monkeypatch
    ):
        def broken(runner, batch):  # type: ignore[no-untyped-def]
            raise RuntimeError("no map")

        monkeypatch.setattr(heatmaps, "predict_with_maps", broken)
        ids = ingest(tmp_path / "in", sqlite_url, 2, seed=40)
        with caplog.at_level(logging.ERROR):
            found = screen(sqlite_url, tiny_model_path, ids, thresholds=FLAG_ALL)
        assert found == (2, [])
        assert "no heatmaps" in caplog.text
        with session_factory(sqlite_url)() as session:
            flags = session.scalars(select(PredictionRow.flagged)).all()
        assert flags == [True, True]  # scored and flagged all the same

    @staticmethod
    def assert_no_phi(text: str, folder: Path) -> None:
        for path in (folder / "processed").rglob("*.dcm"):
            meta = read_dicom(path).meta
            assert meta.sop_uid not in text
            assert meta.study_uid not in text


@pytest.fixture(autouse=True)
def _fresh_model_cache():  # type: ignore[no-untyped-def]
    """Each test serves its thresholds (the served model is cached per process)."""
    from worker.inference import served_model

    yield
    served_model.cache_clear()
