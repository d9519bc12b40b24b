"""JPEG 2000 decoding at a reduced resolution, through the OpenJPEG library pydicom already uses.

A JPEG 2000 codestream is a wavelet pyramid: dropping its ``r`` finest resolution levels gives
the image at 1/2**r of each side for a fraction of the work (ITU T.800 B.5), and its lowest band
keeps the scale of the stored values. OpenJPEG offers this (``opj_set_decoded_resolution_factor``);
pylibjpeg-openjpeg, which pydicom decodes with, ships that library but does not pass the option
through its Python API, so this module calls the library it bundles through ``ctypes``.

Only what the reduced decode needs is bound: a memory stream over the codestream, the header,
the factor, the decode and the first component's samples.
"""

from __future__ import annotations

import ctypes
import importlib.util
import struct
import threading
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import JPEG2000, JPEG2000Lossless

_SIZE_T = ctypes.c_size_t
_OFF_T = ctypes.c_int64
_READ = ctypes.CFUNCTYPE(_SIZE_T, ctypes.c_void_p, _SIZE_T, ctypes.c_void_p)
_SKIP = ctypes.CFUNCTYPE(_OFF_T, _OFF_T, ctypes.c_void_p)
_SEEK = ctypes.CFUNCTYPE(ctypes.c_int, _OFF_T, ctypes.c_void_p)
_MESSAGE = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_void_p)
_CODEC_J2K, _CODEC_JP2 = 0, 2
# opj_dparameters_t is about 8.3 kB in OpenJPEG 2.5; only its defaults are used here.
_DPARAMETERS_BYTES = 16_384
_SOC_SIZ = b"\xff\x4f\xff\x51"
# (0002,0010) TransferSyntaxUID of JPEG 2000 Part 1 codestreams
J2K_SYNTAXES = frozenset({JPEG2000Lossless, JPEG2000})
_COD = 0xFF52
_SOT = 0xFF90


class _Component(ctypes.Structure):
    """``opj_image_comp_t`` (openjpeg.h, 2.5)."""

    _fields_ = [  # the ctypes layout
        ("dx", ctypes.c_uint32),
        ("dy", ctypes.c_uint32),
        ("w", ctypes.c_uint32),
        ("h", ctypes.c_uint32),
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("prec", ctypes.c_uint32),
        ("bpp", ctypes.c_uint32),
        ("sgnd", ctypes.c_uint32),
        ("resno_decoded", ctypes.c_uint32),
        ("factor", ctypes.c_uint32),
        ("data", ctypes.POINTER(ctypes.c_int32)),
        ("alpha", ctypes.c_uint16),
    ]


class _Image(ctypes.Structure):
    """``opj_image_t`` (openjpeg.h, 2.5)."""

    _fields_ = [  # the ctypes layout
        ("x0", ctypes.c_uint32),
        ("y0", ctypes.c_uint32),
        ("x1", ctypes.c_uint32),
        ("y1", ctypes.c_uint32),
        ("numcomps", ctypes.c_uint32),
        ("color_space", ctypes.c_int),
        ("comps", ctypes.POINTER(_Component)),
        ("icc_profile_buf", ctypes.c_void_p),
        ("icc_profile_len", ctypes.c_uint32),
    ]


class J2KError(RuntimeError):
    """OpenJPEG could not decode the codestream at the resolution asked for."""


@cache
def _library() -> Any:
    """The OpenJPEG library bundled with pylibjpeg-openjpeg, its decoder functions typed."""
    spec = importlib.util.find_spec("_openjpeg")
    if spec is None or spec.origin is None:
        raise J2KError("pylibjpeg-openjpeg is not installed")
    lib = ctypes.CDLL(spec.origin)
    void_p, opj_bool = ctypes.c_void_p, ctypes.c_int
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "opj_create_decompress": (void_p, [ctypes.c_int]),
        "opj_set_default_decoder_parameters": (None, [void_p]),
        "opj_setup_decoder": (opj_bool, [void_p, void_p]),
        "opj_set_error_handler": (opj_bool, [void_p, _MESSAGE, void_p]),
        "opj_stream_create": (void_p, [_SIZE_T, opj_bool]),
        "opj_stream_set_read_function": (None, [void_p, _READ]),
        "opj_stream_set_skip_function": (None, [void_p, _SKIP]),
        "opj_stream_set_seek_function": (None, [void_p, _SEEK]),
        "opj_stream_set_user_data_length": (None, [void_p, ctypes.c_uint64]),
        "opj_read_header": (opj_bool, [void_p, void_p, ctypes.POINTER(ctypes.POINTER(_Image))]),
        "opj_set_decoded_resolution_factor": (opj_bool, [void_p, ctypes.c_uint32]),
        "opj_decode": (opj_bool, [void_p, void_p, ctypes.POINTER(_Image)]),
        "opj_end_decompress": (opj_bool, [void_p, void_p]),
        "opj_image_destroy": (None, [ctypes.POINTER(_Image)]),
        "opj_stream_destroy": (None, [void_p]),
        "opj_destroy_codec": (None, [void_p]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    return lib


def decomposition_levels(codestream: bytes) -> int | None:
    """Wavelet decomposition levels of the codestream's (0xFF52) COD marker, ITU T.800 A.6.1;
    None when the main header holds none (or is not a bare codestream)."""
    if not codestream.startswith(_SOC_SIZ):
        return None
    position = 2
    while position + 4 <= len(codestream):
        marker, length = struct.unpack(">HH", codestream[position : position + 4])
        if marker == _SOT:
            return None
        if marker == _COD:
            # Lcod (2), Scod (1), SGcod (4), then SPcod's first byte: the number of levels.
            return codestream[position + 9] if position + 9 < len(codestream) else None
        position += 2 + length
    return None


class _MemoryStream:
    """The read, skip and seek callbacks of an ``opj_stream_t`` over bytes in memory."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0
        self.read = _READ(self._read)
        self.skip = _SKIP(self._skip)
        self.seek = _SEEK(self._seek)

    def _read(self, buffer: int, size: int, _user: int) -> int:
        left = len(self.data) - self.position
        if left <= 0:
            return _SIZE_T(-1).value  # (OPJ_SIZE_T)-1: end of stream
        count = min(size, left)
        ctypes.memmove(buffer, self.data[self.position : self.position + count], count)
        self.position += count
        return count

    def _skip(self, offset: int, _user: int) -> int:
        self.position = min(max(self.position + offset, 0), len(self.data))
        return offset

    def _seek(self, offset: int, _user: int) -> int:
        if not 0 <= offset <= len(self.data):
            return 0
        self.position = offset
        return 1


_errors = threading.local()


@_MESSAGE
def _on_error(message: bytes, _user: int) -> None:
    _errors.last = message.decode(errors="replace").strip()


def decode_reduced(codestream: bytes, *, reduce: int) -> tuple[NDArray[np.int32], bool]:
    """The first component of a JPEG 2000 codestream with its ``reduce`` finest resolution
    levels left out: about 1/2**reduce of each side. Returns the samples and whether the
    codestream says they are signed.

    Raises:
        J2KError: the codestream is malformed, or has fewer levels than ``reduce``.
    """
    lib = _library()
    codec = lib.opj_create_decompress(_CODEC_J2K if codestream.startswith(_SOC_SIZ) else _CODEC_JP2)
    source = _MemoryStream(codestream)
    stream = lib.opj_stream_create(1 << 20, 1)
    image = ctypes.POINTER(_Image)()
    _errors.last = ""
    try:
        parameters = ctypes.create_string_buffer(_DPARAMETERS_BYTES)
        lib.opj_set_default_decoder_parameters(parameters)
        lib.opj_set_error_handler(codec, _on_error, None)
        lib.opj_stream_set_read_function(stream, source.read)
        lib.opj_stream_set_skip_function(stream, source.skip)
        lib.opj_stream_set_seek_function(stream, source.seek)
        lib.opj_stream_set_user_data_length(stream, len(codestream))
        ok = (
            lib.opj_setup_decoder(codec, parameters)
            and lib.opj_read_header(stream, codec, ctypes.byref(image))
            and lib.opj_set_decoded_resolution_factor(codec, reduce)
            and lib.opj_decode(codec, stream, image)
            and lib.opj_end_decompress(codec, stream)
        )
        if not ok or not image:
            raise J2KError(f"OpenJPEG cannot decode at 1/{2**reduce}: {_errors.last}")
        component = image.contents.comps[0]
        count = int(component.w) * int(component.h)
        samples = np.ctypeslib.as_array(component.data, shape=(count,))
        pixels = samples.reshape(int(component.h), int(component.w)).copy()
        return pixels, bool(component.sgnd)
    finally:
        if image:
            lib.opj_image_destroy(image)
        lib.opj_stream_destroy(stream)
        lib.opj_destroy_codec(codec)


def reduction_for(side: int, levels: int, *, min_side: int) -> int:
    """How many resolution levels to leave out of a codestream with ``levels`` decomposition
    levels so that ``side`` (ceil(side / 2**r) at level r, ITU T.800 B.5) stays >= ``min_side``."""
    reduce = 0
    while reduce < levels and -(-side // 2 ** (reduce + 1)) >= min_side:
        reduce += 1
    return reduce


def reduced_first_frame(ds: Dataset, *, min_side: int) -> NDArray[np.int32] | None:
    """The first frame of a JPEG 2000 data set at the coarsest resolution whose shorter side is
    still at least ``min_side``.

    Returns:
        The stored values at that resolution, or None when the caller is to decode in full:
        another transfer syntax, colour samples, a JP2-wrapped or single-level codestream, an
        image too small to shrink, a codestream whose sign disagrees with (0028,0103)
        PixelRepresentation, or one OpenJPEG cannot decode this way.
    """
    if ds.file_meta.get("TransferSyntaxUID") not in J2K_SYNTAXES:
        return None
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        return None
    frames = int(ds.get("NumberOfFrames") or 1)
    frame = next(generate_frames(ds.PixelData, number_of_frames=frames))
    side = min(int(ds.Rows), int(ds.Columns))
    reduce = reduction_for(side, decomposition_levels(frame) or 0, min_side=min_side)
    if reduce == 0:
        return None
    try:
        pixels, signed = decode_reduced(frame, reduce=reduce)
    except J2KError:
        return None
    return pixels if signed == (int(ds.get("PixelRepresentation") or 0) == 1) else None
