"""The flagged patients list as a table (pandas) and as ``flagged.csv`` for the clinic."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd

from reporting.summary import DailySummary

CSV_COLUMNS: tuple[str, ...] = (
    "rank",
    "patient_id",
    "accession",
    "study_date",
    "received_local",
    "label",
    "p_tuberculosis",
    "p_pneumonia",
    "abnormality_score",
    "threshold_tuberculosis",
    "threshold_pneumonia",
    "model_version",
    "source_path",
    "image_link",
)
_TEXT_COLUMNS = ("patient_id", "accession", "source_path", "image_link")
# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _defuse(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def flagged_frame(summary: DailySummary) -> pd.DataFrame:
    """One row per flagged image, most urgent first, with the columns of :data:`CSV_COLUMNS`."""
    rows = [asdict(f) for f in summary.flagged_images]
    frame = pd.DataFrame(rows, columns=[c for c in CSV_COLUMNS if c != "rank"] + ["image_id"])
    frame.insert(0, "rank", range(1, len(frame) + 1))
    frame["received_local"] = [
        f.received_local.isoformat(timespec="seconds") for f in summary.flagged_images
    ]
    frame["study_date"] = [
        f.study_date.isoformat() if f.study_date else "" for f in summary.flagged_images
    ]
    return frame[list(CSV_COLUMNS)]


def write_flagged_csv(summary: DailySummary, path: Path) -> None:
    """``flagged.csv``: UTF-8, a header row, one row per flagged image (header only if none)."""
    frame = flagged_frame(summary)
    for column in _TEXT_COLUMNS:
        frame[column] = frame[column].map(_defuse)
    frame.to_csv(path, index=False, encoding="utf-8", float_format="%.4f", lineterminator="\n")
