"""What a heatmap costs per flagged image, beside the plain inference per image.

The served model (OpenVINO or Keras, as the worker chooses) on batches of ``PULMO_INFER_BATCH``
model inputs, interleaved so machine noise hits each alike:

* ``plain``: the forward pass as the worker ran it before heatmaps (probabilities and the
  content check's features; OpenVINO: the cached IR with the features as its only extra
  output, Keras: ``predict_with_features``);
* ``with maps``: the same pass with the last feature map as a further output
  (``predict_with_maps``), which the worker now runs for every batch of a model that can flag;
* ``explain``: turning one image's feature map into its heatmap and 8-bit PNG (CAM, ReLU,
  resize, scale, encode), which the worker does for flagged images only.

Usage::

    python benchmarks/heatmap.py [--model M] [--repeats 40]

The last lines are the feature map output's cost on every image and ``heatmap cost per flagged
image: <x> ms = <y> % of the plain inference per image``, from the fastest of the repeats of
each (the figure least moved by other work on the machine).
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
from pulmoscreen.model import load_runner, predict_with_features
from pulmoscreen.model.backends import OpenVinoRunner, _classifier_input
from pulmoscreen.model.explain import heatmap_png, heatmaps_for, predict_with_maps


def plain_pass(runner: Any) -> Callable[[np.ndarray], Any]:
    """The forward pass as it was before heatmaps: probabilities and pooled features."""
    if isinstance(runner, OpenVinoRunner):
        import openvino as ov

        core = ov.Core()
        ov_model = core.read_model(str(runner.ir_path))
        ov_model.add_outputs([_classifier_input(ov_model)])
        config = {"INFERENCE_PRECISION_HINT": runner.precision, "PERFORMANCE_HINT": "LATENCY"}
        request = core.compile_model(ov_model, "CPU", config).create_infer_request()
        return lambda batch: request.infer({0: batch})
    return lambda batch: predict_with_features(runner, batch)


def timed(run: Callable[[], Any], per: int) -> float:
    t0 = time.perf_counter()
    run()
    return (time.perf_counter() - t0) / per


def measure(loaded: Any, batch: np.ndarray, repeats: int) -> dict[str, list[float]]:
    """Seconds per image of each path, ``repeats`` times, alternating their order."""
    n, size = len(batch), loaded.card.preprocess.size
    plain = plain_pass(loaded.model)
    kernel = loaded.model.classifier_kernel()
    maps = predict_with_maps(loaded.model, batch)[2]
    tb = [LABELS.index("tuberculosis")] * n

    def explain() -> None:
        for heat in heatmaps_for(maps, kernel, tb, size=size):
            heatmap_png(heat)

    runs: dict[str, Callable[[], Any]] = {
        "plain": lambda: plain(batch),
        "with maps": lambda: predict_with_maps(loaded.model, batch),
        "explain": explain,
    }
    for run in runs.values():  # warm-up
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(repeats):
        order = list(runs) if i % 2 else list(reversed(runs))
        for name in order:
            times[name].append(timed(runs[name], n))
    return times


def served(settings: Settings, model: Path | None) -> Any:
    """The model as the worker serves it (``model``, else the configured or shipped one)."""
    return load_runner(
        model or settings.resolved_model_path(),
        labels=LABELS,
        backend=settings.inference_backend,
        precision=settings.inference_precision,
        cache_dir=settings.resolved_openvino_cache(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    settings = Settings()
    loaded = served(settings, args.model)
    spec, n = loaded.card.preprocess, settings.infer_batch
    batch = np.random.default_rng(0).uniform(0, 255, (n, spec.size, spec.size, spec.channels))
    times = measure(loaded, batch.astype(np.float32), args.repeats)
    best = {name: min(found) for name, found in times.items()}
    print(f"model {loaded.card.version} on {loaded.model.describe()}, {spec.size} px, batch {n}")
    for name, found in times.items():
        median = statistics.median(found)
        print(f"{name:10s} {1000 * best[name]:8.3f} ms/image (median {1000 * median:.3f})")
    every, flagged = best["with maps"] - best["plain"], best["explain"]
    print(
        f"feature map output, on every image: {1000 * every:+.3f} ms "
        f"({100 * every / best['plain']:+.1f} % of the plain inference; noise when negative)"
    )
    print(
        f"heatmap cost per flagged image: {1000 * flagged:.3f} ms = "
        f"{100 * flagged / best['plain']:.2f} % of the plain inference per image "
        f"({1000 * best['plain']:.2f} ms)"
    )


if __name__ == "__main__":
    main()
