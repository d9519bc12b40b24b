"""`pulmoscreen preview`: the model input the worker would compute, as an 8-bit PNG."""

import cv2
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless
from typer.testing import CliRunner

from pulmoscreen.cli import app, write_preview
from pulmoscreen.config import Settings, get_settings
from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from pulmoscreen.model import ModelCard, card_path_for
from tests.factories import make_cxr_dicom
from worker.inference import prepare_inputs

SPEC = PreprocessSpec(size=48)


@pytest.fixture
def model_path(tmp_path):
    """A model path whose card sets the input recipe (preview reads the card, not weights)."""
    path = tmp_path / "model" / "m.keras"
    path.parent.mkdir()
    ModelCard(version="m1", labels=LABELS, thresholds={}, preprocess=SPEC).save(card_path_for(path))
    return path


def read_png(path):
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


class TestWritePreview:
    def test_png_is_the_served_models_input_rounded_to_8_bits(self, tmp_path, model_path):
        dicom = make_cxr_dicom(tmp_path / "in", seed=1, WindowCenter=1500, WindowWidth=2000)
        out = tmp_path / "out" / "preview.png"
        assert write_preview(Settings(model_path=model_path), dicom, out) == 0
        png = read_png(out)
        assert png.dtype == np.uint8
        assert png.shape == (48, 48)
        expected = to_model_input(read_dicom(dicom).pixels, SPEC)[:, :, 0]
        assert np.abs(png - expected).max() <= 0.5

    def test_reduced_jpeg2000_decode_follows_the_served_setting(self, tmp_path, model_path):
        """Under ``PULMO_J2K_REDUCED_DECODE`` the preview shows what the worker then feeds."""
        dicom = make_cxr_dicom(
            tmp_path / "in", seed=5, transfer_syntax=JPEG2000Lossless, rows=600, cols=520
        )
        pngs = {}
        for reduced in (False, True):
            settings = Settings(model_path=model_path, j2k_reduced_decode=reduced)
            out = tmp_path / f"{reduced}.png"
            assert write_preview(settings, dicom, out) == 0
            pngs[reduced] = read_png(out).astype(np.float32)
            ids, batch, _ = prepare_inputs({0: dicom}, SPEC, j2k_reduced=reduced)
            assert ids == [0]
            assert np.abs(pngs[reduced] - batch[0, :, :, 0]).max() <= 0.5
        assert not np.array_equal(pngs[False], pngs[True])  # the reduction took place

    def test_without_a_model_the_default_recipe_is_used(self, tmp_path, monkeypatch):
        monkeypatch.setattr("pulmoscreen.config.DEFAULT_MODEL_PATH", tmp_path / "none.keras")
        out = tmp_path / "p.png"
        assert write_preview(Settings(), make_cxr_dicom(tmp_path, seed=2), out) == 0
        assert read_png(out).shape == (PreprocessSpec().size, PreprocessSpec().size)

    def test_monochrome1_previews_as_a_viewer_shows_it(self, tmp_path, model_path):
        settings = Settings(model_path=model_path)
        mono2 = make_cxr_dicom(tmp_path / "a", seed=3)
        mono1 = make_cxr_dicom(tmp_path / "b", seed=3, photometric="MONOCHROME1")
        write_preview(settings, mono2, tmp_path / "2.png")
        write_preview(settings, mono1, tmp_path / "1.png")
        np.testing.assert_array_equal(read_png(tmp_path / "1.png"), read_png(tmp_path / "2.png"))
        png = read_png(tmp_path / "2.png")
        assert png[:, 15].mean() < png[:, 24].mean()  # lung darker than mediastinum

    def test_rejected_file_writes_nothing(self, tmp_path, model_path, capsys):
        dicom = make_cxr_dicom(tmp_path, seed=4, ViewPosition="LL")
        out = tmp_path / "p.png"
        assert write_preview(Settings(model_path=model_path), dicom, out) == 2
        assert "not_frontal" in capsys.readouterr().out
        assert not out.exists()


class TestPreviewCommand:
    def test_command_writes_png(self, tmp_path, model_path, monkeypatch):
        monkeypatch.setenv("PULMO_MODEL_PATH", str(model_path))
        monkeypatch.chdir(tmp_path)
        get_settings.cache_clear()
        dicom = make_cxr_dicom(tmp_path / "in", seed=5, filename="IM 0001")
        try:
            result = CliRunner().invoke(app, ["preview", str(dicom)])
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        assert read_png(tmp_path / "IM 0001.png").shape == (48, 48)
