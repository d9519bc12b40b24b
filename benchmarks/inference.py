"""CPU inference at the hardware's limit: backends side by side, end to end, worker memory.

Three parts, all in one run so machine noise hits every figure alike:

1. model-only throughput of the served model per backend (Keras, OpenVINO) and precision (f32,
   bf16 where the CPU has it) at batch 1...64, on random input;
2. end to end: a drop folder of realistic DICOMs (2-3k px, 12-16-bit, a share JPEG 2000
   compressed) ingested and predicted by the real Celery task (embedded worker, SQLite) until
   every row is in SQL, against the served backend's model-only rate at the worker's batch;
3. worker memory: resident set size while the worker's ``predict_images`` handles 5,000 queued
   images (50 files of 1024 px, one in five JPEG 2000, registered again and again under new
   UIDs), read at image 1,000 and at the end.

Usage::

    python benchmarks/inference.py [--images 500] [--memory-images 5000] [--corpus DIR]

The corpus is generated once into ``--corpus`` (default ``var/bench-corpus``) and reused. Before
the end-to-end run, ``--decode-images`` of its images are decoded to the model's pixels three
ways side by side (full resolution, reduced, reduced with JPEG 2000 levels left out). The last
lines are ``ratio openvino/keras: <x>`` and ``ratio e2e/model-only: <x>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from pydicom.uid import JPEG2000Lossless

from pulmoscreen.config import Settings
from pulmoscreen.domain import LABELS
from pulmoscreen.model import load_runner, predict_batch
from pulmoscreen.model.backends import cpu_has_bf16
from pulmoscreen.synthetic import make_cxr_dicom


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _make_one(args: tuple[Path, int, int, int]) -> Path:
    folder, seed, low, high = args
    rng = np.random.default_rng(seed)
    rows, cols = int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))
    bits = int(rng.choice([12, 14, 16]))
    syntax = JPEG2000Lossless if seed % 5 == 0 else "1.2.840.10008.1.2.1"
    return make_cxr_dicom(
        folder, seed=seed, rows=rows, cols=cols, bits_stored=bits, transfer_syntax=syntax
    )


def realistic_corpus(folder: Path, n: int, sides: tuple[int, int] = (2048, 3072)) -> list[Path]:
    """``n`` synthetic chest DICOMs with sides in ``sides`` (px), 12/14/16-bit, one in five
    JPEG 2000 lossless; generated once into ``folder`` and reused."""
    folder.mkdir(parents=True, exist_ok=True)
    have = sorted(folder.glob("synthetic_*.dcm"))
    if len(have) >= n:
        return have[:n]
    todo = [
        (folder, seed, *sides)
        for seed in range(n)
        if not (folder / f"synthetic_{seed:05d}.dcm").exists()
    ]
    with ProcessPoolExecutor() as pool:
        list(pool.map(_make_one, todo, chunksize=4))
    return sorted(folder.glob("synthetic_*.dcm"))[:n]


def model_only(runner, size: int, n: int, repeats: int) -> float:  # type: ignore[no-untyped-def]
    batch = (np.random.default_rng(n).random((n, size, size, 3)) * 255).astype(np.float32)
    predict_batch(runner, batch)
    reps = max(repeats, 64 // n)
    start = time.perf_counter()
    for _ in range(reps):
        predict_batch(runner, batch)
    return reps * n / (time.perf_counter() - start)


def backend_table(settings: Settings, batches: list[int], repeats: int) -> dict[str, float]:
    model_path = settings.resolved_model_path()
    precisions = ["f32", "bf16"] if cpu_has_bf16() else ["f32"]
    best: dict[str, float] = {}
    cache = Path(tempfile.mkdtemp(prefix="bench-ov-"))
    for backend in ("keras", "openvino"):
        for precision in precisions:
            loaded = load_runner(
                model_path, labels=LABELS, backend=backend, precision=precision, cache_dir=cache
            )
            size = loaded.card.preprocess.size
            rates = [model_only(loaded.model, size, n, repeats) for n in batches]
            name = f"{backend} {precision}"
            best[name] = max(rates)
            cells = "  ".join(f"b{n}: {r:7.1f}" for n, r in zip(batches, rates, strict=True))
            print(f"model-only {name:14s} img/s  {cells}", flush=True)
    shutil.rmtree(cache, ignore_errors=True)
    return best


def decode_rates(files: list[Path], size: int) -> dict[str, float]:
    """Images per second, one thread, of the three ways to the model's pixels on ``files``,
    taken in turn image by image so machine noise hits them alike: full resolution then
    resize, the reduced decode, and the reduced decode with JPEG 2000 wavelet levels left out."""
    from pulmoscreen.imaging import read_dicom
    from pulmoscreen.imaging.preprocess import shrink_stored

    ways = {
        "full": lambda path: shrink_stored(read_dicom(path).pixels, size),
        "reduced": lambda path: read_dicom(path, size=size).pixels,
        "reduced, j2k levels": lambda path: read_dicom(path, size=size, j2k_reduced=True).pixels,
    }
    spent = dict.fromkeys(ways, 0.0)
    for path in files:
        for name, way in ways.items():
            start = time.perf_counter()
            way(path)
            spent[name] += time.perf_counter() - start
    return {name: len(files) / seconds for name, seconds in spent.items()}


def without_content_check(settings: Settings, folder: Path) -> Path:
    """A copy of the served model whose card has no content check. The synthetic phantoms are
    not radiographs and the check refuses them, so with it a run would time quarantines, not
    predictions and heatmaps (the check's own cost: ``make bench-content``)."""
    from pulmoscreen.model import card_path_for

    model_path = settings.resolved_model_path()
    if model_path is None:
        raise RuntimeError("no served model: set PULMO_MODEL_PATH")
    copy = folder / model_path.name
    shutil.copyfile(model_path, copy)
    card = json.loads(card_path_for(model_path).read_text())
    card.pop("content_check", None)
    card_path_for(copy).write_text(json.dumps(card))
    return copy


def predicted_rows(settings: Settings) -> int:
    from sqlalchemy import func, select

    from pulmoscreen.db import session_factory
    from pulmoscreen.db.schema import PredictionRow

    with session_factory(settings.resolved_database_url()).begin() as session:
        return int(session.scalar(select(func.count()).select_from(PredictionRow)) or 0)


def end_to_end(settings: Settings, files: list[Path]) -> float:
    """Drop folder -> SQL rows through ingest and the real Celery task (``screen_folder``, as
    ``pulmoscreen screen`` runs it); images per second."""
    from pulmoscreen.cli import screen_folder
    from worker.inference import served_for

    served_for(settings)  # load (and convert) the model before the clock starts
    drop = settings.drop_folder
    drop.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, drop)
    start = time.perf_counter()
    ids, done = screen_folder(settings, drop, local_worker=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if not done or len(ids) != len(files):
        raise RuntimeError(f"{len(ids)} of {len(files)} images ingested, all done: {done}")
    predicted = predicted_rows(settings)
    if predicted != len(files):
        raise RuntimeError(f"{predicted} of {len(files)} images predicted")
    return len(files) / elapsed


def worker_memory(settings: Settings, files: list[Path], total: int) -> tuple[float, float, float]:
    """RSS (MB) after the first batch, at image 1,000 (or a fifth of a shorter run) and at
    image ``total`` of predict_images."""
    from pulmoscreen.db import queries, session_factory, upgrade_database
    from pulmoscreen.imaging import read_dicom
    from pulmoscreen.storage import sha256_file
    from worker.inference import predict_images

    url = settings.resolved_database_url()
    upgrade_database(url)
    sessions = session_factory(url)
    metas = [(path, read_dicom(path).meta, sha256_file(path)) for path in files]
    ids: list[int] = []
    with sessions.begin() as session:
        for k in range(total):
            path, meta, digest = metas[k % len(metas)]
            meta = dataclasses.replace(meta, sop_uid=f"{meta.sop_uid}.{k}")
            study = queries.upsert_study(session, meta)
            ids.append(
                queries.add_queued_image(
                    session,
                    study_id=study,
                    meta=meta,
                    source_path=str(path),
                    stored_path=str(path),
                    # the file's own digest: the worker scores a file only if it still
                    # holds what was registered (a made-up one is handed back to ingest)
                    sha256=digest,
                    size_bytes=path.stat().st_size,
                )
            )
    mark = min(1000, max(1, total // 5))
    first = at_mark = 0.0
    for i in range(0, total, settings.batch_size):
        predict_images(settings, ids[i : i + settings.batch_size], worker="bench")
        done = i + settings.batch_size
        if not first:
            first = rss_mb()
        if done >= mark and not at_mark:
            at_mark = rss_mb()
    return first, at_mark, rss_mb()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="end-to-end DICOMs")
    parser.add_argument("--memory-images", type=int, default=5000)
    parser.add_argument("--memory-files", type=int, default=50, help="distinct files cycled")
    parser.add_argument(
        "--memory-side", type=int, default=1024, help="side (px) of the memory run's files"
    )
    parser.add_argument("--batches", default="1,8,16,32,64")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--corpus", type=Path, default=Path("var/bench-corpus"))
    parser.add_argument(
        "--decode-images", type=int, default=50, help="corpus images of the decode comparison"
    )
    parser.add_argument(
        "--j2k-reduced", action="store_true", help="end to end with PULMO_J2K_REDUCED_DECODE on"
    )
    return parser.parse_args()


def served_and_e2e(base: Settings, files: list[Path], repeats: int) -> tuple[float, float]:
    """Model-only img/s of the served model and end-to-end img/s on ``files``, one run."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = base.model_copy(
            update={
                "data_dir": Path(tmp) / "var",
                "database_url": "",
                "drop_folder": Path(tmp) / "inbox",
                "broker_url": "memory://",
                "stable_seconds": 0.0,
                "openvino_cache": Path(tmp) / "ov",
            }
        )
        settings.data_dir.mkdir()
        settings = settings.model_copy(
            update={"model_path": without_content_check(base, Path(tmp))}
        )
        from worker.inference import served_for

        served = served_for(settings)
        size = served.card.preprocess.size
        served_rate = model_only(served.model, size, settings.infer_batch, repeats)
        e2e = end_to_end(settings, files)
        print(
            f"served: {served.model.describe()}, input {size} px, batch {settings.batch_size}, "
            f"model call {settings.infer_batch}, {settings.decode_threads or os.cpu_count()} "
            f"decode threads"
        )
        print(f"model-only (served, batch {settings.infer_batch}): {served_rate:.1f} img/s")
        print(f"end to end ({len(files)} DICOMs, drop folder -> SQL rows): {e2e:.1f} img/s")
    return served_rate, e2e


def print_memory(base: Settings, files: list[Path], images: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = base.model_copy(
            update={
                "data_dir": Path(tmp),
                "database_url": "",
                "openvino_cache": Path(tmp) / "ov",
                "model_path": without_content_check(base, Path(tmp)),
            }
        )
        first, at_1000, end = worker_memory(settings, files, images)
        growth = 100 * (end - at_1000) / at_1000
        print(
            f"worker RSS: {first:.0f} MB after the first batch, {at_1000:.0f} MB at the mark, "
            f"{end:.0f} MB at image {images} ({growth:+.1f} % from image "
            f"{min(1000, max(1, images // 5))})"
        )


def main() -> None:
    args = _arguments()
    import keras
    import openvino

    base = Settings()
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"bf16: {cpu_has_bf16()}; keras {keras.__version__} ({keras.backend.backend()}), "
        f"openvino {openvino.__version__}"
    )
    best = backend_table(base, [int(b) for b in args.batches.split(",")], args.repeats)

    t = time.perf_counter()
    files = realistic_corpus(args.corpus, args.images)
    side = args.memory_side
    small = realistic_corpus(args.corpus / f"side-{side}", args.memory_files, (side, side))
    print(f"corpus: {len(files)} DICOMs in {args.corpus} ({time.perf_counter() - t:.0f}s)")
    from worker.inference import served_preprocess_spec

    size = served_preprocess_spec(base.resolved_model_path()).size
    rates = decode_rates(files[: args.decode_images], size)
    for name, rate in rates.items():
        print(f"decode to model pixels, {name}: {rate:.1f} img/s (1 thread)")
    print(f"ratio decode reduced/full: {rates['reduced'] / rates['full']:.2f}")
    j2k_ratio = rates["reduced, j2k levels"] / rates["full"]
    print(f"ratio decode reduced with j2k levels/full: {j2k_ratio:.2f}")
    base = base.model_copy(update={"j2k_reduced_decode": args.j2k_reduced})
    served_rate, e2e = served_and_e2e(base, files[: args.images], args.repeats)
    print_memory(base, small, args.memory_images)

    keras_best = best["keras f32"]
    ov_best = max(v for k, v in best.items() if k.startswith("openvino"))
    print(f"ratio openvino/keras: {ov_best / keras_best:.2f}")
    print(f"ratio e2e/model-only: {e2e / served_rate:.2f}")


if __name__ == "__main__":
    main()
