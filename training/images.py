"""Image files -> model inputs, through the serving path's ``to_model_input``; a disk cache."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from pulmoscreen.config import get_settings
from pulmoscreen.imaging import PreprocessSpec, read_dicom, read_model_input, to_model_input
from pulmoscreen.imaging.preprocess import normalize_grey, resize_grey
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


def model_input_for(
    path: Path, spec: PreprocessSpec, *, j2k_reduced: bool | None = None
) -> NDArray[np.float32]:
    """The exact array the worker would feed the model for this file: a DICOM through the
    worker's own read (``read_model_input``: decoded at the model's size; JPEG 2000 reduced
    or in full as ``j2k_reduced`` says, by default as the served ``PULMO_J2K_REDUCED_DECODE``
    says), a PNG/JPEG from its stored pixels."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        if j2k_reduced is None:
            j2k_reduced = get_settings().j2k_reduced_decode
        return read_model_input(path, spec, j2k_reduced=j2k_reduced)
    return to_model_input(load_display_pixels(path), spec)


def _resized_plane(args: tuple[str, int]) -> NDArray[np.float32]:
    path, size = args
    return resize_grey(load_display_pixels(Path(path)), size)


def cached_planes(
    samples: Sequence[Sample], size: int, cache_dir: Path, *, workers: int = 2
) -> NDArray[np.float32]:
    """``(n, size, size)`` resized grey planes, before the served normalisation (augmentation
    works on these), computed once and kept on disk."""
    key = hashlib.sha256(json.dumps([size, [s.sha256 for s in samples]]).encode()).hexdigest()
    path = cache_dir / f"planes_{size}_{key[:16]}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    cache_dir.mkdir(parents=True, exist_ok=True)
    log.info("preprocessing %d images to %s", len(samples), path)
    jobs = [(str(s.path), size) for s in samples]
    # spawned, not forked: a forked child of a process whose Keras backend already started its
    # threads (JAX, a GPU runtime) can deadlock
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        planes = list(pool.map(_resized_plane, jobs, chunksize=64))
    array = np.stack(planes).astype(np.float32) if planes else np.zeros((0, size, size), np.float32)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    tmp.replace(path)
    return array


def normalize_planes(planes: NDArray[np.float32], spec: PreprocessSpec) -> NDArray[np.float32]:
    """The served normalisation of each plane: ``to_model_input``'s grey plane."""
    out = np.empty(planes.shape, dtype=np.float32)
    for i, plane in enumerate(planes):
        out[i] = normalize_grey(np.asarray(plane, dtype=np.float32), spec)
    return out


def cached_inputs(
    samples: Sequence[Sample], spec: PreprocessSpec, cache_dir: Path
) -> NDArray[np.float32]:
    """``(n, size, size)`` grey model inputs for ``samples`` (``to_model_input`` keeps one
    plane per channel: repeat at batch time), from the cached resized planes."""
    return normalize_planes(cached_planes(samples, spec.size, cache_dir), spec)
