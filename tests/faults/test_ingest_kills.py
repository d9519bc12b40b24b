"""``pulmoscreen ingest --watch`` SIGKILLed mid-run, again and again: at exact points (after an
image's row is committed, after its file is moved, after its task is sent; see killpoint.py),
and from outside at random moments. Each time it is started again, as a supervisor would."""

from __future__ import annotations

import random
import signal
import sys
import time

import pytest

from tests.faults.pipeline import env_int
from tests.faults.scenario import Scenario, standard_scenario

pytestmark = [pytest.mark.faults]


def kills_per_scenario() -> int:
    """``PULMO_FAULT_INGEST_KILLS`` (default 12) kills spread over the run."""
    return env_int("PULMO_FAULT_INGEST_KILLS", 12)


class KillPoints:
    """Ingest commands for successive starts: the first ``kills`` arm ``point`` at a random
    Nth pass, the rest run plain."""

    def __init__(self, run: Scenario, point: str, *, kills: int, seed: int) -> None:
        self.run, self.point, self.kills = run, point, kills
        self.rng = random.Random(seed)
        self.marker = run.pipeline.workdir / "kills.log"
        self.marker.touch()
        self.spread = max(2, 2 * len(run.corpus.files) // kills)
        self.starts = 0
        self.seen = 0

    def hit(self) -> int:
        return len(self.marker.read_text().splitlines())

    def command(self) -> list[str]:
        self.starts += 1
        if self.hit() >= self.kills:
            self.run.cleared()
            return self.run.pipeline.default_ingest_command()
        nth = self.rng.randint(1, self.spread)
        return [
            sys.executable,
            "-m",
            "tests.faults.killpoint",
            self.point,
            str(nth),
            str(self.marker),
            "--",
            "ingest",
            str(self.run.pipeline.drop),
            "--watch",
        ]

    def expected_exit(self, returncode: int) -> bool:
        """A SIGKILL at an armed point (the marker grew) is ours; anything else is a crash."""
        before, self.seen = self.seen, self.hit()
        return returncode == -signal.SIGKILL and self.seen > before


@pytest.mark.parametrize(
    ("point", "label"),
    [
        ("commit", "ingest SIGKILLed after the commit"),
        ("move", "ingest SIGKILLed after the move"),
        ("send", "ingest SIGKILLed after the send"),
    ],
)
class TestIngestKilledAtAPoint:
    def test_every_file_once(self, point, label, deploy, fault_results, tmp_path):
        run = standard_scenario(label, deploy, fault_results, tmp_path)
        kills = KillPoints(run, point, kills=kills_per_scenario(), seed=len(point))
        run.pipeline.ingest_command = kills.command
        run.expected_ingest_exit = kills.expected_exit

        def inject(run: Scenario) -> None:
            # The kills happen inside ingest; recovery is timed from the first start after the
            # last of them (KillPoints.command). Kills the run had no files left for: none.
            run.pipeline.wait_for(
                lambda: kills.hit() >= kills.kills or run.sender.done.is_set(), timeout=1800
            )

        run.late_notes.append(lambda: f"{kills.hit()} kills at '{point}', {kills.starts} starts")
        verdict = run.run(inject)
        if kills.hit() == 0:
            run.fail("the kill point was never reached (see killpoint.TARGETS)")
        run.assert_held(verdict)


class TestIngestKilledAtRandom:
    def test_every_file_once(self, deploy, fault_results, tmp_path):
        run = standard_scenario(
            "ingest SIGKILLed at random moments", deploy, fault_results, tmp_path
        )
        rng = random.Random(11)

        def inject(run: Scenario) -> None:
            kills = 0
            while kills < kills_per_scenario() and not run.sender.done.is_set():
                time.sleep(rng.uniform(1.0, 6.0))
                run.pipeline.kill("ingest")  # SIGKILL, then started again
                kills += 1
            run.notes.append(f"{kills} kills at random moments")

        run.assert_held(run.run(inject))
