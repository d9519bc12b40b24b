"""`pulmoscreen receive` as a real process: a pynetdicom SCU sends real chest DICOMs in several
transfer syntaxes; they arrive unchanged in the drop folder, ingest and a real worker screen each
exactly once; other SOP classes and unknown callers are refused; a receiver killed mid-association
loses nothing it acknowledged."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import Dataset, uid
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from ingest.receive import SUCCESS, instance_file_name
from ingest.scanner import is_ignored_name, iter_candidates
from tests.dicom_scu import SENDER_AE, echo, free_port, send, sender, start_receiver, stop
from tests.integration.conftest import (
    prediction_counts,
    pulmo_env,
    start_worker_process,
    stop_processes,
    wait_until,
)

pytestmark = pytest.mark.integration

SHARED_CHEST = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "data"
    / "dicom"
    / "chest_cr"
    / "siim_acr_chest_jpeg_baseline.dcm"
)
RG1_FILES = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")
SHARED_SOP_UID = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"


def transcoded_rg1(syntax: str, *, index: int) -> Dataset:
    """RG1 re-encoded into ``syntax`` as a new instance (its own SOP Instance UID)."""
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"))
    ds.SOPInstanceUID = uid.generate_uid(entropy_srcs=["pulmoscreen receive test", str(index)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if uid.UID(syntax).is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax  # deflate: the SCU deflates the data set
    return ds


def rg1_in_several_syntaxes() -> list[Dataset]:
    """RG1 as shipped (explicit little endian, JPEG 2000 lossless and lossy) and transcoded."""
    shipped = [pydicom.dcmread(get_testdata_file(name)) for name in RG1_FILES]
    extra = (uid.JPEGLSLossless, uid.RLELossless, uid.DeflatedExplicitVRLittleEndian)
    return shipped + [transcoded_rg1(syntax, index=i) for i, syntax in enumerate(extra)]


def assert_arrived_unchanged(inbox: Path, sent: Dataset) -> None:
    """The received file holds ``sent``'s data set element for element, in its syntax."""
    stored = pydicom.dcmread(inbox / instance_file_name(sent.SOPInstanceUID))
    assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert stored.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
    assert stored.PixelData == sent.PixelData
    assert stored == sent


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A ``pulmoscreen receive`` process accepting any caller: (port, drop folder)."""
    port, inbox = free_port(), tmp_path / "inbox"
    proc = start_receiver(inbox, port, env=pulmo_env(), log=tmp_path / "receive.log")
    yield port, inbox
    stop(proc)


class TestReceive:
    def test_real_chest_radiographs_arrive_unchanged_in_several_syntaxes(self, receiver):
        port, inbox = receiver
        datasets = rg1_in_several_syntaxes()
        assert len({ds.file_meta.TransferSyntaxUID for ds in datasets}) == 6

        assert send(port, datasets) == [SUCCESS] * len(datasets)

        for ds in datasets:
            assert_arrived_unchanged(inbox, ds)
        assert len(list(iter_candidates(inbox))) == len(datasets)
        log = (inbox.parent / "receive.log").read_text()
        assert "stored a received instance" in log
        for ds in datasets:  # PHI rules: no header value in the log
            for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientID):
                assert str(value) not in log

    @pytest.mark.skipif(
        not SHARED_CHEST.exists(), reason=f"{SHARED_CHEST} is absent (../shared/data not mounted)"
    )
    def test_the_shared_chest_cr_arrives_unchanged(self, receiver):
        port, inbox = receiver
        ds = pydicom.dcmread(SHARED_CHEST)
        assert send(port, [ds]) == [SUCCESS]
        assert_arrived_unchanged(inbox, ds)

    def test_echo_is_answered(self, receiver):
        port, _ = receiver
        assert echo(port) == SUCCESS

    def test_a_ct_is_refused_at_association(self, receiver):
        port, inbox = receiver
        ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        assoc = sender([ct]).associate("127.0.0.1", port, ae_title="PULMOSCREEN")
        try:
            assert assoc.is_established  # Verification is accepted
            [refused] = [
                cx for cx in assoc.rejected_contexts if cx.abstract_syntax == ct.SOPClassUID
            ]
            assert refused.result == 0x03  # abstract syntax not supported (PS3.8 9.3.3.2)
            with pytest.raises(ValueError, match="No presentation context"):
                assoc.send_c_store(ct)
        finally:
            assoc.release()
        assert list(inbox.iterdir()) == []


class TestAllowedCallers:
    def test_only_listed_callers_may_associate(self, tmp_path):
        port, inbox = free_port(), tmp_path / "inbox"
        env = pulmo_env(PULMO_RECEIVE_ALLOWED_CALLERS=f"CR_ROOM1, {SENDER_AE}")
        proc = start_receiver(inbox, port, env=env, log=tmp_path / "receive.log")
        try:
            ae = AE(ae_title="INTRUDER")
            ae.add_requested_context(Verification)
            ae.add_requested_context(CTImageStorage)
            assoc = ae.associate("127.0.0.1", port, ae_title="PULMOSCREEN")
            assert assoc.is_rejected
            assert echo(port, calling="CR_ROOM1") == SUCCESS
        finally:
            stop(proc)


class TestKilledMidAssociation:
    N_SENT = 12
    KILL_AFTER = 5

    @pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
    def test_every_acknowledged_instance_is_complete(self, tmp_path, fraction):
        port, inbox = free_port(), tmp_path / "inbox"
        proc = start_receiver(inbox, port, env=pulmo_env(), log=tmp_path / "receive.log")
        datasets = [
            transcoded_rg1(uid.ExplicitVRLittleEndian, index=100 + i) for i in range(self.N_SENT)
        ]
        acknowledged = send_until_killed(
            port, datasets, proc, kill_after=self.KILL_AFTER, fraction=fraction
        )
        proc.wait(timeout=30)

        assert self.KILL_AFTER <= len(acknowledged) < self.N_SENT
        by_uid = {ds.SOPInstanceUID: ds for ds in datasets}
        for sop_uid in acknowledged:
            assert_arrived_unchanged(inbox, by_uid[sop_uid])
        for path in iter_candidates(inbox):  # ingest's view: only whole instances
            assert pydicom.dcmread(path).SOPInstanceUID in by_uid
        leftovers = [p.name for p in inbox.iterdir() if p.name.endswith(".part")]
        assert all(is_ignored_name(name) for name in leftovers)


def send_until_killed(
    port: int,
    datasets: list[Dataset],
    proc: subprocess.Popen[bytes],
    *,
    kill_after: int,
    fraction: float,
) -> list[str]:
    """Send ``datasets`` over one association; SIGKILL the receiver ``fraction`` of one
    instance's round trip (the mean of those acknowledged) after the ``kill_after``-th
    success: early, while the next instance is on the wire; late, while it is being written.
    Returns the SOP Instance UIDs acknowledged."""
    acknowledged: list[str] = []
    reached = threading.Event()
    round_trip = [0.0]

    def kill_mid_transfer() -> None:
        reached.wait(timeout=120)
        time.sleep(fraction * round_trip[0])
        proc.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_mid_transfer, daemon=True)
    killer.start()
    assoc = sender(datasets).associate("127.0.0.1", port, ae_title="PULMOSCREEN")
    assert assoc.is_established
    start = time.perf_counter()
    for ds in datasets:
        try:
            rsp = assoc.send_c_store(ds)
        except (RuntimeError, OSError):
            break
        if rsp.get("Status") != SUCCESS:
            break
        acknowledged.append(ds.SOPInstanceUID)
        if len(acknowledged) == kill_after:
            round_trip[0] = (time.perf_counter() - start) / kill_after
            reached.set()
    reached.set()
    killer.join(timeout=30)
    assoc.abort()
    return acknowledged


@pytest.mark.slow
class TestReceivedThenScreened:
    def test_each_received_radiograph_is_screened_exactly_once(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        from pulmoscreen.cli import make_ingestor
        from pulmoscreen.config import Settings
        from pulmoscreen.db import Image, session_factory
        from pulmoscreen.queue import make_celery

        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_BROKER_URL=redis_url,
            PULMO_MODEL_PATH=str(tiny_model_path),
            PULMO_FLUSH_INTERVAL="0.5",
        )
        settings = Settings(
            database_url=pg_url, broker_url=redis_url, model_path=tiny_model_path, stable_seconds=0
        )
        port, inbox = free_port(), tmp_path / "inbox"
        receiver = start_receiver(inbox, port, env=pulmo_env(), log=tmp_path / "receive.log")
        worker = start_worker_process("w1", env, tmp_path / "worker.log")
        datasets = rg1_in_several_syntaxes()
        if SHARED_CHEST.exists():
            datasets.append(pydicom.dcmread(SHARED_CHEST))
        sessions = session_factory(pg_url)
        stop_watch = threading.Event()
        try:
            assert send(port, datasets) == [SUCCESS] * len(datasets)
            # A resend of the same instances (a modality retrying) must not screen them twice.
            assert send(port, datasets[:2]) == [SUCCESS] * 2
            ingestor = make_ingestor(settings, inbox, sessions, make_celery(settings))
            watcher = threading.Thread(
                target=ingestor.watch, args=(stop_watch,), kwargs={"poll_interval": 0.5}
            )
            watcher.start()
            wait_until(
                lambda: done_count(sessions, Image) == len(datasets),
                timeout=300,
                what=f"{len(datasets)} received images screened",
                logs=[tmp_path / "worker.log", tmp_path / "receive.log"],
            )
        finally:
            stop_watch.set()
            stop_processes([worker])
            stop(receiver)
        assert_screened_once(sessions, Image, datasets)


def done_count(sessions, image_table) -> int:
    """Images that left the queue (screened or refused by the worker's checks)."""
    from sqlalchemy import func, select

    with sessions() as session:
        return int(
            session.scalar(
                select(func.count()).select_from(image_table).where(image_table.status != "queued")
            )
            or 0
        )


def assert_screened_once(sessions, image_table, datasets: list[Dataset]) -> None:
    """One image row per instance sent (resends included), none predicted twice, and every
    RG1 encoding predicted (the shared SIIM file may be refused by the content check)."""
    from sqlalchemy import select

    queued, per_image, _ = prediction_counts(sessions)
    assert queued == 0
    assert {n for _, n in per_image} == {1}, "an image was predicted twice"
    with sessions() as session:
        rows = session.execute(select(image_table.sop_uid, image_table.status)).all()
    statuses: dict[str, str] = dict(rows)
    assert len(rows) == len(datasets)
    assert set(statuses) == {ds.SOPInstanceUID for ds in datasets}
    rg1_uids = [ds.SOPInstanceUID for ds in datasets if ds.SOPInstanceUID != SHARED_SOP_UID]
    assert {statuses[sop_uid] for sop_uid in rg1_uids} == {"predicted"}, statuses
