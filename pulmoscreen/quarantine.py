"""The one way a rejected image's file goes to quarantine: its row first, then the move.

Ingest (a file refused at its header) and the worker (pixels refused at decode) both reject an
image the same way. The row is marked rejected while the file is still where it was found, so a
database outage leaves both untouched; the file then moves into ``quarantine/`` under a name
that carries the image id, and the row names its new place. A crash between the move and that
update is put right by ingest's repair sweep (``Ingestor.repair_quarantine``), which finds the
file by the id in its name.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from pulmoscreen.db import queries
from pulmoscreen.storage import quarantine_file, to_stored_path


def quarantine_rejected(
    sessions: sessionmaker[Session],
    image_id: int,
    path: Path,
    *,
    root: Path,
    reason: str,
    detail: str,
    source: str,
    storage_root: Path | None,
) -> Path:
    """Move the file of a rejected image (its row already says so) into ``root/quarantine/``
    with a sidecar, and record its new place; returns that place. Raises ``OSError`` when the
    move fails (the row still names the file where it lies)."""
    dest = quarantine_file(
        path, root, reason=reason, detail=detail, source=source, image_id=image_id
    )
    record_stored_path(sessions, image_id, dest, storage_root=storage_root)
    return dest


def record_stored_path(
    sessions: sessionmaker[Session], image_id: int, path: Path, *, storage_root: Path | None
) -> None:
    """Record where an image's file now lies (after a move)."""
    with sessions.begin() as session:
        queries.set_stored_path(session, image_id, to_stored_path(path, storage_root))
