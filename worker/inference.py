"""One inference batch: load rows, decode and preprocess, predict in one call, write results."""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.config import Settings
from pulmoscreen.db import queries, session_factory
from pulmoscreen.domain import LABELS, Rejected, RejectReason
from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from pulmoscreen.model import (
    LoadedModel,
    ModelCard,
    card_path_for,
    load_screening_model,
    predict_batch,
    score_probabilities,
)
from pulmoscreen.storage import quarantine_file, resolve_stored_path, to_stored_path

log = logging.getLogger(__name__)


@cache
def served_model(model_path: Path | None, thresholds: tuple[tuple[str, float], ...]) -> LoadedModel:
    """The model, loaded once per worker process on first use (never at import or before fork)."""
    return load_screening_model(model_path, labels=LABELS, thresholds_override=dict(thresholds))


@cache
def model_row_id(database_url: str, model_path: Path | None, thresholds: tuple) -> int:
    """Register the served model in ``models`` once per process; its id tags every prediction."""
    loaded = served_model(model_path, thresholds)
    with session_factory(database_url).begin() as session:
        return queries.register_model(session, loaded.card)


def predict_images(settings: Settings, image_ids: list[int], *, worker: str | None) -> None:
    """Predict every still-queued image of ``image_ids`` under the served model, idempotently."""
    model_path = settings.resolved_model_path()
    thresholds = tuple(sorted(settings.thresholds.items()))
    url = settings.resolved_database_url()
    loaded = served_model(model_path, thresholds)
    model_id = model_row_id(url, model_path, thresholds)
    factory = session_factory(url)
    with factory() as session:
        images = queries.images_to_predict(session, image_ids, model_id)
        paths = {
            image.id: resolve_stored_path(
                image.stored_path or image.source_path, settings.storage_root
            )
            for image in images
        }
        sources = {image.id: image.source_path for image in images}
    ids, inputs, failures = prepare_inputs(paths, loaded.card.preprocess)
    for image_id, reason, detail in failures:
        _reject(
            factory,
            image_id,
            paths[image_id],
            sources[image_id],
            reason,
            detail,
            storage_root=settings.storage_root,
        )
    if not ids:
        return
    probs = predict_batch(loaded.model, inputs)
    results = [(i, score_probabilities(p, loaded.card)) for i, p in zip(ids, probs, strict=True)]
    with factory.begin() as session:
        new = queries.save_predictions(session, model_id=model_id, results=results, worker=worker)
    log.info("batch of %d images predicted (%d new) by %s", len(ids), new, loaded.card.version)


def served_preprocess_spec(model_path: Path | None) -> PreprocessSpec:
    """The input recipe the worker serves ``model_path`` with: its card's, or the default one
    of the untrained stand-in when there is no model. Reads the card only, not the weights."""
    if model_path is None:
        return PreprocessSpec()
    return ModelCard.load(card_path_for(model_path)).preprocess


def prepare_inputs(
    paths: dict[int, Path], spec: PreprocessSpec
) -> tuple[list[int], NDArray[np.float32], list[tuple[int, RejectReason, str]]]:
    """Decode and preprocess each file: ids and stacked inputs of the good ones, and failures."""
    ids, inputs, failures = [], [], []
    for image_id, path in paths.items():
        try:
            inputs.append(to_model_input(read_dicom(path).pixels, spec))
            ids.append(image_id)
        except Rejected as exc:
            failures.append((image_id, exc.reason, exc.detail))
        except FileNotFoundError:
            failures.append((image_id, RejectReason.UNREADABLE, "file missing"))
        except OSError as exc:
            failures.append((image_id, RejectReason.UNREADABLE, f"file cannot be read: {exc}"))
        except Exception as exc:  # one bad image must not fail the whole batch
            log.exception("image %d: unexpected error while preparing its input", image_id)
            failures.append((image_id, RejectReason.DECODE_FAILED, f"{type(exc).__name__}: {exc}"))
    batch = np.stack(inputs) if inputs else np.empty((0, spec.size, spec.size, spec.channels))
    return ids, batch.astype(np.float32, copy=False), failures


def _reject(  # type: ignore[no-untyped-def]
    factory,
    image_id: int,
    path: Path,
    source: str,
    reason: RejectReason,
    detail: str,
    *,
    storage_root: Path | None,
) -> None:
    """Quarantine a queued image whose pixels cannot be used; the pipeline goes on."""
    log.warning("image %d rejected at decode: %s", image_id, reason.value)
    stored: str | None = None
    if path.exists():
        root = _drop_root(path)
        dest = quarantine_file(path, root, reason=reason.value, detail=detail, source=source)
        stored = to_stored_path(dest, storage_root)
    with factory.begin() as session:
        queries.reject_image(session, image_id, reason=reason, detail=detail, stored_path=stored)


def _drop_root(path: Path) -> Path:
    """The drop folder that holds ``.../processed/<study>/<file>`` (or the file's folder)."""
    for parent in path.parents:
        if parent.name == "processed":
            return parent.parent
    return path.parent
