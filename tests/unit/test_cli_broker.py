"""Commands whose workers are other processes refuse the in-process memory:// broker."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from pulmoscreen.cli import app
from pulmoscreen.config import get_settings


@pytest.fixture
def memory_broker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PULMO_BROKER_URL", "memory://")
    monkeypatch.setenv("PULMO_DATA_DIR", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "args", [["ingest", "inbox"], ["screen", "--no-local-worker", "--timeout", "1", "inbox"]]
)
def test_a_queue_inside_the_process_is_refused_with_the_way_out(memory_broker, args):
    (memory_broker / "inbox").mkdir()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "PULMO_BROKER_URL is memory://" in result.output
    assert "redis://" in result.output
    assert not (memory_broker / "state").exists()  # refused before any database was made
