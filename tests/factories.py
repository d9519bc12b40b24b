"""Test data: synthetic DICOMs (the one factory in the core) and a tiny stand-in model."""

from __future__ import annotations

from pathlib import Path

from pulmoscreen.domain import LABELS
from pulmoscreen.imaging.preprocess import PreprocessSpec
from pulmoscreen.model.card import ModelCard, card_path_for
from pulmoscreen.synthetic import make_cxr_dicom

__all__ = ["TINY_SPEC", "make_cxr_dicom", "make_tiny_model"]

TINY_SPEC = PreprocessSpec(size=32)
TINY_THRESHOLDS = {"pneumonia": 0.5, "tuberculosis": 0.5}


def make_tiny_model(directory: Path, *, version: str = "tiny-test-1") -> Path:
    """A small Keras model with the screening model's signature, saved with its card.

    Same input contract (``(n, size, size, 3)`` float 0..255) and output (softmax over the
    three labels) as the ResNet50, at a fraction of the cost.
    """
    import keras

    keras.utils.set_random_seed(7)
    size = TINY_SPEC.size
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tiny.keras"
    model.save(path)
    ModelCard(
        version=version,
        labels=LABELS,
        thresholds=dict(TINY_THRESHOLDS),
        preprocess=TINY_SPEC,
        trained=True,
    ).save(card_path_for(path))
    return path


def add_model_row(session, *, version: str, active: bool = True, sha: str = "0"):  # type: ignore[no-untyped-def]
    """A registered model row (no file behind it) for tests that need predictions under a
    model other than the served one; returns its id."""
    from pulmoscreen.db import ModelRow

    model = ModelRow(
        version=version,
        sha256=sha * 64,
        labels=[],
        thresholds={},
        card={},
        trained=True,
        active=active,
    )
    session.add(model)
    session.flush()
    return model.id


def store_calibration(
    url: str, model: Path, thresholds: dict[str, float], by: str = "amina"
) -> int:
    """A site calibration of ``model`` with these thresholds, stored as its active one; its id."""
    from pulmoscreen.db import session_factory
    from pulmoscreen.db.calibrations import add_calibration
    from pulmoscreen.model.build import resolve_card

    card = resolve_card(model, labels=LABELS)
    values = {
        "model_version": card.version,
        "model_sha256": card.sha256,
        "thresholds": thresholds,
        "target_sensitivity": 0.9,
        "confidence": 0.95,
        "rule": "test",
        "sample_counts": {"normal": 60, "tuberculosis": 60},
        "figures": {},
        "sample_source": "test",
        "report_path": "/reports/calibration.html",
        "created_by": by,
    }
    with session_factory(url).begin() as session:
        return add_calibration(session, values)
