"""PostgreSQL restarted under the running pipeline: every connection ingest and the workers
hold is cut, and for a few seconds none can be made."""

from __future__ import annotations

import pytest

from tests.faults.scenario import outage, standard_scenario

pytestmark = [pytest.mark.faults]


class TestPostgresRestart:
    def test_restarted(self, deploy, fault_results, tmp_path):
        run = standard_scenario("PostgreSQL restarted", deploy, fault_results, tmp_path)
        # "fast": clients disconnected, as `systemctl restart postgresql` does
        inject = outage(lambda p: p.pg.stop("fast"), lambda p: p.pg.start())
        run.assert_held(run.run(inject))
