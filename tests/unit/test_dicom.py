from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging import PreprocessSpec, read_dicom, read_header, to_model_input
from tests.factories import make_cxr_dicom


def rg1(name: str) -> Path:
    data = pytest.importorskip("pydicom.data", reason="pydicom-data is not installed")
    try:
        return Path(data.get_testdata_file(name))
    except (ValueError, TypeError):
        pytest.skip(f"{name} is not available from pydicom-data")


class TestReadHeader:
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
        ],
    )
    def test_rejects_with_code(self, tmp_path, tags, reason):
        path = make_cxr_dicom(tmp_path, **tags)
        with pytest.raises(Rejected) as info:
            read_header(path)
        assert info.value.reason == reason

    def test_missing_optional_tags_are_accepted(self, tmp_path):
        path = make_cxr_dicom(tmp_path, BodyPartExamined="", ViewPosition="")
        assert read_header(path).body_part is None

    def test_too_small(self, tmp_path):
        path = make_cxr_dicom(tmp_path, rows=128, cols=128)
        with pytest.raises(Rejected) as info:
            read_header(path)
        assert info.value.reason == RejectReason.TOO_SMALL

    def test_not_dicom(self, tmp_path):
        path = tmp_path / "x.dcm"
        path.write_text("hello")
        with pytest.raises(Rejected) as info:
            read_header(path)
        assert info.value.reason == RejectReason.NOT_DICOM


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

    @pytest.mark.parametrize("syntax", [RLELossless, ImplicitVRLittleEndian, JPEG2000Lossless])
    def test_lossless_encodings_give_identical_input(self, tmp_path, syntax):
        spec = PreprocessSpec(size=224)
        plain = to_model_input(read_dicom(make_cxr_dicom(tmp_path / "p", seed=3)).pixels, spec)
        path = make_cxr_dicom(tmp_path / "c", seed=3, transfer_syntax=syntax)
        assert np.array_equal(to_model_input(read_dicom(path).pixels, spec), plain)

    def test_truncated_pixel_data(self, tmp_path):
        path = make_cxr_dicom(tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(Rejected) as info:
            read_dicom(path)
        assert info.value.reason == RejectReason.TRUNCATED


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
