"""The nightly report's pure parts: aggregation, charts, HTML, CSV, PDF, settings, schedule."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from pydantic import ValidationError

from pulmoscreen.config import Settings
from pulmoscreen.db.reports import RECEIVED_COLUMNS
from reporting.charts import CHARTS, render_charts
from reporting.flagged import write_flagged_csv
from reporting.html import render_html
from reporting.pdf import ROWS_PER_PAGE, page_count, write_pdf
from reporting.summary import (
    DailySummary,
    day_window,
    image_link,
    previous_day,
    summarise_day,
)

NAIROBI = ZoneInfo("Africa/Nairobi")  # UTC+3, no daylight saving
DAY = date(2026, 11, 25)
THRESHOLDS = {"pneumonia": 0.5, "tuberculosis": 0.4}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def received(local: datetime, **values: Any) -> dict[str, Any]:
    """One row as the report query returns it; a screened normal file unless told otherwise."""
    n = int(local.timestamp())
    row: dict[str, Any] = dict.fromkeys(RECEIVED_COLUMNS)
    row.update(
        image_id=n,
        received_at=local.astimezone(UTC),
        status="predicted",
        source_path=f"/in/IM{n}.dcm",
        stored_path=f"/in/processed/IM{n}.dcm",
        sop_uid=f"1.2.{n}.1",
        study_uid=f"1.2.{n}",
        patient_id=f"P{n}",
        accession=f"A{n}",
        study_date=local.date(),
        predicted_label="normal",
        p_normal=0.9,
        p_pneumonia=0.05,
        p_tuberculosis=0.05,
        abnormality_score=10,
        flagged=False,
        screened_at=local.astimezone(UTC) + timedelta(seconds=20),
        model_version="m1",
        model_trained=True,
        thresholds=THRESHOLDS,
    )
    row.update(values)
    return row


def flagged(local: datetime, *, p_tb: float, p_pn: float, **values: Any) -> dict[str, Any]:
    label = "tuberculosis" if p_tb >= p_pn else "pneumonia"
    return received(
        local,
        predicted_label=label,
        p_tuberculosis=p_tb,
        p_pneumonia=p_pn,
        p_normal=1 - p_tb - p_pn,
        abnormality_score=round(100 * (p_tb + p_pn)),
        flagged=True,
        **values,
    )


def rejected(local: datetime, reason: str) -> dict[str, Any]:
    return received(
        local,
        status="rejected",
        reject_reason=reason,
        sop_uid=None,
        study_uid=None,
        patient_id=None,
        accession=None,
        study_date=None,
        predicted_label=None,
        p_normal=None,
        p_pneumonia=None,
        p_tuberculosis=None,
        abnormality_score=None,
        flagged=None,
        screened_at=None,
        model_version=None,
        model_trained=None,
        thresholds=None,
    )


def at(day: date, hh: int, mm: int, ss: int = 0, tz: ZoneInfo = NAIROBI) -> datetime:
    return datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=tz)


def summarise(rows: list[dict[str, Any]], *, day: date = DAY, tz: ZoneInfo = NAIROBI):
    frame = pd.DataFrame(rows, columns=list(RECEIVED_COLUMNS))
    now = datetime(2026, 11, 26, 6, 0, tzinfo=tz)
    return summarise_day(frame, day=day, tz=tz, generated_at=now)


def busy_day() -> list[dict[str, Any]]:
    return [
        received(at(DAY, 0, 0)),  # first second of the day
        received(at(DAY, 9, 15)),
        flagged(at(DAY, 10, 0), p_tb=0.55, p_pn=0.10),  # score 65
        flagged(at(DAY, 11, 0), p_tb=0.05, p_pn=0.85),  # score 90
        flagged(at(DAY, 23, 59, 59), p_tb=0.70, p_pn=0.20),  # score 90, more TB: first
        rejected(at(DAY, 12, 0), "not_chest"),
        rejected(at(DAY, 13, 0), "not_chest"),
        rejected(at(DAY, 14, 0), "truncated"),
        received(at(DAY, 15, 0), status="queued", predicted_label=None, flagged=None,
                 p_tuberculosis=None, p_pneumonia=None, screened_at=None, model_version=None),
        received(at(DAY - timedelta(days=1), 23, 59, 59)),  # yesterday, local
        flagged(at(DAY + timedelta(days=1), 0, 0), p_tb=0.9, p_pn=0.05),  # tomorrow, local
        flagged(at(DAY - timedelta(days=3), 8, 0), p_tb=0.9, p_pn=0.05),
    ]  # fmt: skip


class TestSummariseDay:
    def test_totals_count_only_files_received_on_the_local_day(self):
        s = summarise(busy_day())
        assert (s.files_received, s.screened, s.rejected, s.pending, s.flagged) == (9, 5, 3, 1, 3)
        assert s.studies_received == 6  # files rejected at ingest belong to no study
        assert s.reject_reasons == {"not_chest": 2, "truncated": 1}
        assert s.labels == {"normal": 2, "pneumonia": 1, "tuberculosis": 2}

    def test_a_file_at_2359_local_belongs_to_that_day_although_it_is_the_next_day_in_utc(self):
        late = at(DAY, 23, 59)
        assert late.astimezone(UTC).date() == DAY  # Nairobi is ahead of UTC ...
        early = at(DAY, 0, 30)
        assert early.astimezone(UTC).date() == DAY - timedelta(days=1)  # ... so this is the edge
        s = summarise([received(late), received(early)])
        assert s.files_received == 2
        assert s.hourly_received[0] == 1
        assert s.hourly_received[23] == 1

    def test_flagged_list_is_sorted_by_urgency(self):
        s = summarise(busy_day())
        assert [(f.abnormality_score, f.p_tuberculosis) for f in s.flagged_images] == [
            (90, 0.70),
            (90, 0.05),
            (65, 0.55),
        ]
        first = s.flagged_images[0]
        assert first.threshold_tuberculosis == 0.4
        assert first.threshold_pneumonia == 0.5
        assert first.received_local.hour == 23
        assert first.image_link.startswith("file:///")

    def test_seven_day_trend_ends_with_the_day(self):
        s = summarise(busy_day())
        assert [t.day for t in s.trend] == [DAY - timedelta(days=k) for k in range(6, -1, -1)]
        assert [t.received for t in s.trend] == [0, 0, 0, 1, 0, 1, 9]
        assert s.trend[-1].flag_rate == pytest.approx(3 / 5)
        assert s.trend[0].flag_rate is None

    def test_empty_day_is_a_valid_summary(self):
        s = summarise([])
        assert s.is_empty
        assert not s.flagged_images
        assert not s.models
        assert (s.files_received, s.screened, s.rejected, s.pending, s.flagged) == (0, 0, 0, 0, 0)
        assert len(s.trend) == 7
        assert sum(s.hourly_received) == 0

    def test_models_and_thresholds_in_force_are_reported(self):
        rows = [
            received(at(DAY, 8, 0)),
            received(at(DAY, 9, 0), model_version="m2", thresholds={"tuberculosis": 0.3}),
        ]
        s = summarise(rows)
        assert [(m.version, m.thresholds, m.images) for m in s.models] == [
            ("m1", THRESHOLDS, 1),
            ("m2", {"tuberculosis": 0.3}, 1),
        ]
        assert s.thresholds("tuberculosis") == [0.3, 0.4]

    def test_untrained_model_is_reported(self):
        s = summarise([received(at(DAY, 8, 0), model_trained=False, thresholds={})])
        assert s.untrained


class TestDayWindow:
    @pytest.mark.parametrize(
        ("day", "hours"),
        [(date(2026, 3, 8), 23), (date(2026, 11, 1), 25), (date(2026, 6, 1), 24)],
    )
    def test_daylight_saving_days_have_23_or_25_hours(self, day, hours):
        tz = ZoneInfo("America/New_York")
        start, end = day_window(day, tz)
        assert (end - start) == timedelta(hours=hours)
        assert start.astimezone(tz).date() == day
        assert end.astimezone(tz).date() == day + timedelta(days=1)


class TestPreviousDay:
    def test_yesterday_is_taken_in_the_site_time_zone(self):
        now = datetime(2026, 11, 25, 22, 30, tzinfo=UTC)  # 01:30 on the 26th in Nairobi
        assert previous_day(NAIROBI, now) == date(2026, 11, 25)
        assert previous_day(ZoneInfo("UTC"), now) == date(2026, 11, 24)


class TestImageLink:
    def test_default_is_a_file_link_to_the_stored_dicom(self):
        link = image_link(
            "", stored_path="/data/processed/a b.dcm", source_path="x", study_uid=1, sop_uid=2
        )
        assert link == "file:///data/processed/a%20b.dcm"

    def test_relative_stored_path_points_into_the_shared_storage(self):
        link = image_link(
            "",
            stored_path="processed/1.2/3.4.dcm",
            source_path="x",
            study_uid=1,
            sop_uid=2,
            storage_root=Path("/mnt/pulmo"),
        )
        assert link == "file:///mnt/pulmo/processed/1.2/3.4.dcm"

    def test_template_gets_url_quoted_uids(self):
        link = image_link(
            "https://pacs/view?study={study_uid}&sop={sop_uid}",
            stored_path=None,
            source_path="/x.dcm",
            study_uid="1.2&3",
            sop_uid="4.5",
        )
        assert link == "https://pacs/view?study=1.2%263&sop=4.5"


@pytest.fixture(scope="module")
def busy() -> DailySummary:
    return summarise(busy_day())


@pytest.fixture(scope="module")
def busy_charts(busy) -> dict[str, bytes]:
    return render_charts(busy)


@pytest.fixture(scope="module")
def empty() -> DailySummary:
    return summarise([])


@pytest.fixture(scope="module")
def empty_charts(empty) -> dict[str, bytes]:
    return render_charts(empty)


class TestCharts:
    @pytest.mark.parametrize("charts", ["busy_charts", "empty_charts"])
    def test_every_chart_renders_a_png(self, request, charts):
        rendered = request.getfixturevalue(charts)
        assert set(rendered) == {key for key, *_ in CHARTS}
        for png in rendered.values():
            assert png.startswith(PNG_MAGIC)
            assert len(png) > 5_000


class TestRenderHtml:
    def test_shows_flagged_patients_in_order_with_charts_embedded(self, busy, busy_charts):
        page = render_html(busy, busy_charts)
        ids = [f.patient_id for f in busy.flagged_images]
        positions = [page.index(f"<strong>{pid}</strong>") for pid in ids]
        assert positions == sorted(positions)
        assert page.count("data:image/png;base64,") == len(CHARTS)
        assert 'name="viewport"' in page
        assert "@media print" in page
        assert "No studies were received" not in page

    def test_header_values_are_escaped(self, busy_charts):
        rows = [flagged(at(DAY, 10, 0), p_tb=0.6, p_pn=0.1, patient_id="<script>x()</script>")]
        page = render_html(summarise(rows), busy_charts)
        assert "<script>x()" not in page
        assert "&lt;script&gt;x()&lt;/script&gt;" in page

    def test_empty_day_says_so(self, empty, empty_charts):
        page = render_html(empty, empty_charts)
        assert "No studies were received on this day" in page
        assert "No patient was flagged on this day" in page

    def test_untrained_model_warning(self, busy_charts):
        s = summarise([received(at(DAY, 8, 0), model_trained=False, thresholds={})])
        assert "UNTRAINED MODEL" in render_html(s, busy_charts)


class TestFlaggedCsv:
    def test_utf8_rows_in_urgency_order(self, tmp_path):
        rows = [
            flagged(at(DAY, 10, 0), p_tb=0.6, p_pn=0.1, patient_id="Ngozi Ọkọ́nkwọ́"),
            flagged(at(DAY, 11, 0), p_tb=0.1, p_pn=0.8, patient_id="=HYPERLINK(1)"),
        ]
        path = tmp_path / "flagged.csv"
        write_flagged_csv(summarise(rows), path)
        table = pd.read_csv(path, encoding="utf-8", dtype=str)
        assert list(table["patient_id"]) == ["'=HYPERLINK(1)", "Ngozi Ọkọ́nkwọ́"]
        assert list(table["rank"]) == ["1", "2"]
        assert table.loc[0, "threshold_pneumonia"] == "0.5000"
        assert not path.read_bytes().startswith(b"\xef\xbb\xbf")  # plain UTF-8, no BOM

    def test_empty_day_has_only_the_header(self, tmp_path):
        path = tmp_path / "flagged.csv"
        write_flagged_csv(summarise([]), path)
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("rank,patient_id,accession")


class TestWritePdf:
    @pytest.mark.parametrize("n_flagged", [0, ROWS_PER_PAGE + 1])
    def test_page_count(self, tmp_path, busy_charts, n_flagged):
        from pypdf import PdfReader

        rows = [
            flagged(at(DAY, 0, 0) + timedelta(minutes=i), p_tb=0.5, p_pn=0.1)
            for i in range(n_flagged)
        ]
        s = summarise(rows)
        path = tmp_path / "summary.pdf"
        pages = write_pdf(s, path, busy_charts)
        reader = PdfReader(io.BytesIO(path.read_bytes()))
        assert len(reader.pages) == pages == page_count(s) == 1 + max(1, -(-n_flagged // 22)) + 4

    def test_header_text_is_printed_as_written_never_as_mathtext(self, tmp_path, busy_charts):
        """A PatientID or file name with '$' (mathtext to matplotlib) must not stop the PDF."""
        from pypdf import PdfReader

        odd = r"$\foo$ x$^2"
        rows = [
            flagged(at(DAY, 1, 0), p_tb=0.6, p_pn=0.1, patient_id=odd, accession="A$1"),
            flagged(at(DAY, 2, 0), p_tb=0.6, p_pn=0.1, source_path="in/$\\bad{$.dcm"),
        ]
        path = tmp_path / "summary.pdf"
        write_pdf(summarise(rows), path, busy_charts)
        text = PdfReader(io.BytesIO(path.read_bytes())).pages[1].extract_text()
        assert odd in text


class TestReportSettings:
    def test_unknown_time_zone_is_refused(self):
        with pytest.raises(ValidationError, match="time zone"):
            Settings(site_timezone="Mars/Olympus_Mons")

    def test_report_time_must_be_a_clock_time(self):
        with pytest.raises(ValidationError, match="HH:MM"):
            Settings(report_time="late")
        assert Settings(report_time="23:45").report_clock().minute == 45


class TestReportApp:
    def test_nightly_job_is_scheduled_at_the_local_report_time_on_its_own_queue(self):
        from reporting.app import REPORT_TASK, REPORTS_QUEUE, SCHEDULE_NAME, create_app

        app = create_app(
            Settings(site_timezone="Asia/Kolkata", report_time="01:30", data_dir=Path("x"))
        )
        entry = app.conf.beat_schedule[SCHEDULE_NAME]
        assert entry["task"] == REPORT_TASK
        assert entry["options"]["queue"] == REPORTS_QUEUE
        assert entry["schedule"].hour == {1}
        assert entry["schedule"].minute == {30}
        assert str(app.conf.timezone) == "Asia/Kolkata"
        assert REPORT_TASK in app.tasks
        assert [q.name for q in app.conf.task_queues] == [REPORTS_QUEUE]

    def test_a_database_outage_is_retried_for_about_an_hour(self):
        from reporting.app import REPORT_TASK, create_app

        task = create_app(Settings(data_dir=Path("x"))).tasks[REPORT_TASK]
        waits = [min(600, 30 * 2**n) for n in range(task.max_retries)]
        assert task.retry_backoff_max == 600
        assert task.retry_jitter is False
        assert sum(waits) >= 3600
