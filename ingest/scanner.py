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
