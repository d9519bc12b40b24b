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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PROCESSED_DIR = "processed"
QUARANTINE_DIR = "quarantine"
HEATMAP_DIR = "heatmaps"
OWN_DIRS = frozenset({PROCESSED_DIR, QUARANTINE_DIR, HEATMAP_DIR})
SIDECAR_SUFFIX = ".reason.json"

_UNSAFE = re.compile(r"[^0-9A-Za-z._-]+")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def changed_since(path: Path, seen: os.stat_result, now: os.stat_result | None = None) -> bool:
    """Whether ``path`` is no longer the file ``seen`` described (rewritten or replaced): its
    size, mtime or inode differ."""
    now = now or path.stat()
    return (now.st_size, now.st_mtime_ns, now.st_ino) != (
        seen.st_size,
        seen.st_mtime_ns,
        seen.st_ino,
    )


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


def heatmap_destination(folder: Path, *, image_id: int, model_id: int) -> Path:
    """``folder/<thousands of image_id>/<image_id>-m<model_id>.png``: one per prediction, named
    by internal ids only (no UID of the header)."""
    return folder / f"{image_id // 1000:06d}" / f"{image_id}-m{model_id}.png"


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


_STAMP = re.compile(r"^\d{8}T\d{6}_")
_QUARANTINED = re.compile(r"^\d{8}T\d{6}_(\d+)_")


def quarantine_file(
    src: Path,
    root: Path,
    *,
    reason: str,
    detail: str,
    source: str,
    image_id: int | None = None,
) -> Path:
    """Move ``src`` into ``root/quarantine/`` and write a sidecar that says why.

    The file is named ``<UTC stamp>_<image id>_<name>``: the id lets a restart find a file
    whose move a crash interrupted before its row named the new place
    (:func:`quarantined_image_id`). A sidecar that cannot be written (a full disk) is left for
    :func:`write_sidecar` later; the reason is in SQL meanwhile.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    name = safe_name(Path(source).name or src.name)
    prefix = f"{stamp}_{image_id}_" if image_id is not None else f"{stamp}_"
    dest = move_file(src, root / QUARANTINE_DIR / f"{prefix}{name}", within=root)
    write_sidecar(dest, reason=reason, detail=detail, source=source)
    return dest


def sidecar_for(quarantined: Path) -> Path:
    """``quarantine/x.dcm`` -> ``quarantine/x.dcm.reason.json``."""
    return quarantined.with_name(quarantined.name + SIDECAR_SUFFIX)


def quarantined_image_id(quarantined: Path) -> int | None:
    """The image id in a quarantined file's name (None for a name without one)."""
    match = _QUARANTINED.match(quarantined.name)
    return int(match.group(1)) if match else None


def write_sidecar(quarantined: Path, *, reason: str, detail: str, source: str) -> bool:
    """Write the sidecar of a quarantined file (whole or not at all); False when the disk
    refused it (logged; the caller may try again once space returns)."""
    sidecar = sidecar_for(quarantined)
    stamp = quarantined.name[:15] if _STAMP.match(quarantined.name) else None
    text = (
        json.dumps(
            {"reason": reason, "detail": detail, "source": source, "quarantined_at": stamp},
            indent=2,
        )
        + "\n"
    )
    partial = sidecar.with_name(f".{sidecar.name}.part")
    try:
        partial.write_text(text)
        os.replace(partial, sidecar)
    except OSError as exc:
        log.error(
            "no sidecar for %s yet (%s)", quarantined.name, exc.strerror or type(exc).__name__
        )
        with contextlib.suppress(OSError):
            partial.unlink()
        return False
    return True


def files_without_sidecar(root: Path) -> list[Path]:
    """Quarantined files of ``root`` that have no sidecar (a full disk or a crash in between)."""
    folder = root / QUARANTINE_DIR
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    names = {entry.name for entry in entries}
    return [
        folder / entry.name
        for entry in entries
        if not entry.name.startswith(".")
        and not entry.name.endswith(SIDECAR_SUFFIX)
        and entry.is_file(follow_symlinks=False)
        and entry.name + SIDECAR_SUFFIX not in names
    ]


def fsync_directory(folder: Path) -> None:
    """Flush a folder's entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, write: Callable[[BinaryIO], object], *, temp: Path) -> Path:
    """Write ``path`` so that its name never shows a partial file and, once this returns, the
    file survives a crash: ``write`` fills ``temp`` (a name in the same folder that nobody
    reads, e.g. a dot prefix, which ingest skips), which is flushed to disk, renamed to
    ``path`` (replacing a file of that name), and the folder is flushed.

    Raises:
        OSError: the file could not be written; the temporary file is removed.
    """
    try:
        with temp.open("xb") as out:
            write(out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path
