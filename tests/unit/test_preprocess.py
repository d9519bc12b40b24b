import cv2
import numpy as np
import pytest

from pulmoscreen.imaging.preprocess import (
    PreprocessSpec,
    normalize_grey,
    resize_grey,
    to_model_input,
)


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

    def test_cards_written_before_equalisation_load_without_it(self):
        old = {"size": 128, "channels": 3, "clip_percentiles": [0.5, 99.5]}
        assert PreprocessSpec.from_dict(old).equalize == "none"

    def test_cards_written_before_the_crop_load_without_it(self):
        old = {"size": 128, "channels": 3, "clip_percentiles": [0.5, 99.5], "equalize": "clahe"}
        assert PreprocessSpec.from_dict(old).crop == 0.0
        cropped = PreprocessSpec(size=64, crop=0.1)
        assert PreprocessSpec.from_dict(cropped.to_dict()) == cropped

    def test_crop_out_of_range_is_refused(self):
        for bad in (-0.1, 0.25, 0.5):
            with pytest.raises(ValueError, match="crop"):
                PreprocessSpec(crop=bad)

    def test_unknown_equalisation_is_refused(self):
        with pytest.raises(ValueError, match="equalize"):
            PreprocessSpec(equalize="retinex")


class TestEqualize:
    def test_clahe_evens_out_a_tone_curve(self):
        """Two renderings of one image through different tone curves (as two scanners'
        processing would give) are closer after CLAHE than after the percentile clip alone."""
        rng = np.random.default_rng(4)
        base = cv2.GaussianBlur(rng.random((256, 256)).astype(np.float32), (0, 0), 6)
        base = (base - base.min()) / (base.max() - base.min())
        curved = base**2.2
        plain, clahe = PreprocessSpec(size=64), PreprocessSpec(size=64, equalize="clahe")

        def gap(spec: PreprocessSpec) -> float:
            return float(np.abs(to_model_input(base, spec) - to_model_input(curved, spec)).mean())

        assert gap(clahe) < 0.6 * gap(plain)

    def test_clahe_output_is_deterministic_and_in_range(self):
        pixels = np.random.default_rng(5).integers(0, 4096, (300, 280)).astype(np.uint16)
        spec = PreprocessSpec(size=64, equalize="clahe")
        out = to_model_input(pixels, spec)
        assert np.array_equal(out, to_model_input(pixels.copy(), spec))
        assert out.min() >= 0.0
        assert out.max() <= 255.0
        assert not np.array_equal(out, to_model_input(pixels, PreprocessSpec(size=64)))

    def test_model_input_is_the_normalised_resized_plane(self):
        """Training caches ``resize_grey`` planes and normalises them per batch: the same
        arrays as serving's ``to_model_input``."""
        pixels = np.random.default_rng(6).integers(0, 255, (200, 240)).astype(np.uint8)
        for equalize in ("none", "clahe"):
            spec = PreprocessSpec(size=48, equalize=equalize)
            plane = normalize_grey(resize_grey(pixels, spec.size), spec)
            assert np.array_equal(to_model_input(pixels, spec)[:, :, 1], plane)


class TestCrop:
    def test_a_burned_in_border_marker_leaves_the_input(self):
        """A bright label in the corner (as a scanner burns in) changes the uncropped input,
        and not the input cropped by 10 % of the side."""
        rng = np.random.default_rng(7)
        chest = cv2.GaussianBlur(rng.random((400, 400)).astype(np.float32), (0, 0), 8)
        marked = chest.copy()
        marked[8:30, 8:60] = chest.max() * 3
        whole, cropped = PreprocessSpec(size=64), PreprocessSpec(size=64, crop=0.1)
        assert not np.array_equal(to_model_input(chest, whole), to_model_input(marked, whole))
        assert np.array_equal(to_model_input(chest, cropped), to_model_input(marked, cropped))

    def test_the_centre_fills_the_input(self):
        plane = np.zeros((100, 100), np.float32)
        plane[20:80, 20:80] = np.linspace(1.0, 2.0, 60)  # a ramp in the centre, 60 % of the side
        out = to_model_input(plane, PreprocessSpec(size=100, crop=0.2))[:, :, 0]
        assert out.shape == (100, 100)
        # The frame is gone: every row is the ramp, from black to white across the input.
        assert np.array_equal(out[0], out[50])
        assert out[50, 0] == 0.0
        assert out[50, -1] == 255.0
