"""Redis under the running pipeline: a control run, a clean stop and start, and a SIGKILL of a
Redis that keeps nothing on disk (every queued and unacknowledged message is gone)."""

from __future__ import annotations

import time

import pytest

from tests.faults.scenario import Scenario, standard_scenario

pytestmark = [pytest.mark.faults]

OUTAGE_SECONDS = 8.0


class TestControl:
    def test_no_fault(self, deploy, fault_results, tmp_path):
        run = standard_scenario("control (no fault)", deploy, fault_results, tmp_path)
        run.assert_held(run.run(lambda run: None))


class TestRedis:
    def test_stopped_and_started(self, deploy, fault_results, tmp_path):
        run = standard_scenario("Redis stopped, started", deploy, fault_results, tmp_path)

        def inject(run: Scenario) -> None:
            run.wait_midway()
            redis = run.pipeline.redis
            redis.shutdown()  # appendonly: what it held is on disk
            time.sleep(OUTAGE_SECONDS)
            redis.start()
            run.cleared()

        run.assert_held(run.run(inject))

    def test_killed_without_persistence(self, deploy, fault_results, tmp_path):
        run = standard_scenario(
            "Redis SIGKILLed, no persistence",
            deploy,
            fault_results,
            tmp_path,
            persistent_redis=False,
        )

        def inject(run: Scenario) -> None:
            run.wait_midway()
            redis = run.pipeline.redis
            redis.kill()  # queue and unacknowledged messages: gone
            time.sleep(OUTAGE_SECONDS)
            redis.start()
            run.cleared()

        run.assert_held(run.run(inject))
