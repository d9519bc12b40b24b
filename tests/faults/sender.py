"""The modality side: copies a corpus into the drop folder while the pipeline runs, the way
senders do (plain copies, slow copies, copy-then-rename), and the tamperer that renames, deletes
or rewrites a file at the moment ingest opens it.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.faults.corpus import ABSENT, PREDICTED, Corpus, sha256_bytes

log = logging.getLogger(__name__)

CHUNK = 16 * 1024


class Sender:
    """Delivers ``corpus`` into ``drop`` on ``threads`` threads at about ``rate`` files/s.

    ``mode``: ``copy`` writes the file in place (as ``cp`` does; ingest's stability check must
    wait for it), ``atomic`` writes a hidden temporary name and renames it, ``slow`` writes in
    chunks with pauses shorter than ``max_gap`` seconds. A full disk (ENOSPC) is answered as a
    careful sender does: the partial copy is removed and the file sent again a little later.
    """

    def __init__(
        self,
        corpus: Corpus,
        drop: Path,
        *,
        rate: float = 10.0,
        mode: str = "copy",
        threads: int = 1,
        max_gap: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.corpus, self.drop, self.rate, self.mode = corpus, drop, rate, mode
        self.threads, self.max_gap = threads, max_gap
        self.rng = random.Random(seed)
        self.delivered = 0
        self.enospc = 0
        self.done = threading.Event()
        # the files up to the first one to be predicted go alone: the rest waits for ``go``
        # (set once the pipeline has predicted it, so a fault never lands on workers still
        # loading their model)
        self.go = threading.Event()
        self.warm_up = 1 + next(
            (i for i, f in enumerate(corpus.files) if PREDICTED in f.expected.outcomes), 0
        )
        self._next = 0
        self.last_delivered: int | None = None
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self) -> Sender:
        self._workers = [
            threading.Thread(target=self._run, name=f"sender-{k}", daemon=True)
            for k in range(self.threads)
        ]
        for thread in self._workers:
            thread.start()
        threading.Thread(target=self._wait_all, daemon=True).start()
        return self

    def _wait_all(self) -> None:
        for thread in self._workers:
            thread.join()
        self.done.set()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= len(self.corpus.files):
                return None
            index, self._next = self._next, self._next + 1
            return index

    def _run(self) -> None:
        try:
            while (index := self._take()) is not None:
                if index >= self.warm_up:
                    self.go.wait()
                started = time.monotonic()
                self.deliver(index)
                with self._lock:
                    self.delivered += 1
                    self.last_delivered = index
                pause = self.threads / self.rate - (time.monotonic() - started)
                if pause > 0:
                    time.sleep(pause)
        except BaseException as exc:  # the test reads it; a dead sender must not look done
            self.errors.append(exc)
            raise

    def deliver(self, index: int) -> None:
        item = self.corpus.files[index]
        dest = self.drop / item.expected.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                self._write(item.staged, dest)
                return
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                self.enospc += 1
                for leftover in (dest, _temp_name(dest)):
                    leftover.unlink(missing_ok=True)
                time.sleep(0.5)

    def _write(self, src: Path, dest: Path) -> None:
        if self.mode == "copy":
            shutil.copyfile(src, dest)
        elif self.mode == "atomic":
            tmp = _temp_name(dest)
            shutil.copyfile(src, tmp)
            os.rename(tmp, dest)
        elif self.mode == "slow":
            data = src.read_bytes()
            with dest.open("wb") as fh:
                for start in range(0, len(data), CHUNK):
                    fh.write(data[start : start + CHUNK])
                    fh.flush()
                    time.sleep(self.rng.uniform(0.05, self.max_gap))
        else:
            raise ValueError(self.mode)

    def just_sent_reject(self) -> bool:
        """The latest file delivered is one to be quarantined."""
        last = self.last_delivered
        return last is not None and PREDICTED not in self.corpus.files[last].expected.outcomes

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise TimeoutError(f"sender delivered {self.delivered} files in {timeout:.0f}s")
        if self.errors:
            raise self.errors[0]


def _temp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.sending")


class Tamperer:
    """Acts on armed files at the moment another process opens them (inotify IN_OPEN, through
    watchdog): ingest's header read is the first open of a file the sender wrote under a
    temporary name and renamed. ``action`` is ``rename``, ``delete`` or ``rewrite``.

    Each act updates the corpus's expectations with what the file then is: renamed (another
    name, same bytes), deleted (:data:`ABSENT`, unless ingest had already moved it away), or
    rewritten in place with a corrected PatientID (the new bytes and the new patient).
    """

    def __init__(
        self,
        corpus: Corpus,
        drop: Path,
        *,
        action: str,
        armed: list[int],
        rewrite: Callable[[int], tuple[bytes, str]] | None = None,
    ) -> None:
        self.corpus, self.drop, self.action = corpus, drop, action
        self.rewrite = rewrite
        self._armed = {(drop / corpus.files[i].expected.name).resolve(): i for i in armed}
        self._lock = threading.Lock()
        self.acted = 0
        self.missed = 0
        self.observer: Any = None

    def start(self) -> Tamperer:
        from watchdog.events import FileOpenedEvent, FileSystemEventHandler
        from watchdog.observers.inotify import InotifyObserver

        tamperer = self

        class _OnOpen(FileSystemEventHandler):
            def on_any_event(self, event: object) -> None:
                if isinstance(event, FileOpenedEvent):
                    tamperer.on_open(Path(os.fsdecode(event.src_path)))

        self.drop.mkdir(parents=True, exist_ok=True)
        self.observer = InotifyObserver()
        self.observer.schedule(_OnOpen(), str(self.drop), recursive=True)
        self.observer.start()
        return self

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=10)

    def on_open(self, path: Path) -> None:
        with self._lock:
            index = self._armed.pop(path.resolve(), None)
        if index is None:
            return
        try:
            getattr(self, f"_{self.action}")(index, path)
            self.acted += 1
        except FileNotFoundError:
            self.missed += 1  # ingest moved it first: the file goes on as delivered

    def _rename(self, index: int, path: Path) -> None:
        new = path.with_name(f"renamed_{path.name}")
        os.rename(path, new)
        self.corpus.update(index, name=new.relative_to(self.drop).as_posix())

    def _delete(self, index: int, path: Path) -> None:
        os.unlink(path)
        self.corpus.update(index, outcomes=frozenset({ABSENT}))

    def _rewrite(self, index: int, path: Path) -> None:
        assert self.rewrite is not None
        data, patient = self.rewrite(index)
        with path.open("r+b") as fh:  # in place: never creates a new file once ingest moved it
            fh.truncate(0)
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            time.sleep(0.005)
            fh.write(data[half:])
        self.corpus.update(
            index, sha256=sha256_bytes(data), patient_id=patient, outcomes=frozenset({PREDICTED})
        )

    @property
    def pending(self) -> int:
        """Armed files not opened yet."""
        with self._lock:
            return len(self._armed)
