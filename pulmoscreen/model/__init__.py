"""The screening model: build (ResNet50 + head), load with its card, predict in batches."""

from pulmoscreen.model.backends import export_openvino, load_runner
from pulmoscreen.model.build import LoadedModel, build_model, load_screening_model
from pulmoscreen.model.card import ModelCard, card_path_for
from pulmoscreen.model.content import ContentCheck, ContentScores
from pulmoscreen.model.infer import predict_batch, predict_with_features, score_probabilities

__all__ = [
    "ContentCheck",
    "ContentScores",
    "LoadedModel",
    "ModelCard",
    "build_model",
    "card_path_for",
    "export_openvino",
    "load_runner",
    "load_screening_model",
    "predict_batch",
    "predict_with_features",
    "score_probabilities",
]
