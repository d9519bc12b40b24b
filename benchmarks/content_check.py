"""What the content check adds to the worker's model-only time per image.

The served model (OpenVINO or Keras, as the worker chooses) on batches of ``PULMO_INFER_BATCH``
model inputs: the probabilities alone, from the model as it was before the check (one output),
against the probabilities and features from the same forward pass plus the check's scoring
(``predict_with_features`` + ``ContentCheck.score``), interleaved so machine noise hits both.
The model's card must hold a content check (``pulmoscreen content-check fit``).

Usage::

    python benchmarks/content_check.py [--model M] [--repeats 80]

The last line is ``content check overhead: <x> % of model-only time per image``, from the
fastest of the repeats of each (the figure least moved by other work on the machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from pulmoscreen.config import Settings
from pulmoscreen.domain import LABELS
from pulmoscreen.model import load_runner, predict_batch, predict_with_features
from pulmoscreen.model.backends import OpenVinoRunner


def without_features(runner: Any) -> Callable[[np.ndarray], Any]:
    """The runner as it was before the check: the probabilities as the only output (OpenVINO:
    the cached IR compiled as it is; Keras: the model itself)."""
    if isinstance(runner, OpenVinoRunner):
        import openvino as ov

        config = {"INFERENCE_PRECISION_HINT": runner.precision, "PERFORMANCE_HINT": "LATENCY"}
        request = ov.Core().compile_model(str(runner.ir_path), "CPU", config).create_infer_request()
        return lambda batch: request.infer({0: batch})
    return lambda batch: predict_batch(runner, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=80)
    args = parser.parse_args()
    settings = Settings()
    loaded = load_runner(
        args.model or settings.resolved_model_path(),
        labels=LABELS,
        backend=settings.inference_backend,
        precision=settings.inference_precision,
        cache_dir=settings.resolved_openvino_cache(),
    )
    check = loaded.card.content_check
    if check is None:
        raise SystemExit(f"{loaded.card.version}: no content check in the card")
    spec, n = loaded.card.preprocess, settings.infer_batch
    batch = np.random.default_rng(0).uniform(0, 255, (n, spec.size, spec.size, spec.channels))
    batch = batch.astype(np.float32)
    baseline = without_features(loaded.model)
    plain, checked, scoring = [], [], []
    for _ in range(2):  # warm-up
        baseline(batch)
        predict_with_features(loaded.model, batch)
    for i in range(args.repeats):
        # alternate which goes first: the first call after the other model pays its caches
        for which in ("plain", "checked") if i % 2 else ("checked", "plain"):
            t0 = time.perf_counter()
            if which == "plain":
                baseline(batch)
                plain.append((time.perf_counter() - t0) / n)
                continue
            _, features = predict_with_features(loaded.model, batch)
            t1 = time.perf_counter()
            check.score(features)
            t2 = time.perf_counter()
            checked.append((t2 - t0) / n)
            scoring.append((t2 - t1) / n)
    # the fastest of many runs: the figure least moved by other work on the machine
    base, with_check, score_only = min(plain), min(checked), min(scoring)
    print(f"model {loaded.card.version} on {loaded.model.describe()}, batch {n}")
    median_plain, median_checked = statistics.median(plain), statistics.median(checked)
    print(f"model only:     {1000 * base:.2f} ms/image (median {1000 * median_plain:.2f})")
    print(f"model + check:  {1000 * with_check:.2f} ms/image (median {1000 * median_checked:.2f})")
    print(
        f"check scoring alone:   {1000 * score_only:.3f} ms/image ({100 * score_only / base:.1f} %)"
    )
    print(
        f"content check overhead: {100 * (with_check - base) / base:.1f} % "
        "of model-only time per image"
    )


if __name__ == "__main__":
    main()
