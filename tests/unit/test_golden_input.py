"""Training and serving feed the model the same array for the same DICOM."""

import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from pulmoscreen.config import get_settings
from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from tests.factories import make_cxr_dicom
from training.images import model_input_for
from worker.inference import prepare_inputs


class TestTrainingServingParity:
    @pytest.mark.parametrize(
        "options",
        [
            {"photometric": "MONOCHROME1", "bits_stored": 14},
            # 8-bit data and a clipping window: the LUTs apply before the resize
            {"bits_stored": 8, "WindowCenter": 100, "WindowWidth": 120},
            {"transfer_syntax": JPEG2000Lossless, "bits_stored": 12},
            {"transfer_syntax": RLELossless, "bits_stored": 16, "rows": 700, "cols": 900},
        ],
    )
    def test_model_input_for_is_the_workers_input(self, tmp_path, options):
        """Calibration, evaluation and the content check's fit (``model_input_for``) read a
        DICOM through the worker's own read, at the model's size: the same array, exactly."""
        spec = PreprocessSpec(size=224)
        path = make_cxr_dicom(tmp_path, seed=42, **options)
        ids, batch, failures = prepare_inputs({7: path}, spec)
        assert (ids, failures) == ([7], [])
        assert np.array_equal(batch[0], model_input_for(path, spec))

    def test_reduced_jpeg2000_decode_follows_the_served_setting(self, tmp_path, monkeypatch):
        """A site serving with ``PULMO_J2K_REDUCED_DECODE`` calibrates and evaluates on the
        reduced decode too: ``model_input_for`` reads the setting the worker reads."""
        spec = PreprocessSpec(size=64)
        path = make_cxr_dicom(
            tmp_path, seed=43, transfer_syntax=JPEG2000Lossless, rows=600, cols=520
        )
        inputs = {}
        for reduced in (False, True):
            ids, batch, failures = prepare_inputs({7: path}, spec, j2k_reduced=reduced)
            assert (ids, failures) == ([7], [])
            inputs[reduced] = batch[0]
        assert not np.array_equal(inputs[False], inputs[True])  # the reduction took place
        for reduced in (False, True):
            monkeypatch.setenv("PULMO_J2K_REDUCED_DECODE", str(reduced).lower())
            get_settings.cache_clear()
            try:
                assert np.array_equal(model_input_for(path, spec), inputs[reduced])
            finally:
                get_settings.cache_clear()

    def test_full_resolution_gives_the_same_input_to_float_rounding(self, tmp_path):
        """The worker decodes at the model's size and applies the LUTs after the area resize
        (read_dicom's ``size``); the full-resolution path does the same arithmetic in another
        order: equal to float32 rounding (6e-5 of 255 here, 0 with CLAHE)."""
        spec = PreprocessSpec(size=224)
        path = make_cxr_dicom(tmp_path, seed=42, photometric="MONOCHROME1", bits_stored=14)
        full = to_model_input(read_dicom(path).pixels, spec)
        np.testing.assert_allclose(model_input_for(path, spec), full, rtol=0, atol=1e-3)
