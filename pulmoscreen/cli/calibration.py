"""``calibrate``: flag thresholds chosen on a site's own labelled sample, stored in SQL with
``--apply`` so that the workers flag with them."""

from __future__ import annotations

import csv
import getpass
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer

from pulmoscreen.cli.options import ModelFile, TargetSensitivity, ThresholdConfidence
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import Settings, get_settings
from pulmoscreen.domain import LABELS

if TYPE_CHECKING:
    from pulmoscreen.model import ModelCard
    from training.calibration import Calibration, SiteSample

SampleFolders = Annotated[
    list[Path] | None,
    typer.Option("--data", help="Folder of <label>/<image> (DICOM, PNG, JPEG); repeatable."),
]
LabelsCsv = Annotated[
    Path | None,
    typer.Option(
        "--labels", help="CSV of sop_uid,label for images already screened in this database."
    ),
]
Diseases = Annotated[
    list[str] | None,
    typer.Option(
        "--disease", help="Disease to calibrate; repeatable (default: each in the sample)."
    ),
]
Prevalences = Annotated[
    list[str] | None,
    typer.Option(
        "--prevalence",
        help="DISEASE=P: its share among the people screened, for the operating table "
        "(default: the sample's); repeatable.",
    ),
]
Apply = Annotated[bool, typer.Option(help="Store the thresholds in SQL: the workers use them.")]
By = Annotated[str | None, typer.Option(help="Who calibrates (default: the login name).")]


@dataclass(frozen=True)
class CalibrationRequest:
    """What ``calibrate`` was asked for."""

    out: Path
    data: tuple[Path, ...] = ()
    labels_csv: Path | None = None
    target: float = 0.9
    confidence: float = 0.95
    diseases: tuple[str, ...] = ()
    prevalence: dict[str, float] = field(default_factory=dict)
    model: Path | None = None
    apply: bool = False
    by: str | None = None


def served_card(settings: Settings, model: Path | None) -> ModelCard:
    """The card of the model the workers serve, without any PULMO_THRESHOLDS override;
    refuses an untrained model and a ``model`` other than the served one."""
    from pulmoscreen.model.build import resolve_card
    from training.calibration import CalibrationError

    path = settings.resolved_model_path()
    card = resolve_card(path, labels=LABELS)
    if not card.trained or path is None:
        raise CalibrationError("no trained model is served: nothing to calibrate")
    if model is not None:
        other = resolve_card(model, labels=LABELS)
        if (other.version, other.sha256) != (card.version, card.sha256):
            raise CalibrationError(
                f"{model} is model {other.version}, not the one served ({card.version}, "
                f"{path}): a site calibrates the model its workers run"
            )
    return card


def folder_sample(settings: Settings, data: tuple[Path, ...]) -> tuple[SiteSample, list[str]]:
    """The labelled folders scored by the served model exactly as the worker scores."""
    from training.calibration import CalibrationError, SiteSample, score_files
    from training.dataset import discover
    from worker.inference import served_model

    samples = discover(data)
    if not samples:
        raise CalibrationError(f"no <label>/<image> files under {[str(d) for d in data]}")
    loaded = served_model(
        settings.resolved_model_path(),
        (),
        settings.inference_backend,
        settings.inference_precision,
        settings.resolved_openvino_cache(),
    )
    probs, kept = score_files(loaded, [s.path for s in samples])
    chosen = [s for s, keep in zip(samples, kept, strict=True) if keep]
    sample = SiteSample(
        true_labels=tuple(s.label for s in chosen),
        probs=probs,
        source=", ".join(str(d) for d in data),
        excluded=len(samples) - len(chosen),
    )
    return sample, [str(s.path) for s in chosen]


def read_labels_csv(path: Path) -> dict[str, str]:
    """SOPInstanceUID -> reference label, from a CSV with ``sop_uid`` and ``label`` columns."""
    from training.calibration import CalibrationError

    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        columns = {c.strip().lower(): c for c in reader.fieldnames or ()}
        uid = columns.get("sop_uid") or columns.get("sopinstanceuid")
        label = columns.get("label")
        if uid is None or label is None:
            raise CalibrationError(f"{path}: needs the columns sop_uid and label")
        return {row[uid].strip(): row[label].strip().lower() for row in reader if row[uid]}


def database_sample(
    settings: Settings, labels_csv: Path, card: ModelCard
) -> tuple[SiteSample, list[str]]:
    """The listed images' results under the served model, read from SQL: nothing is scored
    again. Refuses when any listed image lacks such a result."""
    from pulmoscreen.db import session_factory
    from pulmoscreen.db.calibrations import known_sop_uids, predictions_of
    from training.calibration import CalibrationError, SiteSample

    reference = read_labels_csv(labels_csv)
    uids = sorted(reference)
    with session_factory(settings.resolved_database_url())() as session:
        found = predictions_of(session, uids, version=card.version, sha256=card.sha256)
        missing = [u for u in uids if u not in found]
        unknown = len(set(missing) - known_sop_uids(session, missing))
    if missing:
        raise CalibrationError(
            f"{len(missing)} of the {len(uids)} listed images have no result from the served "
            f"model {card.version} ({unknown} are not in the database at all), e.g. "
            f"{missing[0]}: screen them with this model first"
        )
    sample = SiteSample(
        true_labels=tuple(reference[u] for u in uids),
        probs=np.array([found[u] for u in uids], dtype=np.float32),
        source=str(labels_csv),
    )
    return sample, uids


def parse_prevalence(values: list[str] | None) -> dict[str, float]:
    """``["tuberculosis=0.05"]`` -> ``{"tuberculosis": 0.05}``."""
    found = {}
    for value in values or ():
        name, _, share = value.partition("=")
        try:
            found[name.strip()] = float(share)
        except ValueError:
            raise typer.BadParameter(
                f"{value!r}: write DISEASE=P, e.g. tuberculosis=0.05"
            ) from None
    return found


def store_calibration(
    settings: Settings, calibration: Calibration, *, by: str, report: Path
) -> int:
    """The calibration as the active one of its model in SQL; returns its id."""
    from pulmoscreen.db import session_factory
    from pulmoscreen.db.calibrations import add_calibration

    values = {
        "model_version": calibration.model_version,
        "model_sha256": calibration.model_sha256,
        "thresholds": calibration.thresholds,
        "target_sensitivity": calibration.target,
        "confidence": calibration.confidence,
        "rule": calibration.rule,
        "sample_counts": calibration.sample_counts,
        "figures": {d.disease: d.figures() for d in calibration.diseases},
        "sample_source": calibration.sample_source,
        "report_path": str(report),
        "created_by": by,
    }
    with session_factory(settings.resolved_database_url()).begin() as session:
        return add_calibration(session, values)


def run_calibration(
    settings: Settings, request: CalibrationRequest
) -> tuple[Calibration, Path, int | None]:
    """Calibrate, write the report, and store the thresholds when asked: (the calibration,
    its HTML report, its id in SQL or None)."""
    from training.calibration import CalibrationError, calibrate
    from training.calibration_report import CalibrationRun, write_calibration_report

    if bool(request.data) == (request.labels_csv is not None):
        raise CalibrationError("give the sample as --data folders or as a --labels CSV, not both")
    card = served_card(settings, request.model)
    if request.apply:
        from pulmoscreen.db import upgrade_database

        # as `screen` does: the schema is in place before minutes of scoring, not after
        upgrade_database(settings.resolved_database_url())
    if request.data:
        sample, names = folder_sample(settings, request.data)
    else:
        assert request.labels_csv is not None
        sample, names = database_sample(settings, request.labels_csv, card)
    calibration = calibrate(
        sample,
        model=(card.version, card.sha256, dict(card.thresholds)),
        target=request.target,
        confidence=request.confidence,
        diseases=request.diseases,
        prevalence=request.prevalence,
    )
    by = request.by or getpass.getuser()
    run = CalibrationRun(created_by=by, created_at=datetime.now(UTC), applied=request.apply)
    report = write_calibration_report(calibration, sample, names, request.out.resolve(), run)
    stored = (
        store_calibration(settings, calibration, by=by, report=report) if request.apply else None
    )
    return calibration, report, stored


def calibrate(
    out: Annotated[Path, typer.Option(help="Folder for the report, its PDF and CSV files.")],
    data: SampleFolders = None,
    labels: LabelsCsv = None,
    target_sensitivity: TargetSensitivity = 0.9,
    threshold_confidence: ThresholdConfidence = 0.95,
    disease: Diseases = None,
    prevalence: Prevalences = None,
    model: ModelFile = None,
    apply: Apply = False,
    by: By = None,
) -> None:
    """Choose the served model's flag thresholds on this site's labelled sample: ROC, AUC,
    threshold for the target sensitivity, operating table and a one-page report."""
    from training.calibration import CalibrationError

    setup_logging(False)
    request = CalibrationRequest(
        out=out,
        data=tuple(data or ()),
        labels_csv=labels,
        target=target_sensitivity,
        confidence=threshold_confidence,
        diseases=tuple(disease or ()),
        prevalence=parse_prevalence(prevalence),
        model=model,
        apply=apply,
        by=by,
    )
    try:
        calibration, report, stored = run_calibration(get_settings(), request)
    except CalibrationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    for d in calibration.diseases:
        console.print(
            f"{d.disease}: threshold {d.threshold:.3f} (card {d.card_threshold}), sensitivity "
            f"{d.sensitivity:.3f}, specificity {d.specificity:.3f}, AUC {d.auc:.3f} "
            f"({d.auc_low:.3f}-{d.auc_high:.3f})"
        )
    console.print(f"report: {report}")
    if stored is None:
        console.print("not applied: run again with --apply to flag with these thresholds")
    else:
        console.print(f"applied as site calibration {stored} of {calibration.model_version}")
