"""``pulmoscreen explain FILE -o out.png``: where the served model looked in one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import Settings, get_settings

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})


def explain(
    file: Annotated[
        Path,
        typer.Argument(help="A DICOM file, or a grey image file.", exists=True, dir_okay=False),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG to write (default: ./<FILE name>.heatmap.png)."),
    ] = None,
    label: Annotated[
        str | None,
        typer.Option(
            help="Disease to explain (default: the flagged one with the highest "
            "probability, else the most probable disease)."
        ),
    ] = None,
) -> None:
    """Write where the model looked in FILE (a heatmap over its model input) as a PNG.

    Prints the label, probabilities and flag. The heatmap shows where the model looked, not
    where a disease is (docs/explain.md).
    """
    setup_logging(False)
    target = out if out is not None else Path(f"{file.name}.heatmap.png")
    raise typer.Exit(write_explanation(get_settings(), file, target, label=label))


def _model_input(settings: Settings, file: Path) -> Any:
    """FILE's model input ``(1, size, size, 3)`` through the worker's own code (None when the
    file is refused: the reason is printed)."""
    import cv2
    import numpy as np

    from pulmoscreen.imaging import to_model_input
    from worker.inference import prepare_inputs, served_preprocess_spec

    spec = served_preprocess_spec(settings.resolved_model_path())
    if file.suffix.lower() in IMAGE_SUFFIXES:
        grey = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if grey is None:
            console.print(f"[red]cannot read {file.name} as an image[/red]")
            return None
        return to_model_input(grey, spec)[None].astype(np.float32)
    ids, batch, failures = prepare_inputs({0: file}, spec, j2k_reduced=settings.j2k_reduced_decode)
    if not ids:
        [(_, reason, detail, _retry)] = failures
        console.print(f"[red]rejected: {reason.value}[/red]: {detail}", soft_wrap=True)
        return None
    return batch


def _label_to_show(probs: Any, card: Any, label: str | None) -> str:
    """The disease whose heatmap is drawn."""
    from pulmoscreen.domain import Label
    from pulmoscreen.model.explain import label_to_explain

    if label is not None:
        if label not in card.labels:
            raise typer.BadParameter(f"{label!r} is none of {', '.join(card.labels)}")
        return label
    flagged = label_to_explain(probs, card)
    if flagged is not None:
        return flagged
    diseases = [(float(p), name) for p, name in zip(probs, card.labels, strict=True)]
    return max(d for d in diseases if d[1] != Label.NORMAL.value)[1]


def write_explanation(settings: Settings, file: Path, out: Path, *, label: str | None) -> int:
    """Write FILE's heatmap overlay and print the result; exit code (2: file refused)."""
    import cv2

    from pulmoscreen.model import score_probabilities
    from pulmoscreen.model.explain import heatmaps_for, overlay, predict_with_maps
    from worker.inference import served_for

    batch = _model_input(settings, file)
    if batch is None:
        return 2
    loaded, source = thresholds_for_explain(settings, served_for(settings))
    try:
        probs, _, maps = predict_with_maps(loaded.model, batch)
    except ValueError as exc:  # a head that is not global average pooling + dense
        console.print(f"[red]no heatmap from this model[/red]: {exc}", soft_wrap=True)
        return 1
    card = loaded.card
    shown = _label_to_show(probs[0], card, label)
    kernel = loaded.model.classifier_kernel()
    [heat] = heatmaps_for(maps, kernel, [card.labels.index(shown)], size=card.preprocess.size)
    rgb = overlay(batch[0, :, :, 0], heat)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        console.print(f"[red]cannot write {out}[/red]")
        return 1
    _print_result(score_probabilities(probs[0], card), card, shown=shown, out=out, source=source)
    return 0


def thresholds_for_explain(settings: Settings, loaded: Any) -> tuple[Any, str]:
    """The served model with the thresholds the worker flags with, and where they come from:
    the site's active calibration of this model unless ``PULMO_THRESHOLDS`` overrides it, as in
    the worker; the card's when no screening database is here or it cannot be read (said)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from worker.inference import thresholds_in_force

    if settings.thresholds:
        return loaded, "PULMO_THRESHOLDS"
    url = settings.resolved_database_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and not Path(parsed.database or "").is_file():
        return loaded, "model card"  # no screening database here, so no site calibration
    try:
        calibrated, calibration_id = thresholds_in_force(url, loaded, overridden=False)
    except SQLAlchemyError as exc:
        console.print(
            f"[yellow]the site calibration could not be read ({type(exc).__name__}): "
            "the model card's thresholds apply[/yellow]",
            soft_wrap=True,
        )
        return loaded, "model card"
    if calibration_id is None:
        return loaded, "model card"
    return calibrated, f"site calibration {calibration_id}"


def _print_result(prediction: Any, card: Any, *, shown: str, out: Path, source: str) -> None:
    probabilities = ", ".join(f"{k} {v:.3f}" for k, v in prediction.probabilities.items())
    flag = "[red]FLAGGED[/red]" if prediction.flagged else "not flagged"
    console.print(f"model {card.version}", highlight=False)
    console.print(f"label: {prediction.label} ({probabilities})", highlight=False)
    thresholds = card.thresholds or "none"
    console.print(f"flag: {flag} (thresholds {thresholds}, {source})", highlight=False)
    console.print(f"heatmap of {shown} over the model input written to {out}", highlight=False)
    console.print(
        "a second reader, not a diagnosis: the heatmap shows where the model looked, "
        "not where a disease is",
        highlight=False,
    )
