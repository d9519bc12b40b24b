"""One inference batch: load rows, decode and preprocess, predict in one call, write results."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from sqlalchemy.exc import SQLAlchemyError

from pulmoscreen.config import Settings
from pulmoscreen.db import queries, session_factory
from pulmoscreen.db.calibrations import active_calibration
from pulmoscreen.domain import LABELS, Rejected, RejectReason
from pulmoscreen.imaging import FileChangedError, PreprocessSpec, read_model_input
from pulmoscreen.model import (
    ContentScores,
    LoadedModel,
    ModelCard,
    card_path_for,
    load_runner,
    predict_batch,
    predict_with_features,
    score_probabilities,
)
from pulmoscreen.quarantine import quarantine_rejected
from pulmoscreen.storage import (
    HEATMAP_DIR,
    PROCESSED_DIR,
    changed_since,
    move_file,
    resolve_stored_path,
    safe_name,
    to_stored_path,
)
from worker.heatmaps import explain_flagged, forward_with_maps, store_heatmaps

log = logging.getLogger(__name__)


@cache
def served_model(
    model_path: Path | None,
    thresholds: tuple[tuple[str, float], ...],
    backend: str,
    precision: str,
    cache_dir: Path,
) -> LoadedModel:
    """The model on its inference backend, loaded once per worker process on first use (never
    at import or before fork)."""
    loaded = load_runner(
        model_path,
        labels=LABELS,
        thresholds_override=dict(thresholds),
        backend=backend,
        precision=precision,
        cache_dir=cache_dir,
    )
    if loaded.card.content_check is None:
        log.warning(
            "model %s has no content check in its card: every decoded image is scored, "
            "whatever it shows (pulmoscreen content-check fit adds one)",
            loaded.card.version,
        )
    else:
        log.info("content check %s is on", loaded.card.content_check.version)
    return loaded


def served_for(settings: Settings) -> LoadedModel:
    return served_model(
        settings.resolved_model_path(),
        tuple(sorted(settings.thresholds.items())),
        settings.inference_backend,
        settings.inference_precision,
        settings.resolved_openvino_cache(),
    )


def model_row_id(database_url: str, card: ModelCard) -> int:
    """The served model's id in ``models`` (registered when missing); it tags every prediction.

    Looked up at every batch, never cached: a database restored, reset or switched under a
    running worker must not receive predictions that name a model it does not hold.
    """
    with session_factory(database_url).begin() as session:
        return queries.model_id_for(session, card) or queries.register_model(session, card)


def thresholds_in_force(
    database_url: str, loaded: LoadedModel, *, overridden: bool
) -> tuple[LoadedModel, int | None]:
    """The served model with the thresholds that flag this batch, and the site calibration they
    come from (None: the card's).

    The site's active calibration for the served model replaces the card's thresholds, unless
    ``PULMO_THRESHOLDS`` overrides both (``overridden``). Read at every batch, as the model's
    row is: a calibration applied while a worker runs flags from its next batch on, with no
    restart and no reload of the model (only the card's thresholds change).
    """
    if overridden:
        return loaded, None
    card = loaded.card
    with session_factory(database_url)() as session:
        found = active_calibration(session, version=card.version, sha256=card.sha256)
    if found is None:
        return loaded, None
    calibrated = replace(card, thresholds={**card.thresholds, **found.thresholds})
    return replace(loaded, card=calibrated), found.id


@dataclass(frozen=True)
class _Served:
    """What a batch is scored under: the model (with the thresholds in force), its row in
    ``models`` and the site calibration that set the thresholds (None: the card's)."""

    loaded: LoadedModel
    calibration_id: int | None
    model_id: int


@dataclass(frozen=True)
class _Todo:
    """One queued image this batch is to predict."""

    id: int
    path: Path
    source: str
    attempts: int
    retry_reason: str | None
    retry_detail: str | None
    sha256: str | None = None


def predict_images(settings: Settings, image_ids: list[int], *, worker: str | None) -> list[int]:
    """Predict every still-queued image of ``image_ids`` under the served model, idempotently.

    Returns the ids that met a temporary failure (a read error of a network filesystem, memory
    exhausted, a decoder killed or timed out): they stay queued, and the caller sends them
    again later.

    Each attempt at an image is counted in SQL before its pixels are read. Images tried before
    without a result (their worker died, or the failure was temporary) are tried one at a time,
    so a file that kills its worker takes no batch-mate with it; after ``max_attempts`` an image
    is quarantined with its last temporary error, or as ``worker_crash``.

    A failure of the worker itself (database, model, memory of the whole batch) takes its
    attempt back and propagates: it is no image's fault.

    Images are decoded by a thread pool while the model runs on the previous chunk of
    ``infer_batch`` images, so the model does not wait for pixels.
    """
    url = settings.resolved_database_url()
    loaded = served_for(settings)
    served = _Served(
        *thresholds_in_force(url, loaded, overridden=bool(settings.thresholds)),
        model_id=model_row_id(url, loaded.card),  # registered with the card's own thresholds
    )
    factory = session_factory(url)
    with factory() as session:
        todo = [
            _Todo(
                id=image.id,
                path=resolve_stored_path(
                    image.stored_path or image.source_path, settings.storage_root
                ),
                source=image.source_path,
                attempts=image.attempts,
                retry_reason=image.retry_reason,
                retry_detail=image.retry_detail,
                sha256=image.sha256,
            )
            for image in queries.images_to_predict(session, image_ids, served.model_id)
        ]
    for item in todo:
        if item.attempts >= settings.max_attempts:
            _give_up(factory, item, storage_root=settings.storage_root)
    fresh = [item for item in todo if item.attempts == 0]
    suspects = [item for item in todo if 0 < item.attempts < settings.max_attempts]
    deferred: list[int] = []
    predicted = new = 0
    for group in ([fresh] if fresh else []) + [[item] for item in suspects]:
        n_predicted, n_new = _predict_group(
            settings, factory, served, group, deferred=deferred, worker=worker
        )
        predicted += n_predicted
        new += n_new
    if predicted:
        log.info("batch of %d images predicted (%d new) by %s", predicted, new, loaded.card.version)
    return deferred


def _predict_group(  # type: ignore[no-untyped-def]
    settings: Settings,
    factory,
    served: _Served,
    group: list[_Todo],
    *,
    deferred: list[int],
    worker: str | None,
) -> tuple[int, int]:
    """Claim, read, score and save ``group``; (predicted, new predictions).

    Only a file that still holds what ingest registered is scored: the bytes decoded are
    those whose sha256 ingest registered (one read, ``read_dicom``'s ``sha256``), and the
    file's size, mtime and inode are the same after the decode as before it. A file rewritten
    in place since (a sender correcting a header) is handed back to ingest, which registers it
    again under its own header, so no result lands under the patient of the old one.
    """
    by_id = {item.id: item for item in group}
    with factory.begin() as session:
        queries.claim_for_prediction(session, list(by_id))
    settled: set[int] = set()
    changed: list[int] = []
    predicted = new = 0
    try:
        seen = _files_in_place(group)
        chunks = iter_prepared(
            {image_id: by_id[image_id].path for image_id in seen},
            served.loaded.card.preprocess,
            chunk=settings.infer_batch,
            threads=settings.decode_threads or None,
            j2k_reduced=settings.j2k_reduced_decode,
            sha256s={image_id: by_id[image_id].sha256 for image_id in seen},
            changed=changed,
        )
        for ids, inputs, failures in chunks:
            for image_id, reason, detail, retry in failures:
                failed = (by_id[image_id], reason, detail, retry)
                _settle_failure(settings, factory, failed, seen, settled, deferred=deferred)
            if ids:
                done, n_new = _score_chunk(
                    factory,
                    served,
                    [by_id[i] for i in ids],
                    inputs,
                    seen,
                    worker=worker,
                    storage_root=settings.storage_root,
                    heatmap_dir=settings.heatmap_dir,
                )
                settled.update(done)
                predicted += len(done)
                new += n_new
        settled.update(i for i in changed if _send_back(factory, by_id[i]))
    finally:
        # Images left untried: the worker itself failed, or the file is not in place yet
        # (ingest finishes the move and sends it again). Neither is the image's attempt.
        untried = [i for i in by_id if i not in settled]
        if untried:
            _release(factory, untried)
    return predicted, new


def _settle_failure(  # type: ignore[no-untyped-def]
    settings: Settings,
    factory,
    failed: tuple[_Todo, RejectReason, str, bool],
    seen: dict[int, os.stat_result | None],
    settled: set[int],
    *,
    deferred: list[int],
) -> None:
    """An image that could not be read: handed back to ingest when its file changed since it
    was first looked at (it is not this file's failure), else failed or retried (``_fail``).
    Adds it to ``settled`` before anything can raise, so it is not released as untried."""
    item, reason, detail, retry = failed
    if _moved_on(item, seen[item.id]):
        if _send_back(factory, item):
            settled.add(item.id)
        return
    settled.add(item.id)
    _fail(settings, factory, item, reason, detail, retry=retry, deferred=deferred)


def _fail(  # type: ignore[no-untyped-def]
    settings: Settings,
    factory,
    item: _Todo,
    reason: RejectReason,
    detail: str,
    *,
    retry: bool,
    deferred: list[int],
) -> None:
    """A file that gave no input: tried again later when the failure may pass, else
    quarantined."""
    if retry:
        _defer(factory, item, reason, detail)
        deferred.append(item.id)
    else:
        _reject(
            factory,
            item.id,
            item.path,
            item.source,
            reason,
            detail,
            storage_root=settings.storage_root,
        )


def _score_chunk(  # type: ignore[no-untyped-def]
    factory,
    served: _Served,
    items: list[_Todo],
    inputs: NDArray[np.float32],
    seen: dict[int, os.stat_result | None],
    *,
    worker: str | None,
    storage_root: Path | None,
    heatmap_dir: Path | None = None,
) -> tuple[list[int], int]:
    """Score one chunk and save what holds: (ids settled, new predictions). A file changed
    during its decode is handed back to ingest instead; one the content check refuses is
    quarantined; the rest are predicted, each flagged one with its heatmap (same
    transaction)."""
    ids = [item.id for item in items]
    intact = np.array([not _moved_on(item, seen[item.id]) for item in items], dtype=bool)
    handed_back = [
        item.id for k, item in enumerate(items) if not intact[k] and _send_back(factory, item)
    ]
    loaded = served.loaded
    probs, content, maps = _predict_chunk(loaded, inputs)
    passed = content.passed if content is not None else np.ones(len(ids), dtype=bool)
    results = [
        (i, score_probabilities(p, loaded.card))
        for i, p, ok, kept in zip(ids, probs, passed, intact, strict=True)
        if ok and kept
    ]
    explained = explain_flagged(loaded, ids, probs, maps, results)
    folders = {item.id: heatmap_dir or _drop_root(item.path) / HEATMAP_DIR for item in items}
    with factory.begin() as session:
        if content is not None:
            scores = [
                (i, float(x)) for i, x, kept in zip(ids, content.score, intact, strict=True) if kept
            ]
            queries.set_content_scores(session, scores)
        new = queries.save_predictions(
            session,
            model_id=served.model_id,
            results=results,
            worker=worker,
            calibration_id=served.calibration_id,
        )
        store_heatmaps(
            session,
            explained,
            folders=folders,
            model_id=served.model_id,
            storage_root=storage_root,
        )
    for k in np.flatnonzero(~passed & intact):
        _refuse_content(factory, items[k], content, int(k), loaded, storage_root=storage_root)
    return [i for i, kept in zip(ids, intact, strict=True) if kept] + handed_back, new


def _files_in_place(items: list[_Todo]) -> dict[int, os.stat_result | None]:
    """Each file's state before its read, for the files in place: a file not moved yet is left
    out; one that cannot be looked at is decoded anyway (state None), and its read says why."""
    seen: dict[int, os.stat_result | None] = {}
    for item in items:
        try:
            seen[item.id] = item.path.stat()
        except FileNotFoundError:
            continue
        except OSError:
            seen[item.id] = None
    return seen


def _moved_on(item: _Todo, before: os.stat_result | None) -> bool:
    """Whether the file was rewritten or replaced after :func:`_files_in_place` looked."""
    if before is None:
        return False
    try:
        return changed_since(item.path, before)
    except OSError:
        return False  # gone or unreadable: the decode's own outcome stands


def _send_back(factory, item: _Todo) -> bool:  # type: ignore[no-untyped-def]
    """Hand a file that changed since ingest registered it back to ingest: moved back among
    the drop folder's files, then its queued row removed (ingest registers it anew; a crash in
    between is put right by ingest, which finds the queued row's file gone and its content
    changed). False when it could not be moved (left queued, sent again later)."""
    root = _drop_root(item.path)
    try:
        move_file(item.path, root / safe_name(Path(item.source).name), within=root)
    except OSError as exc:
        log.error("image %d changed since ingest; cannot hand it back (%s)", item.id, exc)
        return False
    with factory.begin() as session:
        queries.forget_queued_image(session, item.id)
    log.warning("image %d: its file changed since ingest registered it; handed back", item.id)
    return True


def _predict_chunk(
    loaded: LoadedModel, inputs: NDArray[np.float32]
) -> tuple[NDArray[np.float32], ContentScores | None, NDArray[np.float32] | None]:
    """Probabilities, the content check's scores when the model's card has a check (None
    otherwise: every decoded image is scored) and the feature maps that heatmaps are made of
    (None when the model cannot flag or gives none), from one forward pass."""
    check = loaded.card.content_check
    with_maps = forward_with_maps(loaded, inputs)
    if with_maps is not None:
        probs, features, maps = with_maps
        return probs, (check.score(features) if check is not None else None), maps
    if check is None:
        return predict_batch(loaded.model, inputs), None, None
    probs, features = predict_with_features(loaded.model, inputs)
    return probs, check.score(features), None


def _refuse_content(  # type: ignore[no-untyped-def]
    factory,
    item: _Todo,
    content: ContentScores | None,
    index: int,
    loaded: LoadedModel,
    *,
    storage_root: Path | None,
) -> None:
    """Quarantine an image the content check refused: no frontal chest radiograph as stored."""
    check = loaded.card.content_check
    assert check is not None
    assert content is not None
    detail = content.detail(index, check)
    reason = RejectReason.NOT_CHEST_CONTENT
    _reject(factory, item.id, item.path, item.source, reason, detail, storage_root=storage_root)


def _release(factory, image_ids: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Take back the attempts of a batch the worker itself failed (best effort: the database
    may be the failure)."""
    try:
        with factory.begin() as session:
            queries.release_claim(session, image_ids)
    except SQLAlchemyError as exc:
        log.warning("could not take back %d attempts (%s)", len(image_ids), type(exc).__name__)


def _defer(factory, item: _Todo, reason: RejectReason, detail: str) -> None:  # type: ignore[no-untyped-def]
    log.warning(
        "image %d: temporary failure (%s, attempt %d); it stays queued",
        item.id,
        reason.value,
        item.attempts + 1,
    )
    with factory.begin() as session:
        queries.defer_image(session, item.id, reason=reason, detail=detail)


def _give_up(factory, item: _Todo, *, storage_root: Path | None) -> None:  # type: ignore[no-untyped-def]
    """Quarantine an image tried ``attempts`` times without a result."""
    if item.retry_reason is not None:
        reason = RejectReason(item.retry_reason)
        detail = f"{item.retry_detail} (the last of {item.attempts} attempts)"
    else:
        reason = RejectReason.WORKER_CRASH
        detail = (
            f"a worker died {item.attempts} times while reading or scoring this file, "
            "each time with no other image (see the workers' logs)"
        )
    _reject(factory, item.id, item.path, item.source, reason, detail, storage_root=storage_root)


def served_preprocess_spec(model_path: Path | None) -> PreprocessSpec:
    """The input recipe the worker serves ``model_path`` with: its card's, or the default one
    of the untrained stand-in when there is no model. Reads the card only, not the weights."""
    if model_path is None:
        return PreprocessSpec()
    return ModelCard.load(card_path_for(model_path)).preprocess


# (image id, reason, detail, whether the failure may pass and the image is to be tried again)
Failure = tuple[int, RejectReason, str, bool]


# The file holds other bytes than those registered (``read_dicom``'s ``sha256``)
CHANGED = "changed"
# a model input, why there is none, CHANGED, or None: not in place yet (see _prepare_one)
_Outcome = NDArray[np.float32] | tuple[RejectReason, str, bool] | str | None


def _prepare_one(
    path: Path, spec: PreprocessSpec, *, j2k_reduced: bool = False, sha256: str | None = None
) -> _Outcome:
    """One file's model input, why it cannot have one, ``CHANGED`` when its bytes are not
    those of ``sha256``, or None when the file is not in place yet: ingest commits the row
    before it moves the file, and finishes an interrupted move (then sends the task again), so
    a missing file is no reason to give the study up.

    Only a coded rejection of the file's content is final. A read error (``EIO``/``ESTALE`` of
    a network filesystem), memory exhausted, a decoder killed or timed out, or an error nobody
    foresaw may pass: the image is tried again, up to its last attempt.

    Only the resolution the model needs is decoded (``read_model_input``, which training's
    calibration and evaluation share): the same input as from full-resolution pixels
    (``tests/unit/test_decode_parity.py``).
    """
    try:
        return read_model_input(path, spec, j2k_reduced=j2k_reduced, sha256=sha256)
    except Rejected as exc:
        return exc.reason, exc.detail, exc.retry
    except FileChangedError:
        return CHANGED
    except FileNotFoundError:
        log.warning("%s is not in place yet: left queued for ingest to finish its move", path.name)
        return None
    except OSError as exc:
        return RejectReason.UNREADABLE, f"file cannot be read: {exc}", True
    except Exception as exc:  # one bad image must not fail the whole batch
        log.exception("unexpected error while preparing the input of %s", path.name)
        return RejectReason.DECODE_FAILED, f"{type(exc).__name__}: {exc}", True


def _stack(inputs: list[NDArray[np.float32]], spec: PreprocessSpec) -> NDArray[np.float32]:
    batch = np.stack(inputs) if inputs else np.empty((0, spec.size, spec.size, spec.channels))
    return batch.astype(np.float32, copy=False)


def iter_prepared(
    paths: dict[int, Path],
    spec: PreprocessSpec,
    *,
    chunk: int,
    threads: int | None = None,
    j2k_reduced: bool = False,
    sha256s: Mapping[int, str | None] | None = None,
    changed: list[int] | None = None,
) -> Iterator[tuple[list[int], NDArray[np.float32], list[Failure]]]:
    """Decode and preprocess ``paths`` on a thread pool, yielding chunks of ``chunk`` good
    inputs (in order) with the failures seen since the last chunk.

    Every file is submitted at once, so the pool keeps decoding while the caller runs the
    model on the chunk it was handed. Decoding releases the GIL (pydicom's reads, NumPy and
    OpenCV; compressed data decodes in helper processes). A file with an entry in ``sha256s``
    is decoded only if its bytes have that sha256; the ids of those that have not are added
    to ``changed``, which the caller reads once the iteration ends.
    """
    hashes = sha256s or {}

    def prepare(item: tuple[int, Path]) -> _Outcome:
        image_id, path = item
        return _prepare_one(path, spec, j2k_reduced=j2k_reduced, sha256=hashes.get(image_id))

    with ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool:
        items = list(paths.items())
        outputs = pool.map(prepare, items)
        ids: list[int] = []
        inputs: list[NDArray[np.float32]] = []
        failures: list[Failure] = []
        for (image_id, _), out in zip(items, outputs, strict=True):
            if isinstance(out, np.ndarray):
                ids.append(image_id)
                inputs.append(out)
            elif isinstance(out, tuple):
                failures.append((image_id, *out))
            elif out == CHANGED and changed is not None:
                changed.append(image_id)
            if len(ids) >= chunk:
                yield ids, _stack(inputs, spec), failures
                ids, inputs, failures = [], [], []
        if ids or failures:
            yield ids, _stack(inputs, spec), failures


def prepare_inputs(
    paths: dict[int, Path],
    spec: PreprocessSpec,
    *,
    threads: int | None = None,
    j2k_reduced: bool = False,
) -> tuple[list[int], NDArray[np.float32], list[Failure]]:
    """Decode and preprocess each file: ids and stacked inputs of the good ones, and failures.
    ``j2k_reduced``: the served ``PULMO_J2K_REDUCED_DECODE``, as the worker reads it."""
    ids: list[int] = []
    inputs: list[NDArray[np.float32]] = []
    failures: list[Failure] = []
    for chunk_ids, chunk_inputs, chunk_failures in iter_prepared(
        paths, spec, chunk=max(1, len(paths)), threads=threads, j2k_reduced=j2k_reduced
    ):
        ids += chunk_ids
        inputs.append(chunk_inputs)
        failures += chunk_failures
    batch = np.concatenate(inputs) if inputs else _stack([], spec)
    return ids, batch, failures


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
    """Quarantine a queued image whose pixels cannot be used; the pipeline goes on.

    The row is marked first, and only while still queued: a result that landed meanwhile keeps
    its file where it is. The file moves after, and the row then names its new place; a crash
    in between is put right by ingest (``Ingestor.repair_quarantine``: the quarantine name
    carries the image id).
    """
    log.warning("image %d rejected at decode: %s", image_id, reason.value)
    stored = to_stored_path(path, storage_root) if path.exists() else None
    with factory.begin() as session:
        if not queries.reject_image(
            session, image_id, reason=reason, detail=detail, stored_path=stored
        ):
            return
    if stored is None:
        return
    try:
        quarantine_rejected(
            factory,
            image_id,
            path,
            root=_drop_root(path),
            reason=reason.value,
            detail=detail,
            source=source,
            storage_root=storage_root,
        )
    except OSError as exc:
        # The row is rejected and names where the file still lies; the batch goes on.
        log.error("image %d stays in place: quarantine failed (%s)", image_id, exc.strerror)


def _drop_root(path: Path) -> Path:
    """The drop folder that holds ``.../processed/<study>/<file>`` (or the file's folder)."""
    for parent in path.parents:
        if parent.name == PROCESSED_DIR:
            return parent.parent
    return path.parent
