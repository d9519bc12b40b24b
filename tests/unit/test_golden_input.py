"""Training and serving feed the model the same array for the same DICOM."""

import numpy as np

from pulmoscreen.imaging import PreprocessSpec
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
        assert np.array_equal(batch[0], model_input_for(path, spec))
