"""Two `celery -A worker` processes on one Redis queue share the work; no image twice."""

import pytest

from ingest import Ingestor
from pulmoscreen.config import Settings
from pulmoscreen.db import session_factory
from pulmoscreen.queue import enqueue_images, make_celery
from tests.factories import make_cxr_dicom
from tests.integration import conftest as harness

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class TestTwoWorkers:
    def test_share_one_queue(self, pg_url, redis_url, tiny_model_path, tmp_path):
        env = harness.pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_BROKER_URL=redis_url,
            PULMO_MODEL_PATH=str(tiny_model_path),
            PULMO_BATCH_SIZE="4",
            PULMO_FLUSH_INTERVAL="0.5",
        )
        settings = Settings(
            database_url=pg_url, broker_url=redis_url, model_path=tiny_model_path, batch_size=4
        )
        app = make_celery(settings)
        sessions = session_factory(pg_url)
        workers = [
            harness.start_worker_process(f"w{i}", env, tmp_path / f"w{i}.log") for i in (1, 2)
        ]
        try:
            harness.wait_until(
                lambda: len(app.control.ping(timeout=1.0)) == 2, timeout=180, what="2 workers"
            )
            drop = tmp_path / "inbox"
            for seed in range(60):
                make_cxr_dicom(drop, seed=500 + seed, rows=256, cols=256)
            ingestor = Ingestor(
                drop,
                sessions=sessions,
                stable_seconds=0,
                enqueue=lambda ids: enqueue_images(app, ids),
            )
            assert len(ingestor.scan_once()) == 60

            harness.wait_until(
                lambda: harness.prediction_counts(sessions)[0] == 0,
                timeout=300,
                what="60 predictions",
                logs=[tmp_path / "w1.log", tmp_path / "w2.log"],
            )
        finally:
            harness.stop_processes(workers)
        _, per_image, by_worker = harness.prediction_counts(sessions)
        assert len(per_image) == 60
        assert {n for _, n in per_image} == {1}
        assert len(by_worker) == 2, by_worker
        assert all(name.startswith(("w1@", "w2@")) for name in by_worker)
