"""The invariant itself, on hand-made rows and files (no product processes): it holds on a
correct outcome, and names each kind of violation it exists to catch."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from pulmoscreen.db import Image, PredictionRow, Study, session_factory, upgrade_database
from tests.factories import add_model_row
from tests.faults.corpus import ABSENT, PREDICTED, Expected, sha256_bytes
from tests.faults.invariant import Verdict, check_outcomes
from tests.faults.services import PostgresCluster

pytestmark = [pytest.mark.faults]


class World:
    """A database, a drop folder, and helpers that put rows and files in them."""

    def __init__(self, url: str, drop: Path) -> None:
        self.url, self.drop = url, drop
        self.sessions = session_factory(url)
        self.expected: list[Expected] = []
        with self.sessions.begin() as session:
            self.model_id = add_model_row(session, version="m1")

    def file(
        self, name: str, *, patient: str = "P1", outcomes: Iterable[str] = (PREDICTED,)
    ) -> Expected:
        data = f"{name}-{patient}".encode()
        e = Expected(
            name=name,
            sha256=sha256_bytes(data),
            outcomes=frozenset(outcomes),
            sop_uid=f"1.{len(self.expected)}",
            study_uid=f"2.{len(self.expected)}",
            patient_id=patient,
        )
        self.expected.append(e)
        self._data = data
        return e

    def predicted(self, e: Expected, *, patient: str | None = None, predictions: int = 1) -> int:
        stored = self.drop / "processed" / e.study_uid / f"{e.sop_uid}.dcm"  # type: ignore[operator]
        stored.parent.mkdir(parents=True, exist_ok=True)
        stored.write_bytes(f"{e.name}-{e.patient_id}".encode())
        with self.sessions.begin() as session:
            study = Study(
                study_uid=e.study_uid, patient_id=patient or e.patient_id, status="screened"
            )
            session.add(study)
            session.flush()
            image = Image(
                sop_uid=e.sop_uid,
                study_id=study.id,
                source_path=e.name,
                stored_path=str(stored),
                sha256=e.sha256,
                status="predicted",
            )
            session.add(image)
            session.flush()
            for k in range(predictions):
                model_id = self.model_id if k == 0 else self._other_model(session)
                session.add(
                    PredictionRow(
                        image_id=image.id,
                        model_id=model_id,
                        p_normal=1.0,
                        p_pneumonia=0.0,
                        p_tuberculosis=0.0,
                        predicted_label="normal",
                        abnormality_score=0,
                        flagged=False,
                    )
                )
            return image.id

    def _other_model(self, session: Session) -> int:
        return add_model_row(session, version=uuid.uuid4().hex, active=False, sha="1")

    def rejected(self, e: Expected, reason: str, *, in_quarantine: bool = True) -> None:
        stored = self.drop / "quarantine" / e.name
        if in_quarantine:
            stored.parent.mkdir(parents=True, exist_ok=True)
            stored.write_bytes(f"{e.name}-{e.patient_id}".encode())
            stored.with_name(stored.name + ".reason.json").write_text(
                json.dumps({"reason": reason})
            )
        with self.sessions.begin() as session:
            session.add(
                Image(
                    source_path=e.name,
                    stored_path=str(stored),
                    sha256=e.sha256,
                    status="rejected",
                    reject_reason=reason,
                )
            )

    def check(self) -> Verdict:
        return check_outcomes(db_url=self.url, drop=self.drop, expected=self.expected)


@pytest.fixture
def world(fault_pg: PostgresCluster, tmp_path: Path) -> World:
    url = fault_pg.create_database(f"invariant_{uuid.uuid4().hex[:10]}")
    upgrade_database(url)
    return World(url, tmp_path / "inbox")


class TestCheckOutcomes:
    def test_holds_on_one_outcome_each(self, world):
        world.predicted(world.file("a.dcm"))
        world.rejected(world.file("b.dcm", outcomes={"not_dicom"}), "not_dicom")
        world.file("gone.dcm", outcomes={ABSENT})
        verdict = world.check()
        assert verdict.ok, verdict.summary()

    def test_a_file_without_a_row_is_lost(self, world):
        world.predicted(world.file("a.dcm"))
        world.file("b.dcm")
        verdict = world.check()
        assert (verdict.lost, verdict.duplicated) == (1, 0), verdict.summary()

    def test_a_heatmap_beside_processed_is_no_file_left_waiting(self, world):
        world.predicted(world.file("a.dcm"))
        heatmap = world.drop / "heatmaps" / "000000" / "1-m1.png"
        heatmap.parent.mkdir(parents=True)
        heatmap.write_bytes(b"png")
        verdict = world.check()
        assert verdict.ok, verdict.summary()

    def test_two_predictions_are_duplicated(self, world):
        world.predicted(world.file("a.dcm"), predictions=2)
        verdict = world.check()
        assert verdict.duplicated == 1, verdict.summary()

    def test_another_patient_is_misattributed(self, world):
        world.predicted(world.file("a.dcm", patient="P1"), patient="P2")
        verdict = world.check()
        assert verdict.misattributed == 1, verdict.summary()

    def test_a_rejection_without_its_file_in_quarantine_is_lost(self, world):
        world.rejected(
            world.file("b.dcm", outcomes={"truncated"}), "truncated", in_quarantine=False
        )
        verdict = world.check()
        assert verdict.lost == 1, verdict.summary()

    def test_a_row_for_a_deleted_file_is_a_violation(self, world):
        world.rejected(world.file("b.dcm", outcomes={ABSENT}), "truncated")
        verdict = world.check()
        assert not verdict.ok, verdict.summary()

    def test_report_counts_must_equal_the_database(self, world):
        world.predicted(world.file("a.dcm"))
        with world.sessions.begin() as session:
            day = session.scalar(
                text("SELECT CAST(max(created_at) AT TIME ZONE 'UTC' AS DATE) FROM images")
            )
            session.execute(
                text(
                    "INSERT INTO reports (report_date, site_timezone, generated_at, "
                    "duration_seconds, out_dir, html_path, pdf_path, csv_path, files_received, "
                    "studies_received, screened, rejected, pending, flagged, model_versions) "
                    "VALUES (:d, 'UTC', now(), 0, '', '', '', '', 2, 1, 1, 0, 0, 0, '[]')"
                ),
                {"d": day},
            )
        verdict = check_outcomes(
            db_url=world.url,
            drop=world.drop,
            expected=world.expected,
            report=lambda day: (0, "", None),
        )
        assert verdict.problems == [f"other: report of {day}: files_received 2, database 1"]
