"""The DICOM network: ``receive`` (a Storage SCP that feeds the drop folder)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from pulmoscreen.cli.options import Verbose
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import check_ae_title, get_settings

# pynetdicom speaks at INFO of every request, and at DEBUG dumps headers: kept at WARNING.
NETWORK_LOGGERS = ("pynetdicom",)


def _wait_for_stop() -> None:
    """Block until SIGINT or SIGTERM (docker stop)."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def receive(
    port: Annotated[
        int | None, typer.Option(help="TCP port (default: PULMO_RECEIVE_PORT).", min=1, max=65535)
    ] = None,
    ae_title: Annotated[
        str | None, typer.Option("--ae-title", help="AE title (default: PULMO_RECEIVE_AE_TITLE).")
    ] = None,
    folder: Annotated[
        Path | None, typer.Option(help="Folder to store into (default: PULMO_DROP_FOLDER).")
    ] = None,
    bind: Annotated[str, typer.Option(help="Address to listen on.")] = "0.0.0.0",
    verbose: Verbose = True,
) -> None:
    """Receive radiographs by DICOM C-STORE into the drop folder (a Storage SCP; answers C-ECHO).

    Run `pulmoscreen ingest --watch` on the same folder to screen what arrives.
    """
    from ingest.receive import start_server

    setup_logging(verbose)
    for name in NETWORK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings()
    title = ae_title or settings.receive_ae_title
    try:
        check_ae_title(title)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--ae-title") from exc
    drop = folder or settings.drop_folder
    callers = settings.allowed_callers()
    server, receiver = start_server(
        drop,
        host=bind,
        port=port or settings.receive_port,
        ae_title=title,
        allowed_callers=callers,
    )
    console.print(
        f"receiving as {title} on {bind}:{server.server_address[1]} into {drop}; callers: "
        f"{', '.join(callers) or 'any'}",
        soft_wrap=True,
        highlight=False,
    )
    try:
        _wait_for_stop()
    finally:
        server.shutdown()
        counts = receiver.counts
        console.print(f"stopped: {counts.stored} stored, {sum(counts.refused.values())} refused")
