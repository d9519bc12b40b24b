"""Register drop-folder files in SQL and enqueue them; quarantine what cannot be screened.

Crash safety: an accepted image's row (status ``queued``, with its destination) is committed
before the file moves and before the task is sent. A restart re-sends every queued image
(tasks are idempotent) and finishes a move that a crash interrupted, so nothing is lost and
nothing is predicted twice. A task can still vanish while the system runs: a worker killed
after Redis handed it a message, but before it recorded the message as unacknowledged, takes
the message with it. So the watch loop also re-sends an image that has waited longer than
``resend_after`` seconds while the inference queue is empty.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ingest.scanner import StabilityTracker, iter_candidates
from pulmoscreen.db import queries
from pulmoscreen.db.schema import utcnow
from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging.dicom import DicomMeta, read_header
from pulmoscreen.storage import (
    check_own_dirs,
    move_file,
    processed_destination,
    quarantine_file,
    resolve_stored_path,
    sha256_file,
    to_stored_path,
)

log = logging.getLogger(__name__)

Enqueue = Callable[[Iterable[int]], object]


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one file: ``queued`` or ``rejected``, with the image row's id."""

    image_id: int
    status: str
    reason: str | None = None


def display_path(path: Path) -> str:
    """``path`` as valid text: bytes that are not UTF-8 in a name become ``\\xNN`` escapes.

    Names are stored in SQL and sidecars, which hold text; a name with such bytes must neither
    stop ingest nor lose the file.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_file_type(path: Path) -> None:
    """Only non-empty regular files are read; links are never followed (they may lead outside)."""
    mode = path.lstat()
    if stat.S_ISLNK(mode.st_mode):
        raise Rejected(RejectReason.UNREADABLE, "symbolic links are not followed")
    if not stat.S_ISREG(mode.st_mode):
        raise Rejected(RejectReason.UNREADABLE, "not a regular file")
    if mode.st_size == 0:
        raise Rejected(RejectReason.TRUNCATED, "empty file")


class Ingestor:
    """Scans one drop folder; every file ends queued or quarantined, with a row in SQL."""

    def __init__(
        self,
        root: Path,
        *,
        sessions: sessionmaker[Session],
        enqueue: Enqueue,
        stable_seconds: float,
        storage_root: Path | None = None,
        resend_after: float | None = None,
        max_resends: int = 3,
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.storage_root = storage_root
        self.sessions = sessions
        self.enqueue = enqueue
        self.tracker = StabilityTracker(stable_seconds)
        self.resend_after = resend_after
        self.max_resends = max_resends
        self.queue_depth = queue_depth
        self._next_sweep = 0.0

    def recover(self) -> int:
        """Re-send every image still queued (after a crash or restart); returns how many."""
        with self.sessions() as session:
            ids = queries.queued_image_ids(session)
        if ids:
            self.enqueue(ids)
            log.info("re-sent %d queued images", len(ids))
        return len(ids)

    def resend_stale(self) -> int:
        """Re-send images queued for over ``resend_after`` seconds while the inference queue is
        empty (their task was lost); returns how many. Off when ``resend_after`` is None.

        An image a live worker still holds is sent twice at worst: tasks are idempotent.
        """
        if self.resend_after is None:
            return 0
        try:
            if self.queue_depth is not None and self.queue_depth() > 0:
                return 0  # a backlog: images wait their turn, nothing is known to be lost
        except Exception as exc:  # the broker is down: try again on the next sweep
            log.warning("cannot read the inference queue's depth: %s", exc)
            return 0
        cutoff = utcnow() - timedelta(seconds=self.resend_after)
        with self.sessions.begin() as session:
            claim = queries.claim_stale_queued(
                session, older_than=cutoff, max_resends=self.max_resends
            )
        if claim.resend:
            self.enqueue(claim.resend)
            log.warning(
                "re-sent %d images queued for over %.0fs with the inference queue empty",
                len(claim.resend),
                self.resend_after,
            )
        for image_id, source, stored in claim.exhausted:
            self._give_up(image_id, source, stored)
        return len(claim.resend)

    def _give_up(self, image_id: int, source: str, stored: str | None) -> None:
        """Quarantine an image whose task was lost after every re-send: the likeliest cause is
        a file that crashes the worker decoding it, which would otherwise crash workers for ever."""
        detail = (
            f"its task was lost {self.max_resends + 1} times with the inference queue empty; "
            "a worker may crash reading this file (see the workers' logs)"
        )
        with self.sessions.begin() as session:
            if not queries.reject_image(
                session,
                image_id,
                reason=RejectReason.WORKER_CRASH,
                detail=detail,
                stored_path=stored,
            ):
                return
        path = resolve_stored_path(stored, self.storage_root) if stored else None
        if path is not None and path.is_file():
            dest = quarantine_file(
                path,
                self.root,
                reason=RejectReason.WORKER_CRASH.value,
                detail=detail,
                source=source,
            )
            self._update_stored_path(image_id, dest)
        log.error("image %d quarantined: %s", image_id, detail)

    def maybe_resend_stale(self) -> int:
        """:meth:`resend_stale`, at most once every quarter of ``resend_after`` (1 to 30 s)."""
        if self.resend_after is None or time.monotonic() < self._next_sweep:
            return 0
        self._next_sweep = time.monotonic() + min(30.0, max(1.0, self.resend_after / 4))
        return self.resend_stale()

    def scan_once(self) -> list[IngestOutcome]:
        """Ingest every candidate that has stopped changing; others wait for a later scan."""
        self.root.mkdir(parents=True, exist_ok=True)
        check_own_dirs(self.root)
        outcomes = []
        for path in iter_candidates(self.root):
            if not path.is_symlink() and not self.tracker.is_ready(path):
                continue
            self.tracker.forget(path)
            try:
                outcome = self.ingest_file(path)
            except OSError as exc:
                # Disk full, a folder gone read-only: the file stays where it is (a committed
                # row waits for it, see _existing) and the next scan tries again.
                log.error(
                    "could not store a file (%s: %s); it stays in the drop folder",
                    type(exc).__name__,
                    exc.strerror or "refused",
                )
                continue
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def ingest_file(self, path: Path) -> IngestOutcome | None:
        """Queue or quarantine one file; never raises for a bad file."""
        source = display_path(path.relative_to(self.root))
        try:
            try:
                check_file_type(path)
                meta = read_header(path)
            except Rejected as exc:
                return self._quarantine(path, source, exc.reason, exc.detail, meta=None)
            except FileNotFoundError:
                raise
            except OSError as exc:
                return self._quarantine(path, source, RejectReason.UNREADABLE, str(exc), meta=None)
            return self._accept(path, meta, source)
        except FileNotFoundError:
            log.info("a file vanished while it was being ingested")
            return None

    def _accept(self, path: Path, meta: DicomMeta, source: str) -> IngestOutcome:
        sha = sha256_file(path)
        dest = processed_destination(self.root, study_uid=meta.study_uid, sop_uid=meta.sop_uid)
        with self.sessions() as session:
            existing = queries.image_by_sop(session, meta.sop_uid)
            if existing is not None:
                return self._existing(path, meta, source, sha, existing)
            try:
                study_id = queries.upsert_study(session, meta)
            except Rejected as exc:
                session.rollback()
                return self._quarantine(path, source, exc.reason, exc.detail, meta=meta)
            image_id = queries.add_queued_image(
                session,
                study_id=study_id,
                meta=meta,
                source_path=source,
                stored_path=to_stored_path(dest, self.storage_root),
                sha256=sha,
                size_bytes=path.stat().st_size,
            )
            try:
                session.commit()
            except IntegrityError:  # another ingest registered the same SOP just now
                session.rollback()
                return self._quarantine(
                    path, source, RejectReason.DUPLICATE, "registered concurrently", meta=meta
                )
        landed = move_file(path, dest, within=self.root)
        if landed != dest:
            self._update_stored_path(image_id, landed)
        self.enqueue([image_id])
        log.info("image %d queued (SOPInstanceUID %s)", image_id, meta.sop_uid)
        return IngestOutcome(image_id, "queued")

    def _existing(self, path, meta, source, sha, existing) -> IngestOutcome:  # type: ignore[no-untyped-def]
        stored = (
            resolve_stored_path(existing.stored_path, self.storage_root)
            if existing.stored_path
            else None
        )
        if existing.sha256 == sha and stored is not None and not stored.exists():
            # A crash after commit and before the move: finish the move, send the task again.
            move_file(path, stored, within=self.root)
            self.enqueue([existing.id])
            return IngestOutcome(existing.id, existing.status)
        same = "same content" if existing.sha256 == sha else "different content"
        detail = f"SOPInstanceUID already received as image {existing.id} ({same})"
        return self._quarantine(path, source, RejectReason.DUPLICATE, detail, meta=meta)

    def _quarantine(
        self, path: Path, source: str, reason: RejectReason, detail: str, *, meta: DicomMeta | None
    ) -> IngestOutcome:
        """Record, then move: the row is written while the file is still where it was found
        (a database outage leaves both untouched), and names the file's new place after."""
        sha = size = None
        if path.is_file() and not path.is_symlink():
            sha, size = sha256_file(path), path.stat().st_size
        here = to_stored_path(path, self.storage_root)
        with self.sessions.begin() as session:
            # a row left by a crash before the move is taken up, not written twice
            image_id = queries.rejected_image_at(session, here, sha) or queries.add_rejected_image(
                session,
                source_path=source,
                stored_path=here,
                sha256=sha,
                size_bytes=size,
                reason=reason,
                detail=detail,
                meta=meta,
            )
        dest = quarantine_file(path, self.root, reason=reason.value, detail=detail, source=source)
        self._update_stored_path(image_id, dest)
        log.warning("image %d quarantined: %s", image_id, reason.value)
        return IngestOutcome(image_id, "rejected", reason.value)

    def _update_stored_path(self, image_id: int, landed: Path) -> None:
        with self.sessions.begin() as session:
            queries.set_stored_path(session, image_id, to_stored_path(landed, self.storage_root))

    def watch(self, stop: threading.Event, *, poll_interval: float) -> None:
        """Ingest until ``stop`` is set: filesystem events wake the loop early, polling backs it."""
        wake = threading.Event()
        observer = _start_observer(self.root, wake)
        backoff = poll_interval
        try:
            while not stop.is_set():
                try:
                    self.scan_once()
                    self.maybe_resend_stale()
                    backoff = poll_interval
                except SQLAlchemyError as exc:
                    # The database is down or refusing: files stay where they are and are
                    # taken at a later scan. The error's class only: its text may hold PHI.
                    backoff = min(30.0, max(1.0, backoff * 2))
                    log.error(
                        "database error (%s); files stay in the drop folder, retry in %.0fs",
                        type(exc).__name__,
                        backoff,
                    )
                    stop.wait(backoff)
                    continue
                wake.wait(timeout=poll_interval)
                wake.clear()
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)


def _start_observer(root: Path, wake: threading.Event):  # type: ignore[no-untyped-def]
    """watchdog's native observer, else its polling observer, else none (polling loop only)."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class _Wake(FileSystemEventHandler):
        def on_any_event(self, event: object) -> None:
            wake.set()

    for factory in (Observer, PollingObserver):
        observer = factory()
        try:
            observer.schedule(_Wake(), str(root), recursive=True)
            observer.start()
            return observer
        except OSError as exc:
            log.warning("%s unavailable (%s); trying the next observer", factory.__name__, exc)
    return None
