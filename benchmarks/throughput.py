"""Throughput: the seed-style loop (one ``model.predict`` per image) vs the worker's batched path.

Both paths read the same DICOM files and use the same preprocessing; they run alternately in
one process so that machine noise hits both. The per-image loop is the seed's: Keras float32,
decode, preprocess and predict one image at a time. The batched path is the worker's: its
inference backend (``PULMO_INFERENCE_BACKEND``, OpenVINO on CPU hosts), a thread pool decoding
ahead of the model, ``PULMO_INFER_BATCH`` images per model call. Usage::

    python benchmarks/throughput.py [--images 64] [--batch-size 16] [--rounds 2]

The last line is ``ratio batched/per-image: <x>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from pulmoscreen.config import Settings
from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import read_dicom, to_model_input
from pulmoscreen.model import load_screening_model, predict_batch
from pulmoscreen.synthetic import make_cxr_dicom
from worker.inference import iter_prepared, served_for


def per_image_loop(model, spec, files: list[Path]) -> float:  # type: ignore[no-untyped-def]
    """The seed's way: decode, preprocess and ``model.predict`` one image at a time."""
    start = time.perf_counter()
    for path in files:
        x = to_model_input(read_dicom(path).pixels, spec)
        model.predict(x[None], verbose=0)
    return len(files) / (time.perf_counter() - start)


def batched_path(runner, spec, files: list[Path], batch_size: int, infer_batch: int) -> float:  # type: ignore[no-untyped-def]
    """The worker's way: tasks of ``batch_size`` images, decoded by a thread pool while the
    model runs on the previous ``infer_batch`` of them."""
    start = time.perf_counter()
    for i in range(0, len(files), batch_size):
        task = dict(enumerate(files[i : i + batch_size]))
        for _, inputs, failures in iter_prepared(task, spec, chunk=infer_batch):
            assert not failures, failures
            predict_batch(runner, inputs)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=Settings().batch_size)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--side", type=int, default=1024, help="DICOM rows and columns")
    args = parser.parse_args()

    import keras

    settings = Settings()
    loaded = load_screening_model(settings.resolved_model_path(), labels=LABELS)
    model, spec = loaded.model, loaded.card.preprocess
    runner = served_for(settings).model
    infer_batch = min(settings.infer_batch, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        files = [
            make_cxr_dicom(Path(tmp), seed=i, rows=args.side, cols=args.side)
            for i in range(args.images)
        ]
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; "
            f"keras {keras.__version__} on {keras.backend.backend()}; model {loaded.card.version}"
        )
        print(
            f"{args.images} DICOMs of {args.side}x{args.side}; per-image: keras float32; "
            f"batched: {runner.describe()}, tasks of {args.batch_size}, model calls of "
            f"{infer_batch}"
        )
        per_image_loop(model, spec, files[:2])  # warm-up: graph tracing, allocator
        batched_path(runner, spec, files[: args.batch_size], args.batch_size, infer_batch)
        loop_rates, batch_rates = [], []
        for r in range(args.rounds):
            loop_rates.append(per_image_loop(model, spec, files))
            batch_rates.append(batched_path(runner, spec, files, args.batch_size, infer_batch))
            print(
                f"round {r + 1}: per-image {loop_rates[-1]:.2f} img/s, "
                f"batched {batch_rates[-1]:.2f} img/s"
            )
    loop, batched = float(np.median(loop_rates)), float(np.median(batch_rates))
    print(f"per-image loop (model.predict per image): {loop:.2f} img/s")
    print(f"batched path (worker, batch {args.batch_size}): {batched:.2f} img/s")
    print(f"ratio batched/per-image: {batched / loop:.2f}")


if __name__ == "__main__":
    main()
