"""A DICOM sender for the receive tests and benchmark: a pynetdicom SCU, and the receiver as a
real ``pulmoscreen receive`` process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import Verification

RECEIVER_AE = "PULMOSCREEN"
SENDER_AE = "TEST_MODALITY"


def free_port() -> int:
    """A TCP port free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sender(datasets: Iterable[Dataset], *, calling: str = SENDER_AE) -> AE:
    """An SCU proposing one presentation context per (SOP class, transfer syntax) of
    ``datasets``, plus Verification: each instance goes in the syntax it is encoded in."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    pairs = {(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets}
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, syntax)
    return ae


def send(
    port: int, datasets: Sequence[Dataset], *, calling: str = SENDER_AE, called: str = RECEIVER_AE
) -> list[int]:
    """C-STORE ``datasets`` over one association; the status of each (-1: no response)."""
    assoc = sender(datasets, calling=calling).associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError("the association was not established")
    statuses = []
    try:
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        assoc.release()
    return statuses


def echo(port: int, *, calling: str = SENDER_AE, called: str = RECEIVER_AE) -> int | None:
    """The C-ECHO status, or None when no association could be made."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        rsp = assoc.send_c_echo()
        return int(rsp.Status) if "Status" in rsp else None
    finally:
        assoc.release()


def start_receiver(
    folder: Path, port: int, *, env: dict[str, str], log: Path, timeout: float = 60.0
) -> subprocess.Popen[bytes]:
    """``pulmoscreen receive`` into ``folder`` on ``port``, once it answers C-ECHO."""
    command = [sys.executable, "-m", "pulmoscreen.cli", "receive", "--port", str(port)]
    command += ["--folder", str(folder), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receive exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if _answers(port):
            return proc
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"receive did not answer C-ECHO within {timeout:.0f}s")


def _answers(port: int) -> bool:
    try:
        return echo(port) == 0
    except (OSError, RuntimeError):
        return False


def stop(proc: subprocess.Popen[Any]) -> None:
    """Stop a receiver as docker stop would (SIGTERM), killing it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
