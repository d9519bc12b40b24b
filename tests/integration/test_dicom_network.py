"""The DICOM network end to end, as a site runs it.

A modality (a pynetdicom SCU) sends the real chest radiographs of ``../shared/data`` and
pydicom-data, in several transfer syntaxes, to ``pulmoscreen receive``; ``pulmoscreen ingest
--watch`` and a real Celery worker screen each instance exactly once; ``pulmoscreen send``
returns an SR per screened image and a heatmap Secondary Capture per flagged one to a test PACS
(a Storage SCP), into the source's study; dciodvfy finds no error in any of them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from pulmoscreen.db import Image, PredictionRow, session_factory
from pulmoscreen.db.schema import HeatmapRow
from tests.dicom_results import StorageSCP, dciodvfy_errors
from tests.dicom_scu import free_port, send, start_receiver, stop
from tests.integration.conftest import (
    ROOT,
    pulmo_env,
    start_worker_process,
    stop_processes,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHARED_CHEST = ROOT.parent / "shared" / "data" / "dicom" / "chest_cr"
SAMPLES = ROOT / "pulmoscreen" / "sample_data"
# RG1 in three syntaxes is one instance (one SOPInstanceUID): it must be screened once.
RG1_FILES = ("RG1_UNCR.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def chest_radiographs() -> list[pydicom.Dataset]:
    """The real chest DICOMs: the shared SIIM CR (JPEG baseline), RG1 (explicit little endian,
    JPEG 2000 lossless and lossy) and the shipped NIH and Kermany samples (JPEG 2000)."""
    files = sorted(SHARED_CHEST.glob("*.dcm")) + [Path(get_testdata_file(n)) for n in RG1_FILES]
    files += sorted(SAMPLES.glob("*.dcm"))
    return [pydicom.dcmread(path) for path in files]


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pulmoscreen.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def screened(url: str) -> dict[str, int]:
    """Predictions per screened SOPInstanceUID."""
    with session_factory(url)() as session:
        rows = session.execute(
            select(Image.sop_uid, func.count(PredictionRow.id))
            .join(PredictionRow, PredictionRow.image_id == Image.id)
            .group_by(Image.sop_uid)
        ).all()
    return {str(sop): int(n) for sop, n in rows}


def flagged_and_heatmaps(url: str) -> tuple[set[str], set[str]]:
    """SOPInstanceUIDs of flagged images, and of those with a heatmap row."""
    with session_factory(url)() as session:
        flagged = session.scalars(
            select(Image.sop_uid).join(PredictionRow).where(PredictionRow.flagged)
        ).all()
        heat = session.scalars(
            select(Image.sop_uid).join(HeatmapRow, HeatmapRow.image_id == Image.id)
        ).all()
    return {str(s) for s in flagged}, {str(s) for s in heat}


def heatmapped(url: str) -> bool:
    flagged, with_heatmap = flagged_and_heatmaps(url)
    return bool(flagged) and flagged == with_heatmap


def srs_of(pacs: StorageSCP) -> list[pydicom.Dataset]:
    with pacs.lock:
        return [ds for ds in pacs.received if ds.SOPClassUID == SR_CLASS]


def referenced_sop(sr: pydicom.Dataset) -> tuple[str, str, str]:
    """(study, series, instance) UIDs an SR names as its evidence."""
    study = sr.CurrentRequestedProcedureEvidenceSequence[0]
    series = study.ReferencedSeriesSequence[0]
    instance = series.ReferencedSOPSequence[0]
    return study.StudyInstanceUID, series.SeriesInstanceUID, instance.ReferencedSOPInstanceUID


@pytest.mark.skipif(
    not SHARED_CHEST.exists(), reason=f"{SHARED_CHEST} is absent (../shared/data not mounted)"
)
class TestDicomNetwork:
    def test_received_screened_once_and_results_arrive_in_the_study(
        self, pg_url, redis_url, tiny_model_path, tmp_path
    ):
        datasets = chest_radiographs()
        syntaxes = {str(ds.file_meta.TransferSyntaxUID) for ds in datasets}
        assert len(syntaxes) >= 4
        sources = {str(ds.SOPInstanceUID): ds for ds in datasets}
        pacs_port, inbox = free_port(), tmp_path / "inbox"
        env = pulmo_env(
            PULMO_DATABASE_URL=pg_url,
            PULMO_BROKER_URL=redis_url,
            PULMO_MODEL_PATH=str(tiny_model_path),
            PULMO_DROP_FOLDER=str(inbox),
            PULMO_DATA_DIR=str(tmp_path / "state"),
            # every image flagged: each gets its heatmap Secondary Capture too
            PULMO_THRESHOLDS='{"tuberculosis": 0.0}',
            PULMO_FLUSH_INTERVAL="0.5",
            PULMO_OUTBOX_DIR=str(tmp_path / "outbox"),
            PULMO_DESTINATION_HOST="127.0.0.1",
            PULMO_DESTINATION_PORT=str(pacs_port),
            PULMO_DESTINATION_AE_TITLE="TEST-PACS",
            PULMO_SEND_INTERVAL="0.5",
        )
        logs = {name: tmp_path / f"{name}.log" for name in ("receive", "ingest", "worker", "send")}
        every_log = list(logs.values())
        pacs = StorageSCP(pacs_port).start()
        recv_port = free_port()
        processes = [start_receiver(inbox, recv_port, env=env, log=logs["receive"])]
        try:
            processes.append(start_worker_process("net", env, logs["worker"]))
            processes.append(spawn(["ingest", str(inbox), "--watch"], env, logs["ingest"]))
            processes.append(spawn(["send"], env, logs["send"]))
            assert send(recv_port, datasets) == [0x0000] * len(datasets)
            wait_until(lambda: set(screened(pg_url)) == set(sources), timeout=400,
                       what="every instance screened", logs=every_log)  # fmt: skip
            wait_until(lambda: len(srs_of(pacs)) >= len(sources), timeout=180,
                       what="an SR per image at the PACS", logs=every_log)  # fmt: skip
            wait_until(lambda: heatmapped(pg_url), timeout=60, logs=every_log,
                       what="the worker's heatmap row for every flagged image")  # fmt: skip
            flagged, _ = flagged_and_heatmaps(pg_url)
            want = len(sources) + len(flagged)
            wait_until(lambda: len(pacs.received) >= want, timeout=180,
                       what="an SC per flagged image at the PACS", logs=every_log)  # fmt: skip
        finally:
            stop_processes(processes[1:])
            stop(processes[0])
            pacs.stop()

        assert set(screened(pg_url).values()) == {1}  # each instance exactly once
        flagged, with_heatmap = flagged_and_heatmaps(pg_url)
        assert flagged == set(sources)
        assert with_heatmap == flagged
        srs = srs_of(pacs)
        scs = [ds for ds in pacs.received if ds.SOPClassUID == SC_CLASS]
        assert len(srs) == len(sources)
        assert len(scs) == len(flagged)
        for sr in srs:
            study, series, sop = referenced_sop(sr)
            source = sources[sop]
            assert (study, series) == (source.StudyInstanceUID, source.SeriesInstanceUID)
            assert sr.StudyInstanceUID == source.StudyInstanceUID
            assert sr.SeriesInstanceUID != source.SeriesInstanceUID
            assert sr.PatientID == source.PatientID
        source_studies = {ds.StudyInstanceUID for ds in datasets}
        assert {sc.StudyInstanceUID for sc in scs} <= source_studies
        assert len({sc.StudyInstanceUID for sc in scs}) == len(
            {sources[sop].StudyInstanceUID for sop in flagged}
        )
        for path in pacs.save_all(tmp_path / "pacs"):
            assert dciodvfy_errors(path) == []
            back = pydicom.dcmread(path)
            if back.SOPClassUID == SR_CLASS:  # highdicom reads its content tree back
                assert hd.sr.srread(path).SOPInstanceUID == back.SOPInstanceUID
            else:  # the heatmap decodes as an RGB image
                assert back.pixel_array.shape == (back.Rows, back.Columns, 3)
        sender_log = logs["send"].read_text()
        for source in datasets:
            assert str(source.SOPInstanceUID) not in sender_log
            if str(source.PatientName):
                assert str(source.PatientName) not in sender_log
