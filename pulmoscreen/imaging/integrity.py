"""Cheap checks that the pixel data a header declares is really in the file.

They run where ``dcmread(..., stop_before_pixels=True)`` stopped, at the start of the
(7FE0,0010) PixelData element: they read its element header and, for encapsulated (compressed)
data, the 8-byte header of each fragment and the start of the first frame, seeking over the
rest. So ingest tells a file cut off during copying, or a header that lies about the image size,
from a good file without decoding it: a few reads and seeks, whatever the file's size.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.pixels.utils import get_expected_length

from pulmoscreen.domain import Rejected, RejectReason
from pulmoscreen.imaging.codecs import codestream_size

PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM_TAG = 0xFFFEE000
SEQUENCE_DELIMITER_TAG = 0xFFFEE0DD
# Explicit VRs whose element header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
MAX_FRAGMENTS = 100_000
CODESTREAM_HEAD_BYTES = 65_536


def _truncated(detail: str) -> Rejected:
    return Rejected(RejectReason.TRUNCATED, detail)


def _element_header(fh: BinaryIO, *, implicit: bool, little: bool) -> tuple[int, int, int]:
    """(tag, value length, value offset) of the element at the current position."""
    start = fh.tell()
    head = fh.read(8)
    if not head:
        raise Rejected(RejectReason.NO_PIXEL_DATA, "no (7FE0,0010) PixelData")
    if len(head) < 8:
        raise _truncated("the file ends inside the PixelData element header")
    order = "<" if little else ">"
    group, element = struct.unpack(f"{order}HH", head[:4])
    tag = group << 16 | element
    if implicit:
        return tag, struct.unpack(f"{order}L", head[4:])[0], start + 8
    if head[4:6] in LONG_VRS:
        more = fh.read(4)
        if len(more) < 4:
            raise _truncated("the file ends inside the PixelData element header")
        return tag, struct.unpack(f"{order}L", more)[0], start + 12
    return tag, struct.unpack(f"{order}H", head[6:])[0], start + 8


def check_pixel_data(fh: BinaryIO, ds: Dataset, *, file_size: int) -> int | None:
    """Reject a file whose pixel data is missing, cut off, or not the size its header says.

    Args:
        fh: the open file, positioned at the PixelData element (or at its end when there is none).
        ds: the header read so far, with its original encoding.
        file_size: size of the file in bytes.

    Returns:
        The file offset of native pixel values (complete, as the header describes them), so
        a reader can map them without parsing again; None for encapsulated data or a layout
        this check does not follow.

    Raises:
        Rejected: ``no_pixel_data``, ``truncated`` (the file ends before its pixel data does)
            or ``decode_failed`` (the pixel data cannot hold the image the header describes).
    """
    implicit, little = ds.original_encoding
    tag, length, offset = _element_header(fh, implicit=bool(implicit), little=little is not False)
    if tag != PIXEL_DATA_TAG:
        return None  # float pixel data or an unusual layout: the decoder decides
    if length == UNDEFINED_LENGTH:
        _check_fragments(fh, ds, offset=offset, file_size=file_size)
        return None
    if length == 0:
        raise Rejected(RejectReason.NO_PIXEL_DATA, "(7FE0,0010) PixelData is empty")
    if offset + length > file_size:
        missing = offset + length - file_size
        raise _truncated(f"the file ends {missing} bytes before its pixel data does")
    needed = _native_length(ds)
    if needed is not None and length < needed:
        raise Rejected(
            RejectReason.DECODE_FAILED,
            f"(7FE0,0010) PixelData holds {length} bytes; the image the header describes "
            f"needs {needed}",
        )
    return offset if needed is not None else None


def _native_length(ds: Dataset) -> int | None:
    try:
        return int(get_expected_length(ds, unit="bytes"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return None  # an incomplete Image Pixel module: the decoder will say what is missing


def _check_fragments(fh: BinaryIO, ds: Dataset, *, offset: int, file_size: int) -> None:
    """Walk the items of encapsulated pixel data (always little endian, PS3.5 A.4)."""
    position, items, first_frame = offset, 0, b""
    while True:
        fh.seek(position)
        head = fh.read(8)
        if len(head) < 8:
            raise _truncated("the file ends inside the encapsulated pixel data")
        tag_group, tag_element, length = struct.unpack("<HHL", head)
        tag = tag_group << 16 | tag_element
        if tag == SEQUENCE_DELIMITER_TAG:
            break
        if tag != ITEM_TAG or length == UNDEFINED_LENGTH or items >= MAX_FRAGMENTS:
            raise Rejected(RejectReason.DECODE_FAILED, "malformed encapsulated pixel data")
        if items == 1:  # item 0 is the Basic Offset Table; item 1 starts the first frame
            first_frame = fh.read(min(length, CODESTREAM_HEAD_BYTES))
        position += 8 + length
        if position > file_size:
            raise _truncated("the file ends inside the encapsulated pixel data")
        items += 1
    if items < 2:
        raise Rejected(RejectReason.NO_PIXEL_DATA, "encapsulated pixel data has no fragment")
    _check_codestream(first_frame, ds)


def _check_codestream(first_frame: bytes, ds: Dataset) -> None:
    """A JPEG or JPEG 2000 codestream must be the size the header says, before any decoding.

    A decoder allocates what the codestream declares: a small header over a codestream that
    claims a gigapixel image would otherwise exhaust memory.
    """
    size = codestream_size(first_frame)
    if size is None:
        return
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if size != (rows, cols):
        raise Rejected(
            RejectReason.DECODE_FAILED,
            f"the compressed image is {size[0]}x{size[1]} but the header says {rows}x{cols}",
        )
