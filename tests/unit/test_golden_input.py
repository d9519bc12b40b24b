"""Training and serving feed the model the same array for the same DICOM."""

import numpy as np

from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from tests.factories import make_cxr_dicom
from training.images import model_input_for
from worker.inference import prepare_inputs


class TestTrainingServingParity:
    def test_identical_model_input(self, tmp_path):
        spec = PreprocessSpec(size=224)
        path = make_cxr_dicom(tmp_path, seed=42, photometric="MONOCHROME1", bits_stored=14)
        ids, batch, failures = prepare_inputs({7: path}, spec)
        assert ids == [7]
        assert failures == []
        # The worker decodes at the model's size and applies the LUTs after the area resize
        # (read_dicom's ``size``); training reads full resolution. The same arithmetic in
        # another order: equal to float32 rounding (6e-5 of 255 here, 0 with CLAHE).
        np.testing.assert_allclose(batch[0], model_input_for(path, spec), rtol=0, atol=1e-3)
        full = to_model_input(read_dicom(path).pixels, spec)
        assert np.array_equal(full, model_input_for(path, spec))
