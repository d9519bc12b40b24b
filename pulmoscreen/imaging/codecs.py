"""Pixel decoders beyond pydicom's defaults: 12-bit JPEG Extended through GDCM.

pydicom decodes every other transfer syntax with its own plugins (pylibjpeg, pylibjpeg-openjpeg,
pylibjpeg-rle, python-gdcm). (0002,0010) JPEG Extended (Process 2 and 4) with 12-bit samples is
the gap: pydicom's GDCM plugin refuses it, Pillow cannot read 12-bit JPEG, and pylibjpeg reads it
only through the GPL ``pylibjpeg-libjpeg``, which PulmoScreen does not use. GDCM itself carries
the 12-bit IJG codec, so this module hands such frames to it as an extra pydicom decoder plugin.

The module follows pydicom's decoder plugin contract (``DECODER_DEPENDENCIES``,
``is_available`` and a frame function); :func:`register_decoders` adds it once per process.
"""

from __future__ import annotations

import struct
import threading
from contextlib import suppress
from typing import TYPE_CHECKING, cast

from pydicom.pixels import get_decoder
from pydicom.uid import JPEGExtended12Bit

if TYPE_CHECKING:
    from pydicom.pixels.decoders.base import DecodeRunner

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # pragma: no cover - python-gdcm is a declared dependency
    HAVE_GDCM = False

PLUGIN_LABEL = "pulmoscreen-gdcm-12bit"
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}
_lock = threading.Lock()


def is_available(uid: str) -> bool:
    """Whether this plugin can decode ``uid`` here (pydicom's plugin contract)."""
    return HAVE_GDCM and uid in DECODER_DEPENDENCIES


def decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One encapsulated 12-bit JPEG Extended frame -> native little-endian 16-bit samples."""
    bits_stored = int(runner.bits_stored)
    if runner.transfer_syntax != JPEGExtended12Bit or not 8 < bits_stored <= 12:
        raise NotImplementedError("only 12-bit JPEG Extended frames are handled here")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((int(runner.columns), int(runner.rows), 1))
    image.SetDataElement(element)
    pi_type = gdcm.PhotometricInterpretation.GetPIType(str(runner.photometric_interpretation))
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(pi_type))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGExtendedProcess2_4))
    samples = int(runner.samples_per_pixel)
    image.SetPixelFormat(
        gdcm.PixelFormat(
            samples, 16, bits_stored, bits_stored - 1, int(runner.pixel_representation)
        )
    )
    # GDCM returns char* as str: re-encode it to the raw bytes.
    frame = cast(str, image.GetBuffer()).encode("utf-8", "surrogateescape")
    expected = int(runner.rows) * int(runner.columns) * samples * 2
    if len(frame) != expected:
        raise ValueError(f"GDCM returned {len(frame)} bytes for a frame of {expected}")
    runner.set_option("bits_allocated", 16)
    return frame


def register_decoders() -> None:
    """Add the 12-bit JPEG Extended plugin to pydicom's decoder, once per process."""
    decoder = get_decoder(JPEGExtended12Bit)
    with _lock, suppress(ValueError):  # ValueError: the label is registered already
        decoder.add_plugin(PLUGIN_LABEL, (__name__, "decode_frame"))


# JPEG start-of-frame markers (ITU T.81 B.1.1.3) and JPEG-LS SOF55 (ITU T.87): the frame header
# that follows gives P (1 byte), Y (2) and X (2).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
_STANDALONE_MARKERS = frozenset(range(0xD0, 0xDA)) | {0x01}
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"


def codestream_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares, from its first bytes.

    Returns None when ``frame`` is not such a codestream (RLE, say) or its header is not in
    the bytes given.
    """
    if frame.startswith(b"\xff\xd8"):
        return _jpeg_size(frame)
    siz = frame.find(_J2K_SOC_SIZ, 0, 256)  # a bare codestream, or inside a JP2 header box
    if siz >= 0 and len(frame) >= siz + 4 + 18:
        # SIZ: Lsiz, Rsiz (2 bytes each), Xsiz, Ysiz, XOsiz, YOsiz (4 bytes each), ITU T.800 A.5.1
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">LLLL", frame[siz + 8 : siz + 24])
        return ysiz - yosiz, xsiz - xosiz
    return None


def _jpeg_size(frame: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(frame):
        if frame[position] != 0xFF:
            return None
        marker = frame[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE_MARKERS:
            position += 2
            continue
        if marker in _SOF_MARKERS:
            if position + 9 > len(frame):
                return None
            rows, cols = struct.unpack(">HH", frame[position + 5 : position + 9])
            return (rows, cols) if rows else None  # 0 rows: a DNL marker gives them later
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + struct.unpack(">H", frame[position + 2 : position + 4])[0]
    return None
