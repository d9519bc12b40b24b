"""After the fit: thresholds on validation, the shipped (compact) model, test metrics, card."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pulmoscreen.domain import DISEASE_LABELS, LABELS
from pulmoscreen.imaging import PreprocessSpec
from pulmoscreen.model import LoadedModel, ModelCard, card_path_for, load_screening_model
from pulmoscreen.model.build import save_compact
from pulmoscreen.model.card import sha256_file
from training.evaluate import predict_samples, write_report
from training.metrics import threshold_for_sensitivity
from training.model_card import INTENDED_USE, LIMITATIONS, render_model_card
from training.train import TrainConfig, load_splits, load_trained, split_arrays

log = logging.getLogger(__name__)

MODEL_FILE = "pulmoscreen_resnet50.npz"


def choose_thresholds(true_labels: list[str], probs: np.ndarray, target: float) -> dict[str, float]:
    """Per disease, the highest threshold that keeps validation sensitivity >= ``target``."""
    thresholds = {}
    for disease in DISEASE_LABELS:
        c = LABELS.index(disease)
        positive = np.array([t == disease for t in true_labels])
        found = threshold_for_sensitivity(probs[:, c], positive, target)
        thresholds[disease] = round(found, 6) if found is not None else 0.5
    return thresholds


def _lineage(config: TrainConfig) -> dict[str, str]:
    """Versions of the trained models this one started from or was averaged with (from their
    cards), so the card still names them after a new model replaces the file."""
    found = {}
    for role, path in (("init", config.init), ("average_with", config.average_with)):
        if path is None or str(path) in ("scratch", "imagenet"):
            continue
        card = card_path_for(Path(path))
        if card.exists():
            found[role] = str(json.loads(card.read_text()).get("version", "unknown"))
    return found


def _counts(splits: dict[str, list[Any]]) -> dict[str, dict[str, int]]:
    return {
        name: dict(sorted(Counter(f"{s.source}/{s.label}" for s in items).items()))
        for name, items in splits.items()
    }


def finalize(config: TrainConfig) -> ModelCard:
    """Package the best checkpoint as the shipped model, with its card and test evaluation."""
    import keras

    keras.config.set_dtype_policy("float32")
    splits = load_splits(config.out / "splits.json")
    arrays = split_arrays(config, splits)
    spec = PreprocessSpec(size=config.size)
    best = keras.models.load_model(config.out / "best.keras", compile=False)
    if config.average_with is not None:
        # A "model soup": the uniform average of the fine-tuned weights and those it started
        # from (same architecture, same initial run), often better than either on new data.
        other = load_trained(config.average_with).get_weights()
        best.set_weights([(a + b) / 2 for a, b in zip(best.get_weights(), other, strict=True)])
        log.info("averaged the weights with %s", config.average_with)
    model_path = config.out / MODEL_FILE
    save_compact(best, model_path)
    state = json.loads((config.out / "state.json").read_text())
    created = datetime.now(UTC)
    draft = ModelCard(
        version=f"pulmoscreen-{config.arch}-{created:%Y%m%d}-{sha256_file(model_path)[:8]}",
        labels=LABELS,
        thresholds={},
        preprocess=spec,
        details={"arch": config.arch},
    )
    draft.save(card_path_for(model_path))
    shipped = load_screening_model(model_path, labels=LABELS)
    val_probs = predict_samples(shipped, splits["val"], inputs=arrays["val"][0])
    thresholds = choose_thresholds(
        [s.label for s in splits["val"]], val_probs, config.target_sensitivity
    )
    card = ModelCard(
        version=draft.version,
        labels=LABELS,
        thresholds=thresholds,
        preprocess=spec,
        details={
            "arch": config.arch,
            "created": created.isoformat(timespec="seconds"),
            "training": config.to_dict(),
            "lineage": _lineage(config),
            "precision": state.get("precision", "float32"),
            "history": state.get("history", []),
            "data_counts": _counts(splits),
            "threshold_rule": (
                f"per disease, the highest threshold with validation sensitivity >= "
                f"{config.target_sensitivity:.2f}; flag when p(disease) >= threshold"
            ),
            "abnormality_score": "round(100 * (1 - p(normal)))",
            "intended_use": INTENDED_USE,
            "limitations": LIMITATIONS,
        },
    )
    card.save(card_path_for(model_path))
    loaded = LoadedModel(shipped.model, card)
    test_probs = predict_samples(loaded, splits["test"], inputs=arrays["test"][0])
    metrics = write_report(config.out / "test", splits["test"], test_probs, loaded)
    card = ModelCard(**{**card.__dict__, "details": {**card.details, "test_metrics": metrics}})
    card.save(card_path_for(model_path))
    (config.out / "MODEL_CARD.md").write_text(render_model_card(card))
    log.info("test accuracy %.3f, macro AUC %s", metrics["accuracy"], metrics["macro_auc"])
    return card


def ship(run: Path, dest: Path) -> Path:
    """Copy a finalized run's model, card and MODEL_CARD.md into ``dest`` (the repo's models/)."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, card_path_for(Path(MODEL_FILE)).name, "MODEL_CARD.md"):
        shutil.copyfile(run / name, dest / name)
    return dest / MODEL_FILE
