import json
from pathlib import Path

import numpy as np
import pytest

from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import PreprocessSpec
from pulmoscreen.model import (
    ModelCard,
    build_model,
    card_path_for,
    load_screening_model,
    predict_batch,
    score_probabilities,
)
from pulmoscreen.model.build import untrained_card
from tests.factories import TINY_SPEC

CARD = ModelCard(
    version="v1",
    labels=LABELS,
    thresholds={"pneumonia": 0.6, "tuberculosis": 0.3},
    preprocess=PreprocessSpec(),
)


class TestScoreProbabilities:
    def test_tuberculosis_over_its_threshold_is_flagged(self):
        pred = score_probabilities(np.array([0.6, 0.05, 0.35], np.float32), CARD)
        assert pred.label == "normal"
        assert pred.flagged is True
        assert pred.abnormality_score == 40

    def test_below_every_threshold_is_not_flagged(self):
        pred = score_probabilities(np.array([0.45, 0.5, 0.05], np.float32), CARD)
        assert pred.label == "pneumonia"
        assert pred.flagged is False
        assert pred.abnormality_score == 55

    def test_untrained_model_never_flags(self):
        card = untrained_card(LABELS, PreprocessSpec())
        pred = score_probabilities(np.array([0.0, 0.0, 1.0], np.float32), card)
        assert pred.label == "tuberculosis"
        assert pred.flagged is False


class TestModelCard:
    def test_round_trip(self, tmp_path):
        path = tmp_path / "m.card.json"
        CARD.save(path)
        assert ModelCard.load(path) == CARD
        assert json.loads(path.read_text())["labels"] == list(LABELS)

    def test_card_path(self):
        assert card_path_for(Path("models/x.keras")) == Path("models/x.card.json")


class TestLoadScreeningModel:
    def test_loads_model_and_card(self, tiny_model_path):
        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        assert loaded.card.version == "tiny-test-1"
        assert loaded.card.preprocess == TINY_SPEC
        assert len(loaded.card.sha256) == 64

    def test_threshold_override(self, tiny_model_path):
        loaded = load_screening_model(
            tiny_model_path, labels=LABELS, thresholds_override={"tuberculosis": 0.9}
        )
        assert loaded.card.thresholds == {"pneumonia": 0.5, "tuberculosis": 0.9}
        assert loaded.card.version.startswith("tiny-test-1+thr-")
        same = load_screening_model(
            tiny_model_path, labels=LABELS, thresholds_override={"tuberculosis": 0.5}
        )
        assert same.card.version == "tiny-test-1"  # an override equal to the card changes nothing

    def test_label_mismatch_is_refused(self, tiny_model_path):
        with pytest.raises(ValueError, match="labels"):
            load_screening_model(tiny_model_path, labels=("normal", "covid"))

    def test_missing_card_is_refused(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="card"):
            load_screening_model(tmp_path / "absent.keras", labels=LABELS)


class TestPredictBatch:
    def test_one_row_of_probabilities_per_image(self, tiny_model_path):
        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        batch = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32) * 255
        probs = predict_batch(loaded.model, batch)
        assert probs.shape == (5, 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        # batching does not change an image's result
        np.testing.assert_allclose(predict_batch(loaded.model, batch[2:3])[0], probs[2], atol=1e-5)

    def test_rejects_a_single_image_without_batch_axis(self, tiny_model_path):
        loaded = load_screening_model(tiny_model_path, labels=LABELS)
        with pytest.raises(ValueError, match=r"\(n, h, w, c\)"):
            predict_batch(loaded.model, np.zeros((32, 32, 3), np.float32))


@pytest.mark.slow
class TestBuildModel:
    def test_resnet50_shape(self):
        model = build_model(LABELS, weights=None)
        assert model.input_shape == (None, 224, 224, 3)
        assert model.output_shape == (None, 3)
        probs = predict_batch(model, np.zeros((2, 224, 224, 3), np.float32))
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    def test_imagenet_weights_from_a_local_file(self, tmp_path):
        """Air-gapped sites give the ImageNet weights file; nothing is downloaded."""
        import keras

        reference = keras.applications.ResNet50(
            include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg"
        )
        weights_file = tmp_path / "resnet50_notop.weights.h5"
        reference.save_weights(weights_file)
        model = build_model(
            LABELS, weights="imagenet", input_size=64, imagenet_weights_file=weights_file
        )
        backbone = model.get_layer("resnet50")
        for got, want in zip(backbone.get_weights(), reference.get_weights(), strict=True):
            np.testing.assert_array_equal(got, want)

    def test_unknown_weights_value(self):
        with pytest.raises(ValueError, match="weights"):
            build_model(LABELS, weights="imagenet21k")
