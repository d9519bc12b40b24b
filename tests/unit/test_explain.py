"""Heatmaps (pulmoscreen.model.explain): CAM equals Grad-CAM on this head, and is faithful."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import read_dicom, to_model_input
from pulmoscreen.model.build import build_tiny_model, load_screening_model
from pulmoscreen.model.explain import (
    class_activation_maps,
    dense_kernel,
    feature_map_model,
    heatmap_png,
    heatmaps_for,
    label_to_explain,
    overlay,
    read_heatmap_png,
    to_heatmap,
)
from tests.factories import TINY_SPEC, make_cxr_dicom


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.factories import make_tiny_model

    path = make_tiny_model(tmp_path_factory.mktemp("explain"))
    return load_screening_model(path, labels=LABELS)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """Model inputs of five synthetic chest radiographs, as the worker makes them."""
    folder = tmp_path_factory.mktemp("dicoms")
    batch = [
        to_model_input(
            read_dicom(make_cxr_dicom(folder, seed=s, rows=256, cols=256)).pixels, TINY_SPEC
        )
        for s in range(5)
    ]
    return np.stack(batch).astype(np.float32)


def grad_cam(model, batch: np.ndarray, class_index: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Grad-CAM (Selvaraju et al. 2017) on the class logit, with gradients: the channel weights
    are the spatial mean of d(logit)/d(feature map) at the last convolution."""
    import keras
    import tensorflow as tf

    conv = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    probs_layer = model.get_layer("probs")
    softmax = probs_layer.activation
    probs_layer.activation = keras.activations.linear  # the logits, before the softmax
    try:
        logits_and_map = keras.Model(model.inputs, [model.outputs[0], conv.output])
        with tf.GradientTape() as tape:
            logits, feature_map = logits_and_map(tf.constant(batch), training=False)
            target = logits[:, class_index]
        grads = tape.gradient(target, feature_map).numpy()
    finally:
        probs_layer.activation = softmax
    alpha = grads.mean(axis=(1, 2))  # (n, k)
    return np.einsum("nhwk,nk->nhw", feature_map.numpy(), alpha)


def logits_of(model, batch: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    probs = np.asarray(model.predict_on_batch(batch), dtype=np.float64)
    return np.log(np.clip(probs, 1e-30, None))  # the logits up to a per-image constant


class TestFeatureMapModel:
    def test_probabilities_are_the_models_own(self, tiny, inputs):
        probs, pooled, maps = feature_map_model(tiny.model).predict_on_batch(inputs)
        np.testing.assert_allclose(probs, tiny.model.predict_on_batch(inputs), atol=1e-6)
        # the pooled features are the feature map's spatial mean: global average pooling
        np.testing.assert_allclose(pooled, np.asarray(maps).mean(axis=(1, 2)), atol=1e-5)

    def test_finds_the_map_inside_a_nested_backbone(self):
        model = build_tiny_model(LABELS)  # conv layers inside a Sequential, as ResNet50 is
        batch = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
        with_maps = feature_map_model(model)
        # one pass: the backbone is not run a second time beside the copy that gives the map
        assert model.get_layer("backbone") not in with_maps.layers
        probs, _, maps = with_maps.predict_on_batch(batch)
        assert np.asarray(maps).shape == (2, 13, 13, 16)
        logits = np.asarray(maps).mean(axis=(1, 2)) @ dense_kernel(model)
        logits += model.get_layer("probs").get_weights()[1]
        expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(probs, expected, atol=1e-5)

    @pytest.mark.slow
    def test_the_screening_resnet50(self):
        from pulmoscreen.model.build import build_model

        model = build_model(LABELS, weights=None, input_size=64)
        batch = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
        with_maps = feature_map_model(model)
        assert model.get_layer("resnet50") not in with_maps.layers
        probs, _, maps = with_maps.predict_on_batch(batch)
        assert np.asarray(maps).shape == (2, 2, 2, 2048)  # conv5 of a 64 px input
        np.testing.assert_allclose(probs, model.predict_on_batch(batch), atol=1e-5)

    def test_refuses_a_head_that_is_not_global_average_pooling(self):
        import keras

        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(2, 3)(inputs)
        x = keras.layers.Flatten()(x)
        model = keras.Model(inputs, keras.layers.Dense(3, name="probs")(x))
        with pytest.raises(ValueError, match="not global average pooling"):
            feature_map_model(model)


class TestCamIsGradCam:
    @pytest.mark.parametrize("class_index", [0, 1, 2])
    def test_equals_grad_cam_computed_with_gradients(self, tiny, inputs, class_index):
        _, _, maps = feature_map_model(tiny.model).predict_on_batch(inputs)
        ours = heatmaps_for(
            np.asarray(maps), dense_kernel(tiny.model), [class_index] * len(inputs), size=32
        )
        theirs = grad_cam(tiny.model, inputs, class_index)
        assert any(m.max() > 0 for m in ours)
        for mine, reference in zip(ours, theirs, strict=True):
            # float32 rounding of the two paths, on a map scaled to [0, 1]
            np.testing.assert_allclose(mine, to_heatmap(reference, size=32), atol=1e-4)

    def test_maps_sum_to_the_logit_differences(self, tiny, inputs):
        """CAM decomposes the logit over locations: its spatial mean is the logit less the
        bias, so the difference of two classes' maps carries the models own decision."""
        _, _, maps = feature_map_model(tiny.model).predict_on_batch(inputs)
        kernel, bias = (np.asarray(w) for w in tiny.model.get_layer("probs").get_weights())
        cams = [
            class_activation_maps(np.asarray(maps), kernel, c).mean(axis=(1, 2)) for c in (0, 1)
        ]
        expected = logits_of(tiny.model, inputs)
        np.testing.assert_allclose(
            (cams[1] + bias[1]) - (cams[0] + bias[0]), expected[:, 1] - expected[:, 0], atol=1e-4
        )


class TestFaithfulness:
    def test_masking_the_hottest_region_lowers_the_score_more_than_a_random_one(self, tiny, inputs):
        _, _, maps = feature_map_model(tiny.model).predict_on_batch(inputs)
        kernel = dense_kernel(tiny.model)
        base = logits_of(tiny.model, inputs)
        rng = np.random.default_rng(0)
        side, hot_drops, random_drops = 10, [], []
        for c in range(len(LABELS)):
            for n, heat in enumerate(heatmaps_for(np.asarray(maps), kernel, [c] * 5, size=32)):
                y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
                corners = [
                    (min(max(y - side // 2, 0), 32 - side), min(max(x - side // 2, 0), 32 - side))
                ]
                corners += [tuple(rng.integers(0, 32 - side, 2)) for _ in range(20)]
                masked = np.repeat(inputs[n : n + 1], len(corners), axis=0)
                for k, (top, left) in enumerate(corners):
                    masked[k, top : top + side, left : left + side] = inputs[n].mean()
                own = logits_of(tiny.model, masked)
                drops = (base[n, c] - base[n].mean()) - (own[:, c] - own.mean(axis=1))
                hot_drops.append(drops[0])
                random_drops.append(drops[1:].mean())
        assert np.mean(hot_drops) > np.mean(random_drops)
        assert np.mean(np.array(hot_drops) > np.array(random_drops)) >= 0.8


class TestToHeatmap:
    def test_scaled_to_zero_one_at_the_input_size(self):
        cam = np.array([[-2.0, 0.5], [1.0, 4.0]], dtype=np.float32)
        heat = to_heatmap(cam, size=16)
        assert heat.shape == (16, 16)
        assert heat.dtype == np.float32
        assert heat.min() == 0.0
        assert heat.max() == pytest.approx(1.0)
        assert heat[-1, -1] > heat[0, 0]  # the hot corner stays hot

    def test_nothing_for_the_class_gives_zeros(self):
        assert not to_heatmap(-np.ones((3, 3), dtype=np.float32), size=8).any()


class TestLabelToExplain:
    def test_the_flagged_disease_with_the_highest_probability(self, tiny):
        card = tiny.card  # thresholds 0.5 and 0.5
        probs = np.array([0.1, 0.3, 0.6], dtype=np.float32)
        assert label_to_explain(probs, card) == "tuberculosis"
        from dataclasses import replace

        low = replace(card, thresholds={"pneumonia": 0.2, "tuberculosis": 0.2})
        assert label_to_explain(np.array([0.1, 0.5, 0.4], dtype=np.float32), low) == "pneumonia"

    def test_none_when_nothing_is_flagged_or_the_model_is_untrained(self, tiny):
        from dataclasses import replace

        probs = np.array([0.8, 0.1, 0.1], dtype=np.float32)
        assert label_to_explain(probs, tiny.card) is None
        untrained = replace(tiny.card, trained=False)
        assert label_to_explain(np.array([0.0, 0.0, 1.0], dtype=np.float32), untrained) is None


class TestHeatmapPng:
    def test_round_trip_as_8_bit_grey(self):
        heat = to_heatmap(np.random.default_rng(2).normal(size=(5, 5)).astype(np.float32), size=32)
        data = heatmap_png(heat)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        back = read_heatmap_png(data)
        assert back.shape == (32, 32)
        np.testing.assert_allclose(back, heat, atol=0.5 / 255 + 1e-6)


class TestOverlay:
    def test_rgb_at_the_radiographs_size(self):
        grey = np.tile(np.linspace(0, 4095, 200, dtype=np.float32), (100, 1)).astype(np.uint16)
        heat = np.zeros((32, 32), dtype=np.float32)
        heat[:, 16:] = 1.0
        rgb = overlay(grey, heat)
        assert rgb.shape == (100, 200, 3)
        assert rgb.dtype == np.uint8
        cold, hot = rgb[50, 5], rgb[50, 195]
        assert cold[0] == cold[1] == cold[2]  # no heat: the radiograph, grey
        assert hot[0] > hot[2] + 60  # the hottest place is red, not blue

    def test_a_cropped_models_heatmap_covers_the_centre_of_the_whole_radiograph(self):
        grey = np.full((100, 200), 1000, dtype=np.uint16)
        grey[0, 0] = 0  # not flat
        rgb = overlay(grey, np.ones((32, 32), dtype=np.float32), crop=0.1)
        edge, centre = rgb[5, 100], rgb[50, 100]  # row 5 is in the trimmed top 10 %
        assert edge[0] == edge[1] == edge[2]  # outside what the model saw: no colour
        assert centre[0] != centre[2]  # inside: coloured
        coloured = (rgb[..., 0] != rgb[..., 2]).nonzero()
        assert (coloured[0].min(), coloured[0].max()) == (10, 89)
        assert (coloured[1].min(), coloured[1].max()) == (20, 179)

    def test_a_flat_image_and_a_cold_map_stay_grey(self):
        rgb = overlay(np.full((10, 10), 7.0), np.zeros((4, 4), dtype=np.float32))
        assert (rgb == 128).all()


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino not installed")
class TestOpenVinoMaps:
    def test_openvino_gives_the_heatmaps_keras_gives(self, tiny_model_path: Path, tmp_path, inputs):
        from pulmoscreen.model.backends import load_runner

        found = {}
        for backend in ("keras", "openvino"):
            runner = load_runner(
                tiny_model_path, labels=LABELS, backend=backend, precision="f32", cache_dir=tmp_path
            ).model
            _, _, maps = runner.predict_with_maps(inputs)
            found[backend] = heatmaps_for(maps, runner.classifier_kernel(), [2] * 5, size=32)
        for a, b in zip(found["keras"], found["openvino"], strict=True):
            np.testing.assert_allclose(a, b, atol=1e-4)
