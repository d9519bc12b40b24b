import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect

from pulmoscreen.db.session import normalise_url

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
TABLES = {"studies", "images", "models", "predictions", "alembic_version"}


class TestAlembicUpgradeHead:
    def test_alembic_cli_builds_the_schema_on_postgresql(self, empty_pg_url):
        engine = create_engine(normalise_url(empty_pg_url))
        assert set(inspect(engine).get_table_names()) == set()  # nothing built yet
        env = {**os.environ, "PULMO_DATABASE_URL": empty_pg_url}
        for _ in range(2):  # the second run at head must be a no-op, not an error
            done = subprocess.run(
                [sys.executable, "-m", "alembic", "upgrade", "head"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, done.stderr
            assert set(inspect(engine).get_table_names()) >= TABLES
        engine.dispose()

    def test_alembic_cli_on_sqlite(self, tmp_path):
        url = f"sqlite:///{tmp_path / 'fresh.db'}"
        done = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=ROOT,
            env={**os.environ, "PULMO_DATABASE_URL": url},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        insp = inspect(create_engine(url))
        assert set(insp.get_table_names()) >= TABLES
        uniques = insp.get_unique_constraints("predictions")
        assert {"image_id", "model_id"} == set(uniques[0]["column_names"])
