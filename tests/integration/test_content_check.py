"""The content check's refusals on PostgreSQL: coded, scored, and counted by the report and
the ``daily_summary`` view like every other rejection."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from pulmoscreen.config import Settings
from pulmoscreen.db import session_factory
from reporting.service import run_report
from tests.unit.test_content_check import checked_model, ingest_three  # noqa: F401
from worker.inference import predict_images

pytestmark = pytest.mark.integration


class TestContentRefusalsCounted:
    def test_report_and_daily_summary_count_not_chest_content(
        self,
        pg_url,
        tmp_path,
        checked_model,  # noqa: F811
    ):
        ids = ingest_three(tmp_path / "inbox", pg_url)
        settings = Settings(
            database_url=pg_url,
            model_path=checked_model,
            openvino_cache=tmp_path / "ov",
            report_dir=tmp_path / "reports",
            data_dir=tmp_path,
        )
        predict_images(settings, ids, worker="w")
        today = datetime.now(UTC).date()
        summary = run_report(settings, day=today).summary
        assert summary.reject_reasons == {"not_chest_content": 1}
        with session_factory(pg_url)() as session:
            rejected, screened = session.execute(
                text("SELECT rejected, screened FROM daily_summary WHERE received_date = :d"),
                {"d": today},
            ).one()
            scores = session.execute(
                text("SELECT status, content_score FROM images ORDER BY id")
            ).all()
        assert (rejected, screened) == (1, 2)
        assert all(score is not None for _, score in scores)
        assert {status for status, score in scores if score >= 1.0} == {"rejected"}
