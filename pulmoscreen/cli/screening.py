"""Screening commands: ``screen``, ``preview``, ``ingest`` and ``demo``, and the helpers that wire
the ingest service and the worker together for them."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pulmoscreen.cli.operations import write_report
from pulmoscreen.cli.options import Verbose
from pulmoscreen.cli.terminal import console, setup_logging
from pulmoscreen.config import Settings, get_settings


@contextmanager
def embedded_worker(celery_app: Any) -> Iterator[None]:
    """Run the real inference task in a Celery worker thread inside this process."""
    from celery.contrib.testing.worker import start_worker

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    with start_worker(
        celery_app,
        pool="solo",
        concurrency=1,
        perform_ping_check=False,
        loglevel="WARNING",
        shutdown_timeout=120.0,
    ):
        # Celery reconfigures the root logger when its worker starts; keep the CLI's own.
        root.setLevel(level)
        root.handlers[:] = handlers
        yield


def make_ingestor(
    settings: Settings,
    folder: Path,
    sessions: Any,
    celery_app: Any,
    *,
    truncated_grace: float | None = None,
) -> Any:
    """The drop folder's :class:`ingest.Ingestor`, sending tasks through ``celery_app`` and
    re-sending those lost with a killed worker or a restarted broker. ``truncated_grace``:
    ``settings.truncated_grace_seconds`` unless given."""
    from ingest import Ingestor
    from pulmoscreen.queue import broker_run_id, enqueue_images, queue_depth

    if truncated_grace is None:
        truncated_grace = settings.truncated_grace_seconds

    return Ingestor(
        folder,
        sessions=sessions,
        stable_seconds=settings.stable_seconds,
        storage_root=settings.storage_root,
        enqueue=lambda ids: enqueue_images(celery_app, ids),
        resend_after=settings.resend_after,
        queue_depth=lambda: queue_depth(celery_app),
        truncated_grace=truncated_grace,
        broker_run_id=lambda: broker_run_id(celery_app),
    )


def _wait_for_results(
    sessions: Any, image_ids: list[int], timeout: float, *, tick: Callable[[], object] = bool
) -> bool:
    from pulmoscreen.db import queries

    deadline = time.monotonic() + timeout
    columns = (TextColumn("screening"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("screening", total=len(image_ids))
        while True:
            with sessions() as session:
                pending = queries.count_pending(session, image_ids)
            progress.update(task, completed=len(image_ids) - pending)
            if pending == 0:
                return True
            if time.monotonic() > deadline:
                return False
            tick()
            time.sleep(0.5)


def screen_folder(
    settings: Settings, folder: Path, *, local_worker: bool, timeout: float
) -> tuple[list[int], bool]:
    """Ingest everything in ``folder`` and wait for every result: the image ids, and whether
    all of them finished within ``timeout`` seconds."""
    from pulmoscreen.db import session_factory, upgrade_database
    from worker.app import create_app

    url = settings.resolved_database_url()
    upgrade_database(url)
    sessions = session_factory(url)
    celery_app = create_app(settings)
    with embedded_worker(celery_app) if local_worker else nullcontext():
        # A folder handed over to screen is complete: a cut file is reported, not waited for.
        ingestor = make_ingestor(settings, folder, sessions, celery_app, truncated_grace=0.0)
        ingestor.recover()
        outcomes = ingestor.scan_once()
        while ingestor.tracker.waiting:
            time.sleep(min(0.5, settings.stable_seconds / 2 or 0.1))
            outcomes += ingestor.scan_once()
        ids = [o.image_id for o in outcomes]
        return ids, _wait_for_results(sessions, ids, timeout, tick=ingestor.maybe_resend_stale)


def run_screen(settings: Settings, folder: Path, *, local_worker: bool, timeout: float) -> int:
    """Ingest everything in ``folder``, wait for every result, print the table; exit code."""
    from pulmoscreen.db import queries, session_factory

    ids, done = screen_folder(settings, folder, local_worker=local_worker, timeout=timeout)
    with session_factory(settings.resolved_database_url())() as session:
        rows = queries.image_outcomes(session, ids)
    _print_results(rows)
    if not done:
        console.print(f"[red]timed out after {timeout:.0f}s with images still queued[/red]")
        return 1
    return 0


def _print_results(rows: list[Any]) -> None:
    untrained = any(r.model_version and r.model_version.startswith("untrained") for r in rows)
    if untrained:
        console.print(
            Panel(
                "No trained model is installed: these scores come from an UNTRAINED network.\n"
                "They are NOT findings and no image is flagged. Configure PULMO_MODEL_PATH.",
                title="WARNING: UNTRAINED MODEL",
                style="bold red",
            )
        )
    table = Table(title=f"PulmoScreen results ({len(rows)} files)")
    for col in ("image", "file", "study", "result", "P(pneumonia)", "P(TB)", "score", "flagged"):
        table.add_column(col)
    for r in rows:
        table.add_row(*_result_cells(r, untrained=untrained))
    console.print(table)
    n_pred = sum(r.status == "predicted" for r in rows)
    n_rej = sum(r.status == "rejected" for r in rows)
    console.print(f"{n_pred} predicted, {n_rej} quarantined, {len(rows) - n_pred - n_rej} pending")


def _result_cells(r: Any, *, untrained: bool) -> list[str]:
    """One image's row of the results table."""
    if r.status == "predicted":
        result = f"{r.predicted_label}{' (untrained)' if untrained else ''}"
        cells = [f"{r.p_pneumonia:.3f}", f"{r.p_tuberculosis:.3f}", str(r.abnormality_score)]
        flag = "YES" if r.flagged else "no"
    else:
        result = f"{r.status}: {r.reject_reason}" if r.reject_reason else r.status
        cells, flag = ["", "", ""], ""
    study = (r.study_uid or "")[-16:]
    return [str(r.image_id), r.source_path, study, result, *cells, flag]


def screen(
    folder: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    local_worker: Annotated[
        bool, typer.Option(help="Run an inference worker in this process.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results.")] = 3600.0,
    verbose: Verbose = False,
) -> None:
    """Screen every DICOM in FOLDER once, wait for all results and print them."""
    setup_logging(verbose)
    settings = get_settings()
    if not local_worker:
        _require_shared_broker(settings, "screen --no-local-worker")
    folder.mkdir(parents=True, exist_ok=True)
    raise typer.Exit(run_screen(settings, folder, local_worker=local_worker, timeout=timeout))


def _require_shared_broker(settings: Settings, command: str) -> None:
    """Refuse the in-process ``memory://`` broker where the workers are other processes: the
    tasks would die with this one, and nothing would ever be screened."""
    if settings.broker_url.startswith("memory://"):
        console.print(
            f"{command} hands its tasks to workers in other processes, but PULMO_BROKER_URL is "
            "memory:// (a queue inside this process). Set PULMO_BROKER_URL to the Redis the "
            "workers use (redis://...), or run `pulmoscreen screen`, which runs its own worker.",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(2)


def write_preview(settings: Settings, file: Path, out: Path) -> int:
    """Write FILE's model input as an 8-bit PNG through the worker's own code; exit code."""
    import cv2
    import numpy as np

    from worker.inference import prepare_inputs, served_preprocess_spec

    spec = served_preprocess_spec(settings.resolved_model_path())
    ids, batch, failures = prepare_inputs({0: file}, spec, j2k_reduced=settings.j2k_reduced_decode)
    if not ids:
        [(_, reason, detail, _retry)] = failures
        console.print(f"[red]rejected: {reason.value}[/red]: {detail}", soft_wrap=True)
        return 2
    grey_u8 = np.clip(np.rint(batch[0, :, :, 0]), 0, 255).astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grey_u8):
        console.print(f"[red]cannot write {out}[/red]")
        return 1
    console.print(
        f"model input ({spec.size}x{spec.size}, {spec.channels} equal channels, "
        f"0..255 rounded to 8 bits) written to {out}",
        soft_wrap=True,
        highlight=False,
    )
    return _print_content_check(settings, batch)


def _print_content_check(settings: Settings, batch: Any) -> int:
    """The content check's verdict on one prepared input, as the worker would give it; exit
    code 3 when it would be refused."""
    from pulmoscreen.domain import RejectReason
    from pulmoscreen.model import ModelCard, card_path_for, predict_with_features
    from worker.inference import served_for

    model_path = settings.resolved_model_path()
    if model_path is None or ModelCard.load(card_path_for(model_path)).content_check is None:
        console.print("content check: none in the model card (the worker scores every image)")
        return 0
    loaded = served_for(settings)
    check = loaded.card.content_check
    assert check is not None
    scores = check.score(predict_with_features(loaded.model, batch)[1])
    verdict = "passes" if scores.passed[0] else f"refused: {RejectReason.NOT_CHEST_CONTENT.value}"
    style = "green" if scores.passed[0] else "red"
    console.print(f"content check: [{style}]{verdict}[/{style}]", highlight=False)
    console.print(scores.detail(0, check), soft_wrap=True, highlight=False)
    return 0 if scores.passed[0] else 3


def preview(
    file: Annotated[Path, typer.Argument(help="A DICOM file.", exists=True, dir_okay=False)],
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG to write (default: ./<FILE name>.png)."),
    ] = None,
) -> None:
    """Write the exact model input for FILE (after every LUT, inversion, resize) as a PNG."""
    setup_logging(False)
    target = out if out is not None else Path(f"{file.name}.png")
    raise typer.Exit(write_preview(get_settings(), file, target))


def ingest(
    folder: Annotated[Path | None, typer.Argument(help="Drop folder (default: settings).")] = None,
    watch: Annotated[bool, typer.Option(help="Keep watching the folder.")] = False,
    verbose: Verbose = True,
) -> None:
    """Register and enqueue the files in the drop folder (once, or continuously with --watch)."""
    from pulmoscreen.db import session_factory, upgrade_database
    from pulmoscreen.queue import make_celery

    setup_logging(verbose)
    settings = get_settings()
    _require_shared_broker(settings, "ingest")
    url = settings.resolved_database_url()
    upgrade_database(url)
    celery_app = make_celery(settings)
    ingestor = make_ingestor(
        settings, folder or settings.drop_folder, session_factory(url), celery_app
    )
    ingestor.recover()
    if watch:
        _watch(ingestor, poll_interval=settings.poll_interval)
    else:
        _ingest_once(ingestor)


def _ingest_once(ingestor: Any) -> None:
    """Take the folder as it stands, waiting only for files still being written."""
    outcomes = ingestor.scan_once()
    while ingestor.waiting:  # files still changing, or cut short within the grace period
        time.sleep(0.5)
        outcomes += ingestor.scan_once()
    queued = sum(o.status == "queued" for o in outcomes)
    console.print(f"{queued} queued, {len(outcomes) - queued} quarantined")


def _watch(ingestor: Any, *, poll_interval: float) -> None:
    """Watch the folder until interrupted."""
    stop = threading.Event()
    try:
        ingestor.watch(stop, poll_interval=poll_interval)
    except KeyboardInterrupt:
        stop.set()


def demo(
    folder: Annotated[Path, typer.Option(help="Where the sample folder is built.")] = Path(
        "var/demo"
    ),
) -> None:
    """Build a sample drop folder (real chest X-rays, non-chest files, lying headers, broken
    files) and screen it."""
    from pulmoscreen.samples import build_demo_folder

    setup_logging(False)
    settings = get_settings()
    if folder.exists():
        shutil.rmtree(folder)
    inbox = folder / "inbox"
    notes = build_demo_folder(inbox)
    for note in notes:
        console.print(f"[dim]{note}[/dim]")
    if not settings.database_url:
        settings = settings.model_copy(update={"data_dir": folder})
    console.print(f"database: {settings.resolved_database_url().split('@')[-1]}")
    code = run_screen(settings, inbox, local_worker=True, timeout=1800.0)
    # The demo's files were received just now: report on today, local time.
    today = datetime.now(ZoneInfo(settings.site_timezone)).date()
    write_report(settings, day=today, out=folder / "reports" / today.isoformat())
    raise typer.Exit(code)
