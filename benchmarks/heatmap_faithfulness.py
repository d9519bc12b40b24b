"""Is the heatmap faithful to the served model? Masking where it is hottest, against masking
a random place of the same area, on real chest radiographs.

For each image: the served model's heatmap for tuberculosis; its hottest quarter (pixels at or
above its 75th percentile) is replaced, and so are ``--random`` random quarters of the feature
map's cells (the same area, at the heatmap's own resolution), each once blurred (Gaussian,
sigma 8 px) and once by the image's mean grey. A faithful heatmap points where the evidence is:
replacing there lowers the TB score (the logit, ``log p`` less the mean ``log p`` of the
labels, as Grad-CAM targets it) more than replacing elsewhere.

Usage::

    python -m benchmarks.heatmap_faithfulness [--data ../shared/data/cxr/shenzhen_128] [--n 120]

Images are read from the folder's ``normal/`` and ``tuberculosis/``; the figures are given for
the TB images (and for all). Needs the real data; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np

from benchmarks.heatmap import served
from pulmoscreen.config import Settings
from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import to_model_input
from pulmoscreen.model.explain import heatmaps_for, predict_with_maps

TB = LABELS.index("tuberculosis")


def tb_logits(runner: Any, batch: np.ndarray) -> np.ndarray:
    log_p = np.log(np.clip(runner.predict_on_batch(batch).astype(np.float64), 1e-30, None))
    return np.asarray(log_p[:, TB] - log_p.mean(axis=1))


def random_quarter(grid: tuple[int, int], size: int, rng: Any) -> np.ndarray:
    """A random quarter of the feature map's cells, as a pixel mask at the input size."""
    order = rng.permutation(grid[0] * grid[1]).reshape(grid).astype(np.float32)
    large = cv2.resize(order, (size, size), interpolation=cv2.INTER_NEAREST)
    return np.asarray(large >= np.quantile(large, 0.75))


def drops(runner: Any, image: np.ndarray, heat: np.ndarray, masks: list[np.ndarray]) -> Any:
    """{fill: (drop when the hottest quarter is replaced, mean drop over ``masks``)}."""
    hot = heat >= np.quantile(heat, 0.75)
    found = {}
    for fill, values in FILLS.items():
        replaced = values(image)
        batch = np.repeat(image[None], len(masks) + 2, axis=0)
        for k, mask in enumerate([hot, *masks], start=1):
            batch[k][mask] = replaced[mask]
        logits = tb_logits(runner, batch)
        found[fill] = (logits[0] - logits[1], float(np.mean(logits[0] - logits[2:])))
    return found


FILLS = {
    "blurred": lambda image: cv2.GaussianBlur(image, (0, 0), 8),
    "mean grey": lambda image: np.full_like(image, image.mean()),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/cxr/shenzhen_128"))
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--random", type=int, default=8)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is missing (the real data of ../shared/data)")
    loaded = served(Settings(), None)
    every = sorted(args.data.rglob("*.png"))
    files = every[:: max(1, len(every) // args.n)]
    rng = np.random.default_rng(0)
    size, kernel = loaded.card.preprocess.size, loaded.model.classifier_kernel()
    rows = []
    for path in files[: args.n]:
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        image = to_model_input(grey, loaded.card.preprocess).astype(np.float32)
        _, _, maps = predict_with_maps(loaded.model, image[None])
        [heat] = heatmaps_for(maps, kernel, [TB], size=size)
        if not heat.any():
            continue  # nothing speaks for TB: no hottest place
        grid = (maps.shape[1], maps.shape[2])
        masks = [random_quarter(grid, size, rng) for _ in range(args.random)]
        rows.append((path.parent.name == "tuberculosis", drops(loaded.model, image, heat, masks)))
    print(f"model {loaded.card.version} on {loaded.model.describe()}, {args.data.name}")
    for fill in FILLS:
        for name, keep in (("TB images", [r for r in rows if r[0]]), ("all images", rows)):
            hot = np.array([r[1][fill][0] for r in keep])
            random = np.array([r[1][fill][1] for r in keep])
            print(
                f"{fill}, {name} (n={len(keep)}): TB logit drop, hottest quarter "
                f"{hot.mean():+.3f}, random quarter {random.mean():+.3f}; "
                f"hottest > random in {100 * np.mean(hot > random):.0f} %"
            )


if __name__ == "__main__":
    main()
