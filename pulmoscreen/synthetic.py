"""Synthetic chest-radiograph-like DICOMs for the demo and the tests (no patient data)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    RLELossless,
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
    signed: bool = False,
    file_meta: bool = True,
    pixels: NDArray[Any] | None = None,
    **tags: Any,
) -> Path:
    """Write a synthetic frontal chest CR/DX to ``directory`` and return its path.

    UIDs derive from ``seed`` (the same seed gives the same SOPInstanceUID); ``tags`` set or
    override any attribute by keyword (``BodyPartExamined="HAND"``, ``ViewPosition="LL"``).
    ``transfer_syntax`` may be any native, deflated, RLE, JPEG, JPEG-LS or JPEG 2000 syntax
    (JPEG Baseline needs ``bits_stored=8``). ``signed`` stores the same image as signed values
    ((0028,0103) PixelRepresentation 1) with a RescaleIntercept that restores them, so it
    displays exactly as the unsigned file. ``file_meta=False`` writes a bare data set without
    preamble and File Meta (ACR-NEMA style; native transfer syntaxes only). ``pixels`` wraps
    a real image instead of the phantom (any grey array, 0 = black; scaled to the full range
    of ``bits_stored``; ``rows`` and ``cols`` are then its shape): with lying tags it makes the
    files that prove the content check.
    """
    if pixels is None:
        display = chest_phantom(rows, cols, seed=seed)
    else:
        grey = np.asarray(pixels, dtype=np.float64)
        span = float(grey.max() - grey.min()) or 1.0
        display = (grey - grey.min()) / span
    stored, rescale = _stored_values(display, photometric, bits_stored, signed=signed)
    tags = {**rescale, **tags}
    ds = _chest_dataset(seed, modality)
    ds.set_pixel_data(
        stored,
        photometric_interpretation=photometric,
        bits_stored=bits_stored,
        generate_instance_uid=False,
    )
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or f"synthetic_{seed:05d}.dcm")
    _encode(ds, UID(transfer_syntax))
    if file_meta:
        ds.save_as(path, enforce_file_format=True)
    else:
        _save_bare(ds, path)
    return path


def _stored_values(
    display: NDArray[np.float64], photometric: str, bits_stored: int, *, signed: bool
) -> tuple[NDArray[Any], dict[str, Any]]:
    """Display values in 0..1 as stored pixels, and the rescale tags that restore them (a
    signed image stores the same picture shifted by half its range)."""
    top = 2**bits_stored - 1
    values = display if photometric == "MONOCHROME2" else 1.0 - display
    stored = np.round(values * top).astype(np.uint8 if bits_stored <= 8 else np.uint16)
    if not signed:
        return stored, {}
    offset = 2 ** (bits_stored - 1)
    shifted = (stored.astype(np.int32) - offset).astype(np.int8 if bits_stored <= 8 else np.int16)
    return shifted, {"RescaleIntercept": offset, "RescaleSlope": 1, "RescaleType": "US"}


def _chest_dataset(seed: int, modality: str) -> Dataset:
    """The header of a frontal chest CR/DX whose UIDs and identifiers derive from ``seed``."""
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
    return ds


def _encode(ds: Dataset, syntax: UID) -> None:
    """Set the transfer syntax, compressing the pixel data when it is an encapsulated one."""
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.compress(syntax, generate_instance_uid=False)
    elif syntax == JPEG2000:
        ds.compress(syntax, generate_instance_uid=False, j2k_cr=[15])
    elif syntax.is_compressed:
        _compress_with_gdcm(ds, syntax)
    else:
        if syntax == ExplicitVRBigEndian and ds.BitsAllocated == 16:
            # PixelData (OW) is written as stored: big endian needs its bytes swapped.
            stored = ds.pixel_array
            ds.PixelData = stored.astype(stored.dtype.newbyteorder(">")).tobytes()
        ds.file_meta.TransferSyntaxUID = syntax


def _compress_with_gdcm(ds: Dataset, syntax: UID) -> None:
    """JPEG Baseline/Extended/Lossless and JPEG-LS, which pydicom cannot encode, via GDCM."""
    import gdcm

    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with tempfile.TemporaryDirectory() as tmp:
        plain, coded = Path(tmp) / "plain.dcm", Path(tmp) / "coded.dcm"
        ds.save_as(plain, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(plain))
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(syntax))))
        if reader.Read():
            change.SetInput(reader.GetImage())
        if not change.Change():
            raise ValueError(f"GDCM cannot encode {ds.BitsStored}-bit data as {syntax.name}")
        writer = gdcm.ImageWriter()
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        writer.SetFileName(str(coded))
        if not writer.Write():
            raise ValueError(f"GDCM could not write {syntax.name}")
        encoded = pydicom.dcmread(coded)
    ds.PixelData = encoded.PixelData
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    if syntax in (JPEGBaseline8Bit, JPEGExtended12Bit):
        ds.LossyImageCompression = "01"


def _save_bare(ds: Dataset, path: Path) -> None:
    """No preamble, no 'DICM', no File Meta: just the data set (ACR-NEMA style)."""
    syntax = UID(ds.file_meta.TransferSyntaxUID)
    if syntax.is_compressed:
        raise ValueError("a bare data set cannot carry compressed pixel data")
    ds.preamble = None
    ds.file_meta = FileMetaDataset()
    ds.save_as(path, implicit_vr=syntax.is_implicit_VR, little_endian=syntax.is_little_endian)
