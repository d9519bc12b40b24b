"""Ingest rides out a PostgreSQL outage: files wait in the drop folder, none lost or doubled."""

import threading
import time

import psycopg
import pytest
from sqlalchemy import func, select

from ingest import Ingestor
from pulmoscreen.db import Image, session_factory
from tests.factories import make_cxr_dicom
from tests.integration.conftest import PG_ADMIN_URL, wait_until

pytestmark = pytest.mark.integration


def refuse_connections(name: str, *, refuse: bool) -> None:
    """The database refuses new connections and drops its open ones, as if it were down."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(not refuse).lower()}')
        if not refuse:
            return
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )

        def backends() -> int:
            count = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            return admin.execute(count, (name,)).fetchone()[0]

        # a terminated backend exits asynchronously: until it has, its connection still works
        wait_until(lambda: backends() == 0, timeout=30, what="the database's connections closed")


class TestWatchThroughAnOutage:
    def test_files_wait_and_are_taken_once_the_database_is_back(self, pg_url, tmp_path):
        name = pg_url.rsplit("/", 1)[1]
        drop, sent = tmp_path / "inbox", []
        sessions = session_factory(pg_url)
        ingestor = Ingestor(drop, sessions=sessions, enqueue=sent.extend, stable_seconds=0)
        make_cxr_dicom(drop, seed=61)
        ingestor.scan_once()  # the pool holds a connection that the outage will break
        errors: list[BaseException] = []
        stop = threading.Event()

        def watch() -> None:
            try:
                ingestor.watch(stop, poll_interval=0.2)
            except BaseException as exc:
                errors.append(exc)

        refuse_connections(name, refuse=True)
        try:
            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            for seed in (62, 63, 64):
                make_cxr_dicom(drop, seed=seed, filename=f"during_{seed}.dcm")
            time.sleep(3)
            assert thread.is_alive(), errors
            assert sorted(p.name for p in drop.glob("during_*.dcm")) == [
                "during_62.dcm",
                "during_63.dcm",
                "during_64.dcm",
            ]
        finally:
            refuse_connections(name, refuse=False)
        wait_until(lambda: len(sent) == 4, timeout=90, what="the files taken after the outage")
        stop.set()
        thread.join(timeout=30)
        assert not errors
        assert not list(drop.glob("during_*.dcm"))
        assert not (drop / "quarantine").exists()
        with sessions() as session:
            assert session.scalar(select(func.count()).select_from(Image)) == 4
            assert session.scalar(select(func.count(func.distinct(Image.sop_uid)))) == 4
        assert len(set(sent)) == 4
