"""Options that more than one command takes, declared once so their help reads the same."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Verbose = Annotated[bool, typer.Option("--verbose", "-v")]
LabelledFolders = Annotated[
    list[Path], typer.Option(help="Folder of <label>/<image> files; repeatable.")
]
ModelFile = Annotated[
    Path | None, typer.Option(help="Model file (default: the configured/shipped one).")
]
TargetSensitivity = Annotated[float, typer.Option(help="Per-disease threshold goal.")]
ThresholdConfidence = Annotated[
    float,
    typer.Option(help="Confidence that validation sensitivity reaches the goal (0: observed)."),
]
InputCache = Annotated[Path | None, typer.Option(help="Preprocessed-input cache.")]
