"""Decode compressed pixel data in a helper process, so a decoder's crash costs one image.

The JPEG, JPEG-LS, JPEG 2000 and RLE decoders are C, C++ and Rust libraries. On malformed data
some do not raise a Python exception: GDCM's JPEG codec calls ``std::terminate`` (the process
aborts), and a Rust panic surfaces as a ``BaseException`` that skips pydicom's fallbacks. So
every encapsulated image is decoded by a long-lived helper process (:func:`serve`, one per
decoding thread): when it dies
or hangs, that image is rejected (``decode_failed``), the helper is restarted for the next one,
and the worker goes on.

The channel is a pair of pipes carrying length-prefixed pickles between this process and its own
helper: a request in (the file path or its bytes, and how far to decode: see
:func:`decode_isolated`), ``(True, stored pixel array)`` or ``(False, error text)`` out. An
image decoded for the model is resized in the helper, so only its small array crosses the
pipe back.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

DECODE_TIMEOUT_S = 120.0
_HEADER = struct.Struct("<Q")
# (path or file bytes, size, j2k_min_side): what the helper is asked to decode, see
# decode_isolated
_Request = tuple[str | bytes, int | None, int | None]


class DecoderError(RuntimeError):
    """The pixel data could not be decoded; ``crashed`` when the decoder took its process down."""

    def __init__(self, message: str, *, crashed: bool = False) -> None:
        super().__init__(message)
        self.crashed = crashed


def _send(stream: IO[bytes], obj: object) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("channel closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _recv(stream: IO[bytes]) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


class _Helper:
    """One helper process per parent process, started on first use, restarted after a death."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner_pid = 0

    def _ensure(self) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is None or proc.poll() is not None or self._owner_pid != os.getpid():
            # After a fork the inherited handle belongs to the parent: start our own helper.
            proc = subprocess.Popen(
                [sys.executable, "-c", f"from {__name__} import serve; serve()"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                close_fds=True,
            )
            self._proc, self._owner_pid = proc, os.getpid()
        return proc

    def stop(self, *, grace_s: float = 0.0) -> None:
        """End the helper: wait up to ``grace_s`` for it to exit by itself, then kill it."""
        proc, self._proc = self._proc, None
        if proc is None or self._owner_pid != os.getpid():
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)

    def decode(self, request: _Request, *, timeout: float) -> NDArray[Any]:
        with self._lock:
            proc = self._ensure()
            try:
                ok, payload = self._ask(proc, request, timeout=timeout)
            except (EOFError, OSError, pickle.UnpicklingError) as exc:
                self.stop(grace_s=5.0)
                raise DecoderError(f"decoder process died ({_how(proc)})", crashed=True) from exc
        if not ok:
            raise DecoderError(str(payload))
        return np.asarray(payload)

    def _ask(self, proc: subprocess.Popen[bytes], request: _Request, *, timeout: float) -> Any:
        stdin, stdout = proc.stdin, proc.stdout
        if stdin is None or stdout is None:
            raise OSError("helper pipes are closed")
        _send(stdin, request)
        ready, _, _ = select.select([stdout], [], [], timeout)
        if not ready:
            self.stop()
            raise DecoderError(f"decoder did not finish within {timeout:.0f}s", crashed=True)
        return _recv(stdout)


def _how(proc: subprocess.Popen[bytes]) -> str:
    code = proc.poll()
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return f"exit status {code}"


class _HelperPool:
    """Up to ``size`` helpers, so decoding threads decode compressed images side by side."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._idle: queue.LifoQueue[_Helper] = queue.LifoQueue()
        self._all: list[_Helper] = []
        self._lock = threading.Lock()

    def _take(self) -> _Helper:
        with self._lock:
            if self._idle.empty() and len(self._all) < self.size:
                helper = _Helper()
                self._all.append(helper)
                return helper
        return self._idle.get()

    def decode(self, request: _Request, *, timeout: float) -> NDArray[Any]:
        helper = self._take()
        try:
            return helper.decode(request, timeout=timeout)
        finally:
            self._idle.put(helper)

    def stop(self) -> None:
        for helper in list(self._all):
            helper.stop()


_pools: dict[int, _HelperPool] = {}


def decoder_pool() -> _HelperPool:
    """This process's helpers, created by its first compressed image: importing this module
    starts nothing, and a forked child never uses its parent's pool."""
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        pool = _pools.setdefault(pid, _HelperPool(os.cpu_count() or 1))
        atexit.register(pool.stop)
    return pool


def stop_decoders() -> None:
    """End this process's decoder helpers (they start again on the next compressed image)."""
    pool = _pools.pop(os.getpid(), None)
    if pool is not None:
        atexit.unregister(pool.stop)
        pool.stop()


def decode_isolated(
    source: Path | bytes,
    *,
    size: int | None = None,
    j2k_min_side: int | None = None,
    timeout: float = DECODE_TIMEOUT_S,
) -> NDArray[Any]:
    """Pixels of a DICOM file, decoded in a helper process.

    Thread-safe: each calling thread gets a helper of its own (up to one per CPU).

    Args:
        source: the DICOM file's path (the helper reads it), or its bytes already read (they
            cross the pipe, so the file is not read again).
        size: None gives every frame's stored values at full resolution; a side gives the
            first frame's display pixels at ``size`` x ``size`` (``dicom.display_pixels``),
            made in the helper.
        j2k_min_side: with ``size``, JPEG 2000 is decoded only down to the coarsest wavelet
            resolution whose shorter side is still at least this (``j2k.reduced_first_frame``).
        timeout: seconds the helper may take.

    Raises:
        DecoderError: no decoder could decode the data, or the decoder crashed or hung.
    """
    request = source if isinstance(source, bytes) else str(source)
    return decoder_pool().decode((request, size, j2k_min_side), timeout=timeout)


def _decode_file(source: str | bytes, size: int | None, j2k_min_side: int | None) -> NDArray[Any]:
    import pydicom

    from pulmoscreen.imaging.codecs import register_decoders
    from pulmoscreen.imaging.dicom import configure_pydicom, display_pixels
    from pulmoscreen.imaging.j2k import reduced_first_frame

    configure_pydicom()
    register_decoders()
    if isinstance(source, bytes):
        ds = pydicom.dcmread(io.BytesIO(source), force=True)
    else:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            ds = pydicom.dcmread(fh, force=True)
    if size is None:
        return np.asarray(ds.pixel_array)
    stored = reduced_first_frame(ds, min_side=j2k_min_side) if j2k_min_side else None
    if stored is None:
        stored = np.asarray(ds.pixel_array)
        if int(ds.get("NumberOfFrames") or 1) > 1:
            stored = stored[0]
    return display_pixels(ds, stored, size=size)


def serve() -> None:
    """The helper's loop: request in, pixels (or the error's text) out, until the pipe closes."""
    channel_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a library that prints must not write into the channel
    channel_in = sys.stdin.buffer
    while True:
        try:
            source, size, j2k_min_side = _recv(channel_in)
        except EOFError:
            return
        try:
            reply: tuple[bool, object] = (True, _decode_file(source, size, j2k_min_side))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust decoder's panic is a BaseException: report it too
            reply = (False, f"{type(exc).__name__}: {exc!s:.500}")
        _send(channel_out, reply)
