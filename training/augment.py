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


def jitter_plane(
    plane: NDArray[np.floating], spec: AugmentSpec, rng: np.random.Generator
) -> NDArray[np.float32]:
    """A randomly re-acquired copy of a resized grey plane, in 0..1 (the served
    ``normalize_grey`` rescales it afterwards, as it does any image)."""
    x = np.asarray(plane, dtype=np.float32)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
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
