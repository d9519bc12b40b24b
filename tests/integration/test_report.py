"""The nightly report on real PostgreSQL: totals, flagged list, views, read-only role, outputs."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import psycopg
import pytest
from sqlalchemy import text

from pulmoscreen.config import Settings
from pulmoscreen.db import session_factory
from pulmoscreen.db.reports import report_rows
from pulmoscreen.db.session import normalise_url
from reporting.pdf import page_count
from reporting.service import run_report
from tests.integration.conftest import pulmo_env, run_cli, wait_until
from tests.seeding import Seeder, add_model, random_probs, seed_day

pytestmark = pytest.mark.integration

KOLKATA = ZoneInfo("Asia/Kolkata")  # UTC+05:30: local midnight is 18:30 UTC the day before
NEW_YORK = ZoneInfo("America/New_York")
DAY = date(2026, 11, 25)
CHROMIUM = os.environ.get("PULMO_TEST_CHROMIUM", "/usr/bin/chromium")
VIEWS = ("screening_results", "flagged_patients", "daily_summary")


def local(day: date, hh: int, mm: int, ss: int = 0, tz: ZoneInfo = KOLKATA) -> datetime:
    return datetime.combine(day, time(hh, mm, ss), tzinfo=tz)


def settings_for(url: str, tmp_path: Path, tz: ZoneInfo = KOLKATA) -> Settings:
    return Settings(
        database_url=url, site_timezone=tz.key, report_dir=tmp_path / "reports", data_dir=tmp_path
    )


def seed_edges(url: str, *, day: date, tz: ZoneInfo, files: int = 60) -> None:
    """A random day plus files on both sides of each local midnight."""
    with session_factory(url).begin() as session:
        seeder = Seeder(add_model(session))
        seed_day(session, seeder, day=day, tz=tz, files=files, seed=5)
        seed_day(session, seeder, day=day - timedelta(days=2), tz=tz, files=25, seed=6)
        flag = {"normal": 0.1, "pneumonia": 0.1, "tuberculosis": 0.8}
        seeder.screened(session, local(day, 23, 59, 59, tz), flag)  # this day, the last second
        seeder.screened(session, local(day, 0, 0, 0, tz), flag)  # this day, the first second
        seeder.rejected(session, local(day, 23, 59, tz=tz), "not_chest")
        seeder.pending(session, local(day, 0, 1, tz=tz))
        seeder.screened(session, local(day - timedelta(days=1), 23, 59, 59, tz), flag)  # before
        seeder.screened(session, local(day + timedelta(days=1), 0, 0, 0, tz), flag)  # after


def database_totals(url: str, day: date, tz: ZoneInfo) -> dict[str, int]:
    """What the database holds for the local day, counted by PostgreSQL's own zone rules."""
    sql = """
        SELECT i.status, count(*), count(DISTINCT i.study_id),
               sum(CASE WHEN p.flagged THEN 1 ELSE 0 END)
        FROM images i LEFT JOIN predictions p ON p.image_id = i.id
        WHERE CAST(i.created_at AT TIME ZONE :tz AS DATE) = :day
        GROUP BY i.status
    """
    with session_factory(url)() as session:
        rows = session.execute(text(sql), {"tz": tz.key, "day": day}).all()
    by_status = {status: (n, studies, flagged or 0) for status, n, studies, flagged in rows}
    return {
        "files_received": sum(n for n, _, _ in by_status.values()),
        "studies_received": sum(s for _, s, _ in by_status.values()),
        "screened": by_status.get("predicted", (0, 0, 0))[0],
        "rejected": by_status.get("rejected", (0, 0, 0))[0],
        "pending": by_status.get("queued", (0, 0, 0))[0],
        "flagged": sum(f for _, _, f in by_status.values()),
    }


TOTALS = ("files_received", "studies_received", "screened", "rejected", "pending", "flagged")


class TestReportTotals:
    @pytest.mark.parametrize(
        ("tz", "day"),
        [(KOLKATA, DAY), (NEW_YORK, date(2026, 3, 8)), (NEW_YORK, date(2026, 11, 1))],
        ids=["kolkata", "new-york-23h-day", "new-york-25h-day"],
    )
    def test_totals_equal_the_database_for_the_local_day(self, pg_url, tmp_path, tz, day):
        seed_edges(pg_url, day=day, tz=tz)
        files = run_report(settings_for(pg_url, tmp_path, tz), day=day)
        s = files.summary
        expected = database_totals(pg_url, day, tz)
        assert {k: getattr(s, k) for k in TOTALS} == expected
        # the edge files: first and last second of the day, not the seconds around it
        received_local = {f.received_local.time() for f in s.flagged_images}
        assert {time(0, 0, 0), time(23, 59, 59)} <= received_local
        assert all(f.received_local.date() == day for f in s.flagged_images)
        with session_factory(pg_url)() as session:
            row = report_rows(session)[-1]
            view = session.execute(
                text(f"SELECT {', '.join(TOTALS)} FROM daily_summary WHERE received_date = :d"),
                {"d": day},
            ).one()
        assert {k: getattr(row, k) for k in TOTALS} == expected
        assert dict(zip(TOTALS, view, strict=True)) == expected

    def test_rejections_by_reason_and_labels(self, pg_url, tmp_path):
        seed_edges(pg_url, day=DAY, tz=KOLKATA)
        s = run_report(settings_for(pg_url, tmp_path), day=DAY).summary
        with session_factory(pg_url)() as session:
            reasons = dict(
                session.execute(
                    text(
                        "SELECT reject_reason, count(*) FROM screening_results "
                        "WHERE received_date = :d AND status = 'rejected' GROUP BY reject_reason"
                    ),
                    {"d": DAY},
                ).all()
            )
            labels = dict(
                session.execute(
                    text(
                        "SELECT predicted_label, count(*) FROM screening_results "
                        "WHERE received_date = :d AND status = 'predicted' "
                        "GROUP BY predicted_label"
                    ),
                    {"d": DAY},
                ).all()
            )
        assert s.reject_reasons == reasons
        assert {k: v for k, v in s.labels.items() if v} == labels


class TestFlaggedList:
    def test_report_and_csv_list_exactly_the_views_rows_in_urgency_order(self, pg_url, tmp_path):
        seed_edges(pg_url, day=DAY, tz=KOLKATA, files=120)
        files = run_report(settings_for(pg_url, tmp_path), day=DAY)
        with session_factory(pg_url)() as session:
            view = session.execute(
                text(
                    "SELECT image_id, patient_id, accession, study_date, predicted_label, "
                    "p_tuberculosis, p_pneumonia, abnormality_score, threshold_tuberculosis, "
                    "threshold_pneumonia, source_path FROM flagged_patients "
                    "WHERE received_date = :d "
                    "ORDER BY abnormality_score DESC, p_tuberculosis DESC, received_local, image_id"
                ),
                {"d": DAY},
            ).all()
        assert len(view) >= 10
        reported = [
            (
                f.image_id,
                f.patient_id,
                f.accession,
                f.study_date,
                f.label,
                f.p_tuberculosis,
                f.p_pneumonia,
                f.abnormality_score,
                f.threshold_tuberculosis,
                f.threshold_pneumonia,
                f.source_path,
            )
            for f in files.summary.flagged_images
        ]
        assert reported == [tuple(row) for row in view]
        csv = pd.read_csv(files.csv, encoding="utf-8", dtype={"patient_id": str})
        assert list(csv["patient_id"]) == [row.patient_id for row in view]
        assert list(csv["rank"]) == list(range(1, len(view) + 1))


class TestRerunAndEmptyDay:
    def test_rerun_replaces_the_days_report(self, pg_url, tmp_path):
        settings = settings_for(pg_url, tmp_path)
        seed_edges(pg_url, day=DAY, tz=KOLKATA)
        first = run_report(settings, day=DAY)
        with session_factory(pg_url).begin() as session:
            seeder = Seeder(add_model(session), n=10_000)
            seeder.screened(
                session,
                local(DAY, 12, 0),
                {"normal": 0.01, "pneumonia": 0.01, "tuberculosis": 0.98},
            )
        second = run_report(settings, day=DAY)
        assert second.html == first.html
        assert second.summary.flagged == first.summary.flagged + 1
        with session_factory(pg_url)() as session:
            rows = report_rows(session)
        assert [(r.report_date, r.flagged) for r in rows] == [(DAY, second.summary.flagged)]
        top = pd.read_csv(second.csv, dtype=str).iloc[0]
        assert top["patient_id"] == "PAT010001"
        assert not list(second.out_dir.glob(".*.tmp"))

    def test_a_day_without_studies_gives_a_clearly_empty_report(self, pg_url, tmp_path):
        files = run_report(settings_for(pg_url, tmp_path), day=DAY)
        assert files.summary.is_empty
        assert "No studies were received on this day" in files.html.read_text(encoding="utf-8")
        assert files.csv.read_text(encoding="utf-8").count("\n") == 1
        from pypdf import PdfReader

        reader = PdfReader(files.pdf)
        assert len(reader.pages) == 6
        assert "No studies were received" in reader.pages[0].extract_text()
        assert "No patient was flagged" in reader.pages[1].extract_text()
        with session_factory(pg_url)() as session:
            (row,) = report_rows(session)
        assert (row.report_date, row.files_received, row.flagged) == (DAY, 0, 0)


class TestPdf:
    def test_pages_hold_the_summary_the_whole_flagged_list_and_the_charts(self, pg_url, tmp_path):
        from pypdf import PdfReader

        seed_edges(pg_url, day=DAY, tz=KOLKATA, files=200)
        files = run_report(settings_for(pg_url, tmp_path), day=DAY)
        s = files.summary
        reader = PdfReader(files.pdf)
        n_list_pages = -(-s.flagged // 22)
        assert n_list_pages >= 2
        assert len(reader.pages) == files.pdf_pages == page_count(s) == 1 + n_list_pages + 4
        assert reader.metadata.title == f"PulmoScreen screening summary {DAY.isoformat()}"
        first = reader.pages[0].extract_text()
        assert "Wednesday 25 November 2026" in first
        assert f"Flagged for review: {s.flagged}" in first
        listed = "".join(reader.pages[1 + i].extract_text() for i in range(n_list_pages))
        assert all(f.patient_id in listed for f in s.flagged_images)
        for page in reader.pages[1 + n_list_pages :]:  # each chart page draws one image
            assert page.get_contents().get_data().count(b" Do") == 1


class TestReadOnlyRole:
    def test_reader_selects_views_and_cannot_change_or_read_tables(self, pg_url, tmp_path):
        seed_edges(pg_url, day=DAY, tz=KOLKATA)
        run_report(settings_for(pg_url, tmp_path), day=DAY)
        dsn = normalise_url(pg_url).replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET ROLE pulmo_reader")
            for view in VIEWS:
                assert conn.execute(f"SELECT count(*) FROM {view}").fetchone()[0] > 0
            on_tables = [
                "SELECT * FROM images",
                "SELECT * FROM predictions",
                "INSERT INTO studies (study_uid, status, created_at, updated_at) "
                "VALUES ('x', 'received', now(), now())",
                "UPDATE predictions SET flagged = false",
                "DELETE FROM images",
                "UPDATE reports SET flagged = 0",
                "UPDATE site_settings SET timezone = 'UTC'",
                "CREATE TABLE notes (x int)",
            ]
            for statement in on_tables:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
            for view in VIEWS:  # views are not writable at all; the role holds no such right
                with pytest.raises(psycopg.Error):
                    conn.execute(f"DELETE FROM {view}")
                for right in ("INSERT", "UPDATE", "DELETE"):
                    held = conn.execute(
                        "SELECT has_table_privilege('pulmo_reader', %s, %s)", (view, right)
                    ).fetchone()
                    assert held == (False,)
            conn.execute("RESET ROLE")
            assert conn.execute("SELECT count(*) FROM flagged_patients").fetchone()[0] > 0

    def test_role_survives_a_second_database_being_migrated(self, pg_url):
        # the role is cluster-wide; a second schema on the same server must not fail on it
        from tests.integration.conftest import PG_ADMIN_URL

        name = "pulmo_test_role_second"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{name}"')
        url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
        try:
            from pulmoscreen.db import upgrade_database
            from pulmoscreen.db.session import make_engine

            upgrade_database(url)
            make_engine(normalise_url(url)).dispose()
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SET ROLE pulmo_reader")
                assert conn.execute("SELECT count(*) FROM daily_summary").fetchone() == (0,)
        finally:
            with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure-chromium.sh (make test does)")
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def ink_fraction(png: Path, box: tuple[int, int, int, int]) -> float:
    """Share of non-white pixels inside ``box`` of a screenshot."""
    from PIL import Image

    with Image.open(png) as im:
        grey = np.asarray(im.convert("L").crop(box))
    return float((grey < 200).mean())


class TestHtmlInChromium:
    def test_chromium_renders_the_flagged_list_and_the_charts(self, pg_url, tmp_path):
        seed_edges(pg_url, day=DAY, tz=KOLKATA, files=40)
        files = run_report(settings_for(pg_url, tmp_path), day=DAY)
        url = files.html.as_uri()
        dom = chromium("--dump-dom", url, profile=tmp_path / "profile-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert dom.stdout.count('data-label="Patient ID"') == files.summary.flagged
        assert dom.stdout.count('<img src="data:image/png;base64,') == 4
        shots = {}
        # headless Chromium lays pages out no narrower than 500 px: the small-screen layout
        for name, size in {"desktop": "1200,3000", "narrow": "500,2400"}.items():
            png = tmp_path / f"report-{name}.png"
            done = chromium(
                f"--screenshot={png}", f"--window-size={size}", url, profile=tmp_path / name
            )
            assert done.returncode == 0, done.stderr[-2000:]
            shots[name] = png
        from PIL import Image

        with Image.open(shots["desktop"]) as im:
            assert im.size == (1200, 3000)
        # the top of the page (totals, flagged list) and the charts further down carry ink
        assert ink_fraction(shots["desktop"], (0, 0, 1200, 1000)) > 0.03
        assert ink_fraction(shots["desktop"], (0, 1800, 1200, 3000)) > 0.05
        assert ink_fraction(shots["narrow"], (0, 0, 500, 2400)) > 0.03


class TestReportCommand:
    def test_default_day_is_yesterday_in_the_site_time_zone(self, pg_url, tmp_path):
        yesterday = datetime.now(UTC).astimezone(KOLKATA).date() - timedelta(days=1)
        with session_factory(pg_url).begin() as session:
            seeder = Seeder(add_model(session))
            seeder.screened(session, local(yesterday, 12, 0), random_probs(random.Random(1)))
            seeder.rejected(session, local(yesterday, 23, 59), "not_dicom")
        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_SITE_TIMEZONE=KOLKATA.key,
            PULMO_REPORT_DIR=str(tmp_path / "reports"),
        )
        done = run_cli("report", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        html = tmp_path / "reports" / yesterday.isoformat() / "summary.html"
        assert f"report: {html}" in done.stdout
        assert "2 files received, 1 screened, 1 rejected, 0 pending" in done.stdout
        assert {p.name for p in html.parent.iterdir()} == {
            "summary.html",
            "summary.pdf",
            "flagged.csv",
        }

    def test_date_and_out_options(self, pg_url, tmp_path):
        env = pulmo_env(PULMO_DATABASE_URL=pg_url)
        out = tmp_path / "elsewhere"
        done = run_cli("report", "--date", "2026-02-28", "--out", str(out), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"report: {out / 'summary.html'}" in done.stdout
        with session_factory(pg_url)() as session:
            assert [r.report_date for r in report_rows(session)] == [date(2026, 2, 28)]


class TestNightlyTask:
    def test_a_reports_worker_on_redis_writes_the_report(self, pg_url, redis_url, tmp_path):
        from celery.contrib.testing.worker import start_worker

        from reporting.app import REPORT_TASK, create_app

        seed_edges(pg_url, day=DAY, tz=KOLKATA, files=20)
        settings = settings_for(pg_url, tmp_path).model_copy(update={"broker_url": redis_url})
        app = create_app(settings)
        with start_worker(app, pool="solo", perform_ping_check=False, loglevel="WARNING"):
            app.send_task(REPORT_TASK, args=[DAY.isoformat()])

            def written() -> bool:
                with session_factory(pg_url)() as session:
                    return bool(report_rows(session))

            wait_until(written, timeout=120, what="the report task")
        html = tmp_path / "reports" / DAY.isoformat() / "summary.html"
        assert html.exists()
        with session_factory(pg_url)() as session:
            (row,) = report_rows(session)
        assert row.files_received == database_totals(pg_url, DAY, KOLKATA)["files_received"]
        assert Path(row.html_path) == html
        shutil.rmtree(tmp_path / "reports")


class TestEmbeddedSqlite:
    def test_views_and_report_agree_on_sqlite(self, sqlite_url, tmp_path):
        nairobi = ZoneInfo("Africa/Nairobi")  # no daylight saving: SQLite's fixed offset is exact
        seed_edges(sqlite_url, day=DAY, tz=nairobi)
        files = run_report(settings_for(sqlite_url, tmp_path, nairobi), day=DAY)
        s = files.summary
        with session_factory(sqlite_url)() as session:
            view = session.execute(
                text(f"SELECT {', '.join(TOTALS)} FROM daily_summary WHERE received_date = :d"),
                {"d": DAY.isoformat()},
            ).one()
            flagged_ids = session.scalars(
                text(
                    "SELECT image_id FROM flagged_patients WHERE received_date = :d "
                    "ORDER BY abnormality_score DESC, p_tuberculosis DESC, received_local, image_id"
                ),
                {"d": DAY.isoformat()},
            ).all()
        assert dict(zip(TOTALS, view, strict=True)) == {k: getattr(s, k) for k in TOTALS}
        assert flagged_ids == [f.image_id for f in s.flagged_images]
        assert s.files_received == 60 + 4
