"""The ``pulmoscreen`` command: the composition root, the one place that wires the core and the
services together. Each module holds one group of commands; this one assembles them."""

from __future__ import annotations

import sys
from collections.abc import Callable

import typer

from pulmoscreen.cli import (
    adaptation,
    calibration,
    content_check,
    delivery,
    explain,
    models,
    network,
    operations,
    screening,
)
from pulmoscreen.cli.screening import (
    embedded_worker,
    make_ingestor,
    run_screen,
    screen_folder,
    write_preview,
)
from pulmoscreen.cli.terminal import quiet_native_logs

__all__ = [
    "app",
    "embedded_worker",
    "main",
    "make_ingestor",
    "run_screen",
    "screen_folder",
    "write_preview",
]

# Every command by name, in the order --help lists them.
COMMANDS: dict[str, Callable[..., None]] = {
    "screen": screening.screen,
    "preview": screening.preview,
    "explain": explain.explain,
    "ingest": screening.ingest,
    "receive": network.receive,
    "send": delivery.send,
    "healthcheck": operations.healthcheck,
    "migrate": operations.migrate,
    "report": operations.report,
    "demo": screening.demo,
    "train": models.train,
    "rethreshold": models.rethreshold,
    "calibrate": calibration.calibrate,
    "adapt": adaptation.adapt,
    "evaluate": models.evaluate,
    "export-openvino": models.export_openvino,
    "pack-data": models.pack_data,
}


def build_app() -> typer.Typer:
    """The ``pulmoscreen`` command with every subcommand."""
    root = typer.Typer(add_completion=False, help="PulmoScreen: batch chest X-ray screening.")
    for name, command in COMMANDS.items():
        root.command(name)(command)
    root.add_typer(content_check.app, name="content-check")
    return root


app = build_app()


def main() -> None:
    """The ``pulmoscreen`` entry point."""
    quiet_native_logs(sys.argv[1:])
    app()
