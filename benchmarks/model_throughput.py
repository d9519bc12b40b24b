"""Model-only throughput of the screening ResNet50 by batch size and precision, on any backend.

Runs where the model runs: ``KERAS_BACKEND=jax`` on a GPU host, TensorFlow on CPUs. Usage::

    python benchmarks/model_throughput.py [--batch-sizes 1,8,32,64] \\
        [--precisions float32,mixed_bfloat16] [--repeats 5] [--size 224]

Each line is ``<precision> batch <n>: <img/s>``; the last line compares the best of each
precision with float32 in the same run: ``ratio <precision>/float32: <x>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from pulmoscreen.domain import LABELS
from pulmoscreen.model import build_model, predict_batch


def throughput(model, batch: np.ndarray, repeats: int) -> float:  # type: ignore[no-untyped-def]
    predict_batch(model, batch)  # compile / warm up
    start = time.perf_counter()
    for _ in range(repeats):
        predict_batch(model, batch)
    return repeats * len(batch) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default="1,8,32,64")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import keras

    print(
        f"keras {keras.__version__} on {keras.backend.backend()}, {platform.machine()}, "
        f"{os.cpu_count()} cpus"
    )
    rng = np.random.default_rng(0)
    best: dict[str, float] = {}
    for precision in args.precisions.split(","):
        keras.config.set_dtype_policy(precision)
        keras.utils.set_random_seed(0)
        model = build_model(LABELS, weights=None, input_size=args.size)
        for n in (int(b) for b in args.batch_sizes.split(",")):
            batch = (rng.random((n, args.size, args.size, 3)) * 255).astype(np.float32)
            rate = throughput(model, batch, args.repeats)
            best[precision] = max(best.get(precision, 0.0), rate)
            print(f"{precision} batch {n}: {rate:.1f} img/s", flush=True)
    keras.config.set_dtype_policy("float32")
    for precision, rate in best.items():
        if precision != "float32" and "float32" in best:
            print(f"ratio {precision}/float32: {rate / best['float32']:.2f}")


if __name__ == "__main__":
    main()
