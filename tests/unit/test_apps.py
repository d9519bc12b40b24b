"""Several Celery apps in one process (tests, the demo, benchmarks) each run their own task."""

from pathlib import Path

from pulmoscreen.config import Settings
from pulmoscreen.queue import PREDICT_TASK


def settings(name: str) -> Settings:
    return Settings(database_url=f"sqlite:///{name}.db", data_dir=Path(name))


def test_each_inference_app_runs_its_own_task():
    from worker.app import create_app

    first, second = create_app(settings("a")), create_app(settings("b"))
    first.finalize()
    second.finalize()
    assert first.tasks[PREDICT_TASK].__wrapped__ is not second.tasks[PREDICT_TASK].__wrapped__


def test_each_report_app_runs_its_own_task():
    from reporting.app import REPORT_TASK, create_app

    first, second = create_app(settings("a")), create_app(settings("b"))
    first.finalize()
    second.finalize()
    assert first.tasks[REPORT_TASK].__wrapped__ is not second.tasks[REPORT_TASK].__wrapped__
