"""Nights missed while the database or the report worker was down are caught up (SQLite)."""

from datetime import date, datetime

from pulmoscreen.db import session_factory
from pulmoscreen.db.reports import days_to_report, save_report

LATEST = date(2026, 11, 30)


def stored(sqlite_url: str, *days: date) -> None:
    with session_factory(sqlite_url).begin() as session:
        for day in days:
            save_report(
                session,
                {
                    "report_date": day,
                    "site_timezone": "UTC",
                    "generated_at": datetime(2026, 12, 1),
                    "duration_seconds": 1.0,
                    "out_dir": "r",
                    "html_path": "r/a.html",
                    "pdf_path": "r/a.pdf",
                    "csv_path": "r/a.csv",
                    "files_received": 0,
                    "studies_received": 0,
                    "screened": 0,
                    "rejected": 0,
                    "pending": 0,
                    "flagged": 0,
                    "model_versions": [],
                },
            )


def days(sqlite_url: str) -> list[date]:
    with session_factory(sqlite_url)() as session:
        return days_to_report(session, LATEST)


class TestDaysToReport:
    def test_a_new_site_reports_yesterday_only(self, sqlite_url):
        assert days(sqlite_url) == [LATEST]

    def test_every_night_done_reports_yesterday_only(self, sqlite_url):
        stored(sqlite_url, *(date(2026, 11, d) for d in range(20, 30)))
        assert days(sqlite_url) == [LATEST]

    def test_missed_nights_come_first_oldest_first(self, sqlite_url):
        stored(sqlite_url, date(2026, 11, 20), date(2026, 11, 25), date(2026, 11, 26))
        assert days(sqlite_url) == [
            date(2026, 11, 24),
            date(2026, 11, 27),
            date(2026, 11, 28),
            date(2026, 11, 29),
            LATEST,
        ]

    def test_nothing_before_the_first_report_is_invented(self, sqlite_url):
        stored(sqlite_url, date(2026, 11, 28))
        assert days(sqlite_url) == [date(2026, 11, 29), LATEST]
