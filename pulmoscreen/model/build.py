"""ResNet50 + classification head, and loading a trained model with its card.

Only ``keras.*`` APIs are used so the same code serves on the TensorFlow, JAX or PyTorch
backend (``KERAS_BACKEND``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pulmoscreen.imaging.preprocess import PreprocessSpec
from pulmoscreen.model.card import ModelCard, card_path_for, sha256_file

log = logging.getLogger(__name__)

# keras.applications.resnet50.preprocess_input ("caffe"): BGR mean subtraction, no scaling.
# The input is grey repeated into 3 channels, so the channel order does not matter.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class LoadedModel:
    """A Keras model ready to serve, and the card that says how."""

    model: Any
    card: ModelCard


def build_model(
    labels: tuple[str, ...] | list[str],
    *,
    weights: str | Path | None = "imagenet",
    input_size: int = 224,
    imagenet_weights_file: Path | None = None,
    dropout: float = 0.2,
) -> Any:
    """ResNet50 backbone (global average pooling) + dropout + softmax over ``labels``.

    Args:
        labels: class names in output order.
        weights: ``"imagenet"`` (Keras's cache, or ``imagenet_weights_file`` when given, for
            air-gapped sites), ``None`` (random initialisation), or the path of a trained
            ``.keras`` model, which is loaded as it is.
        input_size: side of the square input.
        imagenet_weights_file: local ``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``.
        dropout: dropout rate before the classifier.

    Returns:
        A ``keras.Model`` taking float32 ``(n, size, size, 3)`` in 0..255.
    """
    import keras

    if isinstance(weights, Path):
        return keras.models.load_model(weights, compile=False)
    backbone_weights: str | None = None
    if weights == "imagenet":
        backbone_weights = str(imagenet_weights_file) if imagenet_weights_file else "imagenet"
    elif weights is not None:
        raise ValueError(f"weights must be 'imagenet', None or a Path, got {weights!r}")
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Normalization(
        mean=list(CAFFE_MEAN_BGR), variance=[1.0, 1.0, 1.0], name="caffe_mean"
    )(inputs)
    backbone = keras.applications.ResNet50(
        include_top=False,
        weights=backbone_weights,
        input_shape=(input_size, input_size, 3),
        pooling="avg",
    )
    x = backbone(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(len(labels), activation="softmax", name="probs", dtype="float32")(
        x
    )
    return keras.Model(inputs, outputs, name="screening_model")


def build_tiny_model(labels: tuple[str, ...] | list[str], *, input_size: int = 32) -> Any:
    """A small CNN with the screening model's contract, for tests and pipeline dry runs."""
    import keras

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255, name="scale")(inputs)
    body = keras.Sequential(
        [
            keras.Input((input_size, input_size, 3)),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="backbone",
    )
    x = body(x)
    outputs = keras.layers.Dense(len(labels), activation="softmax", name="probs", dtype="float32")(
        x
    )
    return keras.Model(inputs, outputs, name="screening_model")


COMPACT_SUFFIX = ".npz"


def save_compact(model: Any, path: Path) -> None:
    """Weights only, kernels in float16 (half the size); rebuilt from the card on load."""
    import numpy as np

    arrays = {}
    for i, w in enumerate(model.get_weights()):
        small = w.ndim > 1 and float(np.abs(w).max(initial=0.0)) < 6e4
        arrays[f"w{i:04d}"] = w.astype(np.float16) if small else w.astype(np.float32)
    with path.open("wb") as fh:
        np.savez(fh, **arrays)


def untrained_architecture(labels: tuple[str, ...] | list[str], *, arch: str, size: int) -> Any:
    """A randomly initialised network of ``arch`` (``resnet50`` or ``tiny``) at ``size`` px,
    under the current dtype policy, to load trained weights into."""
    if arch == "tiny":
        return build_tiny_model(labels, input_size=size)
    return build_model(labels, weights=None, input_size=size)


def _architecture(card: ModelCard) -> Any:
    """A fresh network of the card's architecture, under the current dtype policy."""
    arch = card.details.get("arch", "resnet50")
    return untrained_architecture(card.labels, arch=arch, size=card.preprocess.size)


def float32_copy(model: Any, card: ModelCard) -> Any:
    """``model`` with every layer computing in float32 (a model saved from a mixed-precision
    training run keeps its bfloat16 policy); ``model`` itself when it already does."""
    import keras

    if all(layer.dtype_policy.name == "float32" for layer in model._flatten_layers()):
        return model
    previous = keras.config.dtype_policy().name
    keras.config.set_dtype_policy("float32")
    try:
        copy = _architecture(card)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.set_weights(model.get_weights())
    return copy


def load_compact(path: Path, card: ModelCard) -> Any:
    """Rebuild the architecture named in the card and load float16/32 weights as float32."""
    import numpy as np

    model = _architecture(card)
    with np.load(path) as data:
        weights = [data[f"w{i:04d}"].astype(np.float32) for i in range(len(data.files))]
    model.set_weights(weights)
    return model


def untrained_card(labels: tuple[str, ...], spec: PreprocessSpec) -> ModelCard:
    """Card of a randomly initialised network: versioned by its recipe, never flags."""
    recipe = {"arch": "resnet50", "seed": 0, "labels": list(labels), "spec": spec.to_dict()}
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    return ModelCard(
        version=f"untrained-resnet50-{digest[:8]}",
        labels=labels,
        thresholds={},
        preprocess=spec,
        trained=False,
        sha256=digest,
        details={"warning": "randomly initialised network: its scores are not findings"},
    )


def resolve_card(
    model_path: Path | None,
    *,
    labels: tuple[str, ...],
    thresholds_override: dict[str, float] | None = None,
) -> ModelCard:
    """The card a model is served under: read from beside the weights (with their sha256 and
    any threshold override), or the untrained stand-in's when ``model_path`` is None.

    Raises:
        FileNotFoundError: ``model_path`` or its card is missing.
        ValueError: the card's labels differ from ``labels``.
    """
    if model_path is None:
        return untrained_card(labels, PreprocessSpec())
    card_file = card_path_for(model_path)
    if not card_file.exists():
        raise FileNotFoundError(f"model card {card_file} is missing next to {model_path}")
    card = ModelCard.load(card_file)
    if tuple(card.labels) != tuple(labels):
        raise ValueError(f"model labels {card.labels} differ from the expected {labels}")
    card = replace(card, sha256=sha256_file(model_path))
    merged = {**card.thresholds, **(thresholds_override or {})}
    if merged != card.thresholds:
        # Other thresholds make other flags: a distinct version, so every prediction row names
        # the thresholds that produced it (the models table keeps one set per version).
        tag = hashlib.sha256(json.dumps(merged, sort_keys=True).encode()).hexdigest()[:8]
        card = replace(card, version=f"{card.version}+thr-{tag}", thresholds=merged)
    return card


def load_screening_model(
    model_path: Path | None,
    *,
    labels: tuple[str, ...],
    thresholds_override: dict[str, float] | None = None,
) -> LoadedModel:
    """Load a trained model and its card, or build the untrained stand-in when there is none.

    The Keras model is built under the current dtype policy.

    Raises:
        FileNotFoundError: ``model_path`` or its card is missing.
        ValueError: the card's labels differ from ``labels``.
    """
    card = resolve_card(model_path, labels=labels, thresholds_override=thresholds_override)
    if model_path is None:
        import keras

        keras.utils.set_random_seed(0)
        log.warning("no trained model configured: serving an UNTRAINED network (%s)", card.version)
        return LoadedModel(build_model(labels, weights=None), card)
    log.info("loaded model %s (sha256 %s)", card.version, card.sha256[:12])
    if model_path.suffix == COMPACT_SUFFIX:
        return LoadedModel(load_compact(model_path, card), card)
    return LoadedModel(build_model(labels, weights=model_path), card)
