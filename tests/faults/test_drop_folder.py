"""The drop folder misbehaves: its volume fills up, ``processed/`` is swapped for a link to
another disk, copies crawl in, and files are renamed, deleted or rewritten the moment ingest
opens them."""

from __future__ import annotations

import errno
import io
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.faults.corpus import iter_valid
from tests.faults.pipeline import Pipeline
from tests.faults.results import Results
from tests.faults.scenario import Scenario, standard_scenario
from tests.faults.sender import Tamperer
from tests.faults.services import SmallFilesystem, UnavailableError

pytestmark = [pytest.mark.faults]

FULL_SECONDS = 10.0
LINKED_SECONDS = 10.0


def fill(folder: Path) -> int:
    """Write ballast files until the volume refuses (ENOSPC); returns the bytes written."""
    folder.mkdir(exist_ok=True)
    written = 0
    for k, size in enumerate((1 << 20, 1 << 16, 1 << 12, 1 << 9, 1)):
        try:
            fd = os.open(folder / f"ballast{k}", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            break
        try:
            while True:
                written += os.write(fd, b"\0" * size)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        finally:
            os.close(fd)
    return written


class TestDiskFull:
    def test_drop_volume_full(self, deploy, fault_results, tmp_path):
        mount = tmp_path / "volume"
        try:
            volume = SmallFilesystem(mount, size_mb=1)  # probe: may this user mount at all?
            volume.close()
        except UnavailableError as exc:
            pytest.skip(str(exc))
        run = standard_scenario(
            "drop volume full",
            deploy,
            fault_results,
            tmp_path,
            drop=mount / "inbox",
            corpus_args={"bits_stored": 8},
        )
        corpus_bytes = sum(f.staged.stat().st_size for f in run.corpus.files)
        size_mb = corpus_bytes * 13 // 10 // 2**20 + 16  # ext4's own tables, sidecars, folders
        volume = SmallFilesystem(mount, size_mb=size_mb)
        run.notes.append(f"a {size_mb} MB {volume.kind}, {corpus_bytes // 2**20} MB of files")
        if volume.free_bytes() < corpus_bytes + 4 * 2**20:
            volume.close()
            pytest.fail(f"the {size_mb} MB volume has {volume.free_bytes()} bytes free")
        try:
            run.pipeline.drop.mkdir()

            def inject(run: Scenario) -> None:
                run.wait_midway()
                # the full spell starts just after a file to be quarantined arrived, so ingest
                # must write its sidecar (and make folders) on the full volume
                run.pipeline.wait_for(run.sender.just_sent_reject, timeout=120)
                ballast = fill(mount / ".ballast")
                run.notes.append(
                    f"filled with {ballast // 1024} KiB, full for {FULL_SECONDS:.0f} s"
                )
                time.sleep(FULL_SECONDS)
                shutil.rmtree(mount / ".ballast")
                run.cleared()

            verdict = run.run(inject)
            run.notes.append(f"the sender met ENOSPC {run.sender.enospc} times")
        finally:
            run.pipeline.stop()
            volume.close()
        run.assert_held(verdict)


class TestLinkedProcessedFolder:
    def test_processed_becomes_a_link(self, deploy, fault_results, tmp_path):
        run = standard_scenario("processed/ swapped for a symlink", deploy, fault_results, tmp_path)
        elsewhere = tmp_path / "bigger_disk"
        elsewhere.mkdir()

        def inject(run: Scenario) -> None:
            run.wait_midway()
            processed = run.pipeline.drop / "processed"
            # an administrator moves processed/ to a bigger disk and links it back; ingest may
            # make a new processed/ between the two steps: then move that one as well
            moved: list[Path] = []
            while True:
                target = elsewhere / f"processed{len(moved)}"
                os.rename(processed, target)
                moved.append(target)
                try:
                    processed.symlink_to(moved[0], target_is_directory=True)
                    break
                except FileExistsError:
                    continue
            before = snapshot(elsewhere)
            time.sleep(LINKED_SECONDS)
            written = snapshot(elsewhere) - before
            # ... and undoes it: the link goes, the folder (and any later one) comes back
            processed.unlink()
            os.rename(moved[0], processed)
            for extra in moved[1:]:
                merge(extra, processed)
            run.cleared()
            run.notes.append(f"linked for {LINKED_SECONDS:.0f} s")
            outside.extend(sorted(written))

        outside: list[str] = []
        verdict = run.run(inject)
        if outside:
            run.fail(f"written through the link, outside the drop folder: {outside}")
        run.assert_held(verdict)


def snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def merge(src: Path, dest: Path) -> None:
    for path in sorted(src.rglob("*")):
        if path.is_file():
            target = dest / path.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, target)
    shutil.rmtree(src)


class TestSlowCopies:
    def test_copies_slower_than_a_scan(self, deploy, fault_results, tmp_path):
        # 16 KiB at a time with pauses of up to 0.3 s (PULMO_STABLE_SECONDS is 1.0): each
        # file takes 2 to 3 s to arrive, eight at once
        slow = {"mode": "slow", "threads": 8, "max_gap": 0.3}
        run = standard_scenario("slow copies", deploy, fault_results, tmp_path, sender=slow)
        run.assert_held(run.run(lambda run: run.cleared()))


LABELS = {"rename": "renamed", "delete": "deleted", "rewrite": "rewritten"}


def tampered_scenario(
    action: str, deploy: Callable[..., Pipeline], fault_results: Results, tmp_path: Path
) -> tuple[Scenario, Tamperer]:
    """The standard corpus, sent as copy-then-rename (the sender never opens a final name),
    with every single-image study armed for ``action`` (a rewritten PatientID must not meet
    the study's other image)."""
    run = standard_scenario(
        f"files {LABELS[action]} while read",
        deploy,
        fault_results,
        tmp_path,
        sender={"mode": "atomic"},
    )
    per_study = Counter(f.expected.study_uid for f in run.corpus.files)
    singles = [
        i for i in iter_valid(run.corpus) if per_study[run.corpus.files[i].expected.study_uid] == 1
    ]

    def corrected(index: int) -> tuple[bytes, str]:
        """The same image sent again with its PatientID corrected."""
        ds = pydicom.dcmread(run.corpus.files[index].staged)
        ds.PatientID = f"FIX{ds.PatientID}"
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue(), str(ds.PatientID)

    tamperer = Tamperer(
        run.corpus, run.pipeline.drop, action=action, armed=singles, rewrite=corrected
    )
    return run, tamperer


@pytest.mark.parametrize(
    "action",
    [
        "rename",
        "delete",
        "rewrite",
    ],
)
class TestChangedWhileRead:
    def test_one_outcome_each(self, action, deploy, fault_results, tmp_path):
        run, tamperer = tampered_scenario(action, deploy, fault_results, tmp_path)
        tamperer.start()
        run.late_notes.append(
            lambda: (
                f"{tamperer.acted} files {LABELS[action]} while open; {tamperer.missed} were "
                "moved away before the act"
            )
        )
        try:
            verdict = run.run(lambda run: run.cleared())
        finally:
            tamperer.stop()
        if tamperer.acted == 0:
            run.fail(f"no file was {LABELS[action]} while ingest had it open")
        run.assert_held(verdict)
