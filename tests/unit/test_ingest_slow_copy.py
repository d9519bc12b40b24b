"""A sender that pauses mid-copy (NFS, SMB, a slow modality) must not get its file quarantined."""

import os
import time

import pytest
from sqlalchemy import select

from ingest import Ingestor
from pulmoscreen.db import Image, session_factory
from tests.factories import make_cxr_dicom

STABLE = 0.2  # seconds a file must hold still before it is read
GRACE = 3.0  # seconds a file that reads as cut short may hold still before it is quarantined


@pytest.fixture
def ingestor(drop, sqlite_url, sent):
    return Ingestor(
        drop,
        sessions=session_factory(sqlite_url),
        enqueue=sent.extend,
        stable_seconds=STABLE,
        truncated_grace=GRACE,
    )


@pytest.fixture
def dicom_bytes(tmp_path) -> bytes:
    return make_cxr_dicom(tmp_path / "source", seed=61, filename="full.dcm").read_bytes()


def rows(ingestor):
    with ingestor.sessions() as session:
        return list(session.scalars(select(Image)))


def scan_after_stable(ingestor):
    """One scan after the file held still for longer than ``stable_seconds``."""
    assert ingestor.scan_once() == []  # first sight, or changed since the last scan: waits
    time.sleep(STABLE * 1.5)
    return ingestor.scan_once()


class TestSlowCopy:
    def test_a_copy_that_pauses_is_taken_complete_when_it_resumes(
        self, drop, ingestor, sent, dicom_bytes
    ):
        path = drop / "IM0001"
        half = len(dicom_bytes) // 2
        path.write_bytes(dicom_bytes[:half])  # the sender writes half, then stalls
        assert scan_after_stable(ingestor) == []  # read, cut short, but written just now
        time.sleep(STABLE * 1.5)
        assert ingestor.scan_once() == []  # still paused: left where it is, no row
        assert path.exists()
        assert rows(ingestor) == []
        assert not (drop / "quarantine").exists() or not list((drop / "quarantine").iterdir())

        with path.open("ab") as fh:  # the sender resumes
            fh.write(dicom_bytes[half:])
        [outcome] = scan_after_stable(ingestor)
        assert outcome.status == "queued"
        assert sent == [outcome.image_id]
        assert not path.exists()

    def test_an_empty_file_just_created_waits_too(self, drop, ingestor, sent, dicom_bytes):
        path = drop / "IM0002"
        path.write_bytes(b"")  # created by the sender, nothing written yet
        assert scan_after_stable(ingestor) == []
        path.write_bytes(dicom_bytes)
        [outcome] = scan_after_stable(ingestor)
        assert outcome.status == "queued"

    def test_a_copy_that_stopped_for_good_is_quarantined_after_the_grace_period(
        self, drop, ingestor, sent, dicom_bytes
    ):
        path = drop / "IM0003"
        path.write_bytes(dicom_bytes[: len(dicom_bytes) // 2])
        written = time.monotonic()
        outcomes = []
        while not outcomes and time.monotonic() - written < GRACE + 5:
            outcomes = ingestor.scan_once()
            if not outcomes:
                assert path.exists()
                time.sleep(0.1)
        assert time.monotonic() - written >= GRACE
        [outcome] = outcomes
        assert (outcome.status, outcome.reason) == ("rejected", "truncated")
        assert sent == []
        assert not path.exists()
        assert [r.reject_reason for r in rows(ingestor)] == ["truncated"]

    def test_a_cut_file_last_written_long_ago_is_quarantined_at_once(
        self, drop, ingestor, sent, dicom_bytes
    ):
        path = drop / "IM0004"
        path.write_bytes(dicom_bytes[: len(dicom_bytes) // 2])
        an_hour_ago = time.time() - 3600
        os.utime(path, (an_hour_ago, an_hour_ago))
        [outcome] = scan_after_stable(ingestor)
        assert (outcome.status, outcome.reason) == ("rejected", "truncated")

    def test_a_file_bad_for_another_reason_is_not_held_back(self, drop, ingestor, dicom_bytes):
        make_cxr_dicom(drop, seed=62, filename="hand.dcm", BodyPartExamined="HAND")
        [outcome] = scan_after_stable(ingestor)
        assert outcome.reason == "not_chest"


class TestWithoutGrace:
    def test_a_cut_file_is_quarantined_once_stable(self, drop, sqlite_url, dicom_bytes):
        # `pulmoscreen screen` takes a folder as it stands: a cut file is reported at once.
        ingestor = Ingestor(
            drop, sessions=session_factory(sqlite_url), enqueue=list, stable_seconds=0
        )
        (drop / "cut.dcm").write_bytes(dicom_bytes[:3000])
        [outcome] = ingestor.scan_once()
        assert outcome.reason == "truncated"
