"""A Redis restarted without persistence forgets its queue: the ingest watcher re-sends it.

The test runs a Redis server of its own on a free port (never the shared one on 6379), so it
can stop and restart it.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pulmoscreen.cli import make_ingestor
from pulmoscreen.config import Settings
from pulmoscreen.db import session_factory
from pulmoscreen.queue import INFERENCE_QUEUE, make_celery
from tests.factories import make_cxr_dicom
from tests.integration.conftest import wait_until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A ``redis-server`` without persistence, as a restart loses everything it held."""

    def __init__(self, binary: str, directory: Path) -> None:
        self.binary, self.directory, self.port = binary, directory, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(port=self.port, socket_timeout=5, socket_connect_timeout=5)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(self.binary, "--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdout=(self.directory / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def queued_image_ids(self) -> list[int]:
        """The image id of every inference task waiting in the queue (Celery protocol 2)."""
        ids = []
        for raw in self.client.lrange(INFERENCE_QUEUE, 0, -1):
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.append(int(body[0][0]))
        return sorted(ids)

    def info_calls(self) -> int:
        return int(self.client.info("commandstats").get("cmdstat_info", {}).get("calls", 0))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed: this test restarts a Redis of its own")
    directory = tmp_path / "redis"
    directory.mkdir()
    server = OwnRedis(binary, directory)
    server.start()
    yield server
    server.stop()


class TestBrokerRestart:
    def test_watcher_resends_queued_images_after_a_restart(self, pg_url, own_redis, tmp_path):
        settings = Settings(database_url=pg_url, broker_url=own_redis.url, stable_seconds=0)
        drop = tmp_path / "inbox"
        for seed in range(3):
            make_cxr_dicom(drop, seed=700 + seed, rows=256, cols=256)
        ingestor = make_ingestor(settings, drop, session_factory(pg_url), make_celery(settings))
        ingestor.recover()
        ids = sorted(o.image_id for o in ingestor.scan_once())
        assert len(ids) == 3
        assert own_redis.queued_image_ids() == ids  # no worker runs: the tasks wait there

        stop = threading.Event()
        watcher = threading.Thread(
            target=ingestor.watch, args=(stop,), kwargs={"poll_interval": 0.2}, daemon=True
        )
        info_before = own_redis.info_calls()
        watcher.start()
        try:
            time.sleep(8)  # the broker did not restart: nothing is sent again
            assert own_redis.queued_image_ids() == ids
            # and its identity is read every few seconds, not at every poll (40 here)
            assert own_redis.info_calls() - info_before <= 4

            own_redis.stop()
            time.sleep(6)  # down long enough for the watcher to find it unreachable
            own_redis.start()  # empty: no persistence, so the three tasks are gone
            # a new file keeps the queue non-empty, which alone would hide the loss
            make_cxr_dicom(drop, seed=710, rows=256, cols=256)
            wait_until(
                lambda: len(own_redis.queued_image_ids()) >= 4,
                timeout=30,
                what="the queued images re-sent after the broker restarted",
            )
            time.sleep(1)  # and sent once, not at every check
            resent = own_redis.queued_image_ids()
            assert set(ids) < set(resent)
            assert len(set(resent)) == 4
            assert len(resent) <= 5  # the new image may be sent twice, if it raced the re-send
            assert watcher.is_alive()
        finally:
            stop.set()
            watcher.join(timeout=30)
        assert not watcher.is_alive()
