"""Real DICOM files from ../shared/data/dicom: every codec decodes, every rule gives its code."""

import csv
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging import PreprocessSpec, read_dicom, read_header, to_model_input

DICOM_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
pytestmark = pytest.mark.skipif(
    not (DICOM_DIR / "manifest.tsv").exists(),
    reason=f"real DICOM fixtures not found at {DICOM_DIR} (../shared/data is not checked out)",
)

# What the screening rules say about each file: None = accepted.
EXPECTED = {
    "chest_cr/siim_acr_chest_jpeg_baseline.dcm": None,
    # CR without BodyPartExamined, but its descriptions say "MODALITYLUT - TEETH"
    "other_cr/CR-ModalitySequenceLUT.dcm": RejectReason.NOT_CHEST,
    "other_cr/RG2_J2KI": RejectReason.NOT_CHEST,
    "other_cr/RG2_J2KR": RejectReason.NOT_CHEST,
    "other_cr/RG2_JLSL": RejectReason.NOT_CHEST,
    "other_cr/RG2_JLSN": RejectReason.NOT_CHEST,
    "other_cr/RG2_JPLY": RejectReason.NOT_CHEST,
    "codec_fixtures/CT_small.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/ExplVR_BigEnd.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/HasFragmentSequence.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/JPEG-LL.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/JPEGLSNearLossless_16.dcm": RejectReason.MISSING_UID,
    "codec_fixtures/JPGExtended.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/MR_small.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/MR_small_RLE.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/MR_small_jp2klossless.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/MR_small_jpeg_ls_lossless.dcm": RejectReason.WRONG_MODALITY,
    "codec_fixtures/image_dfl.dcm": RejectReason.WRONG_MODALITY,
}


def manifest() -> list[dict[str, str]]:
    if not (DICOM_DIR / "manifest.tsv").exists():
        return []
    with (DICOM_DIR / "manifest.tsv").open() as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@cache
def pixels(name: str) -> np.ndarray:
    return read_dicom(DICOM_DIR / name, validate=False).pixels


def model_input(name: str) -> np.ndarray:
    return to_model_input(pixels(name), PreprocessSpec())


class TestEveryTransferSyntax:
    @pytest.mark.parametrize("row", manifest(), ids=lambda row: row["file"])
    def test_decodes_to_the_size_in_the_manifest(self, row):
        rows, cols = (int(n) for n in row["rows_x_cols"].split("x"))
        decoded = pixels(row["file"])
        assert decoded.shape == (rows, cols)
        assert decoded.min() >= 0.0
        assert decoded.max() <= 1.0
        assert decoded.max() > decoded.min()  # an image, not a blank

    def test_manifest_covers_every_codec_family(self):
        syntaxes = {row["transfer_syntax_uid"] for row in manifest()}
        assert {
            "1.2.840.10008.1.2.1",  # explicit little endian
            "1.2.840.10008.1.2.2",  # explicit big endian
            "1.2.840.10008.1.2.1.99",  # deflated
            "1.2.840.10008.1.2.5",  # RLE
            "1.2.840.10008.1.2.4.50",  # JPEG baseline
            "1.2.840.10008.1.2.4.51",  # JPEG extended, 12-bit
            "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
            "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
            "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
            "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
            "1.2.840.10008.1.2.4.91",  # JPEG 2000
        } <= syntaxes

    @pytest.mark.parametrize(
        "name",
        [
            "codec_fixtures/MR_small_RLE.dcm",
            "codec_fixtures/MR_small_jp2klossless.dcm",
            "codec_fixtures/MR_small_jpeg_ls_lossless.dcm",
        ],
    )
    def test_lossless_mr_encodings_are_identical(self, name):
        np.testing.assert_array_equal(pixels(name), pixels("codec_fixtures/MR_small.dcm"))

    def test_jpeg_ls_lossless_equals_jpeg2000_lossless(self):
        np.testing.assert_array_equal(pixels("other_cr/RG2_JLSL"), pixels("other_cr/RG2_J2KR"))

    @pytest.mark.parametrize(
        "name", ["other_cr/RG2_J2KI", "other_cr/RG2_JLSN", "other_cr/RG2_JPLY"]
    )
    def test_lossy_encodings_are_within_two_grey_levels(self, name):
        """Measured max differences (of 255): J2KI 0.31, JLSN 1.14, JPLY (12-bit JPEG) 0.85."""
        diff = np.abs(model_input(name) - model_input("other_cr/RG2_J2KR"))
        assert diff.max() <= 2.0
        assert diff.mean() <= 0.5


class TestScreeningRules:
    @pytest.mark.parametrize(("name", "reason"), sorted(EXPECTED.items()))
    def test_header_verdict(self, name, reason):
        if reason is None:
            assert read_header(DICOM_DIR / name).sop_uid
        else:
            with pytest.raises(Rejected) as info:
                read_header(DICOM_DIR / name)
            assert info.value.reason == reason

    def test_every_manifest_file_has_a_verdict(self):
        assert {row["file"] for row in manifest()} == set(EXPECTED)

    def test_siim_chest_displays_lungs_darker_than_spine(self):
        image = read_dicom(DICOM_DIR / "chest_cr/siim_acr_chest_jpeg_baseline.dcm").pixels
        rows, cols = image.shape
        band = slice(rows // 3, 2 * rows // 3)
        spine = image[band, cols // 2 - 40 : cols // 2 + 40].mean()
        lung = image[band, cols // 4 - 40 : cols // 4 + 40].mean()
        assert lung < spine
