"""DICOM Storage SCP: radiographs sent by C-STORE land in the drop folder, then go through ingest.

A modality or PACS opens an association with ``pulmoscreen receive`` and sends each image by
C-STORE. An accepted instance is written as a DICOM Part 10 file, the File Meta Information
followed by the data set exactly as it came over the network (never decoded and re-encoded), into
the drop folder that ``pulmoscreen ingest`` watches; from there it takes the same path as a copied
file.

Durability: the file is written under a temporary name that ingest skips (a dot prefix and a
``.part`` suffix), flushed to disk (fsync), renamed to its final name, and the folder is flushed
too; only then is Success (0x0000) answered. A receiver killed at any moment has acknowledged
nothing it has not stored, and leaves at most a temporary file that ingest never reads (removed
at the next start once it is old). A failed write answers Refused: Out of Resources (0xA700), so
the sender keeps the instance and tries again later.

What is accepted (PS3.4 Annex B): the radiograph storage SOP classes (CR, and DX for
presentation and for processing) and Secondary Capture in every transfer syntax the worker
decodes, and Verification (C-ECHO). Secondary Capture is taken because digitised films and
anonymised exports of chest radiographs often come as such, with (0008,0060) Modality CR or DX:
ingest screens them from a folder, so the network takes them too, and ingest's header rules
(modality, body part, view) decide as for any file. PulmoScreen's own heatmaps, Secondary
Captures with (0008,0070) Manufacturer ``PulmoScreen``, are refused (0x0122), so a PACS that
routes them back never has them screened. A presentation context for any other SOP class is
refused at association (abstract syntax not supported), and a C-STORE of one answers Refused:
SOP Class not supported (0x0122).
A data set whose (0008,0016) SOPClassUID or (0008,0018) SOPInstanceUID differs from the
request's answers Error: Data Set does not match SOP Class (0xA900).

Nothing from the header reaches the logs or the file name: a file is named by a hash of its
SOP Instance UID.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from threading import Lock
from typing import Any

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from pulmoscreen.imaging.codecs import register_decoders
from pulmoscreen.storage import write_durably

log = logging.getLogger(__name__)

RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
)
ACCEPTED_SOP_CLASSES = (*RADIOGRAPH_SOP_CLASSES, SecondaryCaptureImageStorage)
# (0008,0070) Manufacturer of the results PulmoScreen sends back (pulmoscreen.results_dicom).
RESULTS_MANUFACTURER = "PulmoScreen"
# C-STORE response statuses (PS3.4 B.2.3, PS3.7 C.4.2).
SUCCESS = 0x0000
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
# Ingest skips names with a dot prefix or a .part suffix (ingest.scanner): this has both.
TEMP_PREFIX = ".receiving-"
TEMP_SUFFIX = ".part"
FILE_SUFFIX = ".dcm"
# Largest P-DATA PDU a sender may send (PS3.8 D.1.1). pynetdicom's default, 16 kB, splits a
# 7 MB radiograph into ~450 PDUs that Python reassembles one by one; 1 MiB cuts that work by
# 64 for senders that use the size offered (docs/performance.md).
MAX_PDU_BYTES = 1 << 20
# A temporary file this old at start-up was left by a receiver that died mid-write.
STALE_TEMP_SECONDS = 3600.0


def decodable_transfer_syntaxes() -> list[UID]:
    """Every transfer syntax the worker can decode here, uncompressed ones first.

    These are the syntaxes offered to senders: an image in any other would be received only to
    be quarantined as ``unsupported_transfer_syntax``.
    """
    register_decoders()
    found = []
    for syntax in AllTransferSyntaxes:
        try:
            if get_decoder(syntax).is_available:
                found.append(syntax)
        except NotImplementedError:  # pydicom has no decoder at all for it
            continue
    return sorted(found, key=lambda syntax: syntax.is_compressed)


def instance_file_name(sop_instance_uid: str) -> str:
    """The drop-folder name of an instance: a hash of its SOP Instance UID (no PHI in names).

    The same instance sent twice gets the same name, so a resend replaces the file.
    """
    digest = hashlib.sha256(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return digest[:40] + FILE_SUFFIX


def write_atomically(folder: Path, name: str, chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to ``folder/name`` so that the name never shows a partial file.

    The bytes go to a temporary name that ingest skips, are flushed to disk, and are renamed to
    ``name`` (replacing a file of that name); the folder is flushed last.

    Raises:
        OSError: the file could not be written; the temporary file is removed.
    """
    temp = folder / f"{TEMP_PREFIX}{name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
    return write_durably(folder / name, lambda out: out.writelines(chunks), temp=temp)


def remove_stale_temp_files(folder: Path, *, older_than: float = STALE_TEMP_SECONDS) -> int:
    """Remove temporary files that a receiver killed mid-write left; returns how many.

    Only files older than ``older_than`` seconds go: a younger one may belong to another
    receiver writing into the same folder right now.
    """
    removed = 0
    cutoff = time.time() - older_than
    for temp in folder.glob(f"{TEMP_PREFIX}*{TEMP_SUFFIX}"):
        try:
            if temp.lstat().st_mtime < cutoff:
                temp.unlink()
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def dataset_identity(part10: bytes) -> tuple[str, str, str]:
    """(SOPClassUID, SOPInstanceUID, Manufacturer) of a Part 10 file held in memory.

    Raises:
        InvalidDicomError, ValueError, ...: the data set cannot be parsed.
    """
    keywords = ("SOPClassUID", "SOPInstanceUID", "Manufacturer")
    ds = dcmread(BytesIO(part10), stop_before_pixels=True, specific_tags=list(keywords))
    sop_class, sop_uid, maker = (str(ds.get(keyword) or "") for keyword in keywords)
    return sop_class, sop_uid, maker


@dataclass
class ReceiveCounts:
    """Instances stored and refused since start, by outcome (for the log and the tests)."""

    stored: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    _lock: Lock = field(default_factory=Lock, repr=False)

    def count(self, status: int) -> None:
        with self._lock:
            if status == SUCCESS:
                self.stored += 1
            else:
                self.refused[status] = self.refused.get(status, 0) + 1


class StorageReceiver:
    """Stores C-STORE requests of radiographs into one drop folder; see the module docstring."""

    def __init__(self, drop_folder: Path) -> None:
        self.drop_folder = drop_folder
        self.counts = ReceiveCounts()

    def store(self, *, sop_class_uid: str, sop_instance_uid: str, part10: bytes) -> int:
        """Check one received instance, write it atomically, and return the C-STORE status.

        Args:
            sop_class_uid: the request's (0000,0002) AffectedSOPClassUID.
            sop_instance_uid: the request's (0000,1000) AffectedSOPInstanceUID.
            part10: preamble, File Meta Information and the data set as received.
        """
        status = self._check(sop_class_uid, sop_instance_uid, part10)
        if status == SUCCESS:
            status = self._write(sop_instance_uid, part10)
        self.counts.count(status)
        return status

    def _check(self, sop_class_uid: str, sop_instance_uid: str, part10: bytes) -> int:
        if sop_class_uid not in ACCEPTED_SOP_CLASSES:
            log.warning("refused an instance of a SOP class that is no radiograph")
            return SOP_CLASS_NOT_SUPPORTED
        try:
            found_class, found_uid, maker = dataset_identity(part10)
        except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError) as exc:
            log.warning(
                "refused an instance whose data set cannot be read (%s)", type(exc).__name__
            )
            return CANNOT_UNDERSTAND
        if (found_class, found_uid) != (sop_class_uid, sop_instance_uid):
            log.warning("refused an instance whose data set does not match its request's UIDs")
            return DATASET_MISMATCH
        if maker == RESULTS_MANUFACTURER:
            log.warning("refused a result of PulmoScreen's own sent back to it")
            return SOP_CLASS_NOT_SUPPORTED
        return SUCCESS

    def _write(self, sop_instance_uid: str, part10: bytes) -> int:
        name = instance_file_name(sop_instance_uid)
        try:
            write_atomically(self.drop_folder, name, [part10])
        except OSError as exc:
            # The message may hold the path, which holds no PHI; strerror alone is enough.
            log.error("could not store a received instance: %s", exc.strerror or type(exc))
            return OUT_OF_RESOURCES
        log.info("stored a received instance as %s", name)
        return SUCCESS

    def handle_store(self, event: Any) -> int:
        """pynetdicom's EVT_C_STORE handler: never raises, always answers a status."""
        request = event.request
        try:
            part10 = event.encoded_dataset(include_meta=True)
        except Exception as exc:  # a File Meta that cannot be encoded: nothing to store
            log.warning("refused an instance that cannot be encoded (%s)", type(exc).__name__)
            self.counts.count(CANNOT_UNDERSTAND)
            return CANNOT_UNDERSTAND
        return self.store(
            sop_class_uid=str(request.AffectedSOPClassUID or ""),
            sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
            part10=part10,
        )

    def handle_echo(self, event: Any) -> int:
        """pynetdicom's EVT_C_ECHO handler: Verification succeeds while the service runs."""
        return SUCCESS


def make_application_entity(*, ae_title: str, allowed_callers: Sequence[str]) -> AE:
    """The Storage SCP application entity: the accepted classes in decodable syntaxes, and C-ECHO.

    ``allowed_callers`` empty accepts any Calling AE Title; otherwise an association from
    another caller is rejected (A-ASSOCIATE-RJ, calling AE title not recognised).
    """
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = MAX_PDU_BYTES
    syntaxes = decodable_transfer_syntaxes()
    for sop_class in ACCEPTED_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    ae.add_supported_context(Verification)
    ae.require_calling_aet = list(allowed_callers)
    return ae


def event_handlers(receiver: StorageReceiver) -> list[Any]:
    """The handlers to bind when the server starts."""
    return [(evt.EVT_C_STORE, receiver.handle_store), (evt.EVT_C_ECHO, receiver.handle_echo)]


def start_server(
    drop_folder: Path,
    *,
    host: str,
    port: int,
    ae_title: str,
    allowed_callers: Sequence[str] = (),
) -> tuple[Any, StorageReceiver]:
    """Start the Storage SCP in background threads; returns (server, receiver).

    Stop it with ``server.shutdown()``. The drop folder is created when missing, and
    temporary files left by a receiver that died mid-write are removed once old.
    """
    drop_folder.mkdir(parents=True, exist_ok=True)
    removed = remove_stale_temp_files(drop_folder)
    if removed:
        log.info("removed %d temporary files of unfinished transfers", removed)
    receiver = StorageReceiver(drop_folder)
    ae = make_application_entity(ae_title=ae_title, allowed_callers=allowed_callers)
    server = ae.start_server((host, port), block=False, evt_handlers=event_handlers(receiver))
    return server, receiver
