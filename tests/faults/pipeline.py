"""The product as deployed, as subprocesses: ``pulmoscreen ingest --watch`` and ``celery -A
worker`` workers on the suite's own Redis and PostgreSQL, under a supervisor that restarts a
process that exits on its own (as ``restart: unless-stopped`` does) and records that it did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.faults.services import PostgresCluster, RedisServer
from tests.integration.conftest import ROOT, pulmo_env, run_cli, start_worker_process

PULMOSCREEN = str(Path(sys.executable).parent / "pulmoscreen")

# The product's settings for every scenario. Shorter than production where a default would
# only make the suite slow: a stability window of 1 s instead of 2 s, a lost task re-sent after
# 15 s instead of 300 s, Redis handing a dead worker's messages on after 20 s instead of 900 s,
# a file that reads as cut short quarantined after 10 s of stillness instead of 180 s. Every
# image is flagged (the tiny stand-in model gives every image about the same scores), so every
# file's header text reaches the night's flagged list, and its counts are checked.
SUITE_SETTINGS = {
    "PULMO_STABLE_SECONDS": "1.0",
    "PULMO_POLL_INTERVAL": "0.5",
    "PULMO_BATCH_SIZE": "8",
    "PULMO_FLUSH_INTERVAL": "0.5",
    "PULMO_VISIBILITY_TIMEOUT": "20",
    "PULMO_RESEND_AFTER": "15",
    "PULMO_TRUNCATED_GRACE_SECONDS": "10",
    "PULMO_DECODE_THREADS": "1",
    "PULMO_SITE_TIMEZONE": "UTC",
    "PULMO_THRESHOLDS": '{"pneumonia": 0.0, "tuberculosis": 0.0}',
}


@dataclass
class Crash:
    """A process that exited without being told to."""

    name: str
    returncode: int
    at: float
    log_tail: str


@dataclass
class Managed:
    name: str
    start: Callable[[], subprocess.Popen[bytes]]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    stopping: bool = False  # the suite stopped or killed it on purpose
    restarts: int = 0
    # called with the exit status of a process that exited on its own: True when the suite
    # expected it (a kill point it armed), so it is restarted without counting as a crash
    expected_exit: Callable[[int], bool] | None = None


def log_tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def rss_bytes(pid: int) -> int | None:
    """Resident set of ``pid`` (``VmRSS``), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Pipeline:
    """One deployment: a drop folder, a database (in ``pg``), a broker (``redis``) and its
    processes."""

    workdir: Path
    drop: Path
    db_url: str
    broker_url: str
    model_path: Path
    openvino_cache: Path
    redis: RedisServer
    pg: PostgresCluster
    settings: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Managed] = field(default_factory=dict)
    crashes: list[Crash] = field(default_factory=list)
    # the command of each ingest start (default: pulmoscreen ingest DROP --watch)
    ingest_command: Callable[[], list[str]] | None = None

    def __post_init__(self) -> None:
        self.logs = self.workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = pulmo_env(
            **{
                **SUITE_SETTINGS,
                "PULMO_DATABASE_URL": self.db_url,
                "PULMO_BROKER_URL": self.broker_url,
                "PULMO_MODEL_PATH": str(self.model_path),
                "PULMO_DATA_DIR": str(self.workdir / "var"),
                "PULMO_OPENVINO_CACHE": str(self.openvino_cache),
                "PULMO_REPORT_DIR": str(self.workdir / "reports"),
                "PULMO_DROP_FOLDER": str(self.drop),
                "PYTHONPATH": str(ROOT),
                **self.settings,
            }
        )
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)

    # -- processes ----------------------------------------------------------------------------

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``pulmoscreen ARGS`` with this deployment's settings, to completion."""
        return run_cli(*args, env=self.env, cwd=ROOT)

    def migrate(self) -> None:
        done = self.cli("migrate")
        assert done.returncode == 0, done.stdout + done.stderr

    def _spawn_ingest(self) -> subprocess.Popen[bytes]:
        command = self.ingest_command() if self.ingest_command else self.default_ingest_command()
        log = self.processes["ingest"].log
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )

    def default_ingest_command(self) -> list[str]:
        return [PULMOSCREEN, "ingest", str(self.drop), "--watch"]

    def add_ingest(self, *, expected_exit: Callable[[int], bool] | None = None) -> None:
        self._add(
            Managed(
                "ingest", self._spawn_ingest, self.logs / "ingest.log", expected_exit=expected_exit
            )
        )

    def add_worker(self, name: str) -> None:
        log = self.logs / f"{name}.log"

        def spawn() -> subprocess.Popen[bytes]:
            # start_worker_process truncates its log: keep each incarnation's in its own file
            managed = self.processes[name]
            target = log if managed.restarts == 0 else log.with_suffix(f".{managed.restarts}.log")
            return start_worker_process(name, self.env, target)

        self._add(Managed(name, spawn, log))

    def _add(self, managed: Managed) -> None:
        with self._lock:
            self.processes[managed.name] = managed
            managed.proc = managed.start()
        if not self._supervisor.is_alive():
            self._supervisor.start()

    def workers(self) -> list[str]:
        return [name for name in self.processes if name != "ingest"]

    def pid(self, name: str) -> int | None:
        proc = self.processes[name].proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def kill(self, name: str, *, restart: bool = True, sig: int = signal.SIGKILL) -> None:
        """Kill ``name`` on purpose (not a crash); start it again unless told not to."""
        with self._lock:
            managed = self.processes[name]
            managed.stopping = True
            if managed.proc is not None and managed.proc.poll() is None:
                managed.proc.send_signal(sig)
                managed.proc.wait(timeout=60)
            if restart:
                self.restart(name)

    def restart(self, name: str) -> None:
        with self._lock:
            managed = self.processes[name]
            managed.restarts += 1
            managed.proc = managed.start()
            managed.stopping = False

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for managed in self.processes.values():
                    proc = managed.proc
                    if managed.stopping or proc is None or proc.poll() is None:
                        continue
                    if managed.expected_exit is not None and managed.expected_exit(proc.returncode):
                        self.restart(managed.name)
                        continue
                    self.crashes.append(
                        Crash(managed.name, proc.returncode, time.time(), log_tail(managed.log))
                    )
                    time.sleep(1.0)  # restart: unless-stopped waits a little too
                    self.restart(managed.name)

    def wait_workers_ready(self, timeout: float = 240) -> None:
        """Every worker answers a ping (the model loads lazily, on the first batch)."""
        from pulmoscreen.config import Settings
        from pulmoscreen.queue import make_celery
        from tests.integration.conftest import wait_until

        app = make_celery(Settings(broker_url=self.broker_url))
        expected = len(self.workers())
        wait_until(
            lambda: len(app.control.ping(timeout=1.0)) >= expected,
            timeout=timeout,
            what=f"{expected} workers to answer",
            logs=[m.log for m in self.processes.values()],
        )

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for managed in self.processes.values():
                managed.stopping = True
            procs = [m.proc for m in self.processes.values() if m.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)

    def logs_tail(self) -> str:
        return "".join(f"\n--- {m.name} ---\n{log_tail(m.log)}" for m in self.processes.values())

    # -- progress -----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Images by status, straight from SQL; empty when the database does not answer."""
        from sqlalchemy import text

        from pulmoscreen.db import make_engine

        try:
            with make_engine(self.db_url).connect() as conn:
                rows = conn.execute(text("SELECT status, count(*) FROM images GROUP BY status"))
                return {str(status): int(n) for status, n in rows}
        except Exception:
            return {}

    def waiting_files(self) -> list[Path]:
        """Files still in the drop folder outside processed/, quarantine/ and heatmaps/ (not
        hidden)."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.drop):
            here = Path(dirpath)
            dirnames[:] = [
                d
                for d in dirnames
                if not d.startswith(".")
                and not (here == self.drop and d in OWN_DIRS + DERIVED_DIRS)
            ]
            found += [here / f for f in filenames if not f.startswith(".")]
        return found

    def settle(self, *, sender_done: Callable[[], bool], timeout: float) -> float | None:
        """Seconds until the work is done (everything delivered, nothing waiting in the drop
        folder, no image queued, twice in a row), or None after ``timeout`` seconds."""
        started = time.monotonic()
        calm = 0
        while time.monotonic() - started < timeout:
            counts = self.counts()
            done = (
                sender_done()
                and bool(counts)
                and counts.get("queued", 0) == 0
                and not self.waiting_files()
            )
            calm = calm + 1 if done else 0
            if calm >= 2:
                return time.monotonic() - started
            time.sleep(1.0)
        return None

    def wait_for(self, predicate: Callable[[], bool], *, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return False

    def predicted(self) -> int:
        return self.counts().get("predicted", 0)


OWN_DIRS = ("processed", "quarantine")
# what the worker writes beside them: the heatmaps of flagged images (table heatmaps names them)
DERIVED_DIRS = ("heatmaps",)


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))
