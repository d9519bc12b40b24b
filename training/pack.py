"""A compact copy of labelled folders (grey JPEG at the training size) to carry to a GPU host."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from training.dataset import discover
from training.images import load_display_pixels


def pack_folders(data: Sequence[Path], out: Path, *, size: int = 224, quality: int = 85) -> int:
    """Write ``out/<source>/<label>/<stem>.jpg`` for every image; returns the bytes written.

    File stems are kept, so patient keys (and so the patient-disjoint split) survive.
    """
    total = 0
    for sample in discover(data):
        pixels = np.asarray(load_display_pixels(sample.path), dtype=np.float32)
        if pixels.max() <= 1.0:  # DICOM display pixels are 0..1
            pixels = pixels * 255.0
        small = cv2.resize(pixels, (size, size), interpolation=cv2.INTER_AREA)
        dest = out / sample.source / sample.label / f"{sample.path.stem}.jpg"
        dest.parent.mkdir(parents=True, exist_ok=True)
        ok, encoded = cv2.imencode(
            ".jpg", np.clip(small, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:
            raise ValueError(f"cannot encode {sample.path}")
        dest.write_bytes(encoded.tobytes())
        total += len(encoded)
    return total
