"""The inference task in a real Celery worker, on the real Redis and PostgreSQL."""

import time

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import func, select

from ingest import Ingestor
from pulmoscreen.config import Settings
from pulmoscreen.db import Image, ModelRow, PredictionRow, session_factory
from pulmoscreen.queue import enqueue_images, queue_depth
from tests.factories import make_cxr_dicom
from tests.integration.conftest import wait_until
from worker.app import create_app

pytestmark = pytest.mark.integration


def worker_settings(pg_url, redis_url, tiny_model_path, tmp_path):
    """Small batches flushed quickly, paths stored relative to ``tmp_path``."""
    return Settings(
        database_url=pg_url,
        broker_url=redis_url,
        model_path=tiny_model_path,
        batch_size=4,
        flush_interval=0.3,
        storage_root=tmp_path,
    )


def worker_app(pg_url, redis_url, model_path, tmp_path):
    """(sessions, Celery app) of a worker on the real PostgreSQL and Redis."""
    return session_factory(pg_url), create_app(
        worker_settings(pg_url, redis_url, model_path, tmp_path)
    )


def drop_ingestor(drop, sessions, tmp_path, app, **options):
    """An ingestor of ``drop`` that takes files at once and sends their tasks to ``app``."""
    options.setdefault("enqueue", lambda ids: enqueue_images(app, ids))
    return Ingestor(drop, sessions=sessions, stable_seconds=0, storage_root=tmp_path, **options)


def count(sessions, stmt):
    with sessions() as session:
        return session.scalar(stmt)


class TestBatchedInferenceTask:
    def test_each_image_predicted_once_even_when_sent_twice(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        sessions, app = worker_app(pg_url, redis_url, tiny_model_path, tmp_path)
        drop = tmp_path / "inbox"
        for seed in range(10):
            make_cxr_dicom(drop, seed=100 + seed)
        broken = make_cxr_dicom(drop, seed=200, filename="broken.dcm")
        broken.write_bytes(broken.read_bytes()[:4000])
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
            ingestor = drop_ingestor(drop, sessions, tmp_path, app)
            ids = [o.image_id for o in ingestor.scan_once()]
            enqueue_images(app, ids)  # every message delivered twice
            queued = select(func.count()).select_from(Image).where(Image.status == "queued")
            wait_until(lambda: count(sessions, queued) == 0, timeout=120, what="predictions")

        assert count(sessions, select(func.count()).select_from(PredictionRow)) == 10
        per_image = select(PredictionRow.image_id, func.count()).group_by(PredictionRow.image_id)
        with sessions() as session:
            assert {n for _, n in session.execute(per_image)} == {1}
            model = session.scalars(select(ModelRow)).one()
            rejected = session.scalars(select(Image).where(Image.status == "rejected")).one()
        assert model.version == "tiny-test-1"
        assert model.active
        assert len(model.sha256) == 64
        assert rejected.reject_reason == "truncated"
        # paths are stored relative to the storage root, so other hosts can mount it anywhere
        assert rejected.stored_path.startswith("inbox/quarantine/")
        with sessions() as session:
            stored = session.scalars(select(Image.stored_path).where(Image.status == "predicted"))
            assert all(p.startswith("inbox/processed/") for p in stored)


class TestLostTask:
    def test_image_whose_message_vanished_is_sent_again_and_predicted_once(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        """The message never reaches Redis (as when a killed worker took it with it): the
        ingest sweep sends it again once the queue is empty, and a real worker predicts it."""
        sessions, app = worker_app(pg_url, redis_url, tiny_model_path, tmp_path)
        drop = tmp_path / "inbox"
        make_cxr_dicom(drop, seed=300)
        make_cxr_dicom(drop, seed=301)
        lost: list[int] = []
        ingestor = Ingestor(
            drop,
            sessions=sessions,
            stable_seconds=0,
            storage_root=tmp_path,
            enqueue=lambda ids: enqueue_images(app, ids) if lost else lost.extend(ids),
            resend_after=1.0,
            queue_depth=lambda: queue_depth(app),
        )
        outcomes = ingestor.scan_once()
        assert len(lost) == 1  # the first image's message is dropped; the second is sent
        assert queue_depth(app) == 1
        queued = select(func.count()).select_from(Image).where(Image.status == "queued")
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
            wait_until(lambda: count(sessions, queued) == 1, timeout=120, what="the sent image")
            assert queue_depth(app) == 0
            wait_until(
                lambda: ingestor.maybe_resend_stale() >= 0 and count(sessions, queued) == 0,
                timeout=60,
                what="the lost image, sent again",
            )
        per_image = select(PredictionRow.image_id, func.count()).group_by(PredictionRow.image_id)
        with sessions() as session:
            counts = dict(session.execute(per_image).all())
        assert counts == {o.image_id: 1 for o in outcomes}


class TestUnfinishedMove:
    def test_a_task_that_finds_no_file_leaves_the_study_for_ingest_to_finish(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        """Ingest committed the row, then stopped before the move (disk full, killed): the
        task that arrives first must not give the study up; ingest's next scan finishes the
        move and sends it again, and it is predicted once."""
        sessions, app = worker_app(pg_url, redis_url, tiny_model_path, tmp_path)
        drop = tmp_path / "inbox"
        make_cxr_dicom(drop, seed=401, filename="a_warm_up.dcm")
        original = make_cxr_dicom(drop, seed=400, filename="b_study.dcm")
        sent: list[int] = []
        ingestor = Ingestor(
            drop, sessions=sessions, stable_seconds=0, storage_root=tmp_path, enqueue=sent.extend
        )
        warm_up, study = (o.image_id for o in ingestor.scan_once())
        with sessions() as session:
            stored = tmp_path / session.get(Image, study).stored_path
        stored.replace(original)  # as if the move had never happened
        status = select(Image.status).where(Image.id == study)
        predicted = select(func.count()).select_from(PredictionRow)
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
            enqueue_images(app, [warm_up])  # the worker has its model loaded before the test
            wait_until(lambda: count(sessions, predicted) == 1, timeout=120, what="warm-up")
            enqueue_images(app, [study])
            wait_until(lambda: queue_depth(app) == 0, timeout=60, what="the task taken")
            time.sleep(3)
            assert count(sessions, status) == "queued"
            ingestor.enqueue = lambda ids: enqueue_images(app, ids)
            assert [o.status for o in ingestor.scan_once()] == ["queued"]
            wait_until(lambda: count(sessions, status) == "predicted", timeout=60, what="it")
        assert stored.is_file()
        assert not original.exists()
        assert not (drop / "quarantine").exists()
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == 2
            assert count(sessions, predicted) == 2


class TestWorkerFailure:
    def test_a_worker_without_its_model_rejects_nothing_and_catches_up(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        """The model file is missing when the batch arrives (a deployment half done): celery-
        batches acknowledges the batch whatever it raises, so the task sends its images again
        with a backoff; none is rejected, and all are scored once the model is in place."""
        import shutil

        from pulmoscreen.model import card_path_for

        later = tmp_path / "model" / "tiny.keras"
        sessions, app = worker_app(pg_url, redis_url, later, tmp_path)
        drop = tmp_path / "inbox"
        for seed in range(3):
            make_cxr_dicom(drop, seed=500 + seed)
        ingestor = drop_ingestor(drop, sessions, tmp_path, app)
        queued = select(func.count()).select_from(Image).where(Image.status == "queued")
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
            ids = [o.image_id for o in ingestor.scan_once()]
            wait_until(lambda: queue_depth(app) == 0, timeout=60, what="the tasks taken")
            time.sleep(4)  # the first sends fail
            assert count(sessions, queued) == 3
            later.parent.mkdir()
            shutil.copy(card_path_for(tiny_model_path), card_path_for(later))
            shutil.copy(tiny_model_path, later)
            wait_until(lambda: count(sessions, queued) == 0, timeout=120, what="the catch-up")
        with sessions() as session:
            found = session.scalars(select(Image).where(Image.id.in_(ids))).all()
            assert {(i.status, i.attempts) for i in found} == {("predicted", 1)}
        per_image = select(PredictionRow.image_id, func.count()).group_by(PredictionRow.image_id)
        with sessions() as session:
            assert dict(session.execute(per_image).all()) == dict.fromkeys(ids, 1)
