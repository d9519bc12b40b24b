"""Augmentation: acquisition jitter on grey planes (NumPy/OpenCV, before the served
normalisation) and geometric Keras preprocessing layers (active in training only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class AugmentSpec:
    """The run's augmentation; 0 (or False) turns a transform off.

    Geometric (Keras layers, on the model input):
        rotation_deg: maximum rotation, degrees either way.
        zoom: maximum zoom in or out, as a fraction.
        shift: maximum width and height shift, as a fraction.
        flip: random horizontal flips.

    Acquisition (``jitter_plane``, on the resized grey plane before ``normalize_grey``), each
    drawn with probability ``acquisition_p``; they blur the cues that tell one scanner,
    processing chain or file format from another (tone curve, sharpness, noise, compression,
    resolution), which a model can otherwise learn in place of the disease:
        gamma: maximum |log gamma|.
        contrast: maximum relative contrast change (and the same brightness shift).
        blur_sigma: maximum Gaussian blur sigma in pixels; a draw may sharpen instead.
        noise: maximum Gaussian noise standard deviation, as a fraction of the range.
        jpeg_quality: lowest quality of a JPEG re-compression (0: never).
        rescale: lowest scale of a down-then-up resize (0: never).

    Source mixing (``mix_with_partners``, on the training batch's planes before the jitter):
        mix_sources: probability that an image is blended with an image of the same label
            from another source (selective mixup within a label, LISA, Yao et al. 2022). The
            label stays; what tells the sources apart is blurred into both, so it stops
            predicting the label where a source holds one class only.
    """

    rotation_deg: float = 10.0
    zoom: float = 0.1
    shift: float = 0.1
    flip: bool = True
    acquisition_p: float = 0.0
    gamma: float = 0.4
    contrast: float = 0.2
    blur_sigma: float = 1.2
    noise: float = 0.03
    jpeg_quality: int = 30
    rescale: float = 0.4
    mix_sources: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentSpec:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def _blur_or_sharpen(x: NDArray[np.float32], sigma: float, rng: np.random.Generator) -> Any:
    blurred = cv2.GaussianBlur(x, (0, 0), sigmaX=float(rng.uniform(0.3, sigma)))
    if rng.random() < 0.5:
        return blurred
    amount = float(rng.uniform(0.3, 1.5))  # unsharp mask
    return x + amount * (x - blurred)


def _jpeg(x: NDArray[np.float32], lowest: int, rng: np.random.Generator) -> Any:
    quality = int(rng.integers(lowest, 96))
    eight_bit = np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", eight_bit, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        return x
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


def _rescale(x: NDArray[np.float32], lowest: float, rng: np.random.Generator) -> Any:
    side = x.shape[0]
    small = max(8, round(side * float(rng.uniform(lowest, 1.0))))
    interp = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_NEAREST)[int(rng.integers(3))]
    down = cv2.resize(x, (small, small), interpolation=interp)
    return cv2.resize(down, (x.shape[1], side), interpolation=cv2.INTER_LINEAR)


def _unit(x: NDArray[np.floating]) -> NDArray[np.float32]:
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    return (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)


def jitter_plane(
    plane: NDArray[np.floating], spec: AugmentSpec, rng: np.random.Generator
) -> NDArray[np.float32]:
    """A randomly re-acquired copy of a resized grey plane, in 0..1 (the served
    ``normalize_grey`` rescales it afterwards, as it does any image)."""
    x = _unit(plane)
    p = spec.acquisition_p
    if spec.rescale and rng.random() < p:
        x = _rescale(x, spec.rescale, rng)
    if spec.gamma and rng.random() < p:
        x = np.power(np.clip(x, 0.0, 1.0), float(np.exp(rng.uniform(-spec.gamma, spec.gamma))))
    if spec.contrast and rng.random() < p:
        c = 1.0 + float(rng.uniform(-spec.contrast, spec.contrast))
        x = (x - 0.5) * c + 0.5 + float(rng.uniform(-spec.contrast, spec.contrast)) / 2
    if spec.blur_sigma and rng.random() < p:
        x = _blur_or_sharpen(x, spec.blur_sigma, rng)
    if spec.noise and rng.random() < p:
        x = x + rng.normal(0.0, float(rng.uniform(0.0, spec.noise)), x.shape).astype(np.float32)
    if spec.jpeg_quality and rng.random() < p:
        x = _jpeg(x, spec.jpeg_quality, rng)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


MIX_BETA = 2.0  # the blend's weight is drawn from Beta(2, 2): mostly near an even mix


def same_label_partners(
    chosen: NDArray[np.int64],
    labels: NDArray[np.int64],
    sources: NDArray[np.int64],
    p: float,
    rng: np.random.Generator,
) -> NDArray[np.int64]:
    """For each index in ``chosen``, drawn with probability ``p``, a random index of the same
    label from another source; -1 where none is drawn or no other source holds that label."""
    partners = np.full(len(chosen), -1, dtype=np.int64)
    for k, i in enumerate(chosen):
        if rng.random() >= p:
            continue
        pool = np.flatnonzero((labels == labels[i]) & (sources != sources[i]))
        if len(pool):
            partners[k] = int(rng.choice(pool))
    return partners


def mix_with_partners(
    planes: NDArray[np.floating],
    pool: NDArray[np.floating],
    partners: NDArray[np.int64],
    rng: np.random.Generator,
) -> NDArray[np.float32]:
    """``planes`` with each one whose partner is not -1 blended with ``pool[partner]``, both
    first scaled to 0..1 (sources store different ranges); the others unchanged."""
    out = np.asarray(planes, dtype=np.float32).copy()
    for k, j in enumerate(partners):
        if j >= 0:
            weight = float(rng.beta(MIX_BETA, MIX_BETA))
            out[k] = weight * _unit(out[k]) + (1.0 - weight) * _unit(pool[j])
    return out


def augmentation_layers(spec: AugmentSpec, *, seed: int) -> list[Any]:
    """The Keras layers for ``spec``'s geometric part (no-ops outside training)."""
    import keras

    layers: list[Any] = []
    if spec.rotation_deg:
        layers.append(
            keras.layers.RandomRotation(spec.rotation_deg / 360.0, fill_mode="constant", seed=seed)
        )
    if spec.zoom:
        layers.append(keras.layers.RandomZoom(spec.zoom, fill_mode="constant", seed=seed + 1))
    if spec.shift:
        layers.append(
            keras.layers.RandomTranslation(
                spec.shift, spec.shift, fill_mode="constant", seed=seed + 2
            )
        )
    if spec.flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed + 3))
    return layers
