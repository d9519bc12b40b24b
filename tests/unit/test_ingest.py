import json
import os
import time

import pytest
from sqlalchemy import func, select

from ingest import Ingestor, StabilityTracker, iter_candidates
from pulmoscreen.db import Image, Study, session_factory
from tests.factories import make_cxr_dicom


@pytest.fixture
def drop(tmp_path):
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def sent():
    return []


@pytest.fixture
def ingestor(drop, sqlite_url, sent):
    return Ingestor(
        drop, sessions=session_factory(sqlite_url), enqueue=sent.extend, stable_seconds=0
    )


def rows(ingestor):
    with ingestor.sessions() as session:
        return list(session.scalars(select(Image).order_by(Image.id)))


class TestScan:
    def test_accepts_queues_and_moves(self, drop, ingestor, sent):
        make_cxr_dicom(drop / "PAT1" / "STUDY1", seed=1, filename="IM0001")
        make_cxr_dicom(drop, seed=2)
        outcomes = ingestor.scan_once()
        assert [o.status for o in outcomes] == ["queued", "queued"]
        assert sorted(sent) == sorted(o.image_id for o in outcomes)
        stored = [r.stored_path for r in rows(ingestor)]
        assert all("/processed/" in s and os.path.exists(s) for s in stored)
        assert not list(drop.rglob("IM0001"))

    def test_bad_files_are_quarantined_with_reason_and_sidecar(self, drop, ingestor, sent):
        (drop / "report.dcm").write_text("not dicom")
        (drop / "empty.dcm").write_bytes(b"")
        make_cxr_dicom(drop, seed=3, filename="lateral.dcm", ViewPosition="LL")
        outcomes = ingestor.scan_once()
        assert sorted(o.reason for o in outcomes) == ["not_dicom", "not_frontal", "truncated"]
        assert sent == []
        sidecars = sorted((drop / "quarantine").glob("*.reason.json"))
        assert sorted(json.loads(p.read_text())["reason"] for p in sidecars) == [
            "not_dicom",
            "not_frontal",
            "truncated",
        ]
        assert all(r.status == "rejected" and r.reject_detail for r in rows(ingestor))

    def test_rescan_adds_nothing(self, drop, ingestor, sent):
        make_cxr_dicom(drop, seed=4)
        (drop / "junk.dcm").write_text("junk")
        ingestor.scan_once()
        before = len(rows(ingestor))
        assert ingestor.scan_once() == []
        assert len(rows(ingestor)) == before
        assert len(sent) == 1

    def test_same_sop_twice_is_processed_once(self, drop, ingestor, sent):
        make_cxr_dicom(drop, seed=5, filename="a.dcm")
        ingestor.scan_once()
        make_cxr_dicom(drop, seed=5, filename="again.dcm")
        [outcome] = ingestor.scan_once()
        assert outcome.reason == "duplicate"
        assert len(sent) == 1
        with ingestor.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Study)) == 1

    def test_ignores_partial_hidden_and_own_folders(self, drop, ingestor):
        make_cxr_dicom(drop, seed=6, filename="copying.dcm.part")
        make_cxr_dicom(drop, seed=7, filename=".hidden.dcm")
        make_cxr_dicom(drop / "processed", seed=8)
        make_cxr_dicom(drop / "quarantine", seed=9)
        assert ingestor.scan_once() == []

    def test_symlink_is_quarantined_not_followed(self, drop, ingestor, tmp_path):
        target = make_cxr_dicom(tmp_path / "outside", seed=10)
        (drop / "link.dcm").symlink_to(target)
        [outcome] = ingestor.scan_once()
        assert outcome.reason == "unreadable"
        assert target.exists()  # the file outside the drop folder is untouched

    def test_crash_between_commit_and_move_is_resumed(self, drop, ingestor, sent, monkeypatch):
        path = make_cxr_dicom(drop, seed=12)
        import ingest.service as service

        def crash(src, dest):
            raise KeyboardInterrupt

        monkeypatch.setattr(service, "move_file", crash)
        with pytest.raises(KeyboardInterrupt):
            ingestor.scan_once()
        monkeypatch.undo()
        assert path.exists()
        assert sent == []
        assert ingestor.recover() == 1  # the queued row is sent again on restart
        [outcome] = ingestor.scan_once()
        assert outcome.status == "queued"
        [row] = rows(ingestor)
        assert os.path.exists(row.stored_path)
        assert not path.exists()


class TestStabilityTracker:
    def test_growing_file_waits(self, tmp_path):
        path = tmp_path / "f.dcm"
        path.write_bytes(b"x" * 10)
        tracker = StabilityTracker(stable_seconds=5)
        assert not tracker.is_ready(path, now=100.0)
        assert not tracker.is_ready(path, now=103.0)
        path.write_bytes(b"x" * 20)
        assert not tracker.is_ready(path, now=106.0)  # changed: the clock restarts
        assert not tracker.is_ready(path, now=110.0)
        assert tracker.is_ready(path, now=111.5)

    def test_unready_file_is_not_ingested(self, drop, sqlite_url, sent):
        ingestor = Ingestor(
            drop, sessions=session_factory(sqlite_url), enqueue=sent.extend, stable_seconds=0.3
        )
        make_cxr_dicom(drop, seed=13)
        assert ingestor.scan_once() == []
        assert ingestor.tracker.waiting == 1
        time.sleep(0.35)
        assert [o.status for o in ingestor.scan_once()] == ["queued"]


class TestCandidates:
    def test_recursive_without_extension(self, drop):
        make_cxr_dicom(drop / "P" / "S" / "SE", seed=14, filename="IM0")
        (drop / "dir.dcm").mkdir()
        found = [p.relative_to(drop).as_posix() for p in iter_candidates(drop)]
        assert found == ["P/S/SE/IM0"]
