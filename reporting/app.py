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
from reporting.service import run_nightly, run_report

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
        # 30 s, 1, 2, 4, 8 min, then every 10 min: a database down for about an hour delays
        # the night's report instead of losing it
        retry_backoff=30,
        retry_backoff_max=600,
        retry_jitter=False,
        max_retries=max(settings.max_retries, 10),
    )
    def nightly_report(day: str | None = None) -> str:
        """Write the report of ``day`` (ISO date), or yesterday's (local) after any night missed
        in the week before; returns the last report's HTML path."""
        if day:
            return str(run_report(settings, day=date.fromisoformat(day)).html)
        return str(run_nightly(settings)[-1].html)

    return app


@cache
def default_app() -> Celery:
    """The app ``celery -A reporting.app`` runs, configured from the environment."""
    return create_app(get_settings())


def __getattr__(name: str) -> Any:
    if name in {"app", "celery"}:
        return default_app()
    raise AttributeError(name)
