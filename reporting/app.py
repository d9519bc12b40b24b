"""The reporting service's Celery app: the nightly report task and its beat schedule.

    celery -A reporting.app beat                       # sends the job every night
    celery -A reporting.app worker -Q reports -P solo  # runs it

The schedule is in the site's time zone (``PULMO_SITE_TIMEZONE``, ``PULMO_REPORT_TIME``). The
app is built on first attribute access, so importing this module reads no settings.
"""

from __future__ import annotations

from datetime import date
from functools import cache
from typing import Any

from celery import Celery
from celery.schedules import crontab
from sqlalchemy.exc import OperationalError

from pulmoscreen.config import Settings, get_settings
from pulmoscreen.queue import make_service_celery
from reporting.service import default_report_day, run_report

REPORTS_QUEUE = "reports"
REPORT_TASK = "pulmoscreen.nightly_report"
SCHEDULE_NAME = "nightly-screening-report"


def create_app(settings: Settings) -> Celery:
    """A Celery app with the report task on the ``reports`` queue and a nightly beat entry."""
    app = make_service_celery(
        settings, name="pulmoscreen-reports", queue=REPORTS_QUEUE, tasks=[REPORT_TASK]
    )
    clock = settings.report_clock()
    app.conf.update(
        timezone=settings.site_timezone,
        enable_utc=True,
        beat_schedule={
            SCHEDULE_NAME: {
                "task": REPORT_TASK,
                "schedule": crontab(hour=clock.hour, minute=clock.minute),
                "options": {"queue": REPORTS_QUEUE},
            }
        },
        beat_schedule_filename=str(settings.data_dir / "celerybeat-schedule"),
    )

    @app.task(
        name=REPORT_TASK,
        acks_late=True,
        shared=False,  # each app runs its own settings (see worker.app)
        autoretry_for=(OperationalError,),
        retry_backoff=True,
        retry_jitter=True,
        max_retries=settings.max_retries,
    )
    def nightly_report(day: str | None = None) -> str:
        """Write the report of ``day`` (ISO date; default yesterday, local); returns its HTML."""
        target = date.fromisoformat(day) if day else default_report_day(settings)
        return str(run_report(settings, day=target).html)

    return app


@cache
def default_app() -> Celery:
    """The app ``celery -A reporting.app`` runs, configured from the environment."""
    return create_app(get_settings())


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        return default_app()
    raise AttributeError(name)
