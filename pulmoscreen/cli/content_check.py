"""``content-check``: fit the check that refuses what is not a frontal chest radiograph."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pulmoscreen.cli.options import ModelFile
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import Settings, get_settings
from pulmoscreen.domain import LABELS

if TYPE_CHECKING:
    from pulmoscreen.model import LoadedModel

app = typer.Typer(
    add_completion=False, help="The check that refuses what is not a frontal chest radiograph."
)

ChestSources = Annotated[
    list[Path], typer.Option(help="Chest source folder of <label>/<image>; repeatable.")
]
DicomCorpus = Annotated[
    Path | None,
    typer.Option(help="Shared DICOM folder (other_cr/, chest_cr/) for the evaluation corpus."),
]
FalseReject = Annotated[
    float, typer.Option(help="False-reject rate of each part on each source's validation.")
]
Components = Annotated[
    int, typer.Option(help="Principal components of the features the check works in.")
]
FeatureCache = Annotated[Path | None, typer.Option(help="Feature cache folder.")]


@app.command("fit")
def fit(
    data: ChestSources,
    model: ModelFile = None,
    dicom: DicomCorpus = None,
    false_reject: FalseReject = 0.005,
    components: Components = 128,
    cache: FeatureCache = None,
) -> None:
    """Fit the content check on the model's own features and write it into the model's card
    (the weights are not touched). Chest images only, on the model's train/val/test split."""
    from training.content import FitConfig, fit_content_check, score_corpus, write_check

    setup_logging(True)
    settings = get_settings()
    model_path = model or settings.resolved_model_path()
    if model_path is None:
        console.print("[red]no trained model: nothing to fit a content check for[/red]")
        raise typer.Exit(1)
    loaded = _load_runner(settings, model_path)
    check = fit_content_check(
        loaded.model,
        loaded.card,
        data,
        FitConfig(false_reject=false_reject, components=components),
        cache_dir=cache or settings.data_dir / "content-cache",
    )
    corpus = score_corpus(loaded.model, loaded.card, check, dicom)
    figures = {**check.figures, "backend": loaded.model.describe(), "corpus": corpus}
    check = replace(check, figures=figures)
    write_check(model_path, check)
    _print_check(check)


def _load_runner(settings: Settings, model_path: Path) -> LoadedModel:
    """The model as the worker serves it (same backend and precision)."""
    from pulmoscreen.model import load_runner

    return load_runner(
        model_path,
        labels=LABELS,
        backend=settings.inference_backend,
        precision=settings.inference_precision,
        cache_dir=settings.resolved_openvino_cache(),
    )


def _print_check(check: Any) -> None:
    figures = check.figures
    console.print(
        f"content check {check.version}: distance threshold {check.ood_threshold:.1f}, "
        f"p(rotated) threshold {check.rotation_threshold:.3f}"
        + (
            f", p(not a chest radiograph) threshold {check.other_threshold:.3f}"
            if check.other_weights is not None
            else ""
        )
        + f" ({figures['split']})",
        highlight=False,
    )
    for role in ("val", "test"):
        per = figures[f"{role}_chest_false_reject"]["per_source"]
        text = ", ".join(f"{s} {v['refused']:.1%} of {v['images']}" for s, v in per.items())
        console.print(f"{role} chest images refused: {text}", highlight=False)
    rotated = figures["test_rotated_90_270_refused"]["all"]
    console.print(f"test chests rotated 90/270 degrees refused: {rotated:.1%}", highlight=False)
    _print_corpus(figures.get("corpus", {}))


def _print_corpus(corpus: dict[str, Any]) -> None:
    """Each evaluation-corpus file's score, marked BAD where the check got it wrong."""
    for name, row in corpus.items():
        ok = row["refused"] == (row["kind"] == "not_chest")
        mark = "ok " if ok else "[red]BAD[/red]"
        console.print(
            f"  {mark} {name} ({row['kind']}): score {row['score']:.2f} "
            f"{'refused' if row['refused'] else 'passes'}",
            highlight=False,
        )
