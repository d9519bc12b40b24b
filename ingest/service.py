"""Register drop-folder files in SQL and enqueue them; quarantine what cannot be screened.

Crash safety: an accepted image's row (status ``queued``, with its destination) is committed
before the file moves and before the task is sent. A restart re-sends every queued image
(tasks are idempotent) and finishes a move that a crash interrupted, so nothing is lost and
nothing is predicted twice. A task can still vanish while the system runs: a worker killed
after Redis handed it a message, but before it recorded the message as unacknowledged, takes
the message with it. So the watch loop also re-sends an image that has waited longer than
``resend_after`` seconds while the inference queue is empty. And a broker restarted without
persistence forgets every task it held, while new files may keep its queue from ever draining:
the watch loop reads the broker's run id every few seconds and, when it changed, re-sends
every queued image.

A sender that pauses mid-copy (NFS, SMB, a slow modality) for longer than ``stable_seconds``
leaves a file that reads as truncated: it stays in the drop folder and is read again at later
scans, and is quarantined only once it held still for ``truncated_grace`` seconds.
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

from ingest.scanner import IncompleteTracker, StabilityTracker, iter_candidates
from pulmoscreen.db import queries
from pulmoscreen.db.schema import Image, utcnow
from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging.dicom import DicomMeta, read_header
from pulmoscreen.quarantine import quarantine_rejected, record_stored_path
from pulmoscreen.storage import (
    QUARANTINE_DIR,
    SIDECAR_SUFFIX,
    changed_since,
    check_own_dirs,
    files_without_sidecar,
    move_file,
    processed_destination,
    quarantined_image_id,
    resolve_stored_path,
    sha256_file,
    sidecar_for,
    to_stored_path,
    write_sidecar,
)

log = logging.getLogger(__name__)

Enqueue = Callable[[Iterable[int]], object]


@dataclass(frozen=True)
class _Unsettled:
    """A rejected row whose file is not recorded in ``quarantine/``."""

    id: int
    stored_path: str
    sha256: str | None
    source_path: str
    reason: str
    detail: str


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
        queue_depth: Callable[[], int] | None = None,
        truncated_grace: float = 0.0,
        broker_run_id: Callable[[], str | None] | None = None,
        broker_check_interval: float = 5.0,
        repair_interval: float = 60.0,
    ) -> None:
        self.root = root.resolve()
        self.storage_root = storage_root
        self.sessions = sessions
        self.enqueue = enqueue
        self.tracker = StabilityTracker(stable_seconds)
        self.resend_after = resend_after
        self.queue_depth = queue_depth
        self._next_sweep = 0.0
        self.incomplete = IncompleteTracker(truncated_grace)
        self.broker_run_id = broker_run_id
        self.broker_check_interval = broker_check_interval
        self._broker_run: str | None = None  # the broker run that holds every task sent so far
        self._next_broker_check = 0.0
        self.repair_interval = repair_interval
        self._next_repair = 0.0

    @property
    def waiting(self) -> int:
        """Files seen but neither queued nor quarantined yet: still changing, or cut short by a
        sender that may resume."""
        return self.tracker.waiting + self.incomplete.waiting

    def recover(self) -> int:
        """At start: finish what a crash left half done in ``quarantine/``, and re-send every
        image still queued (after a crash or restart); returns how many were re-sent."""
        self.repair_quarantine()
        self._next_repair = time.monotonic() + self.repair_interval
        return self._resend_queued()

    def _resend_queued(self) -> int:
        run = self._read_broker_run()  # before the rows: a restart after this is seen later
        with self.sessions() as session:
            ids = queries.queued_image_ids(session)
        if ids:
            self.enqueue(ids)
            log.info("re-sent %d queued images", len(ids))
        self._broker_run = run
        return len(ids)

    def check_broker(self) -> int:
        """Re-send every queued image when the broker restarted since it was last seen (a Redis
        without persistence comes back empty); returns how many. Off without ``broker_run_id``.

        A broker that cannot be reached, or a re-send that fails, is tried again at the next
        check. A broker not seen before (:meth:`recover` not run, or it could not read the run)
        counts as restarted: a duplicate task is harmless, a lost one is not.
        """
        run = self._read_broker_run()
        if run is None or run == self._broker_run:
            return 0
        if self._broker_run is not None:
            log.warning("the broker restarted: its tasks may be lost; re-sending queued images")
        try:
            return self._resend_queued()
        except SQLAlchemyError:
            raise  # the watch loop backs off; the run is not recorded, so this is retried
        except Exception as exc:
            log.warning("could not re-send the queued images (%s); retrying soon", exc)
            return 0

    def maybe_check_broker(self) -> int:
        """:meth:`check_broker`, at most once every ``broker_check_interval`` seconds."""
        if self.broker_run_id is None or time.monotonic() < self._next_broker_check:
            return 0
        self._next_broker_check = time.monotonic() + self.broker_check_interval
        return self.check_broker()

    def _read_broker_run(self) -> str | None:
        """The broker's run id; None when there is none or the broker cannot be reached."""
        if self.broker_run_id is None:
            return None
        try:
            return self.broker_run_id()
        except Exception as exc:  # the broker is down: the next check tries again
            log.warning("cannot reach the broker to check for a restart: %s", exc)
            return None

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
            resend = queries.claim_stale_queued(session, older_than=cutoff)
        if resend:
            self.enqueue(resend)
            log.warning(
                "re-sent %d images queued for over %.0fs with the inference queue empty",
                len(resend),
                self.resend_after,
            )
        return len(resend)

    def maybe_resend_stale(self) -> int:
        """:meth:`resend_stale`, at most once every quarter of ``resend_after`` (1 to 30 s)."""
        if self.resend_after is None or time.monotonic() < self._next_sweep:
            return 0
        self._next_sweep = time.monotonic() + min(30.0, max(1.0, self.resend_after / 4))
        return self.resend_stale()

    def repair_quarantine(self, *, settled_for: float = 0.0) -> int:
        """Finish quarantine moves a crash or a full disk left half done; returns how many files
        were put right. Rows last changed less than ``settled_for`` seconds ago are left to the
        process that is still handling them.

        - A rejected row that names a file outside ``quarantine/`` (ingest or a worker was
          killed between the row and the move, or between the move and the row's update): the
          file moved is found by the image id in its quarantine name and recorded; a file still
          where the row says, with the row's content, is moved now.
        - A quarantined file without its sidecar (written when the disk was full, or a crash
          before it) gets one, from its row.
        """
        quarantine = self.root / QUARANTINE_DIR
        cutoff = utcnow() - timedelta(seconds=settled_for) if settled_for else None
        with self.sessions() as session:
            pending = [
                _Unsettled(
                    row.id,
                    row.stored_path or "",
                    row.sha256,
                    row.source_path,
                    row.reject_reason or "",
                    row.reject_detail or "",
                )
                for row in queries.rejected_elsewhere(
                    session, to_stored_path(quarantine, self.storage_root), updated_before=cutoff
                )
            ]
        moved: dict[int, Path] = {}
        if pending:
            moved = {
                number: path
                for path in sorted(quarantine.glob("*"))
                if not path.name.endswith(SIDECAR_SUFFIX)
                and (number := quarantined_image_id(path)) is not None
            }
        fixed = 0
        for row in pending:
            if row.id in moved:
                self._update_stored_path(row.id, moved[row.id])
                fixed += 1
            elif self._finish_quarantine(row):
                fixed += 1
        written, missing = self._write_missing_sidecars()
        fixed += written
        if missing:  # the disk is still full: try again soon rather than at the next sweep
            self._next_repair = min(self._next_repair, time.monotonic() + 5.0)
        if fixed:
            log.warning("put %d quarantined files right after an interruption", fixed)
        return fixed

    def _finish_quarantine(self, row: _Unsettled) -> bool:
        """Move a rejected file still where its row says (same content) into quarantine."""
        path = resolve_stored_path(row.stored_path, self.storage_root)
        if not path.absolute().is_relative_to(self.root):
            return False  # another drop folder's row
        if row.sha256 is None and os.path.lexists(path):
            return False  # not a regular file: the scan quarantines it under this same row
        if not path.is_file() or row.sha256 is None or sha256_file(path) != row.sha256:
            log.warning("image %d: its rejected file is neither in place nor quarantined", row.id)
            return False
        try:
            self._to_quarantine(row.id, path, row.source_path, row.reason, row.detail)
        except OSError as exc:  # moved by a worker meanwhile, or a full disk: next sweep
            log.warning("image %d: quarantine repair deferred (%s)", row.id, exc.strerror)
            return False
        return True

    def _to_quarantine(
        self, image_id: int, path: Path, source: str, reason: str, detail: str
    ) -> Path:
        return quarantine_rejected(
            self.sessions,
            image_id,
            path,
            root=self.root,
            reason=reason,
            detail=detail,
            source=source,
            storage_root=self.storage_root,
        )

    def _write_missing_sidecars(self) -> tuple[int, int]:
        """Write the sidecar of every quarantined file that has none, from its row: (written,
        still missing)."""
        written = missing = 0
        for path in files_without_sidecar(self.root):
            number = quarantined_image_id(path)
            with self.sessions() as session:
                row = (
                    session.get(Image, number)
                    if number is not None
                    else queries.image_at(session, to_stored_path(path, self.storage_root))
                )
                if row is None or row.status != "rejected":
                    continue
                reason, detail, source = (
                    row.reject_reason or "",
                    row.reject_detail or "",
                    row.source_path,
                )
            if write_sidecar(path, reason=reason, detail=detail, source=source):
                written += 1
            else:
                missing += 1
        return written, missing

    def maybe_repair_quarantine(self) -> int:
        """:meth:`repair_quarantine`, at most once every ``repair_interval`` seconds, leaving
        alone rows that changed within the last 30 s (a worker may be moving that file now)."""
        if time.monotonic() < self._next_repair:
            return 0
        self._next_repair = time.monotonic() + self.repair_interval
        return self.repair_quarantine(settled_for=30.0)

    def scan_once(self) -> list[IngestOutcome]:
        """Ingest every candidate that has stopped changing; others wait for a later scan."""
        self.root.mkdir(parents=True, exist_ok=True)
        check_own_dirs(self.root)
        outcomes = []
        present = set()
        for path in iter_candidates(self.root):
            present.add(path)
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
                self.incomplete.forget(path)
                outcomes.append(outcome)
        self.incomplete.retain(present)
        return outcomes

    def ingest_file(self, path: Path) -> IngestOutcome | None:
        """Queue or quarantine one file; never raises for a bad file. None: the file vanished,
        or it is cut short but may still grow (it is read again at a later scan)."""
        source = display_path(path.relative_to(self.root))
        seen: os.stat_result | None = None
        try:
            try:
                check_file_type(path)
                seen = path.stat()
                meta = read_header(path)
            except Rejected as exc:
                if exc.reason is RejectReason.TRUNCATED and self._may_still_grow(path, exc):
                    return None
                if seen is not None and changed_since(path, seen):
                    # written to while read: what was refused may not be what is there now
                    log.info("a file changed while it was read; it is taken at a later scan")
                    return None
                return self._quarantine(path, source, exc.reason, exc.detail, meta=None)
            except FileNotFoundError:
                raise
            except OSError as exc:
                return self._quarantine(path, source, RejectReason.UNREADABLE, str(exc), meta=None)
            return self._accept(path, meta, source, seen)
        except FileNotFoundError:
            log.info("a file vanished while it was being ingested")
            return None

    def _may_still_grow(self, path: Path, exc: Rejected) -> bool:
        """Whether a file that reads as truncated changed recently: its sender may have paused."""
        first = path not in self.incomplete
        if not self.incomplete.may_still_grow(path):
            return False
        if first:
            log.info(
                "a file reads as cut short (%s) but changed recently; it stays in the drop "
                "folder, read again until it held still for %.0fs",
                exc.detail,
                self.incomplete.grace_seconds,
            )
        return True

    def _accept(
        self, path: Path, meta: DicomMeta, source: str, seen: os.stat_result
    ) -> IngestOutcome | None:
        sha = sha256_file(path)
        now = path.stat()
        if changed_since(path, seen, now):
            # Rewritten while read (a sender correcting the file): the header read may not be
            # the content hashed and kept. The next scan takes it once it holds still.
            log.info("a file changed while it was read; it is taken at a later scan")
            return None
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
        try:
            landed = move_file(path, dest, within=self.root)
        except FileNotFoundError:
            # The sender deleted or renamed it while it was read: nothing was received (a
            # renamed file is taken under its new name).
            with self.sessions.begin() as session:
                queries.forget_queued_image(session, image_id)
            raise
        moved = landed.stat()
        if (moved.st_size, moved.st_mtime_ns) != (now.st_size, now.st_mtime_ns):
            # Written to while it was moved (a sender rewriting in place): what is kept is not
            # what was registered. Back where it was found, and taken again once it holds still.
            move_file(landed, path, within=self.root)
            with self.sessions.begin() as session:
                queries.forget_queued_image(session, image_id)
            log.info("a file changed while it was stored; it is taken at a later scan")
            return None
        if landed != dest:
            self._update_stored_path(image_id, landed)
        self._send([image_id])
        log.info("image %d queued", image_id)  # the database holds its UIDs; logs hold none
        return IngestOutcome(image_id, "queued")

    def _existing(self, path, meta, source, sha, existing) -> IngestOutcome | None:  # type: ignore[no-untyped-def]
        stored = (
            resolve_stored_path(existing.stored_path, self.storage_root)
            if existing.stored_path
            else None
        )
        if existing.sha256 == sha and stored is not None and not stored.exists():
            # A crash after commit and before the move: finish the move, send the task again.
            move_file(path, stored, within=self.root)
            self._send([existing.id])
            return IngestOutcome(existing.id, existing.status)
        if existing.status == "queued" and stored is not None and not stored.exists():
            # Not the file registered, and the registered one is gone from processed/: a worker
            # handed a file changed since its registration back (and was stopped before it
            # removed the row), or the file changed before an interrupted move. Registered anew
            # under its own header at the next scan.
            with self.sessions.begin() as session:
                queries.forget_queued_image(session, existing.id)
            log.info(
                "image %d changed since it was registered; it is registered again", existing.id
            )
            return None
        if existing.status == "rejected" and existing.reject_reason in queries.REOPENABLE:
            return self._reopen(path, meta, source, sha, existing)
        same = "same content" if existing.sha256 == sha else "different content"
        detail = f"SOPInstanceUID already received as image {existing.id} ({same})"
        return self._quarantine(path, source, RejectReason.DUPLICATE, detail, meta=meta)

    def _reopen(self, path, meta, source, sha, existing) -> IngestOutcome:  # type: ignore[no-untyped-def]
        """A file sent again after its first copy was rejected for a reason a transfer or the
        machine may cause (cut short, unreadable, a decoder or worker that died): the image is
        queued again with the new copy, and is screened once."""
        dest = processed_destination(self.root, study_uid=meta.study_uid, sop_uid=meta.sop_uid)
        try:
            with self.sessions.begin() as session:
                queries.reopen_rejected(
                    session,
                    existing,
                    study_id=queries.upsert_study(session, meta),
                    stored_path=to_stored_path(dest, self.storage_root),
                    sha256=sha,
                    size_bytes=path.stat().st_size,
                )
        except Rejected as exc:
            return self._quarantine(path, source, exc.reason, exc.detail, meta=meta)
        landed = move_file(path, dest, within=self.root)
        if landed != dest:
            self._update_stored_path(existing.id, landed)
        self._send([existing.id])
        log.info("image %d queued again: a new copy after %s", existing.id, existing.reject_reason)
        return IngestOutcome(existing.id, "queued")

    def _quarantine(
        self, path: Path, source: str, reason: RejectReason, detail: str, *, meta: DicomMeta | None
    ) -> IngestOutcome:
        """Record, then move: the row is written while the file is still where it was found
        (a database outage leaves both untouched), and names the file's new place after. The
        quarantine name carries the image id, so a crash between the move and the update is
        put right by :meth:`repair_quarantine`."""
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
        dest = self._to_quarantine(image_id, path, source, reason.value, detail)
        if not sidecar_for(dest).exists():  # a full disk: written by the next repair sweep
            self._next_repair = min(self._next_repair, time.monotonic() + 5.0)
        log.warning("image %d quarantined: %s", image_id, reason.value)
        return IngestOutcome(image_id, "rejected", reason.value)

    def _send(self, image_ids: list[int]) -> None:
        """Send the tasks of committed, queued images. With the broker down the images stay
        queued and the scan goes on: they are sent again once the broker is seen back (a run
        not seen before counts as a restart, see :meth:`check_broker`) or by the stale sweep."""
        try:
            self.enqueue(image_ids)
        except Exception as exc:
            self._broker_run = None
            log.error(
                "cannot send %d tasks (%s); the images stay queued and are sent again later",
                len(image_ids),
                type(exc).__name__,
            )

    def _update_stored_path(self, image_id: int, landed: Path) -> None:
        record_stored_path(self.sessions, image_id, landed, storage_root=self.storage_root)

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
                    self.maybe_check_broker()
                    self.maybe_repair_quarantine()
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
                except OSError as exc:
                    # processed/ or quarantine/ turned into a link, the drop folder unmounted:
                    # nothing is moved until an operator puts it right; ingest stays up.
                    backoff = min(30.0, max(1.0, backoff * 2))
                    log.error("drop folder unusable (%s); retry in %.0fs", exc, backoff)
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
