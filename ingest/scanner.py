"""Which files in the drop folder are candidates, and which have stopped changing."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pulmoscreen.storage import OWN_DIRS, SIDECAR_SUFFIX

IGNORED_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload", ".filepart", SIDECAR_SUFFIX)


def is_ignored_name(name: str) -> bool:
    """Hidden files and names that copy tools use while a transfer is in progress."""
    return name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES)


def iter_candidates(root: Path) -> Iterator[Path]:
    """Files under ``root``, recursively, skipping our own ``processed/`` and ``quarantine/``."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            if here == root and name in OWN_DIRS:
                continue
            if (here / name).is_symlink():
                yield here / name  # a linked folder is reported, never entered
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not is_ignored_name(name):
                yield here / name


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class StabilityTracker:
    """A file is ready once its size and mtime held still for ``stable_seconds`` of watching."""

    def __init__(self, stable_seconds: float) -> None:
        self.stable_seconds = stable_seconds
        self._seen: dict[Path, _Seen] = {}

    def is_ready(self, path: Path, *, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        try:
            st = path.lstat()
        except FileNotFoundError:
            self._seen.pop(path, None)
            return False
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
            return self.stable_seconds <= 0
        return now - seen.since >= self.stable_seconds

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    @property
    def waiting(self) -> int:
        """Files seen but not yet stable."""
        return len(self._seen)


class IncompleteTracker:
    """Files that read as cut short, which a sender that paused may still be writing.

    A copy over NFS or SMB, or from a slow modality, can stall for longer than
    ``stable_seconds``: its partial file then reads as truncated. Such a file is given
    ``grace_seconds`` more and read again at later scans; it counts as cut for good once it held
    still for that long, by ingest's own watching since it first read as cut short, or by its
    mtime (a file cut long before ingest started is not waited for again). A file server whose
    clock runs more than ``grace_seconds`` behind makes a fresh file look old: such a file is
    quarantined as soon as it reads as cut short, as with no grace period.
    """

    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self._seen: dict[Path, _Seen] = {}

    def may_still_grow(
        self, path: Path, *, now: float | None = None, wall_now: float | None = None
    ) -> bool:
        """Whether ``path``, which just read as cut short, changed within the grace period.

        Raises:
            FileNotFoundError: the file is gone.
        """
        if self.grace_seconds <= 0:
            return False
        now = time.monotonic() if now is None else now
        wall_now = time.time() if wall_now is None else wall_now
        st = path.lstat()
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
            seen = self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
        mtime_age = wall_now - st.st_mtime_ns / 1e9
        if now - seen.since < self.grace_seconds and mtime_age < self.grace_seconds:
            return True
        self._seen.pop(path, None)
        return False

    def __contains__(self, path: object) -> bool:
        return path in self._seen

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)

    def retain(self, paths: set[Path]) -> None:
        """Forget the files not in ``paths`` (renamed or deleted by their sender)."""
        for path in self._seen.keys() - paths:
            del self._seen[path]

    @property
    def waiting(self) -> int:
        """Files cut short that may still grow."""
        return len(self._seen)
