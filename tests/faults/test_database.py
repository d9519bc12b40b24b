"""PostgreSQL restarted under the running pipeline: every connection ingest and the workers
hold is cut, and for a few seconds none can be made."""

from __future__ import annotations

import time

import pytest

from tests.faults.scenario import Scenario, standard_scenario

pytestmark = [pytest.mark.faults]

OUTAGE_SECONDS = 8.0


class TestPostgresRestart:
    def test_restarted(self, deploy, fault_results, tmp_path):
        run = standard_scenario("PostgreSQL restarted", deploy, fault_results, tmp_path)

        def inject(run: Scenario) -> None:
            run.wait_midway()
            pg = run.pipeline.pg
            pg.stop("fast")  # clients disconnected, as `systemctl restart postgresql` does
            time.sleep(OUTAGE_SECONDS)
            pg.start()
            run.cleared()

        run.assert_held(run.run(inject))
