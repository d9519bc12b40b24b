"""``adapt``: the model's early BatchNorm statistics re-estimated on a site's own unlabelled
images, written as a new model a site then calibrates and serves."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pulmoscreen.cli.options import ModelFile
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import get_settings

SiteFolders = Annotated[
    list[Path],
    typer.Option(
        "--images",
        help="Folder of the site's images (DICOM, PNG, JPEG; sub-folders read, labels not "
        "needed); repeatable.",
    ),
]
AdaptedOut = Annotated[Path, typer.Option(help="Folder for the adapted model and its card.")]
Stages = Annotated[
    list[str] | None,
    typer.Option(
        "--stage",
        help="Backbone stage whose BatchNorm statistics adapt; repeatable "
        "(default: conv1, conv2, conv3).",
    ),
]
Site = Annotated[str, typer.Option(help="The site's name, recorded in the card.")]


def adapt(
    images: SiteFolders,
    out: AdaptedOut,
    model: ModelFile = None,
    stage: Stages = None,
    site: Site = "",
) -> None:
    """Adapt a model to a site: re-estimate the early stages' BatchNorm statistics on the
    site's unlabelled images (a few hundred, as the site acquires them). Weights and thresholds
    stay; calibrate the adapted model on a labelled sample before serving it."""
    from training.adapt import DEFAULT_STAGES, adapt_to_site

    setup_logging(True)
    source = model or get_settings().resolved_model_path()
    if source is None:
        raise typer.BadParameter("no trained model configured: pass --model", param_hint="--model")
    try:
        card = adapt_to_site(source, images, out, stages=tuple(stage or DEFAULT_STAGES), site=site)
    except ValueError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from exc
    record = card.details["site_adaptation"]
    refused = record["content_check_refused"]
    console.print(
        f"model {card.version} written to {out}: {record['batchnorm_layers']} BatchNorm layers "
        f"of {', '.join(record['stages'])} re-estimated on {record['images']} images"
    )
    if refused["before"] is not None:
        console.print(
            f"content check refuses {refused['before']:.1%} of these images before, "
            f"{refused['after']:.1%} after"
        )
    console.print("thresholds unchanged: calibrate on the site's labelled sample before serving")
