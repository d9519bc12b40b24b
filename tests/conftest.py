"""Shared fixtures. Integration fixtures talk to the real Redis and PostgreSQL on this machine."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import pytest

from tests.factories import make_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    from pulmoscreen.db import upgrade_database

    url = f"sqlite:///{tmp_path / 'pulmo.db'}"
    upgrade_database(url)
    return url
