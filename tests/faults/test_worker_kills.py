"""A worker SIGKILLed twice on the same batch: the first worker dies holding a batch of
unacknowledged messages; Redis hands them on (visibility timeout) or ingest re-sends them, and
the next worker is killed too, the moment it holds the same images. A third one finishes."""

from __future__ import annotations

import base64
import json
import time

import pytest

from tests.faults.scenario import Scenario, standard_scenario
from tests.faults.services import RedisServer

pytestmark = [pytest.mark.faults]


def held_images(redis: RedisServer) -> dict[int, float]:
    """Messages Redis handed to a worker that has not acknowledged them: image id -> when it
    was handed over (kombu's Redis transport keeps them in the ``unacked`` hash, and the time
    of delivery in the ``unacked_index`` sorted set; a message it hands on again keeps its
    delivery tag and gets a new time)."""
    client = redis.client()
    held: dict[int, float] = {}
    for tag, raw in client.hgetall("unacked").items():
        message = json.loads(raw)[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        image_id = int(json.loads(body)[0][0])
        since = client.zscore("unacked_index", tag) or 0.0
        held[image_id] = max(held.get(image_id, 0.0), float(since))
    return held


class TestWorkerKilledTwice:
    def test_same_batch(self, deploy, fault_results, tmp_path):
        # One worker at a time, so every unacknowledged message is that worker's batch; a
        # batch waits up to 3 s to fill, so it is in the worker's hands long enough to be hit.
        name = "worker SIGKILLed twice on the same batch"
        batches = {"PULMO_BATCH_SIZE": "16", "PULMO_FLUSH_INTERVAL": "3"}
        run = standard_scenario(name, deploy, fault_results, tmp_path, settings=batches)
        run.workers = 1

        def inject(run: Scenario) -> None:
            run.wait_midway()
            redis, pipeline = run.pipeline.redis, run.pipeline
            if not pipeline.wait_for(lambda: bool(held_images(redis)), timeout=120):
                run.fail("the worker never held a batch")
            batch = set(held_images(redis))
            pipeline.kill("w1", restart=False)
            killed_at = time.time()
            pipeline.restart("w1")

            def again() -> set[int]:
                return {i for i, t in held_images(redis).items() if i in batch and t > killed_at}

            if not pipeline.wait_for(lambda: bool(again()), timeout=180):
                run.fail(f"no worker took the killed batch {sorted(batch)} again in 180 s")
            second = again()
            pipeline.kill("w1")  # the same images, killed again; then started a third time
            run.notes.append(
                f"killed holding {len(batch)} images, then holding {len(second)} of them again"
            )
            run.cleared()

        run.assert_held(run.run(inject))
