"""Fixtures of the fault suite: its own PostgreSQL cluster (one per session, a database per
scenario), its own redis-server per scenario, the tiny stand-in model, and the results file.

Everything runs on this machine; what it cannot control (no redis-server or PostgreSQL
binaries, no permission to mount a small filesystem) skips with the reason.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.pipeline import Pipeline
from tests.faults.results import Results, results_dir
from tests.faults.services import PostgresCluster, RedisServer, UnavailableError, port_open

_RESULTS = Results()


@pytest.fixture(scope="session")
def fault_pg() -> Iterator[PostgresCluster]:
    try:
        cluster = PostgresCluster()
    except UnavailableError as exc:
        pytest.skip(f"fault suite: {exc}")
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def fault_results() -> Results:
    return _RESULTS


@pytest.fixture(scope="session")
def openvino_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shared by every scenario: the tiny model is converted once, not once per worker."""
    return tmp_path_factory.mktemp("openvino")


Deploy = Callable[..., Pipeline]


@pytest.fixture
def deploy(
    fault_pg: PostgresCluster, tiny_model_path: Path, openvino_cache: Path, tmp_path: Path
) -> Iterator[Deploy]:
    """``deploy(persistent_redis=True, drop=None, settings=None)``: a migrated database, a
    redis-server and a :class:`Pipeline` (no process started yet); all torn down after."""
    made: list[tuple[Pipeline, RedisServer]] = []

    def make(
        *,
        persistent_redis: bool = True,
        drop: Path | None = None,
        settings: dict[str, str] | None = None,
    ) -> Pipeline:
        try:
            redis = RedisServer(tmp_path / "redis", persistent=persistent_redis)
        except UnavailableError as exc:
            pytest.skip(f"fault suite: {exc}")
        redis.start()
        db_url = fault_pg.create_database(f"faults_{uuid.uuid4().hex[:10]}")
        pipeline = Pipeline(
            workdir=tmp_path,
            drop=drop or tmp_path / "inbox",
            db_url=db_url,
            broker_url=redis.url,
            model_path=tiny_model_path,
            openvino_cache=openvino_cache,
            redis=redis,
            pg=fault_pg,
            settings=settings or {},
        )
        made.append((pipeline, redis))
        pipeline.migrate()
        return pipeline

    yield make
    for pipeline, redis in made:
        pipeline.stop()
        redis.close()
    if not port_open(fault_pg.port):  # a scenario that failed while PostgreSQL was down
        fault_pg.start()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _RESULTS.items:
        return
    terminalreporter.section("fault suite figures")
    for line in _RESULTS.markdown().splitlines():
        terminalreporter.write_line(line)
    terminalreporter.write_line(f"written to {results_dir()}/results.json and results.md")
