"""Site adaptation: the early stages' BatchNorm statistics re-estimated on a site's own
unlabelled images (AdaBN, Li et al., 2016).

The first stages of the backbone see the acquisition (detector, tube, processing, resizing)
more than the disease, and their BatchNorm layers normalise with the mean and variance of the
training sources. At a hospital whose images are processed differently those statistics are
wrong, and every deeper layer inherits the error. Re-estimating them on a few hundred of the
site's own images, without labels, puts the site's images where the training sources were.
Weights (kernels, BatchNorm scale and offset) do not change; only the moving statistics of the
chosen stages do. Thresholds are the original model's: a site adapts, then calibrates
(``pulmoscreen calibrate``) on its own labelled sample.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.domain import LABELS
from pulmoscreen.model import LoadedModel, load_screening_model
from pulmoscreen.model.backends import with_features
from pulmoscreen.model.build import save_compact
from pulmoscreen.model.card import ModelCard, card_path_for
from pulmoscreen.model.infer import predict_batch
from pulmoscreen.storage import sha256_file
from training.dataset import IMAGE_SUFFIXES, Sample
from training.evaluate import write_report
from training.images import model_input_for

log = logging.getLogger(__name__)

# ResNet50's stem and first two stages: the layers named conv1_*, conv2_*, conv3_*.
DEFAULT_STAGES = ("conv1", "conv2", "conv3")
MIN_IMAGES = 32
ADAPTED_FILE = "pulmoscreen_resnet50.npz"


def batchnorm_layers(model: Any) -> list[Any]:
    """Every BatchNormalization layer of ``model``, nested models included, in graph order."""
    import keras

    found: list[Any] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batchnorm_layers(layer))
    return found


def stage_layers(model: Any, stages: Sequence[str]) -> list[Any]:
    """The BatchNorm layers of the named stages (``conv3`` takes ``conv3_block1_1_bn`` ...)."""
    prefixes = tuple(f"{stage}_" for stage in stages)
    return [layer for layer in batchnorm_layers(model) if layer.name.startswith(prefixes)]


def adapt_batchnorm(
    model: Any,
    inputs: NDArray[np.float32],
    *,
    stages: Sequence[str] = DEFAULT_STAGES,
    batch_size: int = 32,
    seed: int = 0,
) -> int:
    """Replace the moving mean and variance of the stages' BatchNorm layers, in place, by the
    average of their batch statistics over ``inputs`` (model inputs, ``(n, h, w, c)``).

    Layers of the other stages stay in inference mode, so the statistics are those of the
    images as the adapted model sees them. Returns how many layers were adapted.
    """
    chosen = stage_layers(model, stages)
    if not chosen:
        raise ValueError(f"the model has no BatchNorm layer in the stages {list(stages)}")
    if len(inputs) < MIN_IMAGES:
        raise ValueError(f"site adaptation needs at least {MIN_IMAGES} images, got {len(inputs)}")
    every = batchnorm_layers(model)
    saved = [(layer.trainable, layer.momentum) for layer in every]
    order = np.random.default_rng(seed).permutation(len(inputs))
    try:
        for layer in every:
            layer.trainable = layer in chosen
        seen = 0
        for start in range(0, len(order), batch_size):
            batch = inputs[order[start : start + batch_size]]
            for layer in chosen:  # moving <- moving * seen/(seen+b) + batch stats * b/(seen+b)
                layer.momentum = seen / (seen + len(batch))
            model(batch, training=True)
            seen += len(batch)
    finally:
        for layer, (trainable, momentum) in zip(every, saved, strict=True):
            layer.trainable, layer.momentum = trainable, momentum
    return len(chosen)


def adapted_halves(
    model: Any,
    inputs: NDArray[np.float32],
    predict: Any,
    *,
    stages: Sequence[str] = DEFAULT_STAGES,
    seed: int = 0,
) -> NDArray[np.float32]:
    """Scores of every image by a model adapted on the *other* half of ``inputs`` (a random
    halving, no labels used): how a site that adapted on earlier images scores new ones.
    ``predict(model, inputs)`` gives probabilities; ``model`` is left as it was."""
    original = model.get_weights()
    order = np.random.default_rng(seed).permutation(len(inputs))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    probs: NDArray[np.float32] | None = None
    try:
        for fit_on, score in (halves, halves[::-1]):
            model.set_weights(original)
            adapt_batchnorm(model, inputs[fit_on], stages=stages, seed=seed)
            part = np.asarray(predict(model, inputs[score]), dtype=np.float32)
            if probs is None:
                probs = np.zeros((len(inputs), part.shape[1]), np.float32)
            probs[score] = part
    finally:
        model.set_weights(original)
    assert probs is not None
    return probs


def predict_in_batches(
    model: Any, inputs: NDArray[np.float32], batch_size: int = 64
) -> NDArray[np.float32]:
    """Probabilities for ``inputs``, ``batch_size`` images per call."""
    parts = [
        predict_batch(model, inputs[start : start + batch_size])
        for start in range(0, len(inputs), batch_size)
    ]
    return np.concatenate(parts)


HALVES_PROTOCOL = (
    "the source's images halved at random (no labels used); each half scored by the model "
    "adapted on the other half"
)


def held_out_site_adapted(
    loaded: LoadedModel, samples: Sequence[Sample], grey: NDArray[np.float32], out: Path
) -> dict[str, Any]:
    """Per held-out source, the report of ``adapted_halves`` (written to
    ``out/<source>/site_adapted``): the held-out figures a site would see after adapting on
    its own earlier images. Sources under ``2 * MIN_IMAGES`` images are left out; empty for a
    model without BatchNorm in the adapted stages."""
    if not stage_layers(loaded.model, DEFAULT_STAGES):
        return {}
    found: dict[str, Any] = {}
    for source in sorted({s.source for s in samples}):
        keep = np.array([s.source == source for s in samples])
        chosen = [s for s in samples if s.source == source]
        if len(chosen) < 2 * MIN_IMAGES:
            log.info("%s: %d images, too few to adapt on half of them", source, len(chosen))
            continue
        planes = np.asarray(grey[keep], dtype=np.float32)[..., None]
        inputs = np.repeat(planes, loaded.card.preprocess.channels, axis=-1)
        probs = adapted_halves(loaded.model, inputs, predict_in_batches)
        metrics = write_report(out / source / "site_adapted", chosen, probs, loaded)
        found[source] = {**metrics, "stages": list(DEFAULT_STAGES), "protocol": HALVES_PROTOCOL}
    return found


def site_images(folders: Sequence[Path]) -> list[Path]:
    """Every image file (PNG, JPEG, DICOM) under ``folders``, labels not needed, sorted."""
    return sorted(
        path
        for folder in folders
        for path in folder.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
    )


def _refused(loaded: LoadedModel, inputs: NDArray[np.float32]) -> float | None:
    """Share of ``inputs`` the card's content check refuses with this model's features."""
    check = loaded.card.content_check
    if check is None:
        return None
    features = with_features(loaded.model).predict(inputs, batch_size=32, verbose=0)[1]
    return float(1.0 - check.score(features).passed.mean())


def _images_digest(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def adapt_to_site(
    model_path: Path,
    folders: Sequence[Path],
    out: Path,
    *,
    stages: Sequence[str] = DEFAULT_STAGES,
    site: str = "",
) -> ModelCard:
    """Adapt the model at ``model_path`` to the images under ``folders``; writes the adapted
    model and its card into ``out`` and returns the card."""
    paths = site_images(folders)
    if len(paths) < MIN_IMAGES:
        raise ValueError(f"site adaptation needs at least {MIN_IMAGES} images, found {len(paths)}")
    loaded = load_screening_model(model_path, labels=LABELS)
    if not loaded.card.trained:
        raise ValueError("the model is untrained: adapt a trained model")
    inputs = np.stack([model_input_for(p, loaded.card.preprocess) for p in paths])
    refused_before = _refused(loaded, inputs)
    layers = adapt_batchnorm(loaded.model, inputs, stages=stages)
    refused_after = _refused(loaded, inputs)
    images = _images_digest(paths)
    record = {
        "from_version": loaded.card.version,
        "from_sha256": loaded.card.sha256,
        "stages": list(stages),
        "batchnorm_layers": layers,
        "images": len(paths),
        "images_sha256": images,
        "site": site,
        "content_check_refused": {"before": refused_before, "after": refused_after},
    }
    out.mkdir(parents=True, exist_ok=True)
    path = out / ADAPTED_FILE
    save_compact(loaded.model, path)
    details = {**loaded.card.details, "site_adaptation": record}
    details["lineage"] = {**details.get("lineage", {}), "adapted_from": loaded.card.version}
    card = ModelCard(
        **{
            **loaded.card.__dict__,
            "version": f"{loaded.card.version}-site{images[:8]}",
            "sha256": sha256_file(path),
            "details": details,
        }
    )
    card.save(card_path_for(path))
    log.info("adapted %s to %d images: %s", loaded.card.version, len(paths), card.version)
    return card
