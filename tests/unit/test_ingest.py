import json
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ingest import Ingestor, StabilityTracker, iter_candidates
from pulmoscreen.db import Image, Study, queries, session_factory
from tests.factories import make_cxr_dicom


@pytest.fixture
def ingestor(drop, sqlite_url, sent):
    return Ingestor(
        drop, sessions=session_factory(sqlite_url), enqueue=sent.extend, stable_seconds=0
    )


def interrupted_at(monkeypatch, attribute: str, call) -> None:
    """Run ``call`` with ``pulmoscreen.quarantine.<attribute>`` stopping it as a kill would."""
    import pulmoscreen.quarantine as quarantine

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(quarantine, attribute, killed)
    with pytest.raises(KeyboardInterrupt):
        call()
    monkeypatch.undo()


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

    def test_one_study_under_two_patients_is_quarantined_not_misattributed(
        self, drop, ingestor, sent
    ):
        """The second file's PatientID differs from the study's: it must not be listed under
        the first patient; it is quarantined with a reason that names no patient."""
        study = "1.2.826.0.1.3680043.8.498.4242"
        make_cxr_dicom(drop, seed=40, filename="a.dcm", StudyInstanceUID=study, PatientID="PAT-A")
        [first] = ingestor.scan_once()
        make_cxr_dicom(drop, seed=41, filename="b.dcm", StudyInstanceUID=study, PatientID="PAT-B")
        [second] = ingestor.scan_once()
        assert first.status == "queued"
        assert (second.status, second.reason) == ("rejected", "patient_mismatch")
        assert sent == [first.image_id]
        rejected = rows(ingestor)[-1]
        assert rejected.study_id is None
        assert "PAT-" not in rejected.reject_detail
        assert "/quarantine/" in (rejected.stored_path or "")
        with ingestor.sessions() as session:
            assert session.scalar(select(func.count()).select_from(Study)) == 1
        # the same PatientID again joins the study
        make_cxr_dicom(drop, seed=42, filename="c.dcm", StudyInstanceUID=study, PatientID="PAT-A")
        [third] = ingestor.scan_once()
        assert third.status == "queued"

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

        def crash(src, dest, **_):
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

    def test_crash_between_the_rejection_row_and_the_move_is_finished_once(
        self, drop, ingestor, monkeypatch
    ):
        (drop / "junk.dcm").write_text("not dicom")
        interrupted_at(monkeypatch, "quarantine_file", ingestor.scan_once)
        [row] = rows(ingestor)
        assert (row.status, row.reject_reason) == ("rejected", "not_dicom")
        assert row.stored_path.endswith("junk.dcm")  # names where the file still is
        [outcome] = ingestor.scan_once()
        assert outcome.image_id == row.id
        [row] = rows(ingestor)
        assert "/quarantine/" in row.stored_path
        assert os.path.exists(row.stored_path)
        assert not (drop / "junk.dcm").exists()


class TestLinksOutOfTheDropFolder:
    def test_a_linked_processed_folder_is_refused_and_nothing_leaves(
        self, drop, ingestor, tmp_path
    ):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (drop / "processed").symlink_to(elsewhere, target_is_directory=True)
        make_cxr_dicom(drop, seed=70, filename="a.dcm")
        with pytest.raises(OSError, match="symbolic link"):
            ingestor.scan_once()
        assert (drop / "a.dcm").is_file()
        assert not any(elsewhere.iterdir())

    def test_the_watch_loop_outlives_a_linked_processed_folder(self, drop, ingestor, tmp_path):
        """The operator's mistake stops the moves, not the service: once the link is gone,
        the waiting file is taken."""
        import threading

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (drop / "processed").symlink_to(elsewhere, target_is_directory=True)
        make_cxr_dicom(drop, seed=73, filename="a.dcm")
        stop = threading.Event()
        errors: list[BaseException] = []

        def watch() -> None:
            try:
                ingestor.watch(stop, poll_interval=0.1)
            except BaseException as exc:  # the loop must not end by itself
                errors.append(exc)

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive(), errors
        assert (drop / "a.dcm").is_file()
        (drop / "processed").unlink()
        deadline = time.monotonic() + 20
        while (drop / "a.dcm").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        thread.join(timeout=10)
        assert errors == []
        assert not (drop / "a.dcm").exists()
        assert list((drop / "processed").rglob("*.dcm"))
        assert not any(elsewhere.iterdir())

    def test_a_link_planted_on_the_way_keeps_the_file_and_the_scan_going(
        self, drop, ingestor, tmp_path, sent
    ):
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        first = make_cxr_dicom(drop, seed=71, filename="a.dcm", StudyInstanceUID="1.2.3.71")
        (drop / "processed").mkdir()
        (drop / "processed" / "1.2.3.71").symlink_to(elsewhere, target_is_directory=True)
        make_cxr_dicom(drop, seed=72, filename="b.dcm")
        outcomes = ingestor.scan_once()
        assert first.is_file()
        assert not any(elsewhere.iterdir())
        assert [o.status for o in outcomes] == ["queued"]  # b.dcm; a.dcm waits
        assert len(sent) == 1


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


def tree(folder):
    """Every path under ``folder`` (as bytes, so any name compares)."""
    return sorted(os.fsencode(p) for p in folder.rglob("*"))


def only_drop_folder_and_database(tmp_path):
    return {p.name for p in tmp_path.iterdir() if not p.name.startswith("pulmo.db")} == {"inbox"}


class TestUntrustedNames:
    """Whatever a file is called, it ends queued or quarantined, and only inside the drop folder."""

    def test_unicode_and_spaces(self, drop, ingestor, sent):
        make_cxr_dicom(drop / "PATIENT Ä Ö" / "STUDY 1", seed=20, filename="Ünïcødé 患者 01.dcm")
        (drop / "résumé notes.dcm").write_text("not an image")
        outcomes = {o.status: o for o in ingestor.scan_once()}
        assert set(outcomes) == {"queued", "rejected"}
        by_status = {r.status: r for r in rows(ingestor)}
        assert by_status["queued"].source_path == "PATIENT Ä Ö/STUDY 1/Ünïcødé 患者 01.dcm"
        [sidecar] = (drop / "quarantine").glob("*.reason.json")
        assert json.loads(sidecar.read_text())["source"] == "résumé notes.dcm"
        assert len(sent) == 1

    def test_name_that_is_not_utf8(self, drop, ingestor, sent):
        good = make_cxr_dicom(drop, seed=21, filename="tmp.dcm")
        odd = os.path.join(os.fsencode(drop), b"scan \xff\xfe.dcm")
        os.rename(good, odd)
        [outcome] = ingestor.scan_once()
        assert outcome.status == "queued"
        assert rows(ingestor)[0].source_path == "scan \\xff\\xfe.dcm"
        assert not os.path.exists(odd)

    def test_separators_and_dots_in_a_name_stay_in_quarantine(self, drop, ingestor, tmp_path):
        (drop / "evil\\..\\..\\x.dcm").write_text("junk")
        (drop / "x .. ~1.dcm").write_text("junk")
        outcomes = ingestor.scan_once()
        assert [o.reason for o in outcomes] == ["not_dicom", "not_dicom"]
        quarantined = [p for p in (drop / "quarantine").iterdir() if p.suffix != ".json"]
        assert len(quarantined) == 2
        assert only_drop_folder_and_database(tmp_path)

    def test_header_uids_cannot_place_files_outside(self, drop, ingestor, tmp_path):
        make_cxr_dicom(drop, seed=22, SOPInstanceUID="../../../escape", StudyInstanceUID="../..")
        [outcome] = ingestor.scan_once()
        assert outcome.status == "queued"
        [row] = rows(ingestor)
        assert os.path.dirname(os.path.dirname(row.stored_path)) == str(drop / "processed")
        assert only_drop_folder_and_database(tmp_path)


class TestUntrustedFiles:
    def test_folders_named_like_files(self, drop, ingestor):
        make_cxr_dicom(drop / "series.dcm", seed=23, filename="IM1")
        make_cxr_dicom(drop / ".dcm", seed=24, filename="IM2")  # hidden: ignored
        [outcome] = ingestor.scan_once()
        assert outcome.status == "queued"
        assert rows(ingestor)[0].source_path == "series.dcm/IM1"
        assert (drop / ".dcm" / "IM2").exists()

    def test_zero_byte_and_cut_files_are_truncated_at_ingest(self, drop, ingestor, sent):
        (drop / "P" / "S").mkdir(parents=True)
        (drop / "P" / "S" / "zero").write_bytes(b"")
        cut = make_cxr_dicom(drop, seed=25, filename="cut.dcm")
        cut.write_bytes(cut.read_bytes()[:-100])
        assert [o.reason for o in ingestor.scan_once()] == ["truncated", "truncated"]
        assert sent == []  # neither reached the worker

    def test_header_that_lies_about_its_size(self, drop, ingestor, sent):
        make_cxr_dicom(drop, seed=26, filename="huge.dcm", Rows=65535, Columns=65535)
        make_cxr_dicom(drop, seed=27, filename="big.dcm", Rows=3000, Columns=3000)
        reasons = sorted(o.reason for o in ingestor.scan_once())
        assert reasons == ["decode_failed", "too_large"]
        assert sent == []

    def test_fifo_is_quarantined_not_read(self, drop, ingestor):
        os.mkfifo(drop / "pipe.dcm")
        [outcome] = ingestor.scan_once()  # would block forever if the pipe were opened for reading
        assert outcome.reason == "unreadable"
        assert not (drop / "pipe.dcm").exists()

    def test_linked_folder_is_not_entered(self, drop, ingestor, tmp_path, sent):
        outside = tmp_path / "outside"
        make_cxr_dicom(outside, seed=28, filename="IM1")
        (drop / "linked").symlink_to(outside, target_is_directory=True)
        before = tree(outside)
        [outcome] = ingestor.scan_once()
        assert outcome.reason == "unreadable"
        assert sent == []
        assert tree(outside) == before


class TestStoragePaths:
    def test_relative_to_the_storage_root_and_back(self, tmp_path):
        from pulmoscreen.storage import resolve_stored_path, to_stored_path

        root = tmp_path / "share"
        inside = root / "inbox" / "processed" / "a.dcm"
        assert to_stored_path(inside, root) == "inbox/processed/a.dcm"
        assert resolve_stored_path("inbox/processed/a.dcm", tmp_path / "mnt") == (
            tmp_path / "mnt" / "inbox" / "processed" / "a.dcm"
        )
        outside = tmp_path / "elsewhere" / "b.dcm"
        assert to_stored_path(outside, root) == str(outside)
        assert resolve_stored_path(str(outside), root) == outside
        assert to_stored_path(inside, None) == str(inside)


class TestResendLost:
    """A task lost with a killed worker is sent again once the queue has drained."""

    def make(self, drop, sqlite_url, sent, depth, **options):
        return Ingestor(
            drop,
            sessions=session_factory(sqlite_url),
            enqueue=sent.extend,
            stable_seconds=0,
            resend_after=0.2,
            queue_depth=lambda: depth[0],
            **options,
        )

    def test_resends_only_stale_images_with_the_queue_empty(self, drop, sqlite_url, sent):
        depth = [0]
        ingestor = self.make(drop, sqlite_url, sent, depth)
        make_cxr_dicom(drop, seed=1)
        make_cxr_dicom(drop, seed=2)
        first, second = (o.image_id for o in ingestor.scan_once())
        assert ingestor.resend_stale() == 0  # not stale yet
        time.sleep(0.3)
        depth[0] = 5
        assert ingestor.resend_stale() == 0  # a backlog: images are waiting, not lost
        depth[0] = 0
        with ingestor.sessions.begin() as session:
            session.get(Image, second).status = "predicted"
        sent.clear()
        assert ingestor.resend_stale() == 1
        assert sent == [first]
        assert ingestor.resend_stale() == 0  # claimed: waits a full period again
        time.sleep(0.3)
        assert ingestor.resend_stale() == 1
        assert sent == [first, first]

    def test_broker_down_skips_the_sweep(self, drop, sqlite_url, sent):
        def down():
            raise ConnectionError("broker unreachable")

        ingestor = Ingestor(
            drop,
            sessions=session_factory(sqlite_url),
            enqueue=sent.extend,
            stable_seconds=0,
            resend_after=0.01,
            queue_depth=down,
        )
        make_cxr_dicom(drop, seed=3)
        ingestor.scan_once()
        time.sleep(0.05)
        sent.clear()
        assert ingestor.resend_stale() == 0
        assert sent == []

    def test_off_without_a_period(self, drop, ingestor, sent):
        make_cxr_dicom(drop, seed=4)
        ingestor.scan_once()
        assert ingestor.resend_stale() == 0
        assert ingestor.maybe_resend_stale() == 0

    def test_lost_tasks_alone_never_reject_an_image(self, drop, sqlite_url, sent):
        # A task lost with a worker, a broker restart, a worker failing on its model: none is
        # the file's fault. Ingest re-sends, once a period; only the worker gives up, by its
        # counted attempts (tests/unit/test_worker_attempts.py).
        ingestor = self.make(drop, sqlite_url, sent, [0])
        make_cxr_dicom(drop, seed=5)
        (image_id,) = (o.image_id for o in ingestor.scan_once())
        sent.clear()
        for _ in range(5):
            time.sleep(0.3)
            assert ingestor.resend_stale() == 1
        assert sent == [image_id] * 5
        with ingestor.sessions() as session:
            image = session.get(Image, image_id)
            assert (image.status, image.reject_reason, image.resends) == ("queued", None, 5)
            assert Path(image.stored_path).is_file()


class TestBrokerDown:
    def test_a_send_that_fails_stops_no_scan_and_is_made_when_the_broker_is_back(
        self, drop, sqlite_url, sent
    ):
        up = [False]

        def enqueue(ids):
            if not up[0]:
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6379")
            sent.extend(ids)

        ingestor = Ingestor(
            drop,
            sessions=session_factory(sqlite_url),
            enqueue=enqueue,
            stable_seconds=0,
            broker_run_id=lambda: "run-1" if up[0] else None,
            broker_check_interval=0,
        )
        for seed in (11, 12):
            make_cxr_dicom(drop, seed=seed)
        outcomes = ingestor.scan_once()  # the broker is down: both are recorded, none lost
        assert [o.status for o in outcomes] == ["queued", "queued"]
        assert ingestor.maybe_check_broker() == 0  # still down
        up[0] = True
        assert ingestor.maybe_check_broker() == 2
        assert sorted(sent) == sorted(o.image_id for o in outcomes)
        assert ingestor.maybe_check_broker() == 0  # the same run: nothing to send again


class TestFileGoneWhileRead:
    def test_a_file_deleted_before_its_move_leaves_no_row(self, drop, ingestor, sent, monkeypatch):
        """The sender deletes (or renames) the file after ingest read it and committed its
        row: nothing was received, so no queued row may wait for a file that never comes."""
        from ingest import service

        real = service.move_file

        def vanish_then_move(src, dest, **kw):
            src.unlink()
            return real(src, dest, **kw)

        monkeypatch.setattr(service, "move_file", vanish_then_move)
        make_cxr_dicom(drop, seed=80, filename="gone.dcm")
        assert ingestor.scan_once() == []
        with ingestor.sessions() as session:
            assert session.scalars(select(Image)).all() == []
            assert session.scalars(select(Study)).all() == []
        assert sent == []

    def test_a_file_rewritten_while_read_is_taken_as_it_ends(
        self, drop, ingestor, sent, monkeypatch, tmp_path
    ):
        """A sender corrects the file (another PatientID) while ingest reads it: the header
        read is not what would be kept, so the file waits for a later scan and is filed
        under the corrected patient."""
        from ingest import service
        from pulmoscreen.db import Study

        corrected = make_cxr_dicom(tmp_path / "pacs", seed=81, PatientID="RIGHT-1")
        path = make_cxr_dicom(drop, seed=81, PatientID="WRONG-1", filename="x.dcm")
        real = service.read_header
        rewrites = [corrected.read_bytes()]

        def read_then_rewrite(p):
            meta = real(p)
            if rewrites:
                time.sleep(0.01)
                p.write_bytes(rewrites.pop())
            return meta

        monkeypatch.setattr(service, "read_header", read_then_rewrite)
        assert ingestor.scan_once() == []  # changed under the reader: not taken
        assert path.is_file()
        [outcome] = ingestor.scan_once()
        assert outcome.status == "queued"
        with ingestor.sessions() as session:
            assert session.scalars(select(Study.patient_id)).all() == ["RIGHT-1"]


class TestQuarantineRepair:
    """A crash or a full disk in the middle of a quarantine is put right at the next start."""

    def test_a_crash_between_the_quarantine_move_and_the_row_update_is_put_right(
        self, drop, ingestor, monkeypatch
    ):
        (drop / "junk.dcm").write_text("not dicom")
        interrupted_at(monkeypatch, "record_stored_path", ingestor.scan_once)
        [row] = rows(ingestor)
        assert row.stored_path.endswith("/junk.dcm")  # the file moved, the row did not follow
        [moved] = [p for p in (drop / "quarantine").iterdir() if p.suffix == ".dcm"]
        assert ingestor.repair_quarantine() == 1
        [row] = rows(ingestor)
        assert Path(row.stored_path) == moved
        assert ingestor.scan_once() == []
        [again] = rows(ingestor)
        assert again.stored_path == row.stored_path  # nothing moved twice, no second row

    def test_a_worker_killed_between_its_rejection_and_the_move_is_finished_by_ingest(
        self, drop, ingestor, monkeypatch
    ):
        from pulmoscreen.domain import RejectReason
        from worker import inference

        make_cxr_dicom(drop, seed=14)
        [outcome] = ingestor.scan_once()
        [row] = rows(ingestor)
        stored = Path(row.stored_path)
        reason = (RejectReason.DECODE_FAILED, "bad pixels")
        args = (ingestor.sessions, outcome.image_id, stored, row.source_path, *reason)
        interrupted_at(
            monkeypatch, "quarantine_file", lambda: inference._reject(*args, storage_root=None)
        )
        assert stored.exists()  # rejected in SQL, still in processed/
        assert ingestor.repair_quarantine() == 1
        [row] = rows(ingestor)
        assert (row.status, row.reject_reason) == ("rejected", "decode_failed")
        assert Path(row.stored_path).parent == drop / "quarantine"
        assert Path(row.stored_path).is_file()
        assert not stored.exists()
        sidecar = json.loads(Path(row.stored_path + ".reason.json").read_text())
        assert (sidecar["reason"], sidecar["detail"]) == ("decode_failed", "bad pixels")

    def test_a_sidecar_the_disk_refused_is_written_once_space_returns(self, drop, ingestor):
        (drop / "junk.dcm").write_text("not dicom")
        ingestor.scan_once()
        [row] = rows(ingestor)
        sidecar = Path(row.stored_path + ".reason.json")
        sidecar.unlink()  # as quarantine_file leaves it on ENOSPC
        assert ingestor.repair_quarantine() == 1
        written = json.loads(sidecar.read_text())
        assert (written["reason"], written["source"]) == ("not_dicom", "junk.dcm")
        assert written["quarantined_at"] == Path(row.stored_path).name[:15]

    def test_a_refused_sidecar_neither_stops_the_quarantine_nor_leaves_a_partial_file(
        self, tmp_path
    ):
        from pulmoscreen.storage import write_sidecar

        missing = tmp_path / "gone" / "20261202T000000_1_x.dcm"  # its folder cannot be written
        assert write_sidecar(missing, reason="r", detail="d", source="x") is False
        assert not missing.parent.exists()

    def test_a_row_whose_file_is_gone_is_left_alone(self, drop, ingestor):
        (drop / "junk.dcm").write_text("not dicom")
        ingestor.scan_once()
        [row] = rows(ingestor)
        Path(row.stored_path).unlink()
        with ingestor.sessions.begin() as session:
            queries.set_stored_path(session, row.id, str(drop / "junk.dcm"))
        assert ingestor.repair_quarantine() == 0
        [again] = rows(ingestor)
        assert again.stored_path == str(drop / "junk.dcm")
