"""Engines and sessions for SQLite (embedded) and PostgreSQL, and schema upgrades."""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def _migrations_dir() -> Path:
    """Alembic's script folder.

    migrations/ of the source tree installs as ``pulmoscreen.migrations`` (setup.py), so a wheel
    and the editable install find it the same way; a source tree that was never installed falls
    back to migrations/ itself.
    """
    try:
        return Path(str(resources.files("pulmoscreen.migrations")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "migrations"


MIGRATIONS_DIR = _migrations_dir()


def normalise_url(url: str) -> str:
    """Use psycopg 3 for plain ``postgresql://`` URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the in-process worker write while ingest reads; wait instead of failing on locks.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _ensure_sqlite_folder(url: str) -> None:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


@cache
def make_engine(url: str) -> Engine:
    """One engine per URL and process; SQLite files get their folder created."""
    url = normalise_url(url)
    _ensure_sqlite_folder(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # hide_parameters: a failed statement's error names no PatientID or accession (PHI)
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True)


def session_factory(url: str) -> sessionmaker[Session]:
    """Sessions bound to the engine of ``url`` (objects stay readable after commit)."""
    return sessionmaker(make_engine(url), expire_on_commit=False)


def upgrade_database(url: str, revision: str = "head") -> None:
    """Run Alembic migrations up to ``revision`` (the same as ``alembic upgrade head``)."""
    from alembic import command
    from alembic.config import Config

    _ensure_sqlite_folder(url)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    command.upgrade(config, revision)
