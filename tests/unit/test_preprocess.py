import numpy as np
import pytest

from pulmoscreen.imaging.preprocess import PreprocessSpec, to_model_input


class TestToModelInput:
    def test_shape_dtype_and_range(self):
        rng = np.random.default_rng(0)
        pixels = rng.random((600, 500)).astype(np.float32)
        out = to_model_input(pixels, PreprocessSpec(size=224))
        assert out.shape == (224, 224, 3)
        assert out.dtype == np.float32
        assert out.min() == 0.0
        assert out.max() == 255.0
        assert np.array_equal(out[..., 0], out[..., 2])

    def test_deterministic(self):
        pixels = np.random.default_rng(1).integers(0, 4096, (300, 300)).astype(np.uint16)
        spec = PreprocessSpec(size=64)
        assert np.array_equal(to_model_input(pixels, spec), to_model_input(pixels.copy(), spec))

    def test_intensity_normalised_per_image(self):
        """A darker, lower-contrast copy of an image gives the same model input."""
        pixels = np.random.default_rng(2).random((256, 256)).astype(np.float32)
        spec = PreprocessSpec(size=64)
        np.testing.assert_allclose(
            to_model_input(pixels, spec), to_model_input(0.2 + 0.5 * pixels, spec), atol=1e-3
        )

    def test_rgb_equals_grey(self):
        grey = np.random.default_rng(3).integers(0, 256, (128, 128)).astype(np.uint8)
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        spec = PreprocessSpec(size=32)
        np.testing.assert_allclose(to_model_input(rgb, spec), to_model_input(grey, spec), atol=0.5)

    def test_constant_image_is_black_not_nan(self):
        out = to_model_input(np.full((100, 100), 7.0), PreprocessSpec(size=16))
        assert not np.isnan(out).any()
        assert out.max() == 0.0

    def test_rejects_non_image(self):
        with pytest.raises(ValueError, match="2-D"):
            to_model_input(np.zeros(10), PreprocessSpec(size=16))


class TestPreprocessSpec:
    def test_round_trip(self):
        spec = PreprocessSpec(size=96, channels=3, clip_percentiles=(1.0, 99.0))
        assert PreprocessSpec.from_dict(spec.to_dict()) == spec
