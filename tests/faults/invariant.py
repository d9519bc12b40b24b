"""The one invariant every fault scenario ends with, checked in SQL and on disk.

Each delivered file has exactly one outcome: one prediction under the active model (its file in
``processed/``), or one coded rejection whose file is in ``quarantine/`` with its sidecar. None
lost (no row, a row still queued, a row whose file is gone), none duplicated (two rows, two
predictions, a prediction on a rejected row), every predicted image listed under the study and
PatientID its own (final) header names, the row's sha256 that of the file it points to, and the
night's report counts equal to the database's.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text

from pulmoscreen.db import make_engine
from pulmoscreen.domain import RejectReason
from tests.faults.corpus import ABSENT, PREDICTED, Expected

REJECT_CODES = frozenset(r.value for r in RejectReason)
SIDECAR = ".reason.json"
REPORT_COUNTS = ("files_received", "studies_received", "screened", "rejected", "pending", "flagged")

ROWS_SQL = """
SELECT i.id, i.sop_uid, i.source_path, i.stored_path, i.sha256, i.status, i.reject_reason,
       s.study_uid, s.patient_id,
       (SELECT count(*) FROM predictions p JOIN models m ON m.id = p.model_id
         WHERE p.image_id = i.id AND m.active) AS active_predictions,
       (SELECT count(*) FROM predictions p WHERE p.image_id = i.id) AS all_predictions
FROM images i LEFT JOIN studies s ON s.id = i.study_id
ORDER BY i.id
"""

DAY_COUNTS_SQL = """
SELECT count(*) AS files_received,
       count(DISTINCT s.study_uid) AS studies_received,
       coalesce(sum(CASE WHEN i.status = 'predicted' THEN 1 ELSE 0 END), 0) AS screened,
       coalesce(sum(CASE WHEN i.status = 'rejected' THEN 1 ELSE 0 END), 0) AS rejected,
       coalesce(sum(CASE WHEN i.status = 'queued' THEN 1 ELSE 0 END), 0) AS pending,
       coalesce(sum(CASE WHEN EXISTS (
           SELECT 1 FROM predictions p JOIN models m ON m.id = p.model_id
           WHERE p.image_id = i.id AND m.active AND p.flagged) THEN 1 ELSE 0 END), 0) AS flagged
FROM images i LEFT JOIN studies s ON s.id = i.study_id
WHERE i.created_at >= :start AND i.created_at < :end
"""


@dataclass
class Row:
    id: int
    sop_uid: str | None
    source_path: str
    stored_path: str | None
    sha256: str | None
    status: str
    reject_reason: str | None
    study_uid: str | None
    patient_id: str | None
    active_predictions: int
    all_predictions: int


@dataclass
class Verdict:
    """The figures of the docs table, and every violation in words."""

    files: int = 0
    rows: int = 0
    lost: int = 0
    duplicated: int = 0
    misattributed: int = 0
    other: int = 0
    problems: list[str] = field(default_factory=list)
    report: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, kind: str, message: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        self.problems.append(f"{kind}: {message}")

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, limit: int = 40) -> str:
        head = (
            f"{self.files} files, {self.rows} rows: lost {self.lost}, duplicated "
            f"{self.duplicated}, misattributed {self.misattributed}, other {self.other}"
        )
        more = len(self.problems) - limit
        lines = self.problems[:limit] + ([f"... and {more} more"] if more > 0 else [])
        return "\n".join([head, *lines])


def file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def load_rows(db_url: str) -> tuple[list[Row], int]:
    """Every image row with its study and prediction counts; and how many models are active."""
    with make_engine(db_url).connect() as conn:
        rows = [Row(*r) for r in conn.execute(text(ROWS_SQL))]
        active = conn.scalar(text("SELECT count(*) FROM models WHERE active"))
    return rows, int(active or 0)


def match_rows(rows: Sequence[Row], expected: Sequence[Expected]) -> dict[int, list[Row]]:
    """Assign each row to the delivered file it records: by content, else by SOPInstanceUID,
    else by name; among equals the one with the row's own name, then the least taken."""
    by: dict[str, dict[Any, list[int]]] = {"sha": defaultdict(list), "sop": defaultdict(list)}
    by_name: dict[str, list[int]] = defaultdict(list)
    for k, e in enumerate(expected):
        by["sha"][e.sha256].append(k)
        if e.sop_uid:
            by["sop"][e.sop_uid].append(k)
        by_name[e.name].append(k)
    assigned: dict[int, list[Row]] = defaultdict(list)
    for row in rows:
        candidates = (
            by["sha"].get(row.sha256)
            or (by["sop"].get(row.sop_uid) if row.sop_uid else None)
            or by_name.get(row.source_path)
            or []
        )
        if not candidates:
            assigned[-1].append(row)
            continue
        best = min(
            candidates,
            key=lambda k: (expected[k].name != row.source_path, len(assigned[k]), k),
        )
        assigned[best].append(row)
    return assigned


def check_outcomes(
    *, db_url: str, drop: Path, expected: Sequence[Expected], report: Any = None
) -> Verdict:
    """The invariant. ``report(day) -> (returncode, output)`` writes the night's report of
    ``day`` with the product's CLI; None skips the report part (never in a scenario)."""
    verdict = Verdict(files=sum(ABSENT not in e.outcomes for e in expected))
    rows, active_models = load_rows(db_url)
    verdict.rows = len(rows)
    if active_models != 1:
        verdict.add("other", f"{active_models} active models (one expected)")
    assigned = match_rows(rows, expected)
    for row in assigned.pop(-1, []):
        verdict.add("duplicated", f"image {row.id} ({row.source_path}) records no delivered file")
    for k, e in enumerate(expected):
        _check_file(verdict, drop, e, assigned.get(k, []))
    _check_groups(verdict, expected, assigned)
    _check_disk(verdict, drop, rows)
    if report is not None:
        _check_reports(verdict, db_url, rows, report)
    return verdict


def _check_file(verdict: Verdict, drop: Path, e: Expected, rows: list[Row]) -> None:
    if not rows:
        if ABSENT not in e.outcomes:
            verdict.add("lost", f"{e.name}: no row")
        return
    if e.outcomes == {ABSENT}:
        for row in rows:
            verdict.add("other", f"{e.name}: image {row.id} ({row.status}) for a deleted file")
        return
    for extra in rows[1:]:
        verdict.add("duplicated", f"{e.name}: second row, image {extra.id} ({extra.status})")
    for row in rows:
        _check_row(verdict, drop, e, row)


def _check_row(verdict: Verdict, drop: Path, e: Expected, row: Row) -> None:
    where = f"{e.name} (image {row.id})"
    if row.status == "queued":
        verdict.add("lost", f"{where}: still queued")
    elif row.status == PREDICTED:
        _check_predicted(verdict, drop, e, row, where)
    else:
        _check_rejected(verdict, drop, e, row, where)


def _check_predicted(verdict: Verdict, drop: Path, e: Expected, row: Row, where: str) -> None:
    if PREDICTED not in e.outcomes:
        verdict.add("other", f"{where}: predicted, expected {sorted(e.outcomes)}")
    if row.active_predictions == 0:
        verdict.add("lost", f"{where}: predicted with no prediction under the active model")
    elif row.active_predictions > 1 or row.all_predictions > 1:
        verdict.add("duplicated", f"{where}: {row.all_predictions} predictions")
    if (row.patient_id, row.study_uid) != (e.patient_id, e.study_uid):
        verdict.add("misattributed", f"{where}: listed under another patient or study")
    _check_stored(verdict, where, row, drop / "processed")


def _check_rejected(verdict: Verdict, drop: Path, e: Expected, row: Row, where: str) -> None:
    if row.reject_reason not in REJECT_CODES or row.reject_reason not in e.outcomes:
        verdict.add(
            "other", f"{where}: rejected {row.reject_reason}, expected {sorted(e.outcomes)}"
        )
    if row.all_predictions:
        verdict.add("duplicated", f"{where}: rejected but has {row.all_predictions} predictions")
    stored = _check_stored(verdict, where, row, drop / "quarantine")
    if stored is not None:
        sidecar = stored.with_name(stored.name + SIDECAR)
        try:
            reason = json.loads(sidecar.read_text())["reason"]
        except (OSError, ValueError, KeyError):
            reason = None
        if reason != row.reject_reason:
            verdict.add("other", f"{where}: sidecar says {reason!r}, SQL {row.reject_reason!r}")


def _check_stored(verdict: Verdict, where: str, row: Row, folder: Path) -> Path | None:
    """The row's file is in ``folder`` and holds what the row says it registered; the file."""
    stored = Path(row.stored_path) if row.stored_path else None
    if stored is None or not stored.is_relative_to(folder) or not stored.is_file():
        verdict.add("lost", f"{where}: {row.status} but its file is not in {folder.name}/")
        return None
    if row.sha256 is not None and file_sha256(stored) != row.sha256:
        verdict.add("other", f"{where}: the stored file is not the content the row registered")
    return stored


def _check_groups(
    verdict: Verdict, expected: Sequence[Expected], assigned: dict[int, list[Row]]
) -> None:
    """A file and its duplicate, or two PatientIDs of one study: exactly one is predicted."""
    groups: dict[str, int] = defaultdict(int)
    for k, e in enumerate(expected):
        if e.group is not None:
            groups[e.group] += sum(r.status == PREDICTED for r in assigned.get(k, []))
    for group, predicted in sorted(groups.items()):
        if predicted > 1:
            verdict.add("duplicated", f"group {group}: {predicted} members predicted")
        elif predicted == 0:
            verdict.add("lost", f"group {group}: no member predicted")


def _check_disk(verdict: Verdict, drop: Path, rows: Sequence[Row]) -> None:
    """Nothing left waiting, and every file in processed/ and quarantine/ has one row (the
    heatmaps/ beside them hold no received file)."""
    from tests.faults.pipeline import DERIVED_DIRS, OWN_DIRS

    for path in drop.rglob("*"):
        rel = path.relative_to(drop)
        hidden = any(p.startswith(".") for p in rel.parts)
        kept = rel.parts[0] in OWN_DIRS + DERIVED_DIRS
        if not kept and not hidden and (path.is_file() or path.is_symlink()):
            verdict.add("lost", f"{rel}: still in the drop folder")
    named = Counter(row.stored_path for row in rows if row.stored_path)
    for own in OWN_DIRS:
        for path in sorted((drop / own).rglob("*")):
            if not path.is_file() or path.name.endswith(SIDECAR):
                continue
            count = named.get(str(path), 0)
            if count == 0:
                verdict.add("other", f"{path.relative_to(drop)}: a stored file no row names")
            elif count > 1:
                verdict.add("duplicated", f"{path.relative_to(drop)}: named by {count} rows")


def _day_window(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _check_reports(verdict: Verdict, db_url: str, rows: Sequence[Row], report: Any) -> None:
    """Write the report of every day that received files; its counts must be the database's
    (the suite runs with PULMO_SITE_TIMEZONE=UTC)."""
    with make_engine(db_url).connect() as conn:
        days = conn.scalars(
            text("SELECT DISTINCT CAST(created_at AT TIME ZONE 'UTC' AS DATE) FROM images")
        ).all()
    for day in sorted(days):
        code, output, csv_path = report(day)
        if code != 0:
            verdict.add("other", f"report of {day} failed (exit {code}): {output[-1500:]}")
            continue
        start, end = _day_window(day)
        with make_engine(db_url).connect() as conn:
            db = dict(
                conn.execute(text(DAY_COUNTS_SQL), {"start": start, "end": end}).mappings().one()
            )
            shown = (
                conn.execute(
                    text(f"SELECT {', '.join(REPORT_COUNTS)} FROM reports WHERE report_date = :d"),
                    {"d": day},
                )
                .mappings()
                .one_or_none()
            )
        if shown is None:
            verdict.add("other", f"report of {day}: no reports row")
            continue
        verdict.report[str(day)] = {k: int(shown[k]) for k in REPORT_COUNTS}
        for key in REPORT_COUNTS:
            if int(shown[key]) != int(db[key]):
                verdict.add("other", f"report of {day}: {key} {shown[key]}, database {db[key]}")
        listed = _csv_rows(csv_path)
        if listed is not None and listed != int(db["flagged"]):
            verdict.add(
                "other", f"report of {day}: flagged.csv lists {listed}, database {db['flagged']}"
            )


def _csv_rows(path: Path | None) -> int | None:
    if path is None or not path.exists():
        return None
    with path.open(newline="", encoding="utf-8") as fh:
        return max(0, sum(1 for _ in csv.reader(fh)) - 1)
