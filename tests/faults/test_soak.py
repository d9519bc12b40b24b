"""A soak: 10,000 small studies (``PULMO_FAULT_SOAK_STUDIES``) through ingest and two workers;
the invariant at the end, and no process's resident memory grows by 10 % or more between the
warmed-up pipeline (a tenth of the files, and at least 1,000, predicted) and the last file. A
soak too short to warm up (under 2,000 files) reports its memory figures without judging them."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.corpus import standard_corpus
from tests.faults.pipeline import env_int, rss_bytes
from tests.faults.scenario import Scenario
from tests.faults.sender import Sender

pytestmark = [pytest.mark.faults]

MAX_GROWTH = 0.10
WARM_FILES = 1000  # workers load the model and the pools fill on the first batches


class RssSampler:
    """Resident set of every managed process every ``period`` seconds, with progress."""

    def __init__(self, run: Scenario, period: float = 5.0) -> None:
        self.run, self.period = run, period
        self.samples: list[tuple[int, dict[str, int]]] = []  # (predicted, name -> bytes)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.wait(self.period):
            sizes = {}
            for name in self.run.pipeline.processes:
                pid = self.run.pipeline.pid(name)
                size = rss_bytes(pid) if pid is not None else None
                if size is not None:
                    sizes[name] = size
            self.samples.append((self.run.pipeline.predicted(), sizes))

    def growth(self, warm: int) -> dict[str, tuple[int, int, float]]:
        """Per process: RSS at the first sample with ``warm`` predictions, at the last
        sample, and the growth between them."""
        out = {}
        for name in self.run.pipeline.processes:
            series = [(n, s[name]) for n, s in self.samples if name in s]
            warmed = [size for n, size in series if n >= warm]
            if len(warmed) >= 2:
                out[name] = (warmed[0], warmed[-1], warmed[-1] / warmed[0] - 1)
        return out


class TestSoak:
    def test_small_studies_memory_flat(self, deploy, fault_results, tmp_path):
        studies = env_int("PULMO_FAULT_SOAK_STUDIES", 10_000)
        pipeline = deploy()
        corpus = standard_corpus(tmp_path / "staging", studies=studies, run="soak", bits_stored=8)
        sender = Sender(corpus, pipeline.drop, rate=60.0, threads=2)
        run = Scenario(f"soak: {studies} small studies", pipeline, corpus, fault_results, sender)
        sampler = RssSampler(run)
        growth: dict[str, tuple[int, int, float]] = {}

        def note() -> str:
            sampler.stop.set()
            growth.update(sampler.growth(warm=max(len(corpus.files) // 10, WARM_FILES)))
            return "RSS from the warm pipeline to the end: " + ", ".join(
                f"{name} {a / 2**20:.0f} -> {b / 2**20:.0f} MiB ({100 * g:+.1f} %)"
                for name, (a, b, g) in sorted(growth.items())
            )

        def inject(run: Scenario) -> None:
            sampler.thread.start()
            run.cleared()

        run.late_notes.append(note)
        started = time.monotonic()
        verdict = run.run(inject)
        run.notes.append(f"{len(corpus.files) / (time.monotonic() - started):.1f} files/s overall")
        if len(corpus.files) < 2 * WARM_FILES:
            run.notes.append("too short to judge memory: not asserted")
            run.results.write()
            run.assert_held(verdict)
            return
        if not growth:
            run.fail("no memory samples were taken")
        grown = {name: g for name, (_, _, g) in growth.items() if g >= MAX_GROWTH}
        if grown:
            run.fail(f"resident memory grew by {MAX_GROWTH:.0%} or more: {grown}")
        run.assert_held(verdict)
