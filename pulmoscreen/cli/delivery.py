"""Results back to the PACS: ``send`` (a DICOM SR per screened image, a heatmap Secondary
Capture per flagged one, C-STOREd to the configured destination with retries)."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Annotated

import typer

from pulmoscreen.cli.options import Verbose
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import get_settings


def send(
    once: Annotated[
        bool, typer.Option("--once", help="One round (build, then send what is due), then exit.")
    ] = False,
    verbose: Verbose = True,
) -> None:
    """Build each screened image's DICOM SR (and a flagged image's heatmap Secondary Capture)
    into PULMO_OUTBOX_DIR and, when PULMO_DESTINATION_HOST is set, send them by C-STORE.

    A send that fails is kept in SQL (table deliveries) and retried with a growing wait.
    """
    from pulmoscreen.db import session_factory, upgrade_database
    from worker.delivery import run_sender

    setup_logging(verbose)
    # pynetdicom speaks of every request at INFO and dumps headers at DEBUG; highdicom names
    # the source's UIDs at INFO: both kept at WARNING, no header value reaches the logs
    for name in ("pynetdicom", "highdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_settings()
    upgrade_database(settings.resolved_database_url())
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    where = (
        f"{settings.destination_ae_title} at {settings.destination_host}:"
        f"{settings.destination_port}"
        if settings.destination_host
        else "no destination (PULMO_DESTINATION_HOST unset): outbox only"
    )
    console.print(
        f"sending results from {settings.outbox_dir} to {where}", soft_wrap=True, highlight=False
    )
    factory = session_factory(settings.resolved_database_url())
    run_sender(factory, settings, stop=stop, once=once)
