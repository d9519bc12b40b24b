"""Augmentation as Keras preprocessing layers (active in training only, any backend)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class AugmentSpec:
    """The seed's augmentation; 0 (or False) turns a transform off.

    Attributes:
        rotation_deg: maximum rotation, degrees either way.
        zoom: maximum zoom in or out, as a fraction.
        shift: maximum width and height shift, as a fraction.
        flip: random horizontal flips.
    """

    rotation_deg: float = 10.0
    zoom: float = 0.1
    shift: float = 0.1
    flip: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def augmentation_layers(spec: AugmentSpec, *, seed: int) -> list[Any]:
    """The Keras layers for ``spec`` (no-ops outside training)."""
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
