"""How long the nightly report takes for a busy day.

Seeds a database with ``--studies`` files received on the report day (and as many on each of the
six days before it, for the 7-day trend), then times ``run_report`` twice (the second run replaces
the first). Usage::

    python benchmarks/report_speed.py [--studies 1000] [--database-url postgresql://...]

Without ``--database-url`` it uses a fresh SQLite file. The last line is
``report for <n> studies: <seconds> s``.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from pulmoscreen.config import Settings
from pulmoscreen.db import session_factory, upgrade_database
from reporting.service import run_report
from tests.seeding import Seeder, add_model, seed_day

DAY = date(2026, 11, 25)
TZ = ZoneInfo("Africa/Nairobi")


def seed(url: str, studies: int) -> None:
    with session_factory(url).begin() as session:
        seeder = Seeder(add_model(session))
        for back in range(6, -1, -1):
            seed_day(session, seeder, day=DAY - timedelta(days=back), tz=TZ, files=studies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade_database(url)
        started = time.perf_counter()
        seed(url, args.studies)
        print(f"seeded 7 days x {args.studies} files in {time.perf_counter() - started:.1f} s")
        settings = Settings(database_url=url, site_timezone=TZ.key, report_dir=Path(tmp))
        print(
            f"machine: {platform.processor() or platform.machine()}, database: {url.split(':')[0]}"
        )
        timings = []
        for run in (1, 2):
            files = run_report(settings, day=DAY)
            timings.append(files.duration_seconds)
            s = files.summary
            print(
                f"run {run}: {s.files_received} files, {s.flagged} flagged, "
                f"{files.pdf_pages} PDF pages, {files.duration_seconds:.2f} s"
            )
        print(f"report for {args.studies} studies: {min(timings):.2f} s")


if __name__ == "__main__":
    main()
