"""The reduced decode (``read_dicom(..., size=...)``, the worker's path) gives the model the input
the full-resolution decode gives it.

Every real DICOM of ../shared/data/dicom, pydicom-data's chest CR (RG1, four encodings) and the
packaged sample chest X-rays, at the shipped model's ``PreprocessSpec``: the model input of the
reduced path differs from the full path's by at most 2/255 at the 99th percentile of pixels,
and the shipped model gives both the same label and flag. The measured figures are printed
(``pytest -s``) and recorded in docs/performance.md, with those of the opt-in reduced JPEG 2000
decode, which moves the input further (``j2k_reduced``) and is held to the same label and flag
on the chest images.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000Lossless

from pulmoscreen.config import REPO_ROOT, Settings
from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from pulmoscreen.imaging.j2k import decomposition_levels, reduction_for
from pulmoscreen.model import ModelCard, card_path_for
from pulmoscreen.samples import SAMPLE_DATA, pydicom_data_file
from tests.factories import make_cxr_dicom

DICOM_DIR = REPO_ROOT.parent / "shared" / "data" / "dicom"
MODEL = Settings().resolved_model_path()
SPEC = ModelCard.load(card_path_for(MODEL)).preprocess if MODEL else PreprocessSpec(size=128)
RG1 = ("RG1_UNCR.dcm", "RG1_UNCI.dcm", "RG1_J2KR.dcm", "RG1_J2KI.dcm")
MAX_P99 = 2.0  # of 255


def _real_files() -> list[Path]:
    files = [DICOM_DIR / name for name in _manifest_names()]
    files += [p for p in (pydicom_data_file(name) for name in RG1) if p is not None]
    return files + sorted(SAMPLE_DATA.glob("*.dcm"))


def _manifest_names() -> list[str]:
    manifest = DICOM_DIR / "manifest.tsv"
    if not manifest.exists():
        return []
    lines = manifest.read_text().splitlines()[1:]
    return [line.split("\t")[0] for line in lines if line.strip()]


@cache
def _inputs(path: Path, *, j2k_reduced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(full-resolution path's model input, reduced path's)."""
    full = to_model_input(read_dicom(path, validate=False).pixels, SPEC)
    pixels = read_dicom(path, validate=False, size=SPEC.size, j2k_reduced=j2k_reduced).pixels
    return full, to_model_input(pixels, SPEC)


def _p99(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.percentile(np.abs(a - b), 99))


def _label(path: Path) -> str:
    return path.name if path.parent.name == "data" else f"{path.parent.name}/{path.name}"


class TestReducedDecodeInput:
    @pytest.mark.parametrize("path", _real_files(), ids=_label)
    def test_real_dicom_gives_the_full_resolution_input(self, path):
        full, fast = _inputs(path)
        diff = np.abs(full - fast)
        print(  # noqa: T201  (the measured parity, shown with pytest -s)
            f"{_label(path)}: max {diff.max():.1f}, p99 {np.percentile(diff, 99):.2f} of 255"
        )
        assert fast.shape == full.shape
        assert np.percentile(diff, 99) <= MAX_P99

    def test_the_real_set_covers_every_path(self):
        files = _real_files()
        if not files:
            pytest.skip("no real DICOMs here")
        syntaxes = {
            str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID)
            for p in files
        }
        # native (memory map), deflated, RLE, JPEG-LS, JPEG and JPEG 2000 (helper process)
        assert {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"} <= (
            syntaxes
        )

    @pytest.mark.parametrize(
        "tags",
        [
            {"bits_stored": 12},
            {"bits_stored": 16, "photometric": "MONOCHROME1"},
            {"bits_stored": 12, "signed": True, "WindowCenter": 2000, "WindowWidth": 1500},
            {"bits_stored": 14, "RescaleSlope": 2, "RescaleIntercept": -100},
        ],
        ids=["12-bit", "16-bit MONOCHROME1", "signed, window", "rescale"],
    )
    def test_native_data_read_through_the_memory_map(self, tmp_path, tags):
        path = make_cxr_dicom(tmp_path, seed=4, rows=700, cols=600, **tags)
        full, fast = _inputs(path)
        assert _p99(full, fast) <= MAX_P99

    def test_bits_above_bits_stored_are_dropped_from_the_memory_map(self, tmp_path):
        clean = make_cxr_dicom(tmp_path / "a", seed=9, bits_stored=12)
        ds = pydicom.dcmread(clean)
        ds.PixelData = (ds.pixel_array | 0xA000).astype(np.uint16).tobytes()
        ds.save_as(tmp_path / "dirty.dcm")
        fast = read_dicom(tmp_path / "dirty.dcm", size=SPEC.size).pixels
        np.testing.assert_array_equal(fast, read_dicom(clean, size=SPEC.size).pixels)

    def test_pixels_come_back_at_the_size_asked(self, tmp_path):
        path = make_cxr_dicom(
            tmp_path, seed=2, rows=600, cols=400, transfer_syntax=JPEG2000Lossless
        )
        assert read_dicom(path, size=96).pixels.shape == (96, 96)
        assert read_dicom(path).pixels.shape == (600, 400)


class TestReducedJpeg2000:
    def test_levels_left_out_keep_the_side_at_least_twice_the_input(self):
        assert reduction_for(2500, 5, min_side=256) == 3  # 313 px
        assert reduction_for(1955, 5, min_side=256) == 2  # 489 px: 1/8 would be 245
        assert reduction_for(4000, 2, min_side=256) == 2  # no more levels than coded
        assert reduction_for(300, 5, min_side=256) == 0

    def test_decodes_fewer_levels_of_a_real_codestream(self):
        path = pydicom_data_file("RG1_J2KR.dcm")
        if path is None:
            pytest.skip("pydicom-data is not installed")
        frame = next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))
        assert decomposition_levels(frame) == 5
        full, reduced = _inputs(path, j2k_reduced=True)
        assert reduced.shape == full.shape
        assert np.abs(full - reduced).mean() < 5.0  # the same image, of 255


def _chest_files() -> list[Path]:
    """The chest radiographs among the real files (the others are codec and hip fixtures)."""
    chest = [DICOM_DIR / n for n in _manifest_names() if n.startswith("chest_cr/")]
    rg1 = [p for p in (pydicom_data_file(name) for name in RG1) if p is not None]
    return chest + rg1 + sorted(SAMPLE_DATA.glob("*.dcm"))


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    """The shipped (or configured) model, loaded once for the module."""
    from pulmoscreen.model import load_runner

    return load_runner(MODEL, labels=LABELS, backend="keras", precision="f32")


@pytest.mark.slow
@pytest.mark.skipif(MODEL is None, reason="no trained model shipped or configured")
class TestPredictionsAgree:
    def _agree(self, loaded, pairs) -> bool:  # type: ignore[no-untyped-def]
        """Whether both inputs of every pair get the same label and flag; prints the largest
        probability difference."""
        from pulmoscreen.model import predict_batch, score_probabilities

        full = predict_batch(loaded.model, np.stack([a for a, _ in pairs]))
        fast = predict_batch(loaded.model, np.stack([b for _, b in pairs]))
        print(  # noqa: T201  (the measured agreement, shown with pytest -s)
            f"{len(pairs)} images, largest probability difference {np.abs(full - fast).max():.4f}"
        )
        scored = [
            [(s.label, s.flagged) for s in (score_probabilities(p, loaded.card) for p in probs)]
            for probs in (full, fast)
        ]
        return scored[0] == scored[1]

    def test_same_label_and_flag_on_every_real_dicom(self, model):
        assert self._agree(model, [_inputs(p) for p in _real_files()])

    def test_reduced_jpeg2000_keeps_the_chest_images_label_and_flag(self, model):
        chests = [p for p in _chest_files() if _is_jpeg2000(p)]
        if not chests:
            pytest.skip("no real JPEG 2000 chest images here")
        assert self._agree(model, [_inputs(p, j2k_reduced=True) for p in chests])


def _is_jpeg2000(path: Path) -> bool:
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    return str(syntax).startswith("1.2.840.10008.1.2.4.9")
