"""Synthetic chest-radiograph-like DICOMs for the demo and the tests (no patient data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    generate_uid,
)

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")


def chest_phantom(rows: int, cols: int, *, seed: int = 0) -> NDArray[np.float64]:
    """A grey 'chest': bright body and mediastinum, darker lungs, a few ribs, noise; 0..1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float64)
    y, x = yy / rows, xx / cols
    img = np.full((rows, cols), 0.05)
    img[((x - 0.5) / 0.45) ** 2 + ((y - 0.55) / 0.5) ** 2 < 1] = 0.7
    for cx in (0.32, 0.68):
        lung = ((x - cx) / (0.15 + 0.02 * rng.random())) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1
        img[lung] = 0.25
    for k in range(6):
        rib = np.abs(y - (0.3 + 0.07 * k) - 0.05 * np.cos(6 * (x - 0.5))) < 0.008
        img[rib & (img < 0.5)] = 0.45
    spot = ((x - 0.3 - 0.1 * rng.random()) ** 2 + (y - 0.35) ** 2) < (0.03 * rng.random()) ** 2
    img[spot] = 0.6
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def make_cxr_dicom(
    directory: Path,
    *,
    rows: int = 512,
    cols: int = 512,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 12,
    modality: str = "CR",
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
    filename: str | None = None,
    **tags: Any,
) -> Path:
    """Write a synthetic frontal chest CR/DX to ``directory`` and return its path.

    UIDs derive from ``seed`` (the same seed gives the same SOPInstanceUID); ``tags`` set or
    override any attribute by keyword (``BodyPartExamined="HAND"``, ``ViewPosition="LL"``).
    """
    display = chest_phantom(rows, cols, seed=seed)
    top = 2**bits_stored - 1
    values = display if photometric == "MONOCHROME2" else 1.0 - display
    pixels = np.round(values * top).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    ds = Dataset()
    sop_class = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid(entropy_srcs=["sop", str(seed)])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["study", str(seed)])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["series", str(seed)])
    ds.PatientID = f"SYN{seed:05d}"
    ds.PatientName = f"Synthetic^Patient{seed}"
    ds.AccessionNumber = f"ACC{seed:06d}"
    ds.StudyDate = "20261125"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA"
    ds.set_pixel_data(
        pixels,
        photometric_interpretation=photometric,
        bits_stored=bits_stored,
        generate_instance_uid=False,
    )
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    syntax = UID(transfer_syntax)
    if syntax.is_compressed:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or f"synthetic_{seed:05d}.dcm")
    ds.save_as(path, enforce_file_format=True)
    return path
