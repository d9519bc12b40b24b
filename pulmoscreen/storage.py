"""Where files go after ingest: ``processed/`` for accepted ones, ``quarantine/`` for the rest.

File names written here are built from sanitised UIDs or the base name only, so nothing is
ever written outside the drop folder because of what a file or its header says.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

PROCESSED_DIR = "processed"
QUARANTINE_DIR = "quarantine"
OWN_DIRS = frozenset({PROCESSED_DIR, QUARANTINE_DIR})
SIDECAR_SUFFIX = ".reason.json"

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]+")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_name(text: str, *, limit: int = 120) -> str:
    """A file-name-safe version of ``text`` (no separators, no leading dots)."""
    cleaned = _UNSAFE.sub("_", text).lstrip(".")[:limit]
    return cleaned or "unnamed"


def _unique(dest: Path) -> Path:
    if not dest.exists():
        return dest
    for n in range(1, 10_000):
        candidate = dest.with_name(f"{dest.stem}~{n}{dest.suffix}")
        if not candidate.exists():
            return candidate
    raise FileExistsError(dest)


class OutsideDropFolderError(OSError):
    """A destination whose folder resolves outside the drop folder (through a link)."""


def check_own_dirs(root: Path) -> None:
    """Refuse a drop folder whose ``processed/`` or ``quarantine/`` is a symbolic link: files
    moved there would leave the drop folder for wherever the link points.

    Raises:
        OutsideDropFolderError: naming the link.
    """
    for name in sorted(OWN_DIRS):
        if (root / name).is_symlink():
            raise OutsideDropFolderError(
                f"{root / name} is a symbolic link: refusing to store files outside {root}"
            )


def move_file(src: Path, dest: Path, *, within: Path | None = None) -> Path:
    """Move ``src`` to ``dest`` (or a numbered sibling if taken); returns where it landed.

    With ``within``, refuse (``OutsideDropFolderError``) a destination folder that resolves
    outside it: a link planted on the way must not carry the file elsewhere.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if within is not None and not dest.parent.resolve().is_relative_to(within.resolve()):
        raise OutsideDropFolderError(f"{dest.parent} leads outside {within}")
    dest = _unique(dest)
    try:
        os.replace(src, dest)
    except OSError:
        shutil.move(str(src), str(dest))
    return dest


def processed_destination(root: Path, *, study_uid: str, sop_uid: str) -> Path:
    """``root/processed/<StudyInstanceUID>/<SOPInstanceUID>.dcm``."""
    return root / PROCESSED_DIR / safe_name(study_uid) / f"{safe_name(sop_uid)}.dcm"


def to_stored_path(path: Path, storage_root: Path | None) -> str:
    """How a file's location is written in SQL: relative to ``storage_root`` when inside it.

    Relative paths let workers on other hosts find the file wherever they mount the shared
    storage (``PULMO_STORAGE_ROOT``); outside the root, or without one, the path is absolute.
    """
    absolute = path.absolute()
    if storage_root is not None:
        try:
            return absolute.relative_to(storage_root.absolute()).as_posix()
        except ValueError:
            pass
    return str(absolute)


def resolve_stored_path(stored: str, storage_root: Path | None) -> Path:
    """The file a stored path names on this host."""
    path = Path(stored)
    if path.is_absolute() or storage_root is None:
        return path
    return storage_root / path


def quarantine_file(src: Path, root: Path, *, reason: str, detail: str, source: str) -> Path:
    """Move ``src`` into ``root/quarantine/`` and write a sidecar that says why."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = safe_name(Path(source).name or src.name)
    dest = move_file(src, root / QUARANTINE_DIR / f"{stamp}_{name}", within=root)
    sidecar = dest.with_name(dest.name + SIDECAR_SUFFIX)
    try:
        sidecar.write_text(
            json.dumps(
                {"reason": reason, "detail": detail, "source": source, "quarantined_at": stamp},
                indent=2,
            )
            + "\n"
        )
    except OSError as exc:
        # A full disk: the file has moved and the reason is in SQL; the sidecar is a copy.
        log.error("no sidecar for %s (%s)", dest.name, exc.strerror or type(exc).__name__)
        with contextlib.suppress(OSError):
            sidecar.unlink()
    return dest
