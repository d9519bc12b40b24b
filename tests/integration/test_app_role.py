"""docker/postgres/10-app-role.sh on the real PostgreSQL: the app role migrates and owns the
schema, and can do nothing a superuser could."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pulmoscreen.db import upgrade_database
from tests.integration.conftest import PG_ADMIN_URL

SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "postgres" / "10-app-role.sh"
PASSWORD = uuid.uuid4().hex


class Cluster:
    """A new database and app role name on the test server; both dropped afterwards."""

    def __init__(self, admin: object) -> None:
        self.admin = admin
        self.db = f"pulmo_test_{uuid.uuid4().hex[:12]}"
        self.app = f"pulmo_app_{uuid.uuid4().hex[:12]}"
        server = urlsplit(PG_ADMIN_URL)
        self.superuser = server.username or "postgres"
        self.base = f"postgresql://{server.netloc.rsplit('@', 1)[-1]}"

    def url(self, user: str, password: str = "") -> str:
        credentials = f"{user}:{password}" if password else user
        return self.base.replace("://", f"://{credentials}@", 1) + f"/{self.db}"

    def run_script(self) -> None:
        server = urlsplit(PG_ADMIN_URL)
        env = os.environ | {
            "POSTGRES_USER": self.superuser,
            "POSTGRES_DB": self.db,
            "APP_DB_USER": self.app,
            "APP_DB_PASSWORD": PASSWORD,
            "PGHOST": server.hostname or "127.0.0.1",
            "PGPORT": str(server.port or 5432),
            "PGPASSWORD": server.password or "",
        }
        done = subprocess.run(
            ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Run ``sql`` as the superuser in this database; its rows, if it returns any."""
        import psycopg

        with psycopg.connect(self.url(self.superuser, urlsplit(PG_ADMIN_URL).password or "")) as c:
            cursor = c.execute(sql, params)
            return cursor.fetchall() if cursor.description else []


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    import psycopg

    if shutil.which("psql") is None:
        pytest.fail("psql is not installed; the init script runs it")
    with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        made = Cluster(admin)
        admin.execute(f'CREATE DATABASE "{made.db}"')
        yield made
        admin.execute(f'DROP DATABASE IF EXISTS "{made.db}" WITH (FORCE)')
        admin.execute(f'DROP ROLE IF EXISTS "{made.app}"')


def owners(cluster: Cluster) -> set[object]:
    rows = cluster.query(
        "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = relnamespace "
        "WHERE nspname = 'public' AND relkind IN ('r', 'v', 'S', 'i')"
    )
    return {row[0] for row in rows}


class TestAppRoleScript:
    def test_a_fresh_database_is_migrated_and_owned_by_a_role_without_powers(self, cluster):
        # PostgreSQL <= 14 grants CREATE on schema public to PUBLIC; 15 does not.
        cluster.query("GRANT CREATE ON SCHEMA public TO PUBLIC")
        cluster.run_script()
        upgrade_database(cluster.url(cluster.app, PASSWORD))

        powers = cluster.query(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls, "
            "rolcanlogin FROM pg_roles WHERE rolname = %s",
            cluster.app,
        )
        assert powers == [(False, False, False, False, False, True)]
        assert owners(cluster) == {cluster.app}
        public_create = cluster.query(
            "SELECT has_schema_privilege('pulmo_reader', 'public', 'CREATE'), "
            "has_table_privilege('pulmo_reader', 'screening_results', 'SELECT'), "
            "has_table_privilege('pulmo_reader', 'images', 'SELECT')"
        )
        assert public_create == [(False, True, False)]

    def test_a_database_migrated_by_the_superuser_is_handed_to_the_app_role(self, cluster):
        from alembic import command
        from alembic.config import Config

        from pulmoscreen.db.session import MIGRATIONS_DIR, normalise_url

        upgrade_database(cluster.url(cluster.superuser))  # a stack from before the app role
        cluster.run_script()
        cluster.run_script()  # running it again changes nothing
        assert owners(cluster) == {cluster.app}

        # The app role may now change what the superuser created: down one revision and up again.
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("sqlalchemy.url", normalise_url(cluster.url(cluster.app)))
        command.downgrade(config, "-1")
        command.upgrade(config, "head")
        assert owners(cluster) == {cluster.app}
