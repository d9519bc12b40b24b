"""``pulmoscreen send`` on the real PostgreSQL: claims, retries, and C-STORE to a test PACS."""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import select, update

from pulmoscreen.db import Image, session_factory
from pulmoscreen.db.deliveries import claim_due, mark_sent, record_delivery
from pulmoscreen.db.schema import DeliveryRow, HeatmapRow, PredictionRow
from tests.dicom_results import StorageSCP, dciodvfy_errors
from tests.dicom_scu import free_port
from tests.integration.conftest import ROOT, pulmo_env, wait_until
from tests.seeding import Seeder, add_model

pytestmark = pytest.mark.integration
TB = {"normal": 0.1, "pneumonia": 0.1, "tuberculosis": 0.8}
CALM = {"normal": 0.9, "pneumonia": 0.05, "tuberculosis": 0.05}


def seed_screened(url: str, folder: Path, probs_list: list[dict[str, float]]) -> list[int]:
    """Screened images whose stored file is a copy of RG1 under its own UIDs; flagged ones
    get a heatmap PNG and row as the worker writes them. Returns the prediction ids."""
    from pulmoscreen.model.explain import heatmap_png

    folder.mkdir(parents=True, exist_ok=True)
    factory = session_factory(url)
    ids = []
    with factory.begin() as session:
        seeder = Seeder(add_model(session))
        for n, probs in enumerate(probs_list):
            image_id = seeder.screened(session, datetime.now(UTC), probs)
            image = session.get(Image, image_id)
            assert image is not None
            assert image.study is not None
            ds = dcmread(get_testdata_file("RG1_UNCR.dcm"))
            ds.StudyInstanceUID, ds.SOPInstanceUID = image.study.study_uid, image.sop_uid
            image.stored_path = str(folder / f"IM{n}.dcm")
            ds.save_as(image.stored_path)
            prediction = session.scalars(
                select(PredictionRow).where(PredictionRow.image_id == image_id)
            ).one()
            ids.append(prediction.id)
            if prediction.flagged:
                import numpy as np

                png = folder / f"heat{n}.png"
                hot = np.zeros((32, 32), np.float32)
                hot[8:20, 10:24] = 1.0
                png.write_bytes(heatmap_png(hot))
                session.add(HeatmapRow(image_id=image_id, prediction_id=prediction.id,
                                       label="tuberculosis", path=str(png)))  # fmt: skip
    return ids


def deliveries(url: str) -> list[DeliveryRow]:
    with session_factory(url)() as session:
        return list(session.scalars(select(DeliveryRow).order_by(DeliveryRow.id)))


class TestClaimDue:
    def test_two_senders_racing_never_claim_one_row_twice(self, pg_url, tmp_path):
        prediction_ids = seed_screened(pg_url, tmp_path / "src", [CALM] * 30)
        factory = session_factory(pg_url)
        with factory.begin() as session:
            for pid in prediction_ids:
                record_delivery(session, image_id=1, prediction_id=pid, kind="sr",
                                path=f"/x/{pid}.dcm", sop_uid=f"1.2.{pid}")  # fmt: skip
        claims: dict[str, list[int]] = {"a": [], "b": []}
        start = threading.Barrier(2)

        def sender(name: str) -> None:
            start.wait()
            while True:
                with factory.begin() as session:
                    got = claim_due(session, sender=name, lease_seconds=300, limit=3)
                    mark_sent(session, [c.id for c in got], sender=name)
                if not got:
                    return
                claims[name] += [c.id for c in got]

        threads = [threading.Thread(target=sender, args=(n,)) for n in claims]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        both = claims["a"] + claims["b"]
        assert sorted(both) == sorted(set(both))  # nobody sent a row twice
        assert len(both) == 30
        assert all(row.status == "sent" for row in deliveries(pg_url))

    def test_a_held_row_is_skipped_until_its_lease_lapses(self, pg_url, tmp_path):
        (pid,) = seed_screened(pg_url, tmp_path / "src", [CALM])
        factory = session_factory(pg_url)
        with factory.begin() as session:
            record_delivery(session, image_id=1, prediction_id=pid, kind="sr", path="/x",
                            sop_uid="1.2.3")  # fmt: skip
            assert len(claim_due(session, sender="dead", lease_seconds=300)) == 1
        with factory.begin() as session:
            assert claim_due(session, sender="other", lease_seconds=300) == []
            session.execute(
                update(DeliveryRow).values(claimed_until=datetime(2000, 1, 1, tzinfo=UTC))
            )
        with factory.begin() as session:
            assert [c.kind for c in claim_due(session, sender="other", lease_seconds=300)] == ["sr"]


def retried_all(url: str, count: int) -> bool:
    rows = deliveries(url)
    return len(rows) == count and all(row.attempts >= 2 for row in rows)


def start_sender(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pulmoscreen.cli", "send"],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


class TestSend:
    def test_nothing_listening_keeps_rows_pending_then_they_arrive(self, pg_url, tmp_path):
        seed_screened(pg_url, tmp_path / "src", [TB, CALM])
        port = free_port()
        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_OUTBOX_DIR=str(tmp_path / "outbox"),
            PULMO_DESTINATION_HOST="127.0.0.1",
            PULMO_DESTINATION_PORT=str(port),
            PULMO_DESTINATION_AE_TITLE="TEST-PACS",
            PULMO_SEND_RETRY_SECONDS="0.5",
            PULMO_SEND_RETRY_MAX_SECONDS="1",
            PULMO_SEND_INTERVAL="0.2",
        )
        log = tmp_path / "send.log"
        sender = start_sender(env, log)
        scp = StorageSCP(port)
        try:
            wait_until(lambda: retried_all(pg_url, 3), timeout=90, what="retries", logs=[log])
            rows = deliveries(pg_url)
            assert sorted(r.kind for r in rows) == ["sc", "sr", "sr"]
            assert all(r.status == "pending" and r.sent_at is None for r in rows)
            assert all("association" in (r.last_error or "") for r in rows)
            assert all(r.next_attempt_at is not None for r in rows)
            scp.start()
            wait_until(lambda: all(r.status == "sent" for r in deliveries(pg_url)), timeout=60,
                       what="every delivery sent", logs=[log])  # fmt: skip
        finally:
            sender.terminate()
            sender.wait(timeout=30)
            scp.stop()
        assert sorted(ds.Modality for ds in scp.received) == ["OT", "SR", "SR"]
        for path in scp.save_all(tmp_path / "received"):
            assert dciodvfy_errors(path) == []
        sent_uids = {r.sop_uid for r in deliveries(pg_url)}
        assert {str(ds.SOPInstanceUID) for ds in scp.received} == sent_uids
        # no header value in the logs: RG1's PatientID, nor the seeded UIDs
        log_text = log.read_text()
        source = dcmread(get_testdata_file("RG1_UNCR.dcm"))
        assert str(source.PatientID) not in log_text
        assert "CompressedSamples" not in log_text
        assert "1.2.826.0.1.3680043.8.498" not in log_text

    def test_without_a_destination_results_are_only_written(self, pg_url, tmp_path):
        seed_screened(pg_url, tmp_path / "src", [TB])
        outbox = tmp_path / "outbox"
        env = pulmo_env(PULMO_DATABASE_URL=pg_url, PULMO_OUTBOX_DIR=str(outbox))
        done = subprocess.run(
            [sys.executable, "-m", "pulmoscreen.cli", "send", "--once"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        rows = deliveries(pg_url)
        assert sorted(r.kind for r in rows) == ["sc", "sr"]
        assert all(r.status == "pending" and r.attempts == 0 for r in rows)
        for row in rows:
            path = Path(row.path)
            assert path.parent.parent == outbox
            assert dcmread(path).SOPInstanceUID == row.sop_uid
            assert dciodvfy_errors(path) == []
        assert not list(outbox.rglob(".partial-*"))
