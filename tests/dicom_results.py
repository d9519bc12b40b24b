"""Checks of the DICOM results PulmoScreen sends back: dciodvfy (Debian's dicom3tools) and a
Storage SCP that keeps what it receives."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

DCIODVFY = os.environ.get("PULMO_TEST_DCIODVFY", "dciodvfy")


def dciodvfy_errors(path: Path) -> list[str]:
    """The "Error" lines dciodvfy prints for a file (it checks the IOD and its modules)."""
    exe = shutil.which(DCIODVFY)
    if exe is None:
        pytest.fail(f"{DCIODVFY} is missing: run scripts/ensure-dicom3tools.sh (make test does)")
    done = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60, check=False)
    lines = (done.stdout + done.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@dataclass
class StorageSCP:
    """A test Storage SCP on 127.0.0.1: keeps each received dataset in ``received``."""

    port: int
    ae_title: str = "TEST-PACS"
    received: list[Any] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: Any = None

    def start(self) -> StorageSCP:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import ComprehensiveSRStorage, SecondaryCaptureImageStorage

        ae = AE(ae_title=self.ae_title)
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        return self

    def _on_store(self, event: Any) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self.lock:
            self.received.append(dataset)
        return 0x0000

    def save_all(self, folder: Path) -> list[Path]:
        """Every received dataset as a file (for dciodvfy)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        with self.lock:
            for n, dataset in enumerate(self.received):
                path = folder / f"received-{n}.dcm"
                dataset.save_as(path, enforce_file_format=True)
                paths.append(path)
        return paths

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None
