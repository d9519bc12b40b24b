"""The one preprocessing function shared by training and serving: ``to_model_input``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

EQUALIZATIONS = ("none", "clahe")


@dataclass(frozen=True)
class PreprocessSpec:
    """How display pixels become model input; saved in the model card beside the weights.

    Attributes:
        size: side of the square input, in pixels (the aspect ratio is not kept, as in the
            training sources).
        channels: the grey image is repeated into this many channels (3 for ResNet50).
        clip_percentiles: per-image intensity normalisation: these percentiles map to 0 and 255,
            which removes most of the brightness and contrast differences between sources.
        equalize: ``"clahe"`` adds contrast-limited adaptive histogram equalisation after the
            clip, which evens out the tone curves that scanners and their processing leave;
            ``"none"`` (cards written before the option existed) skips it.
        crop: the fraction of the side trimmed from each edge of the resized plane before the
            clip, the centre scaled back to ``size``: burned-in markers, collimator edges and
            the body outside the chest carry the acquisition more than the lungs do. 0 (cards
            written before the option existed) keeps the whole image.
    """

    size: int = 224
    channels: int = 3
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    equalize: str = "none"
    crop: float = 0.0

    def __post_init__(self) -> None:
        if self.equalize not in EQUALIZATIONS:
            raise ValueError(f"equalize must be one of {EQUALIZATIONS}, got {self.equalize!r}")
        if not 0.0 <= self.crop < 0.25:
            raise ValueError(f"crop must be in [0, 0.25), got {self.crop}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        return cls(
            size=int(data["size"]),
            channels=int(data["channels"]),
            clip_percentiles=(
                float(data["clip_percentiles"][0]),
                float(data["clip_percentiles"][1]),
            ),
            equalize=str(data.get("equalize", "none")),
            crop=float(data.get("crop", 0.0)),
        )


def resize_grey(pixels: NDArray[Any], size: int) -> NDArray[np.float32]:
    """Display pixels (any size, grey or RGB, any numeric dtype) -> ``(size, size)`` float32
    luminance, by area resize; values keep the input's scale."""
    grey = pixels.astype(np.float32, copy=False)
    if grey.ndim == 3:
        grey = np.asarray(cv2.cvtColor(grey, cv2.COLOR_RGB2GRAY), dtype=np.float32)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    return np.asarray(cv2.resize(grey, (size, size), interpolation=cv2.INTER_AREA))


def shrink_stored(values: NDArray[Any], size: int) -> NDArray[np.float32]:
    """Stored (or display) values -> ``(size, size)`` float32 by area resize: the geometry of
    :func:`to_model_input`, with one conversion to float32. A colour image keeps its channels.

    Area averaging is linear, so a rescale (Modality LUT), a window that does not clip, and
    MONOCHROME1's inversion give the same pixels applied after it as before: a reader can
    shrink what it decoded first and apply the LUTs to ``size**2`` values instead of millions
    (``tests/unit/test_decode_parity.py`` measures the difference on real images).
    """
    if values.ndim not in (2, 3) or min(values.shape[:2]) < 1:
        raise ValueError(f"expected a 2-D image, got shape {values.shape}")
    floats = values.astype(np.float32, copy=False)
    return np.asarray(cv2.resize(floats, (size, size), interpolation=cv2.INTER_AREA))


def normalize_grey(small: NDArray[np.float32], spec: PreprocessSpec) -> NDArray[np.float32]:
    """A resized grey plane -> 0..255 float32: ``spec.crop``, percentile clip, then
    ``spec.equalize``."""
    if spec.crop > 0.0:
        small = centre_crop(small, spec.crop)
    lo, hi = np.percentile(small, spec.clip_percentiles)
    # A flat image must stay flat: resizing leaves float noise that a plain hi > lo would stretch.
    if hi - lo > 1e-5 * max(1.0, abs(float(hi))):
        scaled = np.clip((small - lo) / (hi - lo), 0.0, 1.0)
    else:
        scaled = np.zeros_like(small)
    if spec.equalize == "clahe":
        # Tiles of about 1/8 of the side: local contrast without amplifying noise in flat areas.
        clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
        eight_bit = np.round(scaled * 255.0).astype(np.uint8)
        return np.asarray(clahe.apply(eight_bit), dtype=np.float32)
    return (scaled * 255.0).astype(np.float32)


def centre_crop(plane: NDArray[np.float32], fraction: float) -> NDArray[np.float32]:
    """Trim ``fraction`` of each side from every edge, then scale the centre back (bilinear)
    to the plane's shape."""
    rows, cols = plane.shape[:2]
    top, left = round(rows * fraction), round(cols * fraction)
    centre = np.ascontiguousarray(plane[top : rows - top, left : cols - left], dtype=np.float32)
    return np.asarray(cv2.resize(centre, (cols, rows), interpolation=cv2.INTER_LINEAR))


def to_model_input(pixels: NDArray[Any], spec: PreprocessSpec) -> NDArray[np.float32]:
    """Display pixels (any size, grey or RGB, any numeric dtype) -> ``(size, size, channels)``.

    Steps: luminance if colour, area resize to ``spec.size``, optional centre crop, percentile
    clip and scale to 0..255 (float32), optional equalisation, channel repeat. Deterministic:
    equal pixels give equal arrays.
    """
    plane = normalize_grey(resize_grey(pixels, spec.size), spec)
    return np.repeat(plane[:, :, None], spec.channels, axis=2)
