"""Results back to the PACS: ``pulmoscreen send``.

Each round (1) builds, for every prediction without deliveries, its SR (and for a flagged image
with a heatmap, its Secondary Capture) into the outbox and records them, then (2) when a
destination is configured, claims due deliveries and sends them by C-STORE over one
association. A failed send is kept with its error and retried after a capped exponential
backoff (``PULMO_SEND_RETRY_SECONDS`` doubling up to ``PULMO_SEND_RETRY_MAX_SECONDS``); it is
never dropped. Logs name internal ids and outcomes, never a header value.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray
from sqlalchemy.orm import Session, sessionmaker

from pulmoscreen import results_dicom
from pulmoscreen.config import Settings
from pulmoscreen.db import deliveries
from pulmoscreen.storage import resolve_stored_path

log = logging.getLogger(__name__)

# Longest side of the Secondary Capture: enough to read the heatmap and the text, a few MB.
SC_MAX_SIDE = 1024
# A claim outlives one round's sends with room to spare; a dead sender's claims lapse then.
LEASE_SECONDS = 300.0
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


@dataclass
class RoundCounts:
    built: int = 0
    sent: int = 0
    failed: int = 0


def screening_result(
    item: deliveries.Undelivered, *, override: dict[str, float]
) -> results_dicom.ScreeningResult:
    """The result as the report states it; ``override`` is PULMO_THRESHOLDS, which decided the
    flag over the calibration's and the model's thresholds where set (as in the worker)."""
    return replace(item.result, thresholds={**item.result.thresholds, **override})


def _fit(pixels: NDArray[np.float32]) -> NDArray[np.float32]:
    """Display pixels resized so that the longer side is at most ``SC_MAX_SIDE``."""
    rows, cols = pixels.shape[:2]
    scale = SC_MAX_SIDE / max(rows, cols)
    if scale >= 1:
        return pixels
    size = (max(1, round(cols * scale)), max(1, round(rows * scale)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def heatmap_overlay(
    source_path: Path, heatmap_path: Path, *, crop: float = 0.0
) -> NDArray[np.uint8]:
    """The radiograph as a viewer shows it, with the heatmap (an 8-bit grey PNG) over it, as
    RGB uint8; ``crop`` is the model's centre crop, which the heatmap covers."""
    from pulmoscreen.imaging.dicom import read_dicom
    from pulmoscreen.model.explain import overlay, read_heatmap_png

    display = _fit(read_dicom(source_path, validate=False).pixels)
    heatmap = read_heatmap_png(heatmap_path.read_bytes())
    return np.asarray(overlay(display, heatmap, crop=crop), dtype=np.uint8)


def build_result(
    item: deliveries.Undelivered, kind: str, *, settings: Settings
) -> tuple[Path, str]:
    """Write one result object (``sr`` or ``sc``) of a prediction; its path and SOP UID."""
    source_path = resolve_stored_path(item.stored_path, settings.storage_root)
    source = results_dicom.read_source_header(source_path)
    result = screening_result(item, override=settings.thresholds)
    if kind == "sr":
        dataset: Any = results_dicom.build_sr(source, result)
    else:
        heatmap = resolve_stored_path(str(item.heatmap_path), settings.storage_root)
        rgb = heatmap_overlay(source_path, heatmap, crop=item.crop)
        dataset = results_dicom.build_sc(source, rgb, result)
    # one folder per image; names from internal ids only, never from the header
    folder = settings.outbox_dir / f"image-{item.image_id:08d}"
    name = f"{kind}-{item.prediction_id}.dcm"
    return results_dicom.write_dataset(dataset, folder, name), str(dataset.SOPInstanceUID)


@dataclass
class BuildFailures:
    """Predictions whose results failed to build, and when to try each again (monotonic
    seconds): they wait, so that a few unreadable sources never hold back the others."""

    retry_at: dict[int, float] = field(default_factory=dict)

    def waiting(self) -> set[int]:
        now = time.monotonic()
        return {pid for pid, at in self.retry_at.items() if at > now}

    def failed(self, prediction_id: int, *, wait: float) -> None:
        self.retry_at[prediction_id] = time.monotonic() + wait


def build_pending(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    failures: BuildFailures | None = None,
    limit: int = 100,
) -> int:
    """Build and record the result objects that predictions lack; how many were built. One
    that fails (an unreadable source or heatmap) is logged and tried again after
    ``send_retry_max_seconds``."""
    failures = failures or BuildFailures()
    with factory() as session:
        todo = deliveries.undelivered_predictions(session, limit=limit, skip=failures.waiting())
    count = 0
    for item in todo:
        for kind in item.kinds:
            try:
                path, sop_uid = build_result(item, kind, settings=settings)
            except Exception as exc:  # one bad source must not stop the others
                log.warning("%s of prediction %d not built: %s", kind, item.prediction_id,
                            type(exc).__name__)  # fmt: skip
                failures.failed(item.prediction_id, wait=settings.send_retry_max_seconds)
                continue
            with factory.begin() as session:
                deliveries.record_delivery(
                    session, image_id=item.image_id, prediction_id=item.prediction_id,
                    kind=kind, path=str(path), sop_uid=sop_uid,
                )  # fmt: skip
            count += 1
            log.info("built %s of prediction %d", kind, item.prediction_id)
    return count


def _association(settings: Settings) -> Any:
    """An association with the destination for SR and SC storage, or raise why not."""
    from pynetdicom import AE

    ae = AE(ae_title=settings.send_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in (COMPREHENSIVE_SR, SECONDARY_CAPTURE):
        ae.add_requested_context(sop_class, "1.2.840.10008.1.2.1")
    assoc = ae.associate(
        settings.destination_host,
        settings.destination_port,
        ae_title=settings.destination_ae_title,
    )
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        raise ConnectionError(
            f"association with {settings.destination_ae_title} at {settings.destination_host}:"
            f"{settings.destination_port} {reason}"
        )
    return assoc


def _store(assoc: Any, path: Path) -> str | None:
    """C-STORE one file; None when the destination answered success, else why not."""
    from pydicom import dcmread

    try:
        dataset = dcmread(path)
    except OSError as exc:
        return f"{path.name} cannot be read: {type(exc).__name__}"
    try:
        status = assoc.send_c_store(dataset)
    except (RuntimeError, OSError, ValueError) as exc:  # the association ended under it
        return f"C-STORE failed: {type(exc).__name__}"
    if not status:
        return "no answer to C-STORE (connection lost or timed out)"
    code = int(status.Status)
    # (0000,0900) Status: 0x0000 success; 0xB000, 0xB007, 0xB006 are warnings, stored as well
    if code == 0 or code in (0xB000, 0xB006, 0xB007):
        return None
    return f"C-STORE answered status 0x{code:04X}"


def send_due(factory: sessionmaker[Session], settings: Settings, *, sender: str) -> RoundCounts:
    """Claim due deliveries and send them over one association; settle each in SQL."""
    counts = RoundCounts()
    with factory.begin() as session:
        claimed = deliveries.claim_due(session, sender=sender, lease_seconds=LEASE_SECONDS)
    if not claimed:
        return counts
    try:
        assoc = _association(settings)
    except Exception as exc:  # no destination now: every claimed row waits for its retry
        _fail_all(factory, settings, claimed, sender=sender, error=str(exc))
        counts.failed = len(claimed)
        return counts
    try:
        for item in claimed:
            error = _store(assoc, Path(item.path))
            with factory.begin() as session:
                if error is None:
                    deliveries.mark_sent(session, [item.id], sender=sender)
                    counts.sent += 1
                else:
                    _fail(session, settings, item, sender=sender, error=error)
                    counts.failed += 1
    finally:
        if assoc.is_established:
            assoc.release()
    return counts


def _fail(
    session: Session, settings: Settings, item: deliveries.Claimed, *, sender: str, error: str
) -> None:
    delay = deliveries.retry_delay(
        item.attempts + 1,
        first=settings.send_retry_seconds,
        longest=settings.send_retry_max_seconds,
    )
    deliveries.mark_failed(session, item, sender=sender, error=error, retry_in=delay)
    log.warning("delivery %d (%s) failed, attempt %d, retry in %.0fs: %s", item.id, item.kind,
                item.attempts + 1, delay, error)  # fmt: skip


def _fail_all(
    factory: sessionmaker[Session],
    settings: Settings,
    claimed: list[deliveries.Claimed],
    *,
    sender: str,
    error: str,
) -> None:
    with factory.begin() as session:
        for item in claimed:
            _fail(session, settings, item, sender=sender, error=error)


def run_round(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    sender: str,
    failures: BuildFailures | None = None,
) -> RoundCounts:
    """Build what is missing, then send what is due when a destination is configured."""
    built = build_pending(factory, settings, failures=failures)
    counts = RoundCounts()
    if settings.destination_host:
        counts = send_due(factory, settings, sender=sender)
    counts.built = built
    return counts


def run_sender(
    factory: sessionmaker[Session],
    settings: Settings,
    *,
    stop: Any,
    once: bool = False,
) -> None:
    """Rounds every ``send_interval`` seconds until ``stop`` (a threading.Event) is set."""
    sender, failures = deliveries.new_sender_id(), BuildFailures()
    try:
        while True:
            counts = run_round(factory, settings, sender=sender, failures=failures)
            if counts.built or counts.sent or counts.failed:
                log.info("round: %d built, %d sent, %d failed", counts.built, counts.sent,
                         counts.failed)  # fmt: skip
            if once or stop.wait(settings.send_interval):
                return
    finally:
        with factory.begin() as session:
            deliveries.release(session, sender=sender)
