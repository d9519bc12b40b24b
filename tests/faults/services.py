"""Services the fault suite owns: its own redis-server, its own PostgreSQL cluster and a small
filesystem for the drop folder, all in temporary folders on free ports, so stopping, killing or
filling them never disturbs the shared Redis (6379) and PostgreSQL (5432) other tests use.

Each class raises :class:`UnavailableError` with a reason when this machine cannot provide it; the
fixtures turn that into a skip that says why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


class UnavailableError(RuntimeError):
    """This machine cannot run the service (binaries missing, no permission)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


class RedisServer:
    """A ``redis-server`` of the suite's own; ``persistent`` is the production setting (append
    only file, as docker-compose.yml runs it), otherwise ``--save '' --appendonly no``."""

    def __init__(self, workdir: Path, *, persistent: bool) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            raise UnavailableError("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.persistent = persistent
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            if self.persistent
            else ["--appendonly", "no", "--save", ""]
        )
        self.proc = subprocess.Popen(
            [
                self.binary or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir),
                "--daemonize",
                "no",
                "--logfile",
                str(self.workdir / "redis.log"),
                *persistence,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(self.ping, timeout=20, what=f"redis-server on port {self.port}")

    def ping(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def client(self) -> Any:
        """A redis-py client of this server."""
        import redis

        return redis.Redis(port=self.port, socket_connect_timeout=2, socket_timeout=5)

    def shutdown(self) -> None:
        """A clean stop: with persistence on, what it holds is written to disk first."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(Exception):  # redis-py raises as the server goes away
            self.client().shutdown(nosave=not self.persistent)
        self.proc.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL: whatever was not on disk is gone (everything, without persistence)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.kill()


def _pg_bindir() -> Path:
    """The newest PostgreSQL server binaries (``PULMO_FAULT_PG_BIN`` overrides)."""
    override = os.environ.get("PULMO_FAULT_PG_BIN")
    candidates = [Path(override)] if override else []
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for found in (shutil.which("pg_ctl"), shutil.which("initdb")):
        if found:
            candidates.append(Path(found).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return bindir
    raise UnavailableError(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        "/usr/lib/postgresql/*/bin or on PATH (install postgresql, or set PULMO_FAULT_PG_BIN)"
    )


class PostgresCluster:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl) on a free port, trust auth.

    PostgreSQL refuses to run as root; as root the cluster belongs to the ``postgres`` user and
    its commands run through ``runuser``.
    """

    def __init__(self) -> None:
        self.bindir = _pg_bindir()
        # Not under pytest's tmp_path: its folders are private to root, and the server may run
        # as ``postgres``.
        self.workdir = Path(tempfile.mkdtemp(prefix="pulmo-faults-pg-"))
        self.datadir = self.workdir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None or not _user_exists("postgres"):
                raise UnavailableError(
                    "running as root, and no postgres user or runuser to drop to"
                )
            self._as = [runuser, "-u", "postgres", "--"]
        if self._as:
            shutil.chown(self.workdir, user="postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8")

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        done = subprocess.run(
            [*self._as, str(self.bindir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.workdir,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)} failed: {done.stdout}{done.stderr}")

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.datadir), "-o", options, "-l", str(self.log), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, a clean shutdown; ``immediate``: a crash."""
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "stop")

    @property
    def log(self) -> Path:
        return self.workdir / "postgres.log"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        if port_open(self.port):
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.workdir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


class SmallFilesystem:
    """A small filesystem of ``size_mb`` at ``mountpoint``: the drop volume that fills up.

    An ext4 image on a loop device (no blocks reserved for root, so full is full for every
    process), where folders and sidecars need blocks as on a real volume; else a tmpfs.
    """

    def __init__(self, mountpoint: Path, *, size_mb: int) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.mountpoint = mountpoint
        self.image = mountpoint.with_name(mountpoint.name + ".ext4")
        errors = []
        for attempt in (self._mount_ext4, self._mount_tmpfs):
            error = attempt(size_mb)
            if error is None:
                return
            errors.append(error)
        raise UnavailableError(
            f"cannot mount a {size_mb} MB filesystem at {mountpoint} as uid {os.geteuid()} "
            f"({'; '.join(errors)}); the disk-full scenario needs root or CAP_SYS_ADMIN"
        )

    def _mount_ext4(self, size_mb: int) -> str | None:
        if shutil.which("mkfs.ext4") is None:
            return "no mkfs.ext4"
        with self.image.open("wb") as fh:
            fh.truncate(size_mb * 1024 * 1024)
        for command in (
            ["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)],
            ["mount", "-o", "loop", str(self.image), str(self.mountpoint)],
        ):
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                self.image.unlink(missing_ok=True)
                return f"{command[0]}: {(done.stderr or done.stdout).strip()}"
        self.kind = "ext4 on a loop device"
        return None

    def _mount_tmpfs(self, size_mb: int) -> str | None:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(self.mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            return f"tmpfs: {(done.stderr or done.stdout).strip()}"
        self.kind = "tmpfs"
        return None

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], capture_output=True, check=False)
        self.image.unlink(missing_ok=True)
