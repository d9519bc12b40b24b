"""Site adaptation: the early stages' BatchNorm statistics re-estimated on unlabelled images."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import PreprocessSpec
from pulmoscreen.model.build import build_model, load_compact, save_compact
from pulmoscreen.model.card import ModelCard, card_path_for
from training.adapt import (
    MIN_IMAGES,
    adapt_batchnorm,
    adapt_to_site,
    adapted_halves,
    held_out_site_adapted,
    predict_in_batches,
    stage_layers,
)
from training.dataset import Sample


def staged_model() -> Any:
    """A small network whose BatchNorm layers are named as in ResNet50's stages."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.BatchNormalization(name="conv1_bn")(inputs)
    x = keras.layers.Conv2D(4, 1, name="conv2_block1_1_conv")(x)
    x = keras.layers.BatchNormalization(name="conv2_block1_1_bn")(x)
    x = keras.layers.Conv2D(4, 1, name="conv4_block1_1_conv")(x)
    x = keras.layers.BatchNormalization(name="conv4_block1_1_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs)


def site_inputs(n: int, *, mean: float = 5.0, std: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(mean, std, (n, 8, 8, 3)).astype(np.float32)


def moving(model: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    layer = model.get_layer(name)
    return np.asarray(layer.moving_mean), np.asarray(layer.moving_variance)


class TestAdaptBatchnorm:
    def test_the_chosen_stages_take_the_site_statistics_and_the_rest_stay(self) -> None:
        model = staged_model()
        kernels = [np.asarray(w) for w in model.get_layer("conv2_block1_1_conv").get_weights()]
        deep_before = moving(model, "conv4_block1_1_bn")
        x = site_inputs(100)
        assert adapt_batchnorm(model, x, stages=("conv1", "conv2"), batch_size=32) == 2
        mean, var = moving(model, "conv1_bn")
        # the size-weighted mean of the batch means is the mean of all the images
        np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), atol=1e-4)
        np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=0.05)
        after_mean, _ = moving(model, "conv2_block1_1_bn")
        assert not np.allclose(after_mean, 0.0)
        for before, after in zip(deep_before, moving(model, "conv4_block1_1_bn"), strict=True):
            np.testing.assert_array_equal(before, after)
        for before, after in zip(
            kernels, model.get_layer("conv2_block1_1_conv").get_weights(), strict=True
        ):
            np.testing.assert_array_equal(before, np.asarray(after))

    def test_layer_settings_are_restored(self) -> None:
        model = staged_model()
        layer = model.get_layer("conv4_block1_1_bn")
        layer.trainable = False
        adapt_batchnorm(model, site_inputs(40), stages=("conv1",))
        assert layer.trainable is False
        assert model.get_layer("conv1_bn").trainable is True
        assert model.get_layer("conv1_bn").momentum == pytest.approx(0.99)

    def test_refuses_too_few_images_and_a_model_without_the_stages(self) -> None:
        model = staged_model()
        with pytest.raises(ValueError, match=f"at least {MIN_IMAGES}"):
            adapt_batchnorm(model, site_inputs(MIN_IMAGES - 1), stages=("conv1",))
        with pytest.raises(ValueError, match="no BatchNorm layer"):
            adapt_batchnorm(model, site_inputs(40), stages=("conv5",))

    def test_each_half_is_scored_by_the_model_adapted_on_the_other(self) -> None:
        model = staged_model()
        original = [np.asarray(w) for w in model.get_weights()]
        x = site_inputs(80, mean=3.0)
        probs = adapted_halves(model, x, predict_in_batches, stages=("conv1", "conv2"), seed=4)
        for kept, now in zip(original, model.get_weights(), strict=True):
            np.testing.assert_array_equal(kept, np.asarray(now))
        order = np.random.default_rng(4).permutation(80)
        first, second = order[:40], order[40:]
        adapt_batchnorm(model, x[first], stages=("conv1", "conv2"), seed=4)
        np.testing.assert_allclose(probs[second], predict_in_batches(model, x[second]), atol=1e-6)
        assert not np.allclose(probs[first], predict_in_batches(model, x[first]), atol=1e-6)


SPEC = PreprocessSpec(size=32)


def resnet_model_file(directory: Path) -> Path:
    """A randomly initialised ResNet50 at 32 px, saved as a shipped model is."""
    import keras

    keras.utils.set_random_seed(5)
    model = build_model(LABELS, weights=None, input_size=SPEC.size)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "pulmoscreen_resnet50.npz"
    save_compact(model, path)
    ModelCard(
        version="resnet-test-1",
        labels=LABELS,
        thresholds={"pneumonia": 0.5, "tuberculosis": 0.5},
        preprocess=SPEC,
        details={"lineage": {"init": "scratch"}},
    ).save(card_path_for(path))
    return path


def write_pngs(folder: Path, n: int, *, brightness: int) -> list[Path]:
    rng = np.random.default_rng(brightness)
    paths = []
    for i in range(n):
        sub = folder / f"day{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(rng.normal(brightness, 40, (48, 48)), 0, 255).astype(np.uint8)
        path = sub / f"img{i:03d}.png"
        cv2.imwrite(str(path), pixels)
        paths.append(path)
    return paths


class TestAdaptToSite:
    def test_writes_an_adapted_model_with_its_lineage(self, tmp_path: Path) -> None:
        from pulmoscreen.cli import app

        source = resnet_model_file(tmp_path / "model")
        write_pngs(tmp_path / "site", MIN_IMAGES + 4, brightness=170)
        out = tmp_path / "adapted"
        args = ["--images", str(tmp_path / "site"), "--out", str(out), "--model", str(source)]
        result = CliRunner().invoke(app, ["adapt", *args, "--site", "clinic A"])
        assert result.exit_code == 0, result.output
        card = ModelCard.load(card_path_for(out / "pulmoscreen_resnet50.npz"))
        record = card.details["site_adaptation"]
        assert card.version.startswith("resnet-test-1-site")
        assert card.details["lineage"] == {"init": "scratch", "adapted_from": "resnet-test-1"}
        assert record["images"] == MIN_IMAGES + 4
        assert record["stages"] == ["conv1", "conv2", "conv3"]
        assert record["site"] == "clinic A"
        assert card.thresholds == {"pneumonia": 0.5, "tuberculosis": 0.5}
        before = load_compact(source, ModelCard.load(card_path_for(source)))
        after = load_compact(out / "pulmoscreen_resnet50.npz", card)
        changed = {
            layer.name
            for layer, new in zip(
                stage_layers(before, ("conv1", "conv2", "conv3", "conv4", "conv5")),
                stage_layers(after, ("conv1", "conv2", "conv3", "conv4", "conv5")),
                strict=True,
            )
            if not np.allclose(layer.moving_mean, new.moving_mean, atol=1e-3)
        }
        assert changed
        assert all(name.startswith(("conv1", "conv2", "conv3")) for name in changed)
        assert "conv1_bn" in changed
        assert "thresholds unchanged" in result.output

    def test_refuses_too_few_images(self, tmp_path: Path) -> None:
        source = resnet_model_file(tmp_path / "model")
        write_pngs(tmp_path / "site", 5, brightness=90)
        with pytest.raises(ValueError, match="at least"):
            adapt_to_site(source, [tmp_path / "site"], tmp_path / "out")


class TestHeldOutSiteAdapted:
    def test_reports_each_held_out_source_on_exactly_its_files(self, tmp_path: Path) -> None:
        from pulmoscreen.model import load_screening_model

        loaded = load_screening_model(resnet_model_file(tmp_path / "model"), labels=LABELS)
        samples, planes = [], []
        for source, brightness in (("hospital_a", 60), ("hospital_b", 190)):
            for i, path in enumerate(write_pngs(tmp_path / source, 66, brightness=brightness)):
                label = ("normal", "tuberculosis")[i % 2]
                samples.append(Sample(path, label, source, f"{source}:{i}", str(i)))
                planes.append(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)[:32, :32] / 255.0)
        found = held_out_site_adapted(loaded, samples, np.array(planes, np.float32), tmp_path)
        assert sorted(found) == ["hospital_a", "hospital_b"]
        small = held_out_site_adapted(loaded, samples[:40], np.array(planes[:40]), tmp_path / "s")
        assert small == {}  # 40 images cannot be halved into two adaptation sets
        for source in found:
            assert found[source]["n"] == 66
            with (tmp_path / source / "site_adapted" / "predictions.csv").open() as fh:
                files = {row["file"] for row in csv.DictReader(fh)}
            assert files == {str(s.path) for s in samples if s.source == source}
            saved = json.loads((tmp_path / source / "site_adapted" / "metrics.json").read_text())
            assert saved["per_class"]["tuberculosis"]["auc"] is not None

    def test_a_model_without_batchnorm_reports_nothing(self, tiny_model_path: Path) -> None:
        from pulmoscreen.model import load_screening_model

        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        assert held_out_site_adapted(loaded, [], np.zeros((0, 8, 8), np.float32), Path()) == {}


class TestSourceBatches:
    def test_every_batch_comes_from_one_source_and_every_image_is_drawn(self) -> None:
        from training.train import source_batch_order

        sources = np.array([0] * 50 + [1] * 7 + [2] * 33)
        rng = np.random.default_rng(1)
        order = rng.permutation(90)
        batched = source_batch_order(order, sources, 8, rng)
        assert len(batched) % 8 == 0
        batches = batched.reshape(-1, 8)
        assert all(len(set(sources[b])) == 1 for b in batches)
        assert set(batched) == set(order)
        in_turn = [int(sources[b[0]]) for b in batches]
        assert in_turn != sorted(in_turn)  # the batches are shuffled, not source after source

    def test_early_batchnorm_layers_train_while_their_convolutions_stay_frozen(self) -> None:
        from training.adapt import DEFAULT_STAGES
        from training.train import set_trainable

        model = build_model(LABELS, weights=None, input_size=32)
        set_trainable(model, phase_one=False, from_="conv4", batch_stats=DEFAULT_STAGES)
        backbone = model.get_layer("resnet50")
        assert backbone.get_layer("conv1_bn").trainable
        assert backbone.get_layer("conv3_block1_1_bn").trainable
        assert not backbone.get_layer("conv1_conv").trainable
        assert not backbone.get_layer("conv3_block1_1_conv").trainable
        assert backbone.get_layer("conv4_block1_1_conv").trainable
        set_trainable(model, phase_one=False, from_="conv4")
        assert not backbone.get_layer("conv1_bn").trainable
