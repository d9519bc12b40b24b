"""``pulmoscreen evaluate``: metrics, predictions and charts for a model on labelled folders."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.domain import LABELS
from pulmoscreen.model import LoadedModel, load_screening_model, predict_batch
from training import plots
from training.audit import source_probe
from training.dataset import Sample, discover, population
from training.images import model_input_for
from training.metrics import compute_metrics

log = logging.getLogger(__name__)


def predict_samples(
    loaded: LoadedModel,
    samples: Sequence[Sample],
    *,
    batch_size: int = 32,
    inputs: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Probabilities for each sample; ``inputs`` are cached grey planes when already computed."""
    spec = loaded.card.preprocess
    out = []
    for start in range(0, len(samples), batch_size):
        if inputs is not None:
            grey = np.asarray(inputs[start : start + batch_size], dtype=np.float32)
            batch = np.repeat(grey[..., None], spec.channels, axis=-1)
        else:
            chunk = samples[start : start + batch_size]
            batch = np.stack([model_input_for(s.path, spec) for s in chunk])
        out.append(predict_batch(loaded.model, batch))
    return np.concatenate(out) if out else np.zeros((0, len(loaded.card.labels)), np.float32)


def metrics_with_sources(
    samples: Sequence[Sample], probs: NDArray[np.float32], loaded: LoadedModel
) -> dict[str, Any]:
    """Overall metrics, plus the same per data source (to expose shortcut learning)."""
    card = loaded.card
    metrics = compute_metrics([s.label for s in samples], probs, card.labels, card.thresholds)
    sources = sorted({s.source for s in samples})

    def subset(mask: NDArray[np.bool_]) -> dict[str, Any]:
        chosen = [s.label for s, keep in zip(samples, mask, strict=True) if keep]
        return compute_metrics(chosen, probs[mask], card.labels, card.thresholds)

    if len(sources) > 1:
        metrics["per_source"] = {
            source: subset(np.array([s.source == source for s in samples])) for source in sources
        }
        populations = np.array([population(s.source) for s in samples])
        if len(set(populations)) > 1:
            metrics["per_population"] = {
                name: subset(populations == name) for name in sorted(set(populations))
            }
    metrics["model_version"] = card.version
    return metrics


def write_report(
    out: Path,
    samples: Sequence[Sample],
    probs: NDArray[np.float32],
    loaded: LoadedModel,
    *,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``metrics.json`` (with ``extra`` entries), ``predictions.csv`` and the four PNG charts
    in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    card = loaded.card
    metrics = {**metrics_with_sources(samples, probs, loaded), **(extra or {})}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["file", "source", "true_label", *[f"p_{lb}" for lb in card.labels], "predicted_label"]
        )
        for s, p in zip(samples, probs, strict=True):
            writer.writerow(
                [
                    str(s.path),
                    s.source,
                    s.label,
                    *[f"{v:.6f}" for v in p],
                    card.labels[int(np.argmax(p))],
                ]
            )
    true_idx = np.array([card.labels.index(s.label) for s in samples], dtype=np.int64)
    charts = {
        "confusion_matrix.png": plots.confusion_matrix_png(
            metrics["confusion_matrix"], card.labels
        ),
        "roc.png": plots.roc_png(true_idx, probs, card.labels),
        "reliability.png": plots.reliability_png(true_idx, probs, card.labels),
        "score_histograms.png": plots.score_histograms_png(
            true_idx, probs, card.labels, card.thresholds
        ),
    }
    for name, png in charts.items():
        (out / name).write_bytes(png)
    return metrics


def evaluate_folders(data: Sequence[Path], model_path: Path | None, out: Path) -> dict[str, Any]:
    """Evaluate a model on every ``<label>/<image>`` file under ``data``; writes into ``out``."""
    samples = discover(data)
    if not samples:
        raise ValueError(f"no labelled images under {[str(d) for d in data]}")
    loaded = load_screening_model(model_path, labels=LABELS)
    log.info("evaluating %s on %d images", loaded.card.version, len(samples))
    grey = np.stack([model_input_for(s.path, loaded.card.preprocess)[:, :, 0] for s in samples])
    probs = predict_samples(loaded, samples, inputs=grey)
    probe = source_probe(loaded, samples, grey)
    return write_report(out, samples, probs, loaded, extra={"source_probe": probe})
