"""The worker's Celery app: the batched inference task bound to a Settings object."""

from __future__ import annotations

import logging
import random
from functools import cache
from typing import Any

from celery import Celery
from celery_batches import Batches, SimpleRequest

from pulmoscreen.config import Settings, get_settings
from pulmoscreen.queue import PREDICT_TASK, enqueue_images, make_celery
from worker.inference import predict_images

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> Celery:
    """A Celery app whose inference task gathers up to ``batch_size`` images per model call."""
    app = make_celery(settings)

    @app.task(
        name=PREDICT_TASK,
        base=Batches,
        flush_every=settings.batch_size,
        flush_interval=settings.flush_interval,
        acks_late=True,
        # Not shared: a shared task would join every app created later in this process, and
        # such an app would run this closure, with these settings, instead of its own.
        shared=False,
    )
    def predict_image(requests: list[SimpleRequest]) -> None:
        attempts = {int(r.args[0]): int(r.args[1]) if len(r.args) > 1 else 0 for r in requests}
        worker_name = requests[0].hostname if requests else None
        try:
            deferred = predict_images(settings, list(attempts), worker=worker_name)
        except Exception as exc:
            # celery-batches acknowledges the batch whatever happens here: a failure of the
            # worker itself (database, model file, memory, disk) sends every image again later.
            # The class only: a database error's text may hold patient data.
            log.error("batch of %d images failed (%s)", len(attempts), type(exc).__name__)
            _retry_later(app, settings, attempts, why=type(exc).__name__)
        else:
            _retry_later(app, settings, {i: attempts[i] for i in deferred}, why="temporary failure")

    return app


def _retry_later(app: Celery, settings: Settings, attempts: dict[int, int], *, why: str) -> None:
    """Send the images again after a jittered backoff. After ``max_retries`` sends they stay
    queued, and ingest sends them again when the inference queue is empty."""
    for image_id, attempt in attempts.items():
        if attempt >= settings.max_retries:
            log.error("image %d: %d retries (%s); it stays queued", image_id, attempt, why)
            continue
        delay = min(60.0, 2.0**attempt) * (0.5 + random.random())
        log.warning("image %d: %s, retry %d in %.1fs", image_id, why, attempt + 1, delay)
        app.send_task(PREDICT_TASK, args=[image_id, attempt + 1], countdown=delay)


@cache
def default_app() -> Celery:
    """The app ``celery -A worker`` runs, configured from the environment."""
    return create_app(get_settings())


__all__: list[Any] = ["create_app", "default_app", "enqueue_images"]
