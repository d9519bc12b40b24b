"""Running a site: ``healthcheck``, ``migrate`` and ``report``."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Annotated

import typer

from pulmoscreen.cli.options import Verbose
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import Settings, get_settings


def healthcheck() -> None:
    """Exit 0 when the database and the broker answer (container health checks use this)."""
    from sqlalchemy import text

    from pulmoscreen.db import make_engine
    from pulmoscreen.db.session import normalise_url
    from pulmoscreen.queue import make_celery

    settings = get_settings()
    try:
        with make_engine(normalise_url(settings.resolved_database_url())).connect() as conn:
            conn.execute(text("SELECT 1"))
        with make_celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure is an unhealthy service
        console.print(f"unhealthy: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    console.print("healthy")


def migrate() -> None:
    """Create or upgrade the database schema (``alembic upgrade head``)."""
    from pulmoscreen.db import upgrade_database

    settings = get_settings()
    upgrade_database(settings.resolved_database_url())
    _record_site_timezone(settings)
    console.print("database schema is up to date")


def _record_site_timezone(settings: Settings) -> None:
    """Keep the SQL views' time zone (table site_settings) equal to PULMO_SITE_TIMEZONE."""
    from pulmoscreen.db import session_factory
    from pulmoscreen.db.reports import set_site_timezone

    with session_factory(settings.resolved_database_url()).begin() as session:
        set_site_timezone(session, settings.site_timezone)


def write_report(settings: Settings, *, day: date | None, out: Path | None) -> Path:
    """Write the report of local ``day`` (default: yesterday), print its totals and path."""
    from pulmoscreen.db import upgrade_database
    from reporting.service import default_report_day, run_report

    upgrade_database(settings.resolved_database_url())
    files = run_report(settings, day=day or default_report_day(settings), out_dir=out)
    s = files.summary
    console.print(
        f"report for {files.day} ({settings.site_timezone}): {s.files_received} files received, "
        f"{s.screened} screened, {s.rejected} rejected, {s.pending} pending, "
        f"{s.flagged} flagged; written in {files.duration_seconds:.1f}s"
    )
    console.print(f"report: {files.html}", soft_wrap=True, highlight=False)
    return files.html


def report(
    day: Annotated[
        datetime | None,
        typer.Option(
            "--date",
            formats=["%Y-%m-%d"],
            help="Local day to report (default: yesterday in PULMO_SITE_TIMEZONE).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: PULMO_REPORT_DIR/YYYY-MM-DD).")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Write a day's screening summary: summary.html, summary.pdf and flagged.csv."""
    setup_logging(verbose)
    write_report(get_settings(), day=day.date() if day else None, out=out)
