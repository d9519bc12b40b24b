"""The worker's rejection at decode: the row first, then the file (SQLite, no services)."""

from pathlib import Path

from sqlalchemy import select, update

from ingest import Ingestor
from pulmoscreen.db import Image, session_factory
from pulmoscreen.domain import RejectReason
from tests.factories import make_cxr_dicom
from worker.inference import _reject


def queued_image(tmp_path: Path, sqlite_url: str) -> tuple[object, int, Path]:
    drop = tmp_path / "inbox"
    make_cxr_dicom(drop, seed=31)
    sessions = session_factory(sqlite_url)
    [outcome] = Ingestor(
        drop, sessions=sessions, enqueue=lambda ids: None, stable_seconds=0
    ).scan_once()
    with sessions() as session:
        stored = Path(session.scalar(select(Image.stored_path).where(Image.id == outcome.image_id)))
    return sessions, outcome.image_id, stored


def reject(sessions, image_id: int, stored: Path) -> None:
    _reject(
        sessions, image_id, stored, "a.dcm", RejectReason.DECODE_FAILED, "bad", storage_root=None
    )


def row(sessions, image_id: int) -> Image:
    with sessions() as session:
        return session.get(Image, image_id)


class TestReject:
    def test_marks_then_quarantines_and_records_the_new_place(self, tmp_path, sqlite_url):
        sessions, image_id, stored = queued_image(tmp_path, sqlite_url)
        reject(sessions, image_id, stored)
        found = row(sessions, image_id)
        assert (found.status, found.reject_reason) == ("rejected", "decode_failed")
        assert "/quarantine/" in found.stored_path
        assert Path(found.stored_path).is_file()
        assert not stored.exists()

    def test_a_result_that_landed_first_keeps_its_file(self, tmp_path, sqlite_url):
        sessions, image_id, stored = queued_image(tmp_path, sqlite_url)
        with sessions.begin() as session:
            session.execute(update(Image).where(Image.id == image_id).values(status="predicted"))
        reject(sessions, image_id, stored)
        found = row(sessions, image_id)
        assert found.status == "predicted"
        assert Path(found.stored_path) == stored
        assert stored.is_file()
        assert not list((tmp_path / "inbox" / "quarantine").glob("*.dcm"))
