"""One fault scenario from start to verdict: start the product, deliver the corpus, inject the
fault mid-run, wait until the work is done, stop, check the invariant, record the figures."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from tests.faults.corpus import Corpus, standard_corpus
from tests.faults.invariant import Verdict, check_outcomes
from tests.faults.pipeline import Pipeline
from tests.faults.results import Results, ScenarioResult
from tests.faults.sender import Sender


def studies_per_scenario() -> int:
    """``PULMO_FAULT_STUDIES`` (default 300)."""
    return int(os.environ.get("PULMO_FAULT_STUDIES", "300"))


def settle_timeout(files: int) -> float:
    """How long a pipeline may take to finish after its fault: ``PULMO_FAULT_SETTLE_TIMEOUT``,
    else 5 minutes plus a second per file (this 2-core machine runs a few files a second
    while a training job shares it)."""
    return float(os.environ.get("PULMO_FAULT_SETTLE_TIMEOUT", 300 + files))


@dataclass
class Scenario:
    """The run of one fault; ``inject`` gets it and returns once the fault is cleared."""

    name: str
    pipeline: Pipeline
    corpus: Corpus
    results: Results
    sender: Sender
    workers: int = 2
    notes: list[str] = field(default_factory=list)
    expected_ingest_exit: Callable[[int], bool] | None = None
    # notes written once the run settled (what a fault did, counted at the end)
    late_notes: list[Callable[[], str]] = field(default_factory=list)
    cleared_at: float | None = None
    started_at: float = field(default_factory=time.monotonic)

    def expected_files(self) -> int:
        return len(self.corpus.files)

    def wait_midway(self, fraction: float = 0.3, *, timeout: float = 900) -> None:
        """Block until ``fraction`` of the corpus is delivered: the fault lands while files
        arrive, wait in the queue and are in the workers' hands."""
        target = max(1, int(fraction * self.expected_files()))

        def midway() -> bool:
            return self.sender.delivered >= target

        if not self.pipeline.wait_for(midway, timeout=timeout):
            self.fail(f"only {self.sender.delivered} files delivered after {timeout:.0f} s")
        self.notes.append(
            f"fault at {self.sender.delivered} files delivered, {self.pipeline.predicted()} "
            "predicted"
        )

    def cleared(self) -> None:
        """The fault is over: recovery is timed from now."""
        self.cleared_at = time.monotonic()

    def start(self) -> None:
        self.pipeline.add_ingest(expected_exit=self.expected_ingest_exit)
        for k in range(1, self.workers + 1):
            self.pipeline.add_worker(f"w{k}")
        self.pipeline.wait_workers_ready()

    def run(self, inject: Callable[[Scenario], None]) -> Verdict:
        """Deliver, inject, settle, check; records the figures and returns the verdict."""
        sender = self.sender
        self.start()
        sender.start()
        if not self.pipeline.wait_for(lambda: self.pipeline.predicted() > 0, timeout=600):
            self.fail("the first file to be predicted was not predicted in 600 s")
        sender.go.set()
        inject(self)
        if self.cleared_at is None:
            self.cleared()
        sender.wait(timeout=settle_timeout(self.expected_files()))
        took = self.pipeline.settle(
            sender_done=sender.done.is_set, timeout=settle_timeout(self.expected_files())
        )
        cleared_at = self.cleared_at or time.monotonic()
        recover = None if took is None else max(0.0, time.monotonic() - cleared_at)
        self.pipeline.stop()
        verdict = check_outcomes(
            db_url=self.pipeline.db_url,
            drop=self.pipeline.drop,
            expected=self.corpus.expected,
            report=self.report,
        )
        if took is None:
            self.notes.append("did not finish within the settle timeout")
        self.notes += [note() for note in self.late_notes]
        self.results.add(
            ScenarioResult(
                scenario=self.name,
                studies=self.corpus.studies,
                files=verdict.files,
                lost=verdict.lost,
                duplicated=verdict.duplicated,
                misattributed=verdict.misattributed,
                other=verdict.other,
                recover_s=recover,
                duration_s=time.monotonic() - self.started_at,
                crashes=[
                    f"{c.name} exited {c.returncode}: {c.log_tail[-600:]}"
                    for c in self.pipeline.crashes
                ],
                passed=verdict.ok and not self.pipeline.crashes,
                notes=self.notes,
                problems=verdict.problems[:200],
                report=verdict.report,
            )
        )
        return verdict

    def report(self, day: date) -> tuple[int, str, Path]:
        """The night's report of ``day``, written by the product's CLI."""
        out = self.pipeline.workdir / "reports" / day.isoformat()
        done = self.pipeline.cli("report", "--date", day.isoformat(), "--out", str(out))
        return done.returncode, done.stdout + done.stderr, out / "flagged.csv"

    def fail(self, message: str) -> None:
        """The fault could not be injected as meant: recorded as a failure, never a pass."""
        self.notes.append(message)
        recorded = [r for r in self.results.items if r.scenario == self.name]
        if not recorded:  # failed before its invariant: no figures to show
            recorded = [
                ScenarioResult(
                    scenario=self.name,
                    studies=self.corpus.studies,
                    files=len(self.corpus.files),
                    lost=-1,
                    duplicated=-1,
                    misattributed=-1,
                    other=-1,
                    recover_s=None,
                    duration_s=time.monotonic() - self.started_at,
                )
            ]
            self.results.add(recorded[0])
        for result in recorded:
            result.passed = False
            result.notes = self.notes
        self.results.write()
        pytest.fail(f"{self.name}: {message}{self.pipeline.logs_tail()}")

    def assert_held(self, verdict: Verdict) -> None:
        """The invariant held, and no process died on its own."""
        crashes = "".join(
            f"\n{c.name} exited with {c.returncode}:\n{c.log_tail}" for c in self.pipeline.crashes
        )
        if not verdict.ok or crashes:
            pytest.fail(
                f"{self.name}: {verdict.summary()}\nnotes: {self.notes}\nprocess crashes:{crashes}"
            )


def standard_scenario(
    name: str,
    deploy: Callable[..., Pipeline],
    results: Results,
    tmp_path: Path,
    *,
    sender: dict[str, Any] | None = None,
    corpus_args: dict[str, Any] | None = None,
    **deploy_args: Any,
) -> Scenario:
    """A deployment, the standard corpus of ``PULMO_FAULT_STUDIES`` studies, and its sender."""
    pipeline = deploy(**deploy_args)
    corpus = standard_corpus(
        tmp_path / "staging", studies=studies_per_scenario(), run=name, **(corpus_args or {})
    )
    return Scenario(
        name, pipeline, corpus, results, Sender(corpus, pipeline.drop, **(sender or {}))
    )


def outage(
    stop: Callable[[Pipeline], object], start: Callable[[Pipeline], object], *, seconds: float = 8.0
) -> Callable[[Scenario], None]:
    """A fault that stops a service halfway through the run, keeps it down ``seconds``, starts
    it again and waits until the backlog has cleared."""

    def inject(run: Scenario) -> None:
        run.wait_midway()
        stop(run.pipeline)
        time.sleep(seconds)
        start(run.pipeline)
        run.cleared()

    return inject
