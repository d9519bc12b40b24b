"""The Celery application shared by ingest (sender) and worker (consumer)."""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from kombu import Queue

from pulmoscreen.config import Settings

INFERENCE_QUEUE = "inference"
PREDICT_TASK = "pulmoscreen.predict_image"


def make_celery(settings: Settings, *, name: str = "pulmoscreen") -> Celery:
    """A Celery app on ``settings.broker_url`` with late acks and an explicit inference queue."""
    app = Celery(name, broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_create_missing_queues=False,
        task_queues=[Queue(INFERENCE_QUEUE)],
        task_default_queue=INFERENCE_QUEUE,
        task_routes={PREDICT_TASK: {"queue": INFERENCE_QUEUE}},
        task_ignore_result=True,
        task_time_limit=settings.task_time_limit,
        task_soft_time_limit=max(1, settings.task_time_limit - 30),
        # Batches fill up only if the worker may hold a whole batch of unacked messages.
        worker_prefetch_multiplier=settings.batch_size,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout,
            # Sweep for messages a dead worker held often enough to honour the timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 3)),
            "unacked_restore_throttle": 1,
        },
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def enqueue_images(app: Celery, image_ids: Iterable[int], *, attempt: int = 0) -> int:
    """Send one inference task per image id; returns how many were sent."""
    sent = 0
    with app.producer_or_acquire() as producer:
        for image_id in image_ids:
            app.send_task(
                PREDICT_TASK,
                args=[int(image_id), attempt],
                queue=INFERENCE_QUEUE,
                producer=producer,
            )
            sent += 1
    return sent


def queue_depth(app: Celery, queue: str = INFERENCE_QUEUE) -> int:
    """Messages waiting in ``queue`` (not counting those that workers hold unacknowledged).

    A queue the broker does not know has none: Redis drops the key of an empty list.
    """
    with app.connection_for_write() as conn:
        try:
            declared = conn.default_channel.queue_declare(queue=queue, passive=True)
        except conn.channel_errors as exc:
            if str(getattr(exc, "reply_code", "")) == "404":
                return 0
            raise
        return int(declared.message_count)


def broker_run_id(app: Celery, *, timeout: float = 2.0) -> str | None:
    """The broker's run id: Redis draws a new one each time its server starts (``INFO server``).

    A change means the broker restarted, and a Redis without persistence restarts empty. None
    for a broker without one (``memory://``). The timeouts are short: callers poll this.

    Raises:
        kombu.exceptions.OperationalError: the broker cannot be reached.
    """
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    with app.connection_for_write(connect_timeout=timeout, transport_options=options) as conn:
        if conn.transport.driver_type != "redis":
            return None
        run_id = conn.default_channel.client.info("server").get("run_id")
        return str(run_id) if run_id else None


def make_service_celery(
    settings: Settings, *, name: str, queue: str, tasks: Iterable[str]
) -> Celery:
    """A Celery app like :func:`make_celery` whose tasks all go to one queue of its own.

    Used by services other than inference (for example the nightly report), so that a worker
    started with ``-Q <queue>`` serves them and never takes an inference message.
    """
    app = make_celery(settings, name=name)
    app.conf.update(
        task_queues=[Queue(queue)],
        task_default_queue=queue,
        task_routes={task: {"queue": queue} for task in tasks},
        worker_prefetch_multiplier=1,
    )
    return app
