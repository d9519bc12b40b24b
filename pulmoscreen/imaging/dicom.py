"""Read chest radiograph DICOMs: header validation with coded reasons, and display pixels.

Validation rules (a missing optional attribute is never an error; many real chest files lack
BodyPartExamined or ViewPosition):

- the file must parse as DICOM (``not_dicom``) and carry SOPInstanceUID and StudyInstanceUID
  (``missing_uid``);
- (0008,0060) Modality, when present, must be CR, DX or DR (``wrong_modality``);
- (0018,0015) BodyPartExamined, when present and not empty, must name the chest (``not_chest``);
- (0018,5101) ViewPosition, when present, must not be lateral or oblique (``not_frontal``);
- (0028,0008) NumberOfFrames above 1 is a cine or stack, not a radiograph (``multiframe``);
- (0028,0010) Rows and (0028,0011) Columns must both be at least ``MIN_SIDE`` (``too_small``);
- the transfer syntax must have an installed pixel decoder (``unsupported_transfer_syntax``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut, get_decoder

from pulmoscreen.domain import Rejected, RejectReason

log = logging.getLogger(__name__)

CHEST_MODALITIES = frozenset({"CR", "DX", "DR"})
CHEST_BODY_PART_WORDS = ("CHEST", "THORAX", "THORAC", "TORAX", "LUNG", "PULMO")
NON_FRONTAL_VIEWS = frozenset(
    {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "OBL"}
)
MIN_SIDE = 256


@dataclass(frozen=True)
class DicomMeta:
    """What the pipeline keeps from a DICOM header. PatientID is stored, never logged."""

    sop_uid: str
    study_uid: str
    patient_id: str | None
    accession: str | None
    study_date: date | None
    modality: str | None
    body_part: str | None
    view_position: str | None
    rows: int
    cols: int
    transfer_syntax: str | None


@dataclass(frozen=True)
class DicomImage:
    """Display pixels (float32, 0 = black, 1 = white, as a viewer shows them) and their header."""

    pixels: NDArray[np.float32]
    meta: DicomMeta


def _text(ds: Dataset, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _study_date(ds: Dataset) -> date | None:
    raw = _text(ds, "StudyDate")
    if raw is None:
        return None
    try:
        return datetime.strptime(raw[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _dcmread(path: Path, *, stop_before_pixels: bool) -> Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise Rejected(RejectReason.NOT_DICOM, "no DICOM preamble or file meta") from exc
    except EOFError as exc:
        raise Rejected(RejectReason.TRUNCATED, "file ends inside the header") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise Rejected(RejectReason.UNREADABLE, f"header cannot be parsed: {exc}") from exc


def _meta(ds: Dataset) -> DicomMeta:
    sop_uid, study_uid = _text(ds, "SOPInstanceUID"), _text(ds, "StudyInstanceUID")
    if not sop_uid or not study_uid:
        raise Rejected(RejectReason.MISSING_UID, "SOPInstanceUID or StudyInstanceUID is absent")
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    return DicomMeta(
        sop_uid=sop_uid,
        study_uid=study_uid,
        patient_id=_text(ds, "PatientID"),
        accession=_text(ds, "AccessionNumber"),
        study_date=_study_date(ds),
        modality=(_text(ds, "Modality") or "").upper() or None,
        body_part=(_text(ds, "BodyPartExamined") or "").upper() or None,
        view_position=(_text(ds, "ViewPosition") or "").upper() or None,
        rows=int(ds.get("Rows") or 0),
        cols=int(ds.get("Columns") or 0),
        transfer_syntax=str(tsyntax) if tsyntax else None,
    )


def validate_meta(meta: DicomMeta, *, frames: int = 1) -> None:
    """Raise :class:`Rejected` when the header says this is not a screenable chest radiograph."""
    if meta.modality is not None and meta.modality not in CHEST_MODALITIES:
        raise Rejected(RejectReason.WRONG_MODALITY, f"Modality {meta.modality} is not CR/DX/DR")
    if meta.body_part is not None and not any(w in meta.body_part for w in CHEST_BODY_PART_WORDS):
        raise Rejected(RejectReason.NOT_CHEST, f"BodyPartExamined is {meta.body_part}")
    if meta.view_position in NON_FRONTAL_VIEWS:
        raise Rejected(RejectReason.NOT_FRONTAL, f"ViewPosition is {meta.view_position}")
    if frames > 1:
        raise Rejected(RejectReason.MULTIFRAME, f"{frames} frames")
    if min(meta.rows, meta.cols) < MIN_SIDE:
        raise Rejected(RejectReason.TOO_SMALL, f"{meta.rows}x{meta.cols} is below {MIN_SIDE} px")
    if meta.transfer_syntax is not None:
        try:
            available = get_decoder(meta.transfer_syntax).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise Rejected(
                RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
                f"no decoder installed for transfer syntax {meta.transfer_syntax}",
            )


def read_header(path: Path) -> DicomMeta:
    """Read and validate the header only (pixels are not read).

    Raises:
        Rejected: the file is not a screenable chest radiograph; ``reason`` says why.
    """
    ds = _dcmread(path, stop_before_pixels=True)
    meta = _meta(ds)
    validate_meta(meta, frames=int(ds.get("NumberOfFrames") or 1))
    return meta


def _voi_output_range(ds: Dataset, arr: NDArray[np.float64]) -> tuple[float, float]:
    """Range a viewer maps to black..white after the VOI stage."""
    if "VOILUTSequence" in ds:
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        # Mirrors pydicom's apply_windowing: output spans the stored range after rescale.
        if ds.get("PixelRepresentation", 0) == 0:
            y_min, y_max = 0.0, float(2 ** int(ds.BitsStored) - 1)
        else:
            y_min = -float(2 ** (int(ds.BitsStored) - 1))
            y_max = float(2 ** (int(ds.BitsStored) - 1) - 1)
        slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
        return y_min * slope + intercept, y_max * slope + intercept
    return float(arr.min()), float(arr.max())


def to_display(ds: Dataset, stored: NDArray[np.generic]) -> NDArray[np.float32]:
    """Stored values -> display pixels in [0, 1] (Modality LUT, VOI LUT, MONOCHROME1)."""
    arr = stored
    if arr.ndim == 3:  # colour secondary capture: luminance only
        arr = arr.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, index=0).astype(np.float64)
    lo, hi = _voi_output_range(ds, arr)
    span = hi - lo if hi > lo else 1.0
    display = np.clip((arr - lo) / span, 0.0, 1.0).astype(np.float32)
    # (0028,0004) PhotometricInterpretation MONOCHROME1: the minimum value is white.
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        display = 1.0 - display
    return display


def read_dicom(path: Path) -> DicomImage:
    """Read, validate and decode a chest radiograph into display pixels.

    Raises:
        Rejected: invalid header (see module docstring) or pixel data that cannot be decoded.
    """
    ds = _dcmread(path, stop_before_pixels=False)
    meta = _meta(ds)
    validate_meta(meta, frames=int(ds.get("NumberOfFrames") or 1))
    if "PixelData" not in ds:
        raise Rejected(RejectReason.NO_PIXEL_DATA, "no (7FE0,0010) PixelData")
    try:
        stored = ds.pixel_array
    except (ValueError, EOFError) as exc:
        reason = RejectReason.TRUNCATED if _looks_truncated(exc) else RejectReason.DECODE_FAILED
        raise Rejected(reason, f"pixel data cannot be decoded: {exc}") from exc
    except (RuntimeError, NotImplementedError, TypeError, AttributeError, KeyError) as exc:
        raise Rejected(RejectReason.DECODE_FAILED, f"pixel data cannot be decoded: {exc}") from exc
    return DicomImage(pixels=to_display(ds, stored), meta=meta)


def _looks_truncated(exc: Exception) -> bool:
    """pydicom reports missing pixel bytes as a ValueError that says "less than expected"."""
    text = str(exc).lower()
    return isinstance(exc, EOFError) or any(
        words in text for words in ("less than expected", "shorter than", "truncat")
    )
