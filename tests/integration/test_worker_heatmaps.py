"""Heatmaps in a real Celery worker on the real Redis and PostgreSQL: a flagged image gets one,
stored beside its prediction; an unflagged image of the same batch gets none."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import func, select

from pulmoscreen.config import Settings
from pulmoscreen.db import Image, PredictionRow, session_factory
from pulmoscreen.db.schema import HeatmapRow
from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import read_dicom, to_model_input
from pulmoscreen.model.build import load_screening_model
from pulmoscreen.queue import enqueue_images
from reporting.heatmaps import load_overlays
from tests.factories import TINY_SPEC, make_cxr_dicom
from tests.integration.conftest import wait_until
from tests.integration.test_worker import drop_ingestor
from worker.app import create_app
from worker.inference import served_model

pytestmark = pytest.mark.integration


def threshold_between(paths, model_path) -> float:  # type: ignore[no-untyped-def]
    """A TB threshold that flags about half of ``paths`` (the midpoint of the two middle
    probabilities under the served model), so one batch holds flagged and unflagged images."""
    model = load_screening_model(model_path, labels=LABELS).model
    batch = np.stack([to_model_input(read_dicom(p).pixels, TINY_SPEC) for p in paths])
    p_tb = np.sort(np.asarray(model.predict_on_batch(batch))[:, LABELS.index("tuberculosis")])
    middle = len(p_tb) // 2
    assert p_tb[middle] > p_tb[middle - 1], "the images score alike: no threshold splits them"
    return float((p_tb[middle] + p_tb[middle - 1]) / 2)


class TestHeatmapsInTheWorker:
    def test_flagged_images_get_a_heatmap_and_the_others_none(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        drop = tmp_path / "inbox"
        paths = [make_cxr_dicom(drop, seed=300 + k) for k in range(6)]
        settings = Settings(
            database_url=pg_url,
            broker_url=redis_url,
            model_path=tiny_model_path,
            thresholds={
                "tuberculosis": threshold_between(paths, tiny_model_path),
                "pneumonia": 1.01,
            },
            inference_precision="f32",  # the threshold splits f32 probabilities
            batch_size=8,
            flush_interval=0.3,
            storage_root=tmp_path,
        )
        sessions, app = session_factory(pg_url), create_app(settings)
        try:
            with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
                ids = [o.image_id for o in drop_ingestor(drop, sessions, tmp_path, app).scan_once()]
                queued = select(func.count()).select_from(Image).where(Image.status == "queued")
                wait_until(lambda: count(sessions, queued) == 0, timeout=120, what="predictions")
                enqueue_images(app, ids)  # sent again: still one heatmap per prediction
                time.sleep(2)
        finally:
            served_model.cache_clear()

        with sessions() as session:
            predictions = {p.image_id: p for p in session.scalars(select(PredictionRow))}
            rows = list(session.scalars(select(HeatmapRow)))
        flagged = {i for i, p in predictions.items() if p.flagged}
        assert len(predictions) == 6
        assert 0 < len(flagged) < 6  # both kinds in one batch
        assert sorted(r.image_id for r in rows) == sorted(flagged)
        for row in rows:
            assert row.prediction_id == predictions[row.image_id].id
            assert row.label == "tuberculosis"
            assert row.path.startswith("inbox/heatmaps/")  # beside processed/, relative
            grey = cv2.imread(str(tmp_path / row.path), cv2.IMREAD_UNCHANGED)
            assert grey.shape == (32, 32)
            assert grey.max() == 255
        # the nightly report draws each over its radiograph, from PostgreSQL's rows
        overlays = load_overlays(pg_url, sorted(predictions), storage_root=tmp_path)
        assert sorted(overlays) == sorted(flagged)
        assert {o.label for o in overlays.values()} == {"tuberculosis"}


def count(sessions, stmt):  # type: ignore[no-untyped-def]
    with sessions() as session:
        return session.scalar(stmt)
