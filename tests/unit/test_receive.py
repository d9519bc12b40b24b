"""The Storage SCP's handler: what it accepts, how it writes, what it answers."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom import uid
from pydicom.data import get_testdata_file

from ingest.receive import (
    CANNOT_UNDERSTAND,
    DATASET_MISMATCH,
    OUT_OF_RESOURCES,
    RESULTS_MANUFACTURER,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    StorageReceiver,
    decodable_transfer_syntaxes,
    instance_file_name,
    remove_stale_temp_files,
    start_server,
    write_atomically,
)
from ingest.scanner import is_ignored_name
from tests.dicom_scu import echo, free_port, send
from tests.factories import make_cxr_dicom

RG1 = get_testdata_file("RG1_UNCR.dcm")
CT = get_testdata_file("CT_small.dcm")


def part10(path: str | Path) -> tuple[str, str, bytes]:
    """(SOP class, SOP instance, file bytes) of a DICOM file, as a C-STORE would carry them."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), Path(path).read_bytes()


class TestDecodableTransferSyntaxes:
    def test_every_syntax_the_worker_reads_is_offered(self):
        offered = decodable_transfer_syntaxes()
        for syntax in (
            uid.ImplicitVRLittleEndian,
            uid.ExplicitVRLittleEndian,
            uid.ExplicitVRBigEndian,
            uid.DeflatedExplicitVRLittleEndian,
            uid.JPEGBaseline8Bit,
            uid.JPEGExtended12Bit,
            uid.JPEGLossless,
            uid.JPEGLosslessSV1,
            uid.JPEGLSLossless,
            uid.JPEGLSNearLossless,
            uid.JPEG2000Lossless,
            uid.JPEG2000,
            uid.RLELossless,
        ):
            assert syntax in offered, syntax.name

    def test_syntaxes_without_a_decoder_are_not_offered(self):
        offered = decodable_transfer_syntaxes()
        assert uid.MPEG2MPML not in offered
        assert uid.JPEG2000MC not in offered

    def test_uncompressed_syntaxes_come_first(self):
        compressed = [syntax.is_compressed for syntax in decodable_transfer_syntaxes()]
        assert compressed == sorted(compressed)


class TestInstanceFileName:
    def test_the_same_instance_gets_the_same_name_and_ingest_reads_it(self):
        name = instance_file_name("1.2.840.99.1")
        assert name == instance_file_name("1.2.840.99.1")
        assert name != instance_file_name("1.2.840.99.2")
        assert name.endswith(".dcm")
        assert not is_ignored_name(name)

    def test_the_name_holds_nothing_of_the_uid(self):
        name = instance_file_name("1.2.840.113619.2.55.3.604688119")
        assert "113619" not in name
        assert set(name.removesuffix(".dcm")) <= set("0123456789abcdef")


class TestWriteAtomically:
    def test_the_final_name_appears_only_once_the_file_is_complete(self, tmp_path):
        seen_during_write: list[list[str]] = []

        def chunks() -> Iterator[bytes]:
            yield b"first half "
            seen_during_write.append(sorted(p.name for p in tmp_path.iterdir()))
            yield b"second half"

        final = write_atomically(tmp_path, "a.dcm", chunks())

        assert final.read_bytes() == b"first half second half"
        [names] = seen_during_write
        assert "a.dcm" not in names
        assert len(names) == 1
        assert is_ignored_name(names[0])
        assert [p.name for p in tmp_path.iterdir()] == ["a.dcm"]

    def test_a_failed_write_leaves_nothing(self, tmp_path):
        def chunks() -> Iterator[bytes]:
            yield b"partial"
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space"):
            write_atomically(tmp_path, "a.dcm", chunks())
        assert list(tmp_path.iterdir()) == []

    def test_a_resent_instance_replaces_the_file(self, tmp_path):
        write_atomically(tmp_path, "a.dcm", [b"old"])
        write_atomically(tmp_path, "a.dcm", [b"new"])
        assert (tmp_path / "a.dcm").read_bytes() == b"new"


class TestRemoveStaleTempFiles:
    def test_only_old_temporary_files_go(self, tmp_path):
        old = tmp_path / ".receiving-a.dcm.1.part"
        young = tmp_path / ".receiving-b.dcm.2.part"
        other = tmp_path / "c.dcm"
        for path in (old, young, other):
            path.write_bytes(b"x")
        an_hour_ago = time.time() - 7200
        os.utime(old, (an_hour_ago, an_hour_ago))
        os.utime(other, (an_hour_ago, an_hour_ago))

        assert remove_stale_temp_files(tmp_path) == 1
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young.name, other.name])


class TestStore:
    def test_a_radiograph_is_stored_byte_for_byte(self, tmp_path):
        sop_class, sop_uid, data = part10(RG1)
        receiver = StorageReceiver(tmp_path)

        status = receiver.store(sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=data)

        assert status == SUCCESS
        stored = tmp_path / instance_file_name(sop_uid)
        assert stored.read_bytes() == data
        assert receiver.counts.stored == 1

    def test_another_sop_class_is_refused(self, tmp_path):
        sop_class, sop_uid, data = part10(CT)
        receiver = StorageReceiver(tmp_path)

        status = receiver.store(sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=data)

        assert status == SOP_CLASS_NOT_SUPPORTED
        assert list(tmp_path.iterdir()) == []
        assert receiver.counts.refused == {SOP_CLASS_NOT_SUPPORTED: 1}

    def test_a_secondary_capture_chest_is_stored_for_ingest_to_judge(self, tmp_path):
        path = make_cxr_dicom(tmp_path / "src", SOPClassUID=uid.SecondaryCaptureImageStorage)
        sop_class, sop_uid, data = part10(path)
        assert sop_class == uid.SecondaryCaptureImageStorage

        status = StorageReceiver(tmp_path).store(
            sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=data
        )

        assert status == SUCCESS
        assert (tmp_path / instance_file_name(sop_uid)).read_bytes() == data

    def test_a_heatmap_of_our_own_sent_back_is_refused(self, tmp_path):
        path = make_cxr_dicom(
            tmp_path / "src",
            SOPClassUID=uid.SecondaryCaptureImageStorage,
            Manufacturer=RESULTS_MANUFACTURER,
        )
        sop_class, sop_uid, data = part10(path)
        status = StorageReceiver(tmp_path / "src").store(
            sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=data
        )
        assert status == SOP_CLASS_NOT_SUPPORTED
        assert not (tmp_path / "src" / instance_file_name(sop_uid)).exists()

    def test_our_results_manufacturer_is_the_one_results_carry(self):
        from pulmoscreen.results_dicom import MANUFACTURER

        assert RESULTS_MANUFACTURER == MANUFACTURER

    def test_a_data_set_that_contradicts_its_request_is_refused(self, tmp_path):
        sop_class, _, data = part10(RG1)
        status = StorageReceiver(tmp_path).store(
            sop_class_uid=sop_class, sop_instance_uid="1.2.3.999", part10=data
        )
        assert status == DATASET_MISMATCH
        assert list(tmp_path.iterdir()) == []

    @pytest.mark.filterwarnings("ignore:End of file reached")
    def test_a_data_set_without_its_uids_is_refused(self, tmp_path):
        sop_class, sop_uid, data = part10(RG1)
        garbage = data[:132] + b"\xff" * 64
        status = StorageReceiver(tmp_path).store(
            sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=garbage
        )
        assert status == DATASET_MISMATCH
        assert list(tmp_path.iterdir()) == []

    def test_bytes_that_are_no_dicom_are_refused(self, tmp_path):
        sop_class, sop_uid, _ = part10(RG1)
        status = StorageReceiver(tmp_path).store(
            sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=b"not dicom" * 40
        )
        assert status == CANNOT_UNDERSTAND
        assert list(tmp_path.iterdir()) == []

    def test_a_failed_write_answers_out_of_resources(self, tmp_path):
        not_a_folder = tmp_path / "inbox"
        not_a_folder.write_bytes(b"")
        sop_class, sop_uid, data = part10(RG1)

        status = StorageReceiver(not_a_folder).store(
            sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=data
        )

        assert status == OUT_OF_RESOURCES
        assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox"]

    def test_no_header_value_reaches_the_log(self, tmp_path, caplog):
        caplog.set_level(logging.DEBUG)
        receiver = StorageReceiver(tmp_path)
        for path in (RG1, CT):
            sop_class, sop_uid, data = part10(path)
            receiver.store(sop_class_uid=sop_class, sop_instance_uid=sop_uid, part10=data)
        ds = pydicom.dcmread(RG1, stop_before_pixels=True)
        assert caplog.records, "the handler logs what it did"
        for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.PatientID):
            assert str(value) not in caplog.text


class TestOverTheNetwork:
    """The handler bound into a real Storage SCP on the loopback interface."""

    @pytest.fixture
    def scp(self, tmp_path) -> Iterator[tuple[int, Path]]:
        port = free_port()
        inbox = tmp_path / "inbox"
        server, _ = start_server(
            inbox, host="127.0.0.1", port=port, ae_title="PULMOSCREEN", allowed_callers=()
        )
        yield port, inbox
        server.shutdown()

    def test_compressed_radiographs_arrive_in_their_own_syntax(self, scp, tmp_path):
        port, inbox = scp
        syntaxes = (uid.JPEGLSLossless, uid.RLELossless, uid.DeflatedExplicitVRLittleEndian)
        paths = [
            make_cxr_dicom(tmp_path / "src", seed=i, rows=64, cols=64, transfer_syntax=syntax)
            for i, syntax in enumerate(syntaxes)
        ]
        datasets = [pydicom.dcmread(path) for path in paths]

        assert send(port, datasets) == [SUCCESS] * 3

        for ds in datasets:
            stored = pydicom.dcmread(inbox / instance_file_name(ds.SOPInstanceUID))
            assert stored.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
            assert stored.PixelData == ds.PixelData

    def test_echo_is_answered(self, scp):
        port, _ = scp
        assert echo(port) == SUCCESS


class TestReceiveCommand:
    def test_an_invalid_ae_title_is_refused_before_listening(self, tmp_path):
        from typer.testing import CliRunner

        from pulmoscreen.cli import app

        result = CliRunner().invoke(
            app, ["receive", "--ae-title", "A" * 17, "--folder", str(tmp_path / "inbox")]
        )

        assert result.exit_code == 2
        assert "--ae-title" in result.output
        assert not (tmp_path / "inbox").exists()
