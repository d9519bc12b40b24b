"""Three worker processes (as `docker compose up --scale worker=3` starts) on the real Redis and
PostgreSQL: 300 studies, every one predicted exactly once, even when a worker is killed."""

import signal
import threading

import pytest

from pulmoscreen.cli import make_ingestor
from pulmoscreen.config import Settings
from pulmoscreen.db import session_factory
from pulmoscreen.queue import make_celery
from tests.factories import make_cxr_dicom
from tests.integration.conftest import (
    prediction_counts,
    pulmo_env,
    start_worker_process,
    stop_processes,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_STUDIES = 300


class TestThreeWorkers:
    def test_300_studies_one_worker_killed_mid_run(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_BROKER_URL=redis_url,
            PULMO_MODEL_PATH=str(tiny_model_path),
            PULMO_BATCH_SIZE="8",
            PULMO_FLUSH_INTERVAL="0.5",
            PULMO_VISIBILITY_TIMEOUT="20",
        )
        settings = Settings(
            database_url=pg_url,
            broker_url=redis_url,
            model_path=tiny_model_path,
            batch_size=8,
            visibility_timeout=20,
            stable_seconds=0,
            resend_after=20,
        )
        app = make_celery(settings)
        drop = tmp_path / "inbox"
        for seed in range(N_STUDIES):  # one image per study
            make_cxr_dicom(drop, seed=10_000 + seed, rows=256, cols=256)
        workers = [start_worker_process(f"w{i}", env, tmp_path / f"w{i}.log") for i in (1, 2, 3)]
        sessions = session_factory(pg_url)
        stop = threading.Event()
        try:
            wait_until(
                lambda: len(app.control.ping(timeout=1.0)) == 3, timeout=180, what="3 workers"
            )
            # The ingest service as deployed: it also re-sends what a killed worker took with it
            # (a message Redis handed over that the worker had not yet recorded as unacked).
            ingestor = make_ingestor(settings, drop, sessions, app)
            assert len(ingestor.scan_once()) == N_STUDIES
            watcher = threading.Thread(
                target=ingestor.watch, args=(stop,), kwargs={"poll_interval": 1.0}, daemon=True
            )
            watcher.start()

            def all_took_part() -> bool:
                return len(prediction_counts(sessions)[2]) == 3

            wait_until(all_took_part, timeout=180, what="every worker's first batch")
            victim = workers[1]
            victim.send_signal(signal.SIGKILL)  # no warm shutdown: its held messages are lost
            victim.wait(timeout=30)
            wait_until(
                lambda: prediction_counts(sessions)[0] == 0,
                timeout=400,
                what="300 predictions",
                logs=[tmp_path / f"w{i}.log" for i in (1, 2, 3)],
            )
        finally:
            stop.set()
            stop_processes(workers)
        queued, per_image, by_worker = prediction_counts(sessions)
        assert queued == 0
        assert len(per_image) == N_STUDIES
        assert {n for _, n in per_image} == {1}
        assert len(by_worker) == 3, by_worker
