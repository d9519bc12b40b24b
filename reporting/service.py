"""Build one day's report: load, aggregate, write HTML/PDF/CSV, record it in ``reports``."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from pulmoscreen.config import Settings
from pulmoscreen.db import reports as report_queries
from pulmoscreen.db import session_factory
from reporting.charts import render_charts
from reporting.flagged import write_flagged_csv
from reporting.heatmaps import Overlay, load_overlays, shown_heatmap_ids
from reporting.html import render_html
from reporting.pdf import write_pdf
from reporting.summary import DailySummary, previous_day, summarise_day, trend_window

log = logging.getLogger(__name__)

HTML_NAME, PDF_NAME, CSV_NAME = "summary.html", "summary.pdf", "flagged.csv"


@dataclass(frozen=True)
class ReportFiles:
    """Where a day's report was written, what it said, and how long it took."""

    day: date
    out_dir: Path
    html: Path
    pdf: Path
    csv: Path
    pdf_pages: int
    summary: DailySummary
    duration_seconds: float


def default_report_day(settings: Settings, now: datetime | None = None) -> date:
    """Yesterday in the site's time zone."""
    return previous_day(ZoneInfo(settings.site_timezone), now or datetime.now(UTC))


def _replace_file(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary name, then rename: a rerun never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def load_summary(settings: Settings, day: date, *, now: datetime) -> DailySummary:
    """The summary of local ``day`` from the database in ``settings``."""
    tz = ZoneInfo(settings.site_timezone)
    start, end = trend_window(day, tz)
    with session_factory(settings.resolved_database_url())() as session:
        rows = report_queries.received_files(session, start=start, end=end)
    frame = pd.DataFrame(rows, columns=list(report_queries.RECEIVED_COLUMNS))
    return summarise_day(
        frame,
        day=day,
        tz=tz,
        generated_at=now.astimezone(tz),
        image_url_template=settings.image_url_template,
        storage_root=settings.storage_root,
    )


def write_report_files(
    summary: DailySummary, out_dir: Path, overlays: dict[int, Overlay] | None = None
) -> tuple[Path, Path, Path, int]:
    """``summary.html``, ``summary.pdf`` and ``flagged.csv`` in ``out_dir`` (replaced if there);
    ``overlays``: the flagged images' heatmaps, by image id."""
    out_dir.mkdir(parents=True, exist_ok=True)
    html, pdf, csv = out_dir / HTML_NAME, out_dir / PDF_NAME, out_dir / CSV_NAME
    charts = render_charts(summary)
    page = render_html(summary, charts, overlays or {})
    _replace_file(html, lambda p: p.write_text(page, encoding="utf-8"))
    pages: list[int] = []
    _replace_file(pdf, lambda p: pages.append(write_pdf(summary, p, charts, overlays or {})))
    _replace_file(csv, lambda p: write_flagged_csv(summary, p))
    return html, pdf, csv, pages[0]


def run_report(settings: Settings, *, day: date, out_dir: Path | None = None) -> ReportFiles:
    """Write the report of local ``day`` and record it; a rerun replaces that day's report."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    summary = load_summary(settings, day, now=now)
    overlays = load_overlays(
        settings.resolved_database_url(),
        shown_heatmap_ids([f.image_id for f in summary.flagged_images]),
        storage_root=settings.storage_root,
    )
    out = (out_dir or settings.report_dir / day.isoformat()).resolve()
    html, pdf, csv, pages = write_report_files(summary, out, overlays)
    duration = time.perf_counter() - started
    values = {
        "report_date": day,
        "site_timezone": settings.site_timezone,
        "generated_at": now,
        "duration_seconds": duration,
        "out_dir": str(out),
        "html_path": str(html),
        "pdf_path": str(pdf),
        "csv_path": str(csv),
        "files_received": summary.files_received,
        "studies_received": summary.studies_received,
        "screened": summary.screened,
        "rejected": summary.rejected,
        "pending": summary.pending,
        "flagged": summary.flagged,
        "model_versions": [m.version for m in summary.models],
    }
    with session_factory(settings.resolved_database_url()).begin() as session:
        report_queries.save_report(session, values)
        report_queries.set_site_timezone(session, settings.site_timezone, now=now)
    log.info("report for %s written to %s in %.2fs", day, out, duration)
    return ReportFiles(day, out, html, pdf, csv, pages, summary, duration)


def run_nightly(settings: Settings, *, now: datetime | None = None) -> list[ReportFiles]:
    """Yesterday's report, after those of any night missed in the week before (oldest first)."""
    yesterday = default_report_day(settings, now)
    with session_factory(settings.resolved_database_url())() as session:
        days = report_queries.days_to_report(session, yesterday)
    if len(days) > 1:
        log.warning("catching up %d missed nightly reports", len(days) - 1)
    return [run_report(settings, day=day) for day in days]
