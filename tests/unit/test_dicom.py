from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_windowing
from pydicom.sequence import Sequence
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging import PreprocessSpec, read_dicom, read_header, to_model_input
from pulmoscreen.imaging.dicom import MAX_PIXELS
from tests.factories import make_cxr_dicom

SPEC = PreprocessSpec(size=224)
LOSSLESS = [
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLosslessSV1,
    JPEGLossless,
]


def rg1(name: str) -> Path:
    data = pytest.importorskip("pydicom.data", reason="pydicom-data is not installed")
    try:
        return Path(data.get_testdata_file(name))
    except (ValueError, TypeError):
        pytest.skip(f"{name} is not available from pydicom-data")


def rewrite(path: Path, **changes) -> Path:
    """Change attributes of an existing file in place (``None`` deletes one)."""
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path


def reason_of(call, path: Path) -> RejectReason:
    with pytest.raises(Rejected) as info:
        call(path)
    return info.value.reason


def model_input(path: Path) -> np.ndarray:
    return to_model_input(read_dicom(path).pixels, SPEC)


def first_frame(path: Path) -> bytes:
    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def replace_frame(path: Path, frame: bytes) -> Path:
    ds = pydicom.dcmread(path)
    ds.PixelData = encapsulate([frame])
    ds.save_as(path)
    return path


class TestReadHeader:
    @pytest.mark.parametrize("keyword", ["PatientID", "AccessionNumber", "BodyPartExamined"])
    def test_an_embedded_nul_is_a_coded_rejection(self, tmp_path, keyword):
        """A database refuses NUL in text; the file is quarantined, not left to stop ingest."""
        path = make_cxr_dicom(tmp_path, seed=12, **{keyword: "CHE\x00ST"})
        with pytest.raises(Rejected) as caught:
            read_header(path)
        assert caught.value.reason == RejectReason.INVALID_HEADER
        assert keyword in caught.value.detail
        assert "CHE" not in caught.value.detail

    def test_trailing_nul_padding_is_not_part_of_the_value(self, tmp_path):
        path = make_cxr_dicom(tmp_path, seed=13, PatientID="PAT42\x00", StudyDescription="\x01X")
        meta = read_header(path)
        assert meta.patient_id == "PAT42"
        assert meta.descriptions == ("X",)

    def test_reads_identifiers(self, tmp_path):
        path = make_cxr_dicom(tmp_path, seed=11, AccessionNumber="A123")
        meta = read_header(path)
        assert meta.sop_uid
        assert meta.study_uid
        assert meta.accession == "A123"
        assert meta.modality == "CR"
        assert (meta.rows, meta.cols) == (512, 512)
        assert str(meta.study_date) == "2026-11-25"

    @pytest.mark.parametrize(
        ("tags", "reason"),
        [
            ({"Modality": "CT"}, RejectReason.WRONG_MODALITY),
            ({"BodyPartExamined": "HAND"}, RejectReason.NOT_CHEST),
            ({"ViewPosition": "LL"}, RejectReason.NOT_FRONTAL),
            ({"NumberOfFrames": 3}, RejectReason.MULTIFRAME),
            ({"Rows": 60000, "Columns": 60000}, RejectReason.TOO_LARGE),
        ],
    )
    def test_rejects_with_code(self, tmp_path, tags, reason):
        path = make_cxr_dicom(tmp_path, **tags)
        assert reason_of(read_header, path) == reason

    @pytest.mark.parametrize(
        ("tags", "part"),
        [
            ({"StudyDescription": "MODALITYLUT - TEETH"}, "TEETH"),
            ({"SeriesDescription": "Knee AP/Lat"}, "KNEE"),
            ({"ProtocolName": "HAND_PA", "StudyDescription": "Trauma"}, "HAND"),
        ],
    )
    def test_description_naming_another_body_part_without_body_part(self, tmp_path, tags, part):
        path = make_cxr_dicom(tmp_path, BodyPartExamined="", **tags)
        with pytest.raises(Rejected) as caught:
            read_header(path)
        assert caught.value.reason == RejectReason.NOT_CHEST
        assert caught.value.detail == f"no BodyPartExamined; the description names {part}"

    @pytest.mark.parametrize(
        "tags",
        [
            {"StudyDescription": "CHEST PA"},
            {"StudyDescription": "Thorax pa, hand on hip", "ProtocolName": "X"},  # chest wins
            {"StudyDescription": "SHOULDER", "BodyPartExamined": "CHEST"},  # the code wins
            {"SeriesDescription": "PA ERECT", "ProtocolName": "HIPPOCRATES"},  # whole words
            {"StudyDescription": ""},
        ],
    )
    def test_descriptions_that_do_not_rule_out_a_chest(self, tmp_path, tags):
        path = make_cxr_dicom(tmp_path, **({"BodyPartExamined": ""} | tags))
        assert read_header(path).sop_uid

    def test_missing_optional_tags_are_accepted(self, tmp_path):
        path = make_cxr_dicom(tmp_path, BodyPartExamined="", ViewPosition="")
        assert read_header(path).body_part is None

    def test_too_small(self, tmp_path):
        path = make_cxr_dicom(tmp_path, rows=128, cols=128)
        assert reason_of(read_header, path) == RejectReason.TOO_SMALL

    def test_not_dicom(self, tmp_path):
        path = tmp_path / "x.dcm"
        path.write_text("hello")
        assert reason_of(read_header, path) == RejectReason.NOT_DICOM

    def test_random_bytes_are_not_dicom(self, tmp_path):
        path = tmp_path / "noise.dcm"
        path.write_bytes(np.random.default_rng(0).bytes(5000))
        assert reason_of(read_header, path) == RejectReason.NOT_DICOM

    def test_missing_uid(self, tmp_path):
        path = rewrite(make_cxr_dicom(tmp_path), StudyInstanceUID=None)
        assert reason_of(read_header, path) == RejectReason.MISSING_UID

    def test_uid_longer_than_the_standard_allows(self, tmp_path):
        path = make_cxr_dicom(tmp_path, SOPInstanceUID="1." + "2" * 70)
        assert reason_of(read_header, path) == RejectReason.MISSING_UID

    def test_overlong_texts_are_cut_not_rejected(self, tmp_path):
        path = make_cxr_dicom(
            tmp_path, PatientID="P" * 80, BodyPartExamined="CHEST " + "X" * 70, ViewPosition="PA"
        )
        meta = read_header(path)
        assert meta.patient_id == "P" * 64
        assert meta.body_part is not None
        assert len(meta.body_part) == 64

    @pytest.mark.parametrize(
        "syntax",
        [
            "1.2.840.10008.1.2.4.100",  # MPEG2 video
            "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 multi-component
            "1.2.3.4.5",  # a private syntax
        ],
    )
    def test_unsupported_transfer_syntax(self, tmp_path, syntax):
        path = make_cxr_dicom(tmp_path, transfer_syntax=JPEG2000Lossless)
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path)
        assert reason_of(read_header, path) == RejectReason.UNSUPPORTED_TRANSFER_SYNTAX


class TestReadHeaderParsesOnlyWhatItNeeds:
    """read_header parses only ``HEADER_TAGS``; read_dicom parses the whole header."""

    @pytest.mark.parametrize(
        "tags",
        [
            {"AccessionNumber": "A1", "PatientID": "P\\Q", "StudyDescription": "CHEST PA"},
            {"BodyPartExamined": "", "SeriesDescription": "Thorax", "ProtocolName": "X"},
            {"SpecificCharacterSet": "ISO_IR 100", "PatientID": "Müller"},
            {"NumberOfFrames": 1, "PerformedProcedureStepDescription": "PA erect"},
        ],
    )
    def test_same_metadata_as_the_whole_header(self, tmp_path, tags):
        path = make_cxr_dicom(tmp_path, InstitutionName="Clinic", **tags)
        assert read_header(path) == read_dicom(path).meta

    @pytest.mark.parametrize(
        "name", ["nih_normal_1.dcm", "nih_pneumonia_1.dcm", "kermany_normal_1.dcm"]
    )
    def test_same_metadata_as_the_whole_header_on_real_files(self, name):
        path = Path(__file__).resolve().parents[2] / "pulmoscreen" / "sample_data" / name
        assert read_header(path) == read_dicom(path).meta


class TestReadHeaderPixelDataChecks:
    """Ingest rejects incomplete or lying files from the header, without decoding."""

    @pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless])
    def test_file_cut_in_pixel_data_is_truncated(self, tmp_path, syntax):
        path = make_cxr_dicom(tmp_path, transfer_syntax=syntax)
        path.write_bytes(path.read_bytes()[:-1000])
        assert reason_of(read_header, path) == RejectReason.TRUNCATED

    # SOPInstanceUID is an element the scan reads; SeriesInstanceUID one whose value it seeks
    # over (read_header parses only the elements it needs): a cut inside either is found.
    @pytest.mark.parametrize("element", ["SOPInstanceUID", "SeriesInstanceUID"])
    def test_file_cut_inside_the_header_is_truncated(self, tmp_path, element):
        path = make_cxr_dicom(tmp_path)
        data = path.read_bytes()
        cut = data.index(str(getattr(pydicom.dcmread(path), element)).encode()) + 10
        path.write_bytes(data[:cut])
        assert reason_of(read_header, path) == RejectReason.TRUNCATED

    def test_file_meta_and_nothing_after_it_is_truncated(self, tmp_path):
        path = make_cxr_dicom(tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[: data.index(b"\x08\x00\x16\x00")])  # (0008,0016) SOPClassUID
        assert reason_of(read_header, path) == RejectReason.TRUNCATED

    def test_header_without_any_element_the_scan_reads_lacks_its_uids(self, tmp_path):
        """Elements, but none of those the rules read: not mistaken for a cut file."""
        ds = pydicom.dcmread(make_cxr_dicom(tmp_path))
        for keyword in [e.keyword for e in ds if e.keyword not in ("PatientName", "HighBit")]:
            delattr(ds, keyword)
        path = tmp_path / "names_only.dcm"
        ds.save_as(path)
        assert reason_of(read_header, path) == RejectReason.MISSING_UID

    def test_no_pixel_data(self, tmp_path):
        path = rewrite(make_cxr_dicom(tmp_path), PixelData=None)
        assert reason_of(read_header, path) == RejectReason.NO_PIXEL_DATA

    def test_empty_pixel_data(self, tmp_path):
        path = rewrite(make_cxr_dicom(tmp_path), PixelData=b"")
        assert reason_of(read_header, path) == RejectReason.NO_PIXEL_DATA

    def test_header_larger_than_its_pixel_data(self, tmp_path):
        path = make_cxr_dicom(tmp_path, rows=512, cols=512, Rows=4000, Columns=4000)
        assert reason_of(read_header, path) == RejectReason.DECODE_FAILED

    def test_codestream_larger_than_header(self, tmp_path):
        """A small header over a large JPEG 2000 image: refused before a decoder allocates it."""
        path = make_cxr_dicom(tmp_path, rows=1024, cols=1024, transfer_syntax=JPEG2000Lossless)
        rewrite(path, Rows=512, Columns=512)
        with pytest.raises(Rejected) as info:
            read_header(path)
        assert info.value.reason == RejectReason.DECODE_FAILED
        assert "1024x1024" in info.value.detail

    def test_huge_dimensions_are_refused_without_allocating(self, tmp_path):
        import tracemalloc

        path = make_cxr_dicom(tmp_path, Rows=65535, Columns=65535)
        tracemalloc.start()
        try:
            assert reason_of(read_dicom, path) == RejectReason.TOO_LARGE
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert MAX_PIXELS < 65535 * 65535
        assert peak < 20_000_000

    def test_symbolic_link_is_not_followed(self, tmp_path):
        target = make_cxr_dicom(tmp_path / "outside")
        link = tmp_path / "link.dcm"
        link.symlink_to(target)
        assert reason_of(read_header, link) == RejectReason.UNREADABLE

    def test_fifo_is_refused_without_blocking(self, tmp_path):
        fifo = tmp_path / "pipe.dcm"
        import os

        os.mkfifo(fifo)
        assert reason_of(read_header, fifo) == RejectReason.UNREADABLE


class TestBareDataSet:
    """ACR-NEMA style files: no preamble, no 'DICM', no File Meta."""

    @pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
    def test_read_like_the_same_image_with_file_meta(self, tmp_path, syntax):
        bare = make_cxr_dicom(tmp_path / "b", seed=8, transfer_syntax=syntax, file_meta=False)
        assert bare.read_bytes()[128:132] != b"DICM"
        normal = make_cxr_dicom(tmp_path / "n", seed=8)
        image = read_dicom(bare)
        assert image.meta.sop_uid == read_header(normal).sop_uid
        assert image.meta.transfer_syntax == syntax
        np.testing.assert_array_equal(image.pixels, read_dicom(normal).pixels)

    def test_bare_data_set_without_image_attributes_is_not_dicom(self, tmp_path):
        ds = Dataset()
        ds.StudyDescription = "just text"
        path = tmp_path / "note.dcm"
        ds.save_as(path, implicit_vr=True, little_endian=True)
        assert path.read_bytes()[:2] == b"\x08\x00"
        assert reason_of(read_header, path) == RejectReason.NOT_DICOM


class TestReadDicom:
    def test_monochrome1_is_inverted_to_what_a_viewer_shows(self, tmp_path):
        mono2 = read_dicom(make_cxr_dicom(tmp_path / "a", seed=5)).pixels
        mono1 = read_dicom(make_cxr_dicom(tmp_path / "b", seed=5, photometric="MONOCHROME1"))
        np.testing.assert_allclose(mono1.pixels, mono2, atol=1e-6)

    def test_window_maps_to_black_and_white(self, tmp_path):
        path = make_cxr_dicom(tmp_path, bits_stored=12, WindowCenter=1000, WindowWidth=400)
        pixels = read_dicom(path).pixels
        assert pixels.min() == 0.0
        assert pixels.max() == 1.0
        # the window is narrow: most of the phantom is clipped to black or white
        assert np.mean((pixels == 0) | (pixels == 1)) > 0.5

    @pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
    def test_window_matches_pydicom_reference(self, tmp_path, function):
        """Same curve as pydicom's apply_windowing (PS3.3 C.11.2.1.2), scaled to 0..1."""
        path = make_cxr_dicom(
            tmp_path,
            bits_stored=12,
            WindowCenter=1500,
            WindowWidth=1800,
            VOILUTFunction=function,
            RescaleSlope=2,
            RescaleIntercept=-100,
        )
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
        reference = apply_windowing(stored * 2.0 - 100.0, ds)
        lo, hi = -100.0, 4095 * 2.0 - 100.0  # pydicom's output range after rescale
        np.testing.assert_allclose(read_dicom(path).pixels, (reference - lo) / (hi - lo), atol=1e-5)

    def test_first_of_several_windows(self, tmp_path):
        several = make_cxr_dicom(
            tmp_path / "a", seed=4, WindowCenter=[1000, 3000], WindowWidth=[400, 100]
        )
        single = make_cxr_dicom(tmp_path / "b", seed=4, WindowCenter=1000, WindowWidth=400)
        np.testing.assert_array_equal(read_dicom(several).pixels, read_dicom(single).pixels)

    def test_unusable_window_falls_back_to_full_range(self, tmp_path):
        broken = make_cxr_dicom(tmp_path / "a", seed=4, WindowCenter=1000, WindowWidth=0)
        plain = make_cxr_dicom(tmp_path / "b", seed=4)
        np.testing.assert_array_equal(read_dicom(broken).pixels, read_dicom(plain).pixels)

    def test_voi_lut_sequence_is_applied_and_preferred_to_the_window(self, tmp_path):
        lut = np.round(65535 * np.sqrt(np.arange(4096) / 4095)).astype(np.uint16)
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.LUTData = lut.astype("<u2").tobytes()
        path = make_cxr_dicom(
            tmp_path,
            bits_stored=12,
            VOILUTSequence=Sequence([item]),
            WindowCenter=10,
            WindowWidth=5,
        )
        stored = pydicom.dcmread(path).pixel_array
        np.testing.assert_allclose(read_dicom(path).pixels, np.sqrt(stored / 4095), atol=1e-4)

    def test_modality_lut_sequence_comes_before_the_window(self, tmp_path):
        """A Modality LUT doubling the values displays as a RescaleSlope of 2 does."""
        item = Dataset()
        item.LUTDescriptor = [4096, 0, 16]
        item.LUTData = (2 * np.arange(4096)).astype("<u2").tobytes()
        item.ModalityLUTType = "US"
        window = {"WindowCenter": 3000, "WindowWidth": 4000}
        with_lut = make_cxr_dicom(
            tmp_path / "a", seed=6, ModalityLUTSequence=Sequence([item]), **window
        )
        with_slope = make_cxr_dicom(
            tmp_path / "b", seed=6, RescaleSlope=2, RescaleIntercept=0, **window
        )
        np.testing.assert_allclose(
            read_dicom(with_lut).pixels, read_dicom(with_slope).pixels, atol=1e-6
        )

    def test_bits_above_bits_stored_are_ignored(self, tmp_path):
        """An overlay in the unused high bits must not turn pixels white."""
        clean = make_cxr_dicom(tmp_path / "a", seed=9, bits_stored=12)
        ds = pydicom.dcmread(clean)
        dirty = tmp_path / "dirty.dcm"
        ds.PixelData = (ds.pixel_array | 0xA000).astype(np.uint16).tobytes()
        ds.save_as(dirty)
        np.testing.assert_array_equal(read_dicom(dirty).pixels, read_dicom(clean).pixels)

    @pytest.mark.parametrize("window", [{}, {"WindowCenter": 2000, "WindowWidth": 1500}])
    def test_signed_pixels_display_like_unsigned(self, tmp_path, window):
        unsigned = make_cxr_dicom(tmp_path / "u", seed=10, bits_stored=12, **window)
        signed = make_cxr_dicom(tmp_path / "s", seed=10, bits_stored=12, signed=True, **window)
        assert pydicom.dcmread(signed).pixel_array.min() < 0
        np.testing.assert_array_equal(read_dicom(signed).pixels, read_dicom(unsigned).pixels)

    @pytest.mark.parametrize("syntax", LOSSLESS)
    def test_lossless_encodings_give_identical_input(self, tmp_path, syntax):
        plain = model_input(make_cxr_dicom(tmp_path / "p", seed=3))
        path = make_cxr_dicom(tmp_path / "c", seed=3, transfer_syntax=syntax)
        assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
        assert np.array_equal(model_input(path), plain)

    @pytest.mark.parametrize(
        ("syntax", "bits"),
        [
            (JPEG2000, 12),
            (JPEGBaseline8Bit, 8),
            (JPEGExtended12Bit, 8),
            (JPEGExtended12Bit, 12),
            (JPEGLSNearLossless, 12),
        ],
    )
    def test_lossy_encodings_give_nearly_identical_input(self, tmp_path, syntax, bits):
        plain = model_input(make_cxr_dicom(tmp_path / "p", seed=3, bits_stored=bits))
        lossy = model_input(
            make_cxr_dicom(tmp_path / "c", seed=3, bits_stored=bits, transfer_syntax=syntax)
        )
        diff = np.abs(lossy - plain)
        assert diff.mean() < 3.0  # of 255
        assert np.percentile(diff, 99) < 12.0

    def test_truncated_pixel_data(self, tmp_path):
        path = make_cxr_dicom(tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        assert reason_of(read_dicom, path) == RejectReason.TRUNCATED

    @pytest.mark.parametrize(
        "syntax", [JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless]
    )
    def test_broken_codestream_is_decode_failed(self, tmp_path, syntax):
        """A complete file whose compressed image stops halfway."""
        path = make_cxr_dicom(tmp_path, transfer_syntax=syntax)
        frame = first_frame(path)
        replace_frame(path, frame[: len(frame) // 2])
        read_header(path)  # the header and the layout are fine
        assert reason_of(read_dicom, path) == RejectReason.DECODE_FAILED

    def test_decoder_crash_costs_one_image(self, tmp_path):
        """GDCM aborts its process on this JPEG; the image is rejected and decoding goes on."""
        bad = make_cxr_dicom(tmp_path, seed=1, bits_stored=8, transfer_syntax=JPEGBaseline8Bit)
        frame = bytearray(first_frame(bad))
        frame[2] = 0x8E  # the first marker after SOI loses its 0xFF
        replace_frame(bad, bytes(frame))
        with pytest.raises(Rejected) as info:
            read_dicom(bad)
        assert info.value.reason == RejectReason.DECODE_FAILED
        good = make_cxr_dicom(tmp_path, seed=2, transfer_syntax=JPEG2000Lossless, filename="ok.dcm")
        assert read_dicom(good).pixels.shape == (512, 512)

    def test_validate_false_reads_any_image(self, tmp_path):
        path = make_cxr_dicom(tmp_path, rows=128, cols=96, Modality="MR", NumberOfFrames=1)
        assert read_dicom(path, validate=False).pixels.shape == (128, 96)


class TestReadDicomAgainstSha256:
    """``sha256``: the file is read once, and the bytes hashed are the bytes decoded."""

    @staticmethod
    def sha256(path: Path) -> str:
        import hashlib

        return hashlib.sha256(path.read_bytes()).hexdigest()

    @pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, *LOSSLESS])
    @pytest.mark.parametrize("size", [None, 224])
    def test_same_pixels_as_from_the_file(self, tmp_path, syntax, size):
        path = make_cxr_dicom(tmp_path, rows=600, cols=500, transfer_syntax=syntax)
        checked = read_dicom(path, size=size, sha256=self.sha256(path))
        np.testing.assert_array_equal(checked.pixels, read_dicom(path, size=size).pixels)
        assert checked.meta == read_dicom(path).meta

    def test_other_bytes_are_refused_before_any_decoding(self, tmp_path, monkeypatch):
        from pulmoscreen.imaging import FileChangedError, dicom

        path = make_cxr_dicom(tmp_path, seed=3)
        registered = self.sha256(path)
        rewrite(path, PatientID="CORRECTED")
        monkeypatch.setattr(dicom, "_decode_open", None)  # anything decoded would fail here
        with pytest.raises(FileChangedError):
            read_dicom(path, size=224, sha256=registered)

    def test_compressed_bytes_cross_to_the_helper_instead_of_the_path(
        self, tmp_path, decoder_sources
    ):
        path = make_cxr_dicom(tmp_path, transfer_syntax=JPEG2000Lossless)
        read_dicom(path, size=224, sha256=self.sha256(path))
        read_dicom(path, size=224)
        assert decoder_sources == [path.read_bytes(), path]

    def test_an_empty_file_is_not_the_registered_one(self, tmp_path):
        from pulmoscreen.imaging import FileChangedError

        path = make_cxr_dicom(tmp_path)
        registered = self.sha256(path)
        path.write_bytes(b"")
        with pytest.raises(FileChangedError):
            read_dicom(path, size=224, sha256=registered)


class TestRealChestCR:
    """pydicom-data's RG1: a real adult chest CR, 1955x1841, 15-bit MONOCHROME1."""

    def test_decodes_with_lungs_darker_than_mediastinum(self):
        image = read_dicom(rg1("RG1_UNCR.dcm"))
        assert image.meta.body_part == "CHEST"
        rows, cols = image.pixels.shape
        centre = image.pixels[rows // 3 : 2 * rows // 3, cols // 2 - 50 : cols // 2 + 50]
        left_lung = image.pixels[rows // 3 : 2 * rows // 3, cols // 4 - 50 : cols // 4 + 50]
        assert left_lung.mean() < centre.mean()

    def test_jpeg2000_lossless_gives_identical_model_input(self):
        spec = PreprocessSpec()
        plain = to_model_input(read_dicom(rg1("RG1_UNCR.dcm")).pixels, spec)
        j2k = to_model_input(read_dicom(rg1("RG1_J2KR.dcm")).pixels, spec)
        assert np.array_equal(plain, j2k)

    def test_jpeg2000_lossy_is_within_one_grey_level(self):
        """RG1_J2KI against RG1_UNCI (its own decompressed copy) and the original RG1_UNCR.

        Measured on the 224 px model input (0..255): identical to UNCI; against UNCR at most
        0.47, mean 0.09. The tolerance: at most 1 grey level anywhere.
        """
        spec = PreprocessSpec()
        lossy = to_model_input(read_dicom(rg1("RG1_J2KI.dcm")).pixels, spec)
        for reference in ("RG1_UNCI.dcm", "RG1_UNCR.dcm"):
            expected = to_model_input(read_dicom(rg1(reference)).pixels, spec)
            assert np.abs(lossy - expected).max() <= 1.0, reference

    def test_all_four_encodings_are_predicted_through_the_workers_path(self, tiny_model_path):
        from pulmoscreen.domain import LABELS
        from pulmoscreen.model import load_screening_model, predict_batch
        from worker.inference import prepare_inputs

        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        encodings = ("UNCR", "J2KR", "UNCI", "J2KI")
        paths = {i: rg1(f"RG1_{enc}.dcm") for i, enc in enumerate(encodings)}
        ids, batch, failures = prepare_inputs(paths, loaded.card.preprocess)
        assert failures == []
        assert ids == [0, 1, 2, 3]
        probs = predict_batch(loaded.model, batch)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(probs[0], probs[1])  # lossless: same input, same scores
        np.testing.assert_allclose(probs[2], probs[3], atol=1e-4)  # lossy against its copy

    @pytest.mark.parametrize("name", ["RG3_UNCR.dcm", "RG3_J2KI.dcm"])
    def test_extremity_cr_is_not_chest(self, name):
        assert reason_of(read_header, rg1(name)) == RejectReason.NOT_CHEST


def test_a_patient_id_with_a_backslash_is_kept_as_written(tmp_path):
    """pydicom splits a text value at a backslash; the ID must not become the list's repr
    (the image would be filed under another patient)."""
    from pulmoscreen.imaging.dicom import read_header
    from tests.factories import make_cxr_dicom

    path = make_cxr_dicom(tmp_path, seed=5, PatientID="PAT\\0042", AccessionNumber="A\\1")
    meta = read_header(path)
    assert (meta.patient_id, meta.accession) == ("PAT\\0042", "A\\1")


class TestImportSideEffects:
    def test_import_changes_nothing_a_read_configures_pydicom_and_starts_helpers(self, tmp_path):
        """Importing the imaging package leaves pydicom's settings alone and starts no decoder
        helper; the first read silences validation, the first compressed image starts this
        process's helpers."""
        import subprocess
        import sys

        from pydicom.uid import RLELossless

        path = make_cxr_dicom(tmp_path, rows=64, cols=64, transfer_syntax=RLELossless)
        code = f"""
import pydicom
default = pydicom.config.settings.reading_validation_mode
import pulmoscreen.imaging as imaging
from pulmoscreen.imaging import isolation
assert pydicom.config.settings.reading_validation_mode == default, "changed at import"
assert not isolation._pools, "a pool at import"
imaging.read_dicom(__import__("pathlib").Path({str(path)!r}), validate=False)
assert pydicom.config.settings.reading_validation_mode == pydicom.config.IGNORE
assert list(isolation._pools) == [__import__("os").getpid()]
isolation.stop_decoders()
assert not isolation._pools
"""
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
