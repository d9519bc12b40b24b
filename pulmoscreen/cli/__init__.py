"""The ``pulmoscreen`` command. Subcommands are thin: they wire settings into the services."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pulmoscreen.config import Settings, get_settings
from pulmoscreen.domain import LABELS

app = typer.Typer(add_completion=False, help="PulmoScreen: batch chest X-ray screening.")
console = Console(width=None if sys.stdout.isatty() else 150)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("celery", "kombu", "amqp", "absl", "tensorflow", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # memory:// has no host; kombu warns about it on every connection.
    logging.getLogger("kombu.connection").setLevel(logging.ERROR)


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
        if r.status == "predicted":
            result = f"{r.predicted_label}{' (untrained)' if untrained else ''}"
            cells = [f"{r.p_pneumonia:.3f}", f"{r.p_tuberculosis:.3f}", str(r.abnormality_score)]
            flag = "YES" if r.flagged else "no"
        else:
            result = f"{r.status}: {r.reject_reason}" if r.reject_reason else r.status
            cells, flag = ["", "", ""], ""
        study = (r.study_uid or "")[-16:]
        table.add_row(str(r.image_id), r.source_path, study, result, *cells, flag)
    console.print(table)
    n_pred = sum(r.status == "predicted" for r in rows)
    n_rej = sum(r.status == "rejected" for r in rows)
    console.print(f"{n_pred} predicted, {n_rej} quarantined, {len(rows) - n_pred - n_rej} pending")


@app.command()
def screen(
    folder: Annotated[Path, typer.Argument(help="Folder of DICOM files (searched recursively).")],
    local_worker: Annotated[
        bool, typer.Option(help="Run an inference worker in this process.")
    ] = True,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for all results.")] = 3600.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Screen every DICOM in FOLDER once, wait for all results and print them."""
    _setup_logging(verbose)
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
    ids, batch, failures = prepare_inputs({0: file}, spec)
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


@app.command()
def preview(
    file: Annotated[Path, typer.Argument(help="A DICOM file.", exists=True, dir_okay=False)],
    out: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="PNG to write (default: ./<FILE name>.png)."),
    ] = None,
) -> None:
    """Write the exact model input for FILE (after every LUT, inversion, resize) as a PNG."""
    _setup_logging(False)
    target = out if out is not None else Path(f"{file.name}.png")
    raise typer.Exit(write_preview(get_settings(), file, target))


@app.command()
def ingest(
    folder: Annotated[Path | None, typer.Argument(help="Drop folder (default: settings).")] = None,
    watch: Annotated[bool, typer.Option(help="Keep watching the folder.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = True,
) -> None:
    """Register and enqueue the files in the drop folder (once, or continuously with --watch)."""
    from pulmoscreen.db import session_factory, upgrade_database
    from pulmoscreen.queue import make_celery

    _setup_logging(verbose)
    settings = get_settings()
    _require_shared_broker(settings, "ingest")
    url = settings.resolved_database_url()
    upgrade_database(url)
    celery_app = make_celery(settings)
    ingestor = make_ingestor(
        settings, folder or settings.drop_folder, session_factory(url), celery_app
    )
    ingestor.recover()
    if not watch:
        outcomes = ingestor.scan_once()
        while ingestor.waiting:  # files still changing, or cut short within the grace period
            time.sleep(0.5)
            outcomes += ingestor.scan_once()
        queued = sum(o.status == "queued" for o in outcomes)
        console.print(f"{queued} queued, {len(outcomes) - queued} quarantined")
        return
    stop = threading.Event()
    try:
        ingestor.watch(stop, poll_interval=settings.poll_interval)
    except KeyboardInterrupt:
        stop.set()


@app.command()
def healthcheck() -> None:
    """Exit 0 when the database and the broker answer (container health checks use this)."""
    from sqlalchemy import text

    from pulmoscreen.db import make_engine
    from pulmoscreen.db.session import normalise_url
    from pulmoscreen.queue import make_celery

    settings = get_settings()
    try:
        with make_engine(normalise_url(settings.resolved_database_url())).connect() as conn:
            conn.execute(text("SELECT 1"))
        with make_celery(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # any failure is an unhealthy service
        console.print(f"unhealthy: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from exc
    console.print("healthy")


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema (``alembic upgrade head``)."""
    from pulmoscreen.db import upgrade_database

    settings = get_settings()
    upgrade_database(settings.resolved_database_url())
    _record_site_timezone(settings)
    console.print("database schema is up to date")


def _record_site_timezone(settings: Settings) -> None:
    """Keep the SQL views' time zone (table site_settings) equal to PULMO_SITE_TIMEZONE."""
    from pulmoscreen.db import session_factory
    from pulmoscreen.db.reports import set_site_timezone

    with session_factory(settings.resolved_database_url()).begin() as session:
        set_site_timezone(session, settings.site_timezone)


def write_report(settings: Settings, *, day: date | None, out: Path | None) -> Path:
    """Write the report of local ``day`` (default: yesterday), print its totals and path."""
    from pulmoscreen.db import upgrade_database
    from reporting.service import default_report_day, run_report

    upgrade_database(settings.resolved_database_url())
    files = run_report(settings, day=day or default_report_day(settings), out_dir=out)
    s = files.summary
    console.print(
        f"report for {files.day} ({settings.site_timezone}): {s.files_received} files received, "
        f"{s.screened} screened, {s.rejected} rejected, {s.pending} pending, "
        f"{s.flagged} flagged; written in {files.duration_seconds:.1f}s"
    )
    console.print(f"report: {files.html}", soft_wrap=True, highlight=False)
    return files.html


@app.command()
def report(
    day: Annotated[
        datetime | None,
        typer.Option(
            "--date",
            formats=["%Y-%m-%d"],
            help="Local day to report (default: yesterday in PULMO_SITE_TIMEZONE).",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: PULMO_REPORT_DIR/YYYY-MM-DD).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Write a day's screening summary: summary.html, summary.pdf and flagged.csv."""
    _setup_logging(verbose)
    write_report(get_settings(), day=day.date() if day else None, out=out)


@app.command()
def demo(
    folder: Annotated[Path, typer.Option(help="Where the sample folder is built.")] = Path(
        "var/demo"
    ),
) -> None:
    """Build a sample drop folder (real chest X-rays, non-chest files, lying headers, broken
    files) and screen it."""
    from pulmoscreen.samples import build_demo_folder

    _setup_logging(False)
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


@app.command()
def train(
    data: Annotated[list[Path], typer.Option(help="Folder of <label>/<image> files; repeatable.")],
    out: Annotated[Path, typer.Option(help="Run folder: splits, checkpoints, model, metrics.")],
    init: Annotated[str, typer.Option(help="scratch, imagenet, or a .keras/.npz model path.")] = (
        "scratch"
    ),
    arch: Annotated[str, typer.Option(help="resnet50, or tiny for dry runs.")] = "resnet50",
    epochs: Annotated[int, typer.Option(help="Total epochs (both phases).")] = 8,
    head_epochs: Annotated[int, typer.Option(help="Frozen-backbone epochs (pretrained).")] = 2,
    batch_size: Annotated[int, typer.Option()] = 32,
    learning_rate: Annotated[float, typer.Option()] = 1e-3,
    fine_tune_learning_rate: Annotated[
        float, typer.Option(help="Learning rate with the backbone unfrozen (pretrained init).")
    ] = 1e-4,
    balance: Annotated[
        str, typer.Option(help="class: balance labels; group: balance (source, label) pairs.")
    ] = "class",
    average_with: Annotated[
        Path | None,
        typer.Option(help="Ship the average of the best weights and this model's (.keras/.npz)."),
    ] = None,
    size: Annotated[int, typer.Option(help="Input side in pixels.")] = 224,
    equalize: Annotated[
        str, typer.Option(help="Served intensity equalisation after the clip: none or clahe.")
    ] = "none",
    hold_out_source: Annotated[
        list[str] | None,
        typer.Option(
            help="Source (folder name) left out of training, evaluated whole; repeatable."
        ),
    ] = None,
    loso_run: Annotated[
        list[Path] | None,
        typer.Option(help="A --hold-out-source run whose held-out figures go in the card."),
    ] = None,
    acquisition: Annotated[
        float, typer.Option(help="Probability of each acquisition jitter (0: off).")
    ] = 0.0,
    max_per_group: Annotated[
        int, typer.Option(help="Images per (source, label) group per epoch (0: all).")
    ] = 0,
    adversarial: Annotated[
        float, typer.Option(help="Weight of a source adversary on the features (0: off).")
    ] = 0.0,
    train_from: Annotated[
        str, typer.Option(help="Freeze backbone layers before the first named so (e.g. conv4).")
    ] = "",
    swa_from: Annotated[
        int, typer.Option(help="Ship the weights averaged from this epoch on (0: the best).")
    ] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    patience: Annotated[int, typer.Option(help="Early-stopping patience, epochs.")] = 3,
    rotation: Annotated[float, typer.Option(help="Max rotation, degrees (0: off).")] = 10.0,
    zoom: Annotated[float, typer.Option(help="Max zoom fraction (0: off).")] = 0.1,
    shift: Annotated[float, typer.Option(help="Max width/height shift fraction (0: off).")] = 0.1,
    flip: Annotated[bool, typer.Option(help="Random horizontal flips.")] = True,
    target_sensitivity: Annotated[float, typer.Option(help="Per-disease threshold goal.")] = 0.9,
    threshold_confidence: Annotated[
        float,
        typer.Option(help="Confidence that validation sensitivity reaches the goal (0: observed)."),
    ] = 0.95,
    precision: Annotated[str, typer.Option(help="auto, float32 or mixed_bfloat16.")] = "auto",
    cache_dir: Annotated[Path | None, typer.Option(help="Preprocessed-input cache.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run in OUT.")] = False,
    fit_only: Annotated[bool, typer.Option(help="Stop after the fit stage.")] = False,
) -> None:
    """Train the screening model on labelled folders, then calibrate, evaluate and package it."""
    from training.augment import AugmentSpec
    from training.train import TrainConfig, fit

    _setup_logging(True)
    settings = get_settings()
    config = TrainConfig(
        data=tuple(data),
        out=out,
        init=init,
        arch=arch,
        epochs=epochs,
        head_epochs=head_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        fine_tune_learning_rate=fine_tune_learning_rate,
        balance=balance,
        average_with=average_with,
        size=size,
        seed=seed,
        patience=patience,
        target_sensitivity=target_sensitivity,
        threshold_confidence=threshold_confidence,
        precision=precision,
        imagenet_weights=settings.imagenet_weights,
        cache_dir=cache_dir,
        augment=AugmentSpec(
            rotation_deg=rotation, zoom=zoom, shift=shift, flip=flip, acquisition_p=acquisition
        ),
        hold_out=tuple(hold_out_source or ()),
        equalize=equalize,
        max_per_group=max_per_group,
        train_from=train_from,
        adversarial=adversarial,
        swa_from=swa_from,
        loso_runs=tuple(loso_run or ()),
    )
    from training.finalize import finalize, loso_figures

    try:
        loso_figures(config.loso_runs)  # a wrong --loso-run fails now, not after the fit
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    fit(config, resume=resume)
    if fit_only:
        return

    card = finalize(config)
    console.print(f"model {card.version} written to {out}")


@app.command()
def rethreshold(
    model: Annotated[Path, typer.Option(help="Trained model (.npz) with its card.")],
    out: Annotated[Path, typer.Option(help="Folder for the model, its new card and test/.")],
    target_sensitivity: Annotated[float, typer.Option(help="Per-disease threshold goal.")] = 0.9,
    threshold_confidence: Annotated[
        float,
        typer.Option(help="Confidence that validation sensitivity reaches the goal (0: observed)."),
    ] = 0.95,
    cache_dir: Annotated[Path | None, typer.Option(help="Preprocessed-input cache.")] = None,
) -> None:
    """Choose a trained model's flag thresholds again, on the validation split of its own
    training data (rebuilt from its card and checked), and re-run the held-out test."""
    from training.finalize import rethreshold as run_rethreshold

    _setup_logging(True)
    try:
        card = run_rethreshold(
            model,
            out,
            target=target_sensitivity,
            confidence=threshold_confidence,
            cache_dir=cache_dir,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    console.print(f"model {card.version} (thresholds {card.thresholds}) written to {out}")


@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Option(help="Folder of <label>/<image> files; repeatable.")],
    out: Annotated[Path, typer.Option(help="Where metrics.json, predictions.csv, plots go.")],
    model: Annotated[
        Path | None, typer.Option(help="Model file (default: the configured/shipped one).")
    ] = None,
) -> None:
    """Evaluate a model on labelled folders: metrics.json, predictions.csv and PNG charts."""
    from training.evaluate import evaluate_folders

    _setup_logging(True)
    metrics = evaluate_folders(data, model or get_settings().resolved_model_path(), out)
    console.print_json(
        data={k: metrics[k] for k in ("n", "accuracy", "macro_auc", "model_version")}
    )
    console.print(f"written to {out}")


@app.command("export-openvino")
def export_openvino_cmd(
    model: Annotated[
        Path | None, typer.Option(help="Model file (default: the configured/shipped one).")
    ] = None,
    cache: Annotated[
        Path | None, typer.Option(help="OpenVINO cache folder (default: PULMO_OPENVINO_CACHE).")
    ] = None,
) -> None:
    """Convert the model to OpenVINO IR ahead of time (air-gapped sites, container images)."""
    from pulmoscreen.model import export_openvino, load_screening_model

    _setup_logging(False)
    settings = get_settings()
    loaded = load_screening_model(
        model or settings.resolved_model_path(),
        labels=LABELS,
        thresholds_override=settings.thresholds,
    )
    ir = export_openvino(loaded, cache or settings.resolved_openvino_cache())
    console.print(f"model {loaded.card.version} (sha256 {loaded.card.sha256[:12]}) -> {ir}")


@app.command("pack-data")
def pack_data(
    data: Annotated[list[Path], typer.Option(help="Folder of <label>/<image> files; repeatable.")],
    out: Annotated[Path, typer.Option(help="Destination: <source>/<label>/<name>.jpg.")],
    size: Annotated[int, typer.Option(help="Side of the square copies, pixels.")] = 224,
    quality: Annotated[int, typer.Option(help="JPEG quality.")] = 85,
) -> None:
    """Make a compact grey-JPEG copy of training folders (for a GPU host)."""
    from training.pack import pack_folders

    total = pack_folders(data, out, size=size, quality=quality)
    console.print(f"{total / 1e6:.1f} MB written to {out}")


def main() -> None:
    # TensorFlow's C++ start-up chatter is not for screening staff.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    app()


content_check_app = typer.Typer(
    add_completion=False, help="The check that refuses what is not a frontal chest radiograph."
)
app.add_typer(content_check_app, name="content-check")


@content_check_app.command("fit")
def content_check_fit(
    data: Annotated[
        list[Path], typer.Option(help="Chest source folder of <label>/<image>; repeatable.")
    ],
    model: Annotated[
        Path | None, typer.Option(help="Model file (default: the configured/shipped one).")
    ] = None,
    dicom: Annotated[
        Path | None,
        typer.Option(help="Shared DICOM folder (other_cr/, chest_cr/) for the evaluation corpus."),
    ] = None,
    false_reject: Annotated[
        float, typer.Option(help="False-reject rate of each part on each source's validation.")
    ] = 0.005,
    components: Annotated[
        int, typer.Option(help="Principal components of the features the check works in.")
    ] = 128,
    cache: Annotated[Path | None, typer.Option(help="Feature cache folder.")] = None,
) -> None:
    """Fit the content check on the model's own features and write it into the model's card
    (the weights are not touched). Chest images only, on the model's train/val/test split."""
    from dataclasses import replace

    from pulmoscreen.model import load_runner
    from training.content import FitConfig, fit_content_check, score_corpus, write_check

    _setup_logging(True)
    settings = get_settings()
    model_path = model or settings.resolved_model_path()
    if model_path is None:
        console.print("[red]no trained model: nothing to fit a content check for[/red]")
        raise typer.Exit(1)
    loaded = load_runner(
        model_path,
        labels=LABELS,
        backend=settings.inference_backend,
        precision=settings.inference_precision,
        cache_dir=settings.resolved_openvino_cache(),
    )
    check = fit_content_check(
        loaded.model,
        loaded.card,
        data,
        FitConfig(false_reject=false_reject, components=components),
        cache_dir=cache or settings.data_dir / "content-cache",
    )
    corpus = score_corpus(loaded.model, loaded.card, check, dicom)
    check = replace(
        check,
        figures={**check.figures, "backend": loaded.model.describe(), "corpus": corpus},
    )
    write_check(model_path, check)
    _print_check(check)


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
    for name, row in figures.get("corpus", {}).items():
        ok = row["refused"] == (row["kind"] == "not_chest")
        mark = "ok " if ok else "[red]BAD[/red]"
        console.print(
            f"  {mark} {name} ({row['kind']}): score {row['score']:.2f} "
            f"{'refused' if row['refused'] else 'passes'}",
            highlight=False,
        )
