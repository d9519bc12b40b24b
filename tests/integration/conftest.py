"""Real services: a fresh PostgreSQL database per test (schema by Alembic) and a Redis db."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

PG_ADMIN_URL = os.environ.get(
    "PULMO_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# A Redis database of its own per test run (2..15), so two runs on one machine do not flush each
# other's queues.
REDIS_URL = os.environ.get("PULMO_TEST_REDIS_URL", f"redis://127.0.0.1:6379/{2 + os.getpid() % 14}")
HINT = "run `make services` (scripts/ensure-services.sh) to start it"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database upgraded to head; dropped afterwards."""
    from pulmoscreen.db import upgrade_database

    with new_pg_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A new PostgreSQL database with no schema at all; dropped afterwards."""
    with new_pg_database() as url:
        yield url


@contextmanager
def new_pg_database() -> Iterator[str]:
    """A new PostgreSQL database, dropped (connections closed first) on leaving."""
    import psycopg

    name = f"pulmo_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}; {HINT}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        from pulmoscreen.db.session import make_engine, normalise_url

        make_engine(normalise_url(url)).dispose()
        make_engine(url).dispose()
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A flushed Redis database for the broker."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc}; {HINT}")
    yield REDIS_URL
    client.flushdb()


def wait_until(
    predicate: Callable[[], bool], *, timeout: float, what: str, logs: Sequence[Path] = ()
) -> None:
    """Poll ``predicate``; on time-out fail with the tail of each log in ``logs``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    tails = "".join(
        f"\n--- {log.name} ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        for log in logs
        if log.exists()
    )
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{tails}")


def pulmo_env(**overrides: str) -> dict[str, str]:
    """The environment for a PulmoScreen subprocess: this one, minus PULMO_*, plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULMO_")}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", "PULMO_STABLE_SECONDS": "0", **overrides})
    return env


def run_cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pulmoscreen.cli", *args]
    return subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


CELERY = str(Path(sys.executable).parent / "celery")
ROOT = Path(__file__).resolve().parents[2]


def start_worker_process(name: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real ``celery -A worker worker`` process, as ``docker compose --scale`` would start."""
    return subprocess.Popen(
        [
            CELERY,
            "-A",
            "worker",
            "worker",
            "-Q",
            "inference",
            "-P",
            "solo",
            "-c",
            "1",
            "-n",
            f"{name}@%h",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def stop_processes(processes: list[subprocess.Popen[bytes]]) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
    for proc in processes:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def prediction_counts(sessions: Any) -> tuple[int, list[tuple[int, int]], dict[str, int]]:
    """Images still queued, predictions per image, and predictions per worker."""
    from sqlalchemy import func, select

    from pulmoscreen.db import Image, PredictionRow

    with sessions() as session:
        queued = session.scalar(
            select(func.count()).select_from(Image).where(Image.status == "queued")
        )
        per_image = session.execute(
            select(PredictionRow.image_id, func.count()).group_by(PredictionRow.image_id)
        ).all()
        by_worker = dict(
            session.execute(
                select(PredictionRow.worker, func.count()).group_by(PredictionRow.worker)
            ).all()
        )
    return int(queued or 0), [tuple(row) for row in per_image], by_worker
