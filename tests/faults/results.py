"""The figures of a fault run, written where ``docs/faults.md`` is filled from:
``$PULMO_FAULT_RESULTS_DIR`` (default ``var/faults``) gets ``results.json`` and ``results.md``
after every scenario, so an interrupted run still leaves what it measured."""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from tests.integration.conftest import ROOT


@dataclass
class ScenarioResult:
    scenario: str
    studies: int
    files: int
    lost: int
    duplicated: int
    misattributed: int
    other: int
    recover_s: float | None
    duration_s: float
    crashes: list[str] = field(default_factory=list)
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    report: dict[str, dict[str, int]] = field(default_factory=dict)


def results_dir() -> Path:
    return Path(os.environ.get("PULMO_FAULT_RESULTS_DIR", ROOT / "var" / "faults"))


class Results:
    """Collects one :class:`ScenarioResult` per scenario and writes them out."""

    def __init__(self) -> None:
        self.items: list[ScenarioResult] = []
        self.started = datetime.now(UTC)

    def add(self, result: ScenarioResult) -> None:
        self.items = [r for r in self.items if r.scenario != result.scenario] + [result]
        self.write()

    def write(self) -> None:
        out = results_dir()
        out.mkdir(parents=True, exist_ok=True)
        meta = {
            "started": self.started.isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        }
        payload = {"run": meta, "scenarios": [asdict(r) for r in self.items]}
        (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        (out / "results.md").write_text(self.markdown())

    def markdown(self) -> str:
        lines = [
            "| scenario | studies | files | lost | duplicated | misattributed | other "
            "violations | time to recover | process crashes | result |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.items:
            recover = "did not recover" if r.recover_s is None else f"{r.recover_s:.0f} s"
            counts = [r.lost, r.duplicated, r.misattributed, r.other]
            if min(counts) < 0:  # the scenario failed before its invariant was checked
                recover, cells = "n/a", ["n/a"] * 4
            else:
                cells = [str(n) for n in counts]
            lines.append(
                f"| {r.scenario} | {r.studies} | {r.files} | {' | '.join(cells)} | {recover} | "
                f"{len(r.crashes)} | {'pass' if r.passed else 'FAIL'} ({r.duration_s:.0f} s) |"
            )
        return "\n".join(lines) + "\n"
