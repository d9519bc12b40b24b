"""After the fit: thresholds on validation, the shipped (compact) model, test metrics, card."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pulmoscreen.domain import DISEASE_LABELS, LABELS
from pulmoscreen.model import LoadedModel, ModelCard, card_path_for, load_screening_model
from pulmoscreen.model.build import save_compact
from pulmoscreen.model.card import sha256_file
from training.adapt import held_out_site_adapted
from training.audit import source_probe
from training.dataset import discover
from training.evaluate import metrics_with_sources, predict_samples, write_report
from training.images import cached_inputs, normalize_planes
from training.metrics import (
    sensitivity_specificity,
    threshold_for_sensitivity,
    wilson_lower_bound,
)
from training.model_card import INTENDED_USE, LIMITATIONS, render_model_card
from training.train import (
    HELD_OUT,
    SWA_FILE,
    TrainConfig,
    WeightAverage,
    load_splits,
    load_trained,
    make_splits,
    sources_seen_by,
    split_arrays,
)

log = logging.getLogger(__name__)

MODEL_FILE = "pulmoscreen_resnet50.npz"


def choose_thresholds(
    true_labels: list[str], probs: np.ndarray, target: float, confidence: float = 0.0
) -> dict[str, float]:
    """Per disease, the highest threshold that keeps validation sensitivity >= ``target``
    (its lower confidence bound, with ``confidence`` > 0)."""
    thresholds = {}
    for disease in DISEASE_LABELS:
        c = LABELS.index(disease)
        positive = np.array([t == disease for t in true_labels])
        found = threshold_for_sensitivity(probs[:, c], positive, target, confidence)
        # rounded down: the positive the threshold was read from must stay flagged
        thresholds[disease] = math.floor(found * 1e6) / 1e6 if found is not None else 0.5
    return thresholds


def threshold_rule(target: float, confidence: float) -> str:
    """The rule ``choose_thresholds`` applied, in words, for the card."""
    if confidence > 0:
        return (
            f"per disease, the highest threshold at which the one-sided {confidence:.0%} lower "
            f"confidence bound (Wilson) of validation sensitivity is >= {target:.2f}; "
            "flag when p(disease) >= threshold"
        )
    return (
        f"per disease, the highest threshold with validation sensitivity >= {target:.2f}; "
        "flag when p(disease) >= threshold"
    )


def threshold_validation(
    true_labels: list[str], probs: np.ndarray, thresholds: dict[str, float], confidence: float
) -> dict[str, dict[str, Any]]:
    """What the chosen thresholds give on the validation split, with the sensitivity's bound."""
    level = confidence or 0.95
    found = {}
    for disease, threshold in thresholds.items():
        c = LABELS.index(disease)
        positive = np.array([t == disease for t in true_labels])
        flagged = probs[:, c] >= threshold
        sens, spec = sensitivity_specificity(flagged, positive)
        hits, n = int((flagged & positive).sum()), int(positive.sum())
        found[disease] = {
            "n": n,
            "sensitivity": sens,
            "sensitivity_lower_bound": wilson_lower_bound(hits, n, level),
            "confidence": level,
            "specificity": spec,
        }
    return found


def split_digests(splits: dict[str, list[Any]]) -> dict[str, str]:
    """Per split, a digest of its images' contents: proves a later run uses the same split."""
    return {
        name: hashlib.sha256("\n".join(sorted(s.sha256 for s in items)).encode()).hexdigest()
        for name, items in splits.items()
    }


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


def shipped_weights(config: TrainConfig) -> Any:
    """The best checkpoint, or the trajectory's average (``--swa-from``), averaged with
    ``--average-with``'s weights when given."""
    import keras

    best = keras.models.load_model(config.out / "best.keras", compile=False)
    if config.swa_from > 0:
        average = WeightAverage(config.out / SWA_FILE)
        best.set_weights(average.weights(best.get_weights()))
        log.info("shipping the average of %d weight snapshots", average.count)
    if config.average_with is not None:
        # A "model soup": the uniform average of the fine-tuned weights and those it started
        # from (same architecture, same initial run), often better than either on new data.
        other = load_trained(config.average_with, size=config.size, arch=config.arch).get_weights()
        best.set_weights([(a + b) / 2 for a, b in zip(best.get_weights(), other, strict=True)])
        log.info("averaged the weights with %s", config.average_with)
    return best


def finalize(config: TrainConfig) -> ModelCard:
    """Package the best checkpoint as the shipped model, with its card and test evaluation."""
    import keras

    keras.config.set_dtype_policy("float32")
    splits = load_splits(config.out / "splits.json")
    arrays = split_arrays(config, splits)
    spec = config.spec
    model_path = config.out / MODEL_FILE
    save_compact(shipped_weights(config), model_path)
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
    details = {
        "arch": config.arch,
        "created": created.isoformat(timespec="seconds"),
        "training": config.to_dict(),
        "lineage": _lineage(config),
        # every source this model, or one it started from or was averaged with, trained on
        # (for the LOSO check)
        "sources_seen": sorted(
            sources_seen_by(config.init)
            | sources_seen_by(config.average_with)
            | ({Path(p).name for p in config.data} - set(config.hold_out))
        ),
        "precision": state.get("precision", "float32"),
        "history": state.get("history", []),
        "data_counts": _counts(splits),
        "split_digests": split_digests(splits),
        "abnormality_score": "round(100 * (1 - p(normal)))",
        "intended_use": INTENDED_USE,
        "limitations": LIMITATIONS,
    }
    if config.loso_runs:
        details["leave_one_source_out"] = loso_figures(config.loso_runs)
    if config.init not in ("scratch", "imagenet"):
        details["starting_model"] = starting_model_figures(Path(config.init), splits, arrays)
    inputs = {name: normalize_planes(arrays[name][0], spec) for name in ("val", "test", HELD_OUT)}
    return calibrate_and_test(
        model_path,
        draft.version,
        splits,
        inputs,
        details,
        target=config.target_sensitivity,
        confidence=config.threshold_confidence,
    )


def starting_model_figures(
    path: Path, splits: dict[str, list[Any]], arrays: dict[str, Any]
) -> dict[str, Any] | None:
    """The model this run started from, measured on this run's test split and held-out
    sources (AUCs per source, the source probe): the card shows what the run changed."""
    old = load_screening_model(path, labels=LABELS)
    if old.card.preprocess.size != arrays["test"][0].shape[-1]:
        return None
    found: dict[str, Any] = {"version": old.card.version}
    for name in ("test", HELD_OUT):
        samples = splits.get(name) or []
        if not samples:
            continue
        grey = normalize_planes(arrays[name][0], old.card.preprocess)
        probs = predict_samples(old, samples, inputs=grey)
        metrics = metrics_with_sources(samples, probs, old)
        found[name] = {
            "per_source_auc": {
                source: {c: m["per_class"][c]["auc"] for c in DISEASE_LABELS}
                for source, m in metrics.get("per_source", {}).items()
            }
            or {samples[0].source: {c: metrics["per_class"][c]["auc"] for c in DISEASE_LABELS}},
        }
        if name == "test":
            found[name]["source_probe"] = source_probe(old, samples, grey)
    return found


def _only(source: str, samples: list[Any], probs: np.ndarray) -> tuple[list[Any], np.ndarray]:
    keep = np.array([s.source == source for s in samples])
    return [s for s in samples if s.source == source], probs[keep]


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("n", "accuracy", "macro_auc", "per_class")}


def loso_figures(runs: tuple[Path, ...]) -> dict[str, Any]:
    """Per held-out source, what a model trained without it scored on all of it: read from
    each leave-one-source-out run's card (``held_out``), with the run's model version."""
    found: dict[str, Any] = {}
    for run in runs:
        card_file = card_path_for(run / MODEL_FILE)
        if not card_file.exists():
            raise ValueError(f"{run}: no finalized model ({card_file.name} is missing)")
        card = ModelCard.load(card_file)
        held = card.details.get("held_out") or {}
        if not held:
            raise ValueError(f"{run}: its model was trained with every source (no --hold-out)")
        adapted = card.details.get("held_out_site_adapted") or {}
        for source, metrics in held.items():
            found[source] = {
                "model_version": card.version,
                "trained_on": sorted(card.details.get("data_counts", {}).get("train", {})),
                **_headline(metrics),
                "source_probe": card.details.get("test_metrics", {}).get("source_probe"),
            }
            if source in adapted:
                found[source]["site_adapted"] = _headline(adapted[source])
    return found


def calibrate_and_test(
    model_path: Path,
    version: str,
    splits: dict[str, list[Any]],
    inputs: dict[str, np.ndarray],
    details: dict[str, Any],
    *,
    target: float,
    confidence: float,
) -> ModelCard:
    """Thresholds on the validation split, then the held-out test report; writes the card,
    ``MODEL_CARD.md`` and ``test/`` beside ``model_path``."""
    out = model_path.parent
    shipped = load_screening_model(model_path, labels=LABELS)
    spec = shipped.card.preprocess
    val_labels = [s.label for s in splits["val"]]
    val_probs = predict_samples(shipped, splits["val"], inputs=inputs["val"])
    thresholds = choose_thresholds(val_labels, val_probs, target, confidence)
    details = {
        **details,
        "threshold_rule": threshold_rule(target, confidence),
        "threshold_validation": threshold_validation(val_labels, val_probs, thresholds, confidence),
    }
    card = ModelCard(
        version=version, labels=LABELS, thresholds=thresholds, preprocess=spec, details=details
    )
    card.save(card_path_for(model_path))
    loaded = LoadedModel(shipped.model, card)
    test_probs = predict_samples(loaded, splits["test"], inputs=inputs["test"])
    probe = source_probe(loaded, splits["test"], inputs["test"])
    metrics = write_report(
        out / "test", splits["test"], test_probs, loaded, extra={"source_probe": probe}
    )
    found: dict[str, Any] = {"test_metrics": metrics}
    held = splits.get(HELD_OUT) or []
    if held:
        held_probs = predict_samples(loaded, held, inputs=inputs[HELD_OUT])
        found["held_out"] = {
            source: write_report(out / HELD_OUT / source, *_only(source, held, held_probs), loaded)
            for source in sorted({s.source for s in held})
        }
        adapted = held_out_site_adapted(loaded, held, inputs[HELD_OUT], out / HELD_OUT)
        if adapted:
            found["held_out_site_adapted"] = adapted
    card = ModelCard(**{**card.__dict__, "details": {**card.details, **found}})
    card.save(card_path_for(model_path))
    (out / "MODEL_CARD.md").write_text(render_model_card(card))
    log.info("test accuracy %.3f, macro AUC %s", metrics["accuracy"], metrics["macro_auc"])
    return card


def rethreshold(
    model_path: Path,
    out: Path,
    *,
    target: float,
    confidence: float,
    cache_dir: Path | None = None,
) -> ModelCard:
    """New flag thresholds for a trained model, chosen on the validation split of the data it
    was trained on (rebuilt from its card and checked against it), then a new test report.

    The weights are unchanged; the card gets a new version, so that predictions made under the
    old thresholds stay told apart in the ``models`` table.
    """
    old = ModelCard.load(card_path_for(model_path))
    training = old.details.get("training") or {}
    if not training.get("data"):
        raise ValueError(f"{model_path}: the card does not name the training data")
    if out.resolve() == model_path.parent.resolve():
        raise ValueError(f"--out must be another folder than the model's ({out})")
    splits = make_splits(
        discover([Path(p) for p in training["data"]]),
        hold_out=training.get("hold_out", []),
        seed=training.get("seed", 0),
    )
    digests = split_digests(splits)
    expected = old.details.get("split_digests") or {}
    if _counts(splits) != old.details.get("data_counts") or any(
        digests[name] != digest for name, digest in expected.items()
    ):
        raise ValueError(
            f"the images under {training['data']} do not give the splits the model was "
            "trained on: thresholds and test figures would not be held out"
        )
    out.mkdir(parents=True, exist_ok=True)
    copy = out / MODEL_FILE
    shutil.copyfile(model_path, copy)
    old.save(card_path_for(copy))
    cache = cache_dir or out / "cache"
    inputs = {
        name: cached_inputs(splits[name], old.preprocess, cache)
        for name in ("val", "test", HELD_OUT)
        if name in splits
    }
    created = datetime.now(UTC)
    thresholds_key = hashlib.sha256(f"{target}:{confidence}".encode()).hexdigest()[:4]
    details = {
        **old.details,
        "created": created.isoformat(timespec="seconds"),
        "training": {**training, "target_sensitivity": target, "threshold_confidence": confidence},
        "lineage": {**old.details.get("lineage", {}), "rethresholded_from": old.version},
        "split_digests": digests,
        "limitations": LIMITATIONS,
    }
    version = f"pulmoscreen-{old.details.get('arch', 'resnet50')}-{created:%Y%m%d}-"
    version += f"{sha256_file(copy)[:8]}-t{thresholds_key}"
    return calibrate_and_test(
        copy, version, splits, inputs, details, target=target, confidence=confidence
    )


def ship(run: Path, dest: Path) -> Path:
    """Copy a finalized run's model, card and MODEL_CARD.md into ``dest`` (the repo's models/)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, card_path_for(Path(MODEL_FILE)).name, "MODEL_CARD.md"):
        shutil.copyfile(run / name, dest / name)
    return dest / MODEL_FILE
