"""Read chest radiograph DICOMs: header validation with coded reasons, and display pixels.

Validation rules, in this order (a missing optional attribute is never an error; many real
chest files lack BodyPartExamined or ViewPosition):

- the file must be a regular file, not a symbolic link (``unreadable``), and parse as DICOM:
  with the 128-byte preamble and File Meta, or as a bare data set without them (ACR-NEMA
  style) when it starts with a group 0002 or 0008 element and holds image attributes
  (``not_dicom``); a header that ends early is ``truncated``;
- it must carry SOPInstanceUID and StudyInstanceUID of at most 64 characters (``missing_uid``);
  other texts longer than the standard allows are cut (see ``MAX_CHARS``), never rejected;
- (0008,0060) Modality, when present, must be CR, DX or DR (``wrong_modality``);
- (0018,0015) BodyPartExamined, when present and not empty, must name the chest (``not_chest``);
  without it, a study, series, protocol or procedure description that names another part of
  the body (teeth, skull, hand, knee...) and not the chest is ``not_chest`` too;
- (0018,5101) ViewPosition, when present, must not be lateral or oblique (``not_frontal``);
- (0028,0008) NumberOfFrames above 1 is a cine or stack, not a radiograph (``multiframe``);
- (0028,0010) Rows and (0028,0011) Columns must both be at least ``MIN_SIDE`` (``too_small``)
  and their product at most ``MAX_PIXELS`` (``too_large``: refused before any decoding, since
  such a header usually lies and a decoder would allocate what it says);
- the transfer syntax must have an installed pixel decoder (``unsupported_transfer_syntax``);
- the (7FE0,0010) PixelData element must be there (``no_pixel_data``), the file must not end
  before it does (``truncated``), and it must be as large as Rows x Columns x BitsAllocated
  need, or for compressed data the codestream must be the size the header says
  (``decode_failed``);
- the pixel data must decode (``decode_failed``).

All but the last are checked from the header and a few bytes around the pixel data, so ingest
rejects such files without decoding them (:func:`read_header`).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import re
import stat
import struct
from dataclasses import dataclass
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, cast

import cv2
import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi, get_decoder
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging.integrity import check_pixel_data
from pulmoscreen.imaging.isolation import DecoderError, decode_isolated
from pulmoscreen.imaging.preprocess import PreprocessSpec, shrink_stored, to_model_input

CHEST_MODALITIES = frozenset({"CR", "DX", "DR"})
CHEST_BODY_PART_WORDS = ("CHEST", "THORAX", "THORAC", "TORAX", "LUNG", "PULMO")
# Free-text descriptions read when BodyPartExamined is absent. A description that names one of
# the words of NON_CHEST_ANATOMY (whole words) and no chest word is another examination.
DESCRIPTION_KEYWORDS = (
    "StudyDescription",
    "SeriesDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
    "PerformedProcedureStepDescription",
)
# fmt: off
NON_CHEST_ANATOMY = frozenset({
    "TEETH", "TOOTH", "DENTAL", "DENTITION", "PANORAMIC", "OPG", "CEPHALOMETRIC", "SKULL",
    "HEAD", "FACE", "FACIAL", "SINUS", "SINUSES", "ORBIT", "ORBITS", "MANDIBLE", "JAW", "NASAL",
    "CERVICAL", "LUMBAR", "LUMBOSACRAL", "SACRUM", "COCCYX", "PELVIS", "PELVIC", "HIP", "HIPS",
    "FEMUR", "KNEE", "KNEES", "PATELLA", "TIBIA", "FIBULA", "LEG", "ANKLE", "FOOT", "FEET",
    "TOE", "TOES", "HEEL", "CALCANEUS", "HAND", "HANDS", "FINGER", "FINGERS", "THUMB", "WRIST",
    "FOREARM", "ELBOW", "HUMERUS", "SHOULDER", "ABDOMEN", "ABDOMINAL", "KUB", "BREAST",
    "MAMMOGRAPHY", "MAMMO", "EXTREMITY", "EXTREMITIES",
})
# fmt: on
NON_FRONTAL_VIEWS = frozenset(
    {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "OBL"}
)
MIN_SIDE = 256
# 8192 x 8192: above any radiography detector (a 35 x 43 cm plate read at 50 um is 7000 x 8600).
MAX_PIXELS = 8192 * 8192
# Values longer than the standard allows are cut (PS3.5 Table 6.2-1: UI and LO 64, CS 16);
# sites often overrun AccessionNumber (SH) and BodyPartExamined, so those keep 64. A UID that
# is too long is not cut but rejected: a cut UID would name another instance.
MAX_UID_CHARS = 64
MAX_CHARS = {
    "PatientID": 64,
    "AccessionNumber": 64,
    "Modality": 16,
    "BodyPartExamined": 64,
    "ViewPosition": 16,
}
# Attributes a bare (ACR-NEMA style) data set must hold to count as an image header.
_BARE_IMAGE_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "Rows")
# The only elements :func:`read_header` parses (pydicom seeks over the others' values): those the
# screening rules read, those of the Image Pixel module the pixel data checks need
# (``integrity.check_pixel_data``), and those that make a bare data set an image header.
# (0008,0005) SpecificCharacterSet is always read, so texts decode as before.
HEADER_TAGS: tuple[BaseTag, ...] = tuple(
    Tag(keyword)
    for keyword in (
        *_BARE_IMAGE_KEYWORDS,
        "StudyInstanceUID",
        "PatientID",
        "AccessionNumber",
        "StudyDate",
        *MAX_CHARS,
        *DESCRIPTION_KEYWORDS,
        "NumberOfFrames",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
    )
)
_LUMA = np.array([0.299, 0.587, 0.114])


class FileChangedError(Exception):
    """The file no longer holds the bytes whose sha256 the caller registered."""


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
    #: study/series/protocol/procedure descriptions, upper case (read, never stored or logged)
    descriptions: tuple[str, ...] = ()


@dataclass(frozen=True)
class DicomImage:
    """Display pixels (float32, 0 = black, 1 = white, as a viewer shows them) and their header."""

    pixels: NDArray[np.float32]
    meta: DicomMeta


# C0 controls and DEL, but ESC (0x1B), which ISO 2022 character sets use to switch sets
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")


@cache
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def _value(ds: Dataset, keyword: str) -> Any:
    """The element's value, None when absent; by tag, which skips pydicom's keyword lookup
    (about a fifth of the cost of reading a value)."""
    try:
        return ds[_tag(keyword)].value
    except KeyError:
        return None


def _text(ds: Dataset, keyword: str, *, strict: bool = True) -> str | None:
    """The element's value as stripped text (trailing NUL padding removed).

    Raises:
        Rejected: ``invalid_header`` when ``strict`` and the value holds control characters
            (an embedded NUL, say), which no DICOM text may and a database refuses.
    """
    value = _value(ds, keyword)
    if value is None:
        return None
    if isinstance(value, MultiValue):
        # A backslash splits a text value into several (e.g. PatientID "A\\B"): keep the
        # value as it was written, never the list's repr, or the ID would change.
        value = "\\".join(str(v) for v in value)
    text = str(value).strip(" \x00\t\r\n")
    if _CONTROL.search(text):
        if strict:
            raise Rejected(RejectReason.INVALID_HEADER, f"{keyword} holds control characters")
        text = _CONTROL.sub("", text)
    return text or None


def _study_date(ds: Dataset) -> date | None:
    raw = _text(ds, "StudyDate")
    if raw is None:
        return None
    try:
        return datetime.strptime(raw[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading without following a symbolic link; only regular files.

    A link may point outside the drop folder, and a FIFO or device would block the reader.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Rejected(RejectReason.UNREADABLE, "symbolic links are not followed") from exc
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise Rejected(RejectReason.UNREADABLE, "not a regular file")
    return os.fdopen(fd, "rb")


def _size_of(fh: BinaryIO) -> int:
    """The size of the open file, or of its mapping (:func:`_read_verified`)."""
    if isinstance(fh, mmap.mmap):
        return len(fh)
    return os.fstat(fh.fileno()).st_size


def _read_verified(fh: BinaryIO, sha256: str) -> BinaryIO:
    """The open file, mapped into memory and checked against ``sha256``: the hash reads the
    pages that the decode then reads (one read of the file, no copy of it).

    A mapping rather than the bytes read into a buffer: the buffer's allocation, page faults
    and copy made 2500 px native images slower to hash and decode (27 against 37 img/s) than
    reading the file twice from the page cache; the mapping is as fast. Bytes rewritten in
    place after the hash show through the mapping, as they did through the second read: the
    caller's check of size, mtime and inode after the decode catches them.

    Raises:
        FileChangedError: the file's bytes are not those of ``sha256``.
    """
    size = os.fstat(fh.fileno()).st_size
    mapped = mmap.mmap(fh.fileno(), size, access=mmap.ACCESS_READ) if size else None
    if hashlib.sha256(mapped if mapped is not None else b"").hexdigest() != sha256:
        raise FileChangedError("the file's sha256 is not the one registered")
    # mmap has the file methods that pydicom and these readers use: read, seek, tell.
    return cast(BinaryIO, mapped) if mapped is not None else fh  # an empty file maps nothing


def _looks_like_bare_dataset(head: bytes) -> bool:
    """A data set without preamble starts with a group 0002 (File Meta) or 0008 element."""
    if len(head) < 8:
        return False
    (group_le,) = struct.unpack("<H", head[:2])
    (group_be,) = struct.unpack(">H", head[:2])
    return group_le in (0x0002, 0x0008) or group_be == 0x0008


def configure_pydicom() -> None:
    """Silence pydicom's validation of values read (a process-wide setting).

    Its warnings quote the invalid value (a name, a birth date) into stderr and the log;
    PulmoScreen reads whatever sites send and never logs PHI. Every read here calls this first
    (it is cheap and idempotent), so importing the module changes nothing in pydicom.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE


def _parse(
    fh: BinaryIO, *, stop_before_pixels: bool, tags: tuple[BaseTag, ...] | None = None
) -> Dataset:
    configure_pydicom()
    specific = list(tags) if tags else None
    try:
        return pydicom.dcmread(fh, stop_before_pixels=stop_before_pixels, specific_tags=specific)
    except InvalidDicomError:
        pass
    fh.seek(0)
    if not _looks_like_bare_dataset(fh.read(8)):
        raise Rejected(RejectReason.NOT_DICOM, "no DICOM preamble or file meta")
    fh.seek(0)
    ds = pydicom.dcmread(
        fh, stop_before_pixels=stop_before_pixels, force=True, specific_tags=specific
    )
    if not any(keyword in ds for keyword in _BARE_IMAGE_KEYWORDS):
        raise Rejected(RejectReason.NOT_DICOM, "no DICOM preamble and no image header")
    return ds


def _set_transfer_syntax(ds: Dataset) -> None:
    """A file without (0002,0010) TransferSyntaxUID is decoded as it was encoded when read."""
    if "TransferSyntaxUID" in getattr(ds, "file_meta", {}):
        return
    implicit, little = ds.original_encoding
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
    )
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax


def _read_dataset(
    fh: BinaryIO, *, stop_before_pixels: bool, tags: tuple[BaseTag, ...] | None = None
) -> Dataset:
    """Parse the open file (only the elements ``tags`` names, when given); every way a header
    can be broken becomes a coded rejection."""
    try:
        ds = _parse(fh, stop_before_pixels=stop_before_pixels, tags=tags)
        _set_transfer_syntax(ds)
    except Rejected:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; none may stop ingest
        if _looks_truncated(exc):  # EOFError, or zlib's "incomplete or truncated stream"
            raise Rejected(RejectReason.TRUNCATED, "the file ends inside the header") from exc
        raise Rejected(RejectReason.UNREADABLE, f"header cannot be parsed: {exc!s:.300}") from exc
    return ds


def _uid(ds: Dataset, keyword: str, *, required: bool) -> str:
    uid = _text(ds, keyword) or ""
    if required and not uid:
        raise Rejected(RejectReason.MISSING_UID, f"{keyword} is absent")
    if required and len(uid) > MAX_UID_CHARS:
        raise Rejected(RejectReason.MISSING_UID, f"{keyword} is longer than a UID may be")
    return uid[:MAX_UID_CHARS]


def _code(ds: Dataset, keyword: str) -> str | None:
    """A code string (CS), upper case, cut to its longest allowed length."""
    return (_text(ds, keyword) or "").upper()[: MAX_CHARS[keyword]] or None


def _meta(ds: Dataset, *, require_uids: bool = True) -> DicomMeta:
    sop_uid = _uid(ds, "SOPInstanceUID", required=require_uids)
    study_uid = _uid(ds, "StudyInstanceUID", required=require_uids)
    tsyntax = ds.file_meta.get("TransferSyntaxUID")
    return DicomMeta(
        sop_uid=sop_uid,
        study_uid=study_uid,
        patient_id=(_text(ds, "PatientID") or "")[: MAX_CHARS["PatientID"]] or None,
        accession=(_text(ds, "AccessionNumber") or "")[: MAX_CHARS["AccessionNumber"]] or None,
        study_date=_study_date(ds),
        modality=_code(ds, "Modality"),
        body_part=_code(ds, "BodyPartExamined"),
        view_position=_code(ds, "ViewPosition"),
        rows=int(_value(ds, "Rows") or 0),
        cols=int(_value(ds, "Columns") or 0),
        transfer_syntax=str(tsyntax)[:MAX_UID_CHARS] if tsyntax else None,
        descriptions=tuple(
            text.upper()[:64] for k in DESCRIPTION_KEYWORDS if (text := _text(ds, k, strict=False))
        ),
    )


def _cut_short(ds: Dataset, *, stop: int, file_size: int) -> bool:
    """Whether the file ends inside the header's last element.

    pydicom reads a value the file cuts short without complaint, and seeks past the end of the
    file over a value it skips, so compare where the last element read says it ends, and where
    the read stopped (``stop``), with the file's size.
    """
    if not len(ds):
        return True  # File Meta and nothing after it
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return False  # offsets are in the inflated stream, and zlib reports a cut itself
    if stop > file_size:
        return True
    last = ds.get_item(max(ds.keys()))
    value_tell, length = getattr(last, "value_tell", None), getattr(last, "length", None)
    if value_tell is None or length is None or length == 0xFFFFFFFF:
        return False
    return bool(value_tell + length > file_size)


def _read_header_dataset(fh: BinaryIO, *, tags: tuple[BaseTag, ...] | None) -> Dataset:
    """The header up to the pixel data, ``fh`` left at the (7FE0,0010) PixelData element.

    A data set that holds none of ``tags`` is read again whole, so that a file with nothing
    after its File Meta is still told from one that lacks those elements.
    """
    ds = _read_dataset(fh, stop_before_pixels=True, tags=tags)
    if tags and not len(ds):
        fh.seek(0)
        ds = _read_dataset(fh, stop_before_pixels=True)
    if _cut_short(ds, stop=fh.tell(), file_size=_size_of(fh)):
        raise Rejected(RejectReason.TRUNCATED, "the file ends inside the header")
    return ds


def _header(
    fh: BinaryIO, *, require_uids: bool = True, tags: tuple[BaseTag, ...] | None = None
) -> tuple[Dataset, DicomMeta, int]:
    """The header (pixels not read; only the elements ``tags`` names, when given), its
    metadata and (0028,0008) NumberOfFrames."""
    ds = _read_header_dataset(fh, tags=tags)
    try:
        return ds, _meta(ds, require_uids=require_uids), int(_value(ds, "NumberOfFrames") or 1)
    except Rejected:
        raise
    except Exception as exc:  # a malformed value (Rows, NumberOfFrames, ...)
        raise Rejected(RejectReason.UNREADABLE, f"header cannot be parsed: {exc!s:.300}") from exc


def check_size(meta: DicomMeta, *, frames: int = 1) -> None:
    """Refuse an image larger than ``MAX_PIXELS`` before anything allocates it."""
    if meta.rows * meta.cols * max(frames, 1) > MAX_PIXELS:
        raise Rejected(
            RejectReason.TOO_LARGE,
            f"{meta.rows}x{meta.cols} x {frames} frame(s) is above {MAX_PIXELS} pixels",
        )


def described_anatomy(descriptions: tuple[str, ...]) -> str | None:
    """The first non-chest body part the descriptions name, or None when they name none, or
    name the chest anywhere (a chest examination may mention other parts)."""
    if any(w in text for text in descriptions for w in CHEST_BODY_PART_WORDS):
        return None
    for text in descriptions:
        for word in re.split(r"[^A-Z]+", text):
            if word in NON_CHEST_ANATOMY:
                return word
    return None


def validate_meta(meta: DicomMeta, *, frames: int = 1) -> None:
    """Raise :class:`Rejected` when the header says this is not a screenable chest radiograph."""
    if meta.modality is not None and meta.modality not in CHEST_MODALITIES:
        raise Rejected(RejectReason.WRONG_MODALITY, f"Modality {meta.modality} is not CR/DX/DR")
    if meta.body_part is not None and not any(w in meta.body_part for w in CHEST_BODY_PART_WORDS):
        raise Rejected(RejectReason.NOT_CHEST, f"BodyPartExamined is {meta.body_part}")
    if meta.body_part is None and (part := described_anatomy(meta.descriptions)) is not None:
        raise Rejected(RejectReason.NOT_CHEST, f"no BodyPartExamined; the description names {part}")
    if meta.view_position in NON_FRONTAL_VIEWS:
        raise Rejected(RejectReason.NOT_FRONTAL, f"ViewPosition is {meta.view_position}")
    if frames > 1:
        raise Rejected(RejectReason.MULTIFRAME, f"{frames} frames")
    if min(meta.rows, meta.cols) < MIN_SIDE:
        raise Rejected(RejectReason.TOO_SMALL, f"{meta.rows}x{meta.cols} is below {MIN_SIDE} px")
    check_size(meta, frames=frames)
    check_decodable(meta)


def check_decodable(meta: DicomMeta) -> None:
    """Refuse a transfer syntax that no installed pixel decoder handles."""
    if meta.transfer_syntax is None:
        return
    try:
        available = get_decoder(meta.transfer_syntax).is_available
    except (NotImplementedError, ValueError):
        available = False
    if not available:
        raise Rejected(
            RejectReason.UNSUPPORTED_TRANSFER_SYNTAX,
            f"no decoder installed for transfer syntax {meta.transfer_syntax}",
        )


def _check_integrity(fh: BinaryIO, ds: Dataset) -> int | None:
    """Pixel data present and complete; ``fh`` must be where the header read stopped. Returns
    the file offset of native pixel values (None: encapsulated, deflated or unusual)."""
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return None  # pydicom inflated the data set in memory: file offsets mean nothing here
    try:
        return check_pixel_data(fh, ds, file_size=_size_of(fh))
    except (Rejected, OSError):
        raise
    except Exception as exc:  # a malformed Image Pixel module
        raise Rejected(RejectReason.DECODE_FAILED, f"pixel data layout: {exc!s:.300}") from exc


def read_header(path: Path) -> DicomMeta:
    """Read and validate the header, and check that the pixel data is complete (not decoded).

    Cheap: only the elements of ``HEADER_TAGS`` are parsed (pydicom seeks over the others'
    values), plus a few bytes read and seeks at the pixel data.

    Raises:
        Rejected: the file is not a screenable chest radiograph; ``reason`` says why.
    """
    with _open_regular(path) as fh:
        ds, meta, frames = _header(fh, tags=HEADER_TAGS)
        validate_meta(meta, frames=frames)
        _check_integrity(fh, ds)
    return meta


def _first_number(ds: Dataset, keyword: str) -> float | None:
    """The first value of a numeric attribute (a VM 1-n one holds alternatives), if usable."""
    try:
        value: Any = ds.get(keyword)
        if isinstance(value, MultiValue | list | tuple):
            value = value[0] if len(value) else None
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _apply_window(values: NDArray[np.float64], ds: Dataset) -> NDArray[np.float64] | None:
    """(0028,1050) WindowCenter / (0028,1051) WindowWidth, the first pair, onto 0..1.

    PS3.3 C.11.2.1.2 with the output range [0, 1]. An unusable window (width below 1, or not
    positive for LINEAR_EXACT and SIGMOID) is ignored, as viewers do; None when there is none.
    The curve is pydicom's ``apply_windowing`` (a test proves them equal), written with
    ``np.clip``: pydicom's boolean masks took 1.08 s against 0.16 s here on a 2500 x 2500
    image, and it raises on values sites do send (an unknown function, an empty width).
    """
    center, width = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
    if center is None or width is None:
        return None
    # (0028,1056) VOILUTFunction: LINEAR when absent or unknown.
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "SIGMOID" and width > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width > 1:
        return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return None


def _full_range(values: NDArray[np.float64]) -> NDArray[np.float64]:
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _apply_voi(values: NDArray[np.float64], ds: Dataset) -> NDArray[np.float64]:
    """VOI stage onto 0..1: the first (0028,3010) VOI LUT Sequence item, else the first window,
    else the image's own range (what a viewer shows with no VOI attributes)."""
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        # LUT entries are indexed by whole modality values: round any rescaled fraction.
        looked_up = apply_voi(np.rint(values).astype(np.int64), ds, index=0).astype(np.float64)
        return np.clip(looked_up / float(2**bits - 1), 0.0, 1.0)
    windowed = _apply_window(values, ds)
    return windowed if windowed is not None else _full_range(values)


def to_display(ds: Dataset, stored: NDArray[np.generic]) -> NDArray[np.float32]:
    """Stored values -> display pixels in [0, 1] (Modality LUT, VOI LUT, MONOCHROME1).

    ``stored`` comes from pydicom's decoders, which already mask bits above (0028,0101)
    BitsStored and sign-extend signed data ((0028,0103) PixelRepresentation 1).
    """
    if stored.ndim == 3:  # colour (secondary capture): luminance, no LUT applies
        return _full_range(stored.astype(np.float64) @ _LUMA).astype(np.float32)
    # (0028,1052/1053) Rescale or (0028,3000) Modality LUT Sequence: stored -> modality values.
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    display = _apply_voi(values, ds)
    # (0028,0004) PhotometricInterpretation MONOCHROME1: the minimum value is white.
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        display = 1.0 - display
    return display.astype(np.float32)


def _decode_native(fh: BinaryIO) -> NDArray[Any]:
    """Native (uncompressed or deflated) pixel data: numpy only, so it stays in this process."""
    fh.seek(0)
    ds = _read_dataset(fh, stop_before_pixels=False)
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        reason = RejectReason.TRUNCATED if _looks_truncated(exc) else RejectReason.DECODE_FAILED
        raise Rejected(reason, f"pixel data cannot be decoded: {exc!s:.300}") from exc


def _map_native(fh: BinaryIO, ds: Dataset, offset: int | None) -> NDArray[Any] | None:
    """The first frame's stored values mapped from the file (no read into a buffer, no copy),
    bits above BitsStored dropped; None when pydicom must read them (big endian, deflated,
    samples of other than 8 or 16 bits, colour)."""
    _, little = ds.original_encoding
    bits = int(ds.get("BitsAllocated") or 0)
    if offset is None or little is False or bits not in (8, 16):
        return None
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        return None
    # (0028,0103) PixelRepresentation 1: two's complement samples.
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    dtype, shape = f"<{'i' if signed else 'u'}{bits // 8}", (int(ds.Rows), int(ds.Columns))
    if isinstance(fh, mmap.mmap):  # a view of the mapping that was hashed
        count = shape[0] * shape[1]
        raw = np.frombuffer(fh, dtype=dtype, count=count, offset=offset)
        raw = raw.reshape(shape)
    else:
        raw = np.memmap(fh, dtype=dtype, mode="r", offset=offset, shape=shape)
    # (0028,0101) BitsStored: the bits above may hold overlays; pydicom drops them and
    # sign-extends signed values from BitsStored, and so does this.
    spare = bits - int(ds.get("BitsStored") or bits)
    if spare <= 0:
        return raw
    return (raw << spare) >> spare if signed else raw & ((1 << (bits - spare)) - 1)


def _modality_range(ds: Dataset, stored: NDArray[Any]) -> tuple[float, float]:
    """The lowest and highest modality value of the image ((0028,1052/1053) Rescale)."""
    low, high, _, _ = cv2.minMaxLoc(stored)
    slope = _first_number(ds, "RescaleSlope") or 1.0
    intercept = _first_number(ds, "RescaleIntercept") or 0.0
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _affine_luts(ds: Dataset, stored: NDArray[Any]) -> bool:
    """Whether the Modality LUT, VOI and MONOCHROME1 map every stored value of this image by one
    affine function, so they give the same pixels after an area resize as before it.

    Not so for (0028,3000) ModalityLUTSequence and (0028,3010) VOILUTSequence (tables indexed by
    whole values, which averages are not), a SIGMOID or one-wide window, or a window that clips
    some of the image's values. Nor, in effect, with (0028,0101) BitsStored of 8 or less: the
    averages then fall on exact halves of a grey level, where the rounding before CLAHE breaks
    ties by float noise and CLAHE turns a one-level change into up to 28 (nih_normal_1.dcm).
    """
    if stored.ndim == 3:
        return True  # colour: luminance, then the image's own range, both linear
    if ds.get("ModalityLUTSequence") or ds.get("VOILUTSequence"):
        return False
    if int(ds.get("BitsStored") or 8) <= 8:
        return False
    center, width = _first_number(ds, "WindowCenter"), _first_number(ds, "WindowWidth")
    if center is None or width is None:
        return True  # the image's own range
    function = str(ds.get("VOILUTFunction") or "LINEAR").strip().upper()
    if function == "SIGMOID" and width > 0:
        return False
    low, high = _modality_range(ds, stored)
    if function == "LINEAR_EXACT" and width > 0:
        return center - width / 2 <= low and high <= center + width / 2
    if width > 1:
        half = (width - 1) / 2
        return center - 0.5 - half <= low and high <= center - 0.5 + half
    return width < 1  # below 1 the window is ignored; exactly 1 is a threshold


def display_pixels(
    ds: Dataset, stored: NDArray[Any], *, size: int | None = None
) -> NDArray[np.float32]:
    """:func:`to_display`, or with ``size`` its pixels area-resized to ``size`` x ``size``.

    The resize comes before the LUTs when they are affine over this image (``_affine_luts``):
    the same pixels, from ``size**2`` values instead of millions. Otherwise after them.

    Raises:
        Rejected: ``decode_failed`` for a LUT that cannot be applied.
    """
    try:
        if size is None:
            return to_display(ds, stored)
        if _affine_luts(ds, stored):
            return to_display(ds, shrink_stored(stored, size))
        return shrink_stored(to_display(ds, stored), size)
    except Rejected:
        raise
    except Exception as exc:  # a malformed LUT: the image cannot be shown as intended
        raise Rejected(RejectReason.DECODE_FAILED, f"LUT cannot be applied: {exc!s:.300}") from exc


def _read_pixels(
    path: Path,
    fh: BinaryIO,
    ds: Dataset,
    *,
    offset: int | None,
    frames: int,
    size: int | None,
    j2k_reduced: bool,
) -> NDArray[np.float32]:
    """The first frame's display pixels, at full resolution or at ``size`` x ``size``."""
    if UID(ds.file_meta.TransferSyntaxUID).is_encapsulated:
        j2k_min_side = 2 * size if size is not None and j2k_reduced else None
        # The helper reads the file itself, or is handed the bytes that were hashed.
        source = fh[:] if isinstance(fh, mmap.mmap) else path
        decoded = _decode_encapsulated(source, size=size, j2k_min_side=j2k_min_side)
        if size is not None:
            return _first_frame(decoded, frames=1)  # display pixels, made in the helper
        stored = _first_frame(decoded, frames=frames)
    else:
        mapped = _map_native(fh, ds, offset) if size is not None else None
        stored = mapped if mapped is not None else _first_frame(_decode_native(fh), frames=frames)
    return display_pixels(ds, stored, size=size)


def _decode_encapsulated(
    source: Path | bytes, *, size: int | None = None, j2k_min_side: int | None = None
) -> NDArray[Any]:
    """Compressed pixel data, decoded in the helper process (see ``isolation``)."""
    try:
        return decode_isolated(source, size=size, j2k_min_side=j2k_min_side)
    except DecoderError as exc:
        what = "the decoder crashed" if exc.crashed else "pixel data cannot be decoded"
        # A crash or a hang may be the machine's (the OOM killer, a loaded host), not the file's.
        raise Rejected(
            RejectReason.DECODE_FAILED, f"{what}: {exc!s:.300}", retry=exc.crashed
        ) from exc


def _first_frame(stored: NDArray[Any], *, frames: int) -> NDArray[Any]:
    if frames > 1:
        stored = stored[0]
    if stored.ndim not in (2, 3) or min(stored.shape[:2]) < 1:
        raise Rejected(RejectReason.DECODE_FAILED, f"decoded pixels have shape {stored.shape}")
    return stored


def read_dicom(
    path: Path,
    *,
    validate: bool = True,
    size: int | None = None,
    j2k_reduced: bool = False,
    sha256: str | None = None,
) -> DicomImage:
    """Read, validate and decode a chest radiograph into display pixels.

    Args:
        path: the DICOM file.
        validate: False skips the screening rules (UIDs, modality, body part, view, frames,
            minimum size) to look at any image, e.g. a codec test file; the size limit, the
            decoder and pixel data checks still apply. A multi-frame image gives its first frame.
        size: None gives the pixels at full resolution (previews, training, the reference).
            A side in pixels gives them area-resized to ``size`` x ``size``, the geometry of
            ``to_model_input`` for a ``PreprocessSpec`` of that size. Native data is read
            through a memory map, compressed data decoded and resized in the helper process;
            the stored values are resized before the LUTs whenever that gives the same pixels
            (:func:`display_pixels`).
        j2k_reduced: with ``size``, JPEG 2000 is decoded only down to the coarsest wavelet
            resolution whose shorter side is at least ``2 * size`` (a small share of the full
            decode's work). The wavelet's low band is not an area average: the model input
            moves by more grey levels than the other paths' (docs/performance.md).
        sha256: the hex sha256 the file must have (what ingest registered). The file is then
            mapped into memory once, hashed, and decoded from that mapping (compressed bytes
            are handed to the helper process, which opens nothing), so the file is read once.

    Raises:
        Rejected: invalid header (see module docstring) or pixel data that cannot be decoded.
        FileChangedError: with ``sha256``, the file holds other bytes than those registered.
    """
    with _open_regular(path) as fh:
        source = _read_verified(fh, sha256) if sha256 is not None else fh
        return _decode_open(path, source, validate=validate, size=size, j2k_reduced=j2k_reduced)


def read_model_input(
    path: Path, spec: PreprocessSpec, *, j2k_reduced: bool = False, sha256: str | None = None
) -> NDArray[np.float32]:
    """The model input for a DICOM file, as the worker makes it: :func:`read_dicom` at the
    model's size (``spec.size``), then ``to_model_input``. Calibration, evaluation and the
    content check's fit read DICOMs through it as well, so they see the array serving sees.

    Args:
        path: the DICOM file.
        spec: the model's input recipe (its card's ``PreprocessSpec``).
        j2k_reduced: the served ``PULMO_J2K_REDUCED_DECODE`` (see :func:`read_dicom`).
        sha256: the sha256 the file must have (see :func:`read_dicom`).

    Raises:
        Rejected: the file cannot be screened (see :func:`read_dicom`).
        FileChangedError: with ``sha256``, the file holds other bytes.
    """
    image = read_dicom(path, size=spec.size, j2k_reduced=j2k_reduced, sha256=sha256)
    return to_model_input(image.pixels, spec)


def _decode_open(
    path: Path, fh: BinaryIO, *, validate: bool, size: int | None, j2k_reduced: bool
) -> DicomImage:
    """:func:`read_dicom` on the open file, or on its bytes already read."""
    header, meta, frames = _header(fh, require_uids=validate)
    if validate:
        validate_meta(meta, frames=frames)
    else:
        check_size(meta, frames=frames)
        check_decodable(meta)
    offset = _check_integrity(fh, header)
    pixels = _read_pixels(
        path, fh, header, offset=offset, frames=frames, size=size, j2k_reduced=j2k_reduced
    )
    return DicomImage(pixels=pixels, meta=meta)


def _looks_truncated(exc: Exception) -> bool:
    """pydicom reports missing pixel bytes as a ValueError that says "less than expected"."""
    text = str(exc).lower()
    return isinstance(exc, EOFError) or any(
        words in text for words in ("less than expected", "shorter than", "truncat")
    )
