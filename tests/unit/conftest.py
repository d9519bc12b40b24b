"""Fixtures shared by the ingest tests: an empty drop folder and the list tasks are sent to."""

from pathlib import Path

import pytest


@pytest.fixture
def drop(tmp_path: Path) -> Path:
    folder = tmp_path / "inbox"
    folder.mkdir()
    return folder


@pytest.fixture
def sent() -> list[int]:
    return []
