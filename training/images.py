"""Image files -> model inputs, through the serving path's ``to_model_input``; a disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from training.dataset import Sample

log = logging.getLogger(__name__)

DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ""})


def load_display_pixels(path: Path) -> NDArray[np.generic]:
    """Grey display pixels of a PNG/JPEG (as stored) or a DICOM (after every LUT)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path).pixels
    pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if pixels is None:
        raise ValueError(f"cannot read image {path}")
    return pixels


def model_input_for(path: Path, spec: PreprocessSpec) -> NDArray[np.float32]:
    """The exact array the worker would feed the model for this file."""
    return to_model_input(load_display_pixels(path), spec)


def _one_channel(args: tuple[str, PreprocessSpec]) -> NDArray[np.float32]:
    path, spec = args
    # to_model_input repeats one grey plane into every channel: keep one, repeat at batch time
    return model_input_for(Path(path), spec)[:, :, 0]


def cached_inputs(
    samples: Sequence[Sample], spec: PreprocessSpec, cache_dir: Path, *, workers: int = 2
) -> NDArray[np.float32]:
    """``(n, size, size)`` grey model inputs for ``samples``, computed once and kept on disk."""
    key = hashlib.sha256(
        json.dumps([spec.to_dict(), [s.sha256 for s in samples]]).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"inputs_{spec.size}_{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("preprocessing %d images to %s", len(samples), path)
    jobs = [(str(s.path), spec) for s in samples]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        planes = list(pool.map(_one_channel, jobs, chunksize=64))
    array = np.stack(planes).astype(np.float32)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
    return array
