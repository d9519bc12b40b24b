"""Redis under the running pipeline: a control run, a clean stop and start, and a SIGKILL of a
Redis that keeps nothing on disk (every queued and unacknowledged message is gone)."""

from __future__ import annotations

import pytest

from tests.faults.scenario import outage, standard_scenario

pytestmark = [pytest.mark.faults]


class TestControl:
    def test_no_fault(self, deploy, fault_results, tmp_path):
        run = standard_scenario("control (no fault)", deploy, fault_results, tmp_path)
        run.assert_held(run.run(lambda run: None))


class TestRedis:
    def test_stopped_and_started(self, deploy, fault_results, tmp_path):
        run = standard_scenario("Redis stopped, started", deploy, fault_results, tmp_path)
        # appendonly: what Redis held is on disk
        inject = outage(lambda p: p.redis.shutdown(), lambda p: p.redis.start())
        run.assert_held(run.run(inject))

    def test_killed_without_persistence(self, deploy, fault_results, tmp_path):
        name = "Redis SIGKILLed, no persistence"
        run = standard_scenario(name, deploy, fault_results, tmp_path, persistent_redis=False)
        # the queue and the unacknowledged messages: gone
        inject = outage(lambda p: p.redis.kill(), lambda p: p.redis.start())
        run.assert_held(run.run(inject))
