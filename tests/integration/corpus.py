"""A drop folder of real-world trouble: every encoding that must be read, every reason to reject.

``build_corpus`` writes generated files (each with distinctive fake PHI, so a test can prove no
log carries it), the RG1 and RG3 radiographs from pydicom-data, and records what must become of
each file: ``predicted`` or the reject code.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import uid
from pydicom.encaps import encapsulate, generate_frames

from tests.factories import make_cxr_dicom

PREDICTED = "predicted"
# Encapsulated pixel data holding only an empty Basic Offset Table, then the delimiter.
NO_FRAGMENTS = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"


@dataclass
class Corpus:
    """Files under ``root`` and what must become of each (by path relative to ``root``)."""

    root: Path
    expected: dict[str, str] = field(default_factory=dict)
    phi: set[str] = field(default_factory=set)
    _seed: int = 1000

    def dicom(self, rel: str, outcome: str, *, seed: int | None = None, **kwargs: Any) -> Path:
        """A synthetic chest DICOM at ``rel`` with its own seed and fake PHI."""
        self._seed += 1
        seed = self._seed if seed is None else seed
        phi = {
            "PatientID": f"PHI{seed:05d}ID",
            "PatientName": f"Phiname^Person{seed:05d}",
            "PatientBirthDate": f"19{40 + seed % 50:02d}{1 + seed % 12:02d}{10 + seed % 18:02d}",
        }
        tags = {**phi, **kwargs}
        self.phi.update(str(tags[k]) for k in phi)
        path = self.root / rel
        made = make_cxr_dicom(path.parent, seed=seed, filename=path.name, **tags)
        self.expected[rel] = outcome
        return made

    def raw(self, rel: str, outcome: str, data: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.expected[rel] = outcome
        return path

    def edit(self, path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)

    def copy(self, source: Path, rel: str, outcome: str) -> None:
        """A real file, copied (ingest moves what it reads; the original stays where it is)."""
        dest = self.root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, dest)
        self.expected[rel] = outcome
        ds = pydicom.dcmread(source, stop_before_pixels=True)
        for keyword in ("PatientID", "PatientName", "PatientBirthDate"):
            value = str(ds.get(keyword) or "").strip()
            if len(value) >= 5:  # shorter ones ("XX") occur in any text by chance
                self.phi.add(value)

    @property
    def good(self) -> list[str]:
        return [rel for rel, outcome in self.expected.items() if outcome == PREDICTED]

    @property
    def bad(self) -> dict[str, str]:
        return {rel: outcome for rel, outcome in self.expected.items() if outcome != PREDICTED}


def first_frame(path: Path) -> bytes:
    return next(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=1))


def set_attributes(*, file_meta: bool = False, **values: Any) -> Callable[[pydicom.Dataset], None]:
    """An edit that sets (``None``: deletes) attributes of the data set or of its File Meta."""

    def change(ds: pydicom.Dataset) -> None:
        target = ds.file_meta if file_meta else ds
        for keyword, value in values.items():
            if value is None:
                delattr(target, keyword)
            else:
                setattr(target, keyword, value)

    return change


def set_pixel_bytes(encapsulated: bytes) -> Callable[[pydicom.Dataset], None]:
    return set_attributes(PixelData=encapsulated)


def add_good_files(c: Corpus) -> None:
    """Valid chest radiographs in every encoding and layout a site may send."""
    for name, syntax, bits in [
        ("plain.dcm", None, 12),
        ("implicit.dcm", uid.ImplicitVRLittleEndian, 12),
        ("big endian.dcm", uid.ExplicitVRBigEndian, 12),
        ("deflated.dcm", uid.DeflatedExplicitVRLittleEndian, 12),
        ("rle.dcm", uid.RLELossless, 12),
        ("j2k lossless.dcm", uid.JPEG2000Lossless, 12),
        ("j2k lossy.dcm", uid.JPEG2000, 12),
        ("jpeg-ls.dcm", uid.JPEGLSLossless, 12),
        ("jpeg-ls near.dcm", uid.JPEGLSNearLossless, 12),
        ("jpeg lossless sv1.dcm", uid.JPEGLosslessSV1, 16),
        ("jpeg lossless.dcm", uid.JPEGLossless, 12),
        ("jpeg baseline.dcm", uid.JPEGBaseline8Bit, 8),
        ("jpeg extended 12.dcm", uid.JPEGExtended12Bit, 12),
    ]:
        extra = {"transfer_syntax": syntax} if syntax else {}
        c.dicom(f"encodings/{name}", PREDICTED, bits_stored=bits, **extra)
    c.dicom(
        "ACR-NEMA/IM0001", PREDICTED, transfer_syntax=uid.ImplicitVRLittleEndian, file_meta=False
    )
    c.dicom("PAT^1/STUDY 1/SERIES 1/IM0001", PREDICTED, photometric="MONOCHROME1", bits_stored=16)
    c.dicom("dx/signed.dcm", PREDICTED, modality="DX", signed=True)
    c.dicom(
        "dx/windows.dcm",
        PREDICTED,
        WindowCenter=[1500, 900],
        WindowWidth=[2500, 300],
        VOILUTFunction="SIGMOID",
    )
    c.dicom("Ünïcødé 患者 name.dcm", PREDICTED)
    c.dicom("no optional tags.dcm", PREDICTED, BodyPartExamined="", ViewPosition="")
    c.dicom("long texts.dcm", PREDICTED, PatientID="L" * 80, BodyPartExamined="CHEST " * 12)
    c.dicom("series.dcm/IM1", PREDICTED)  # a folder named like a file


def add_unreadable_headers(c: Corpus, outside: Path) -> None:
    c.raw("notes.dcm", "not_dicom", b"Radiology request form, see attached.\n" * 20)
    c.raw("noise", "not_dicom", np.random.default_rng(0).bytes(20_000))
    c.raw("scan.png.dcm", "not_dicom", b"\x89PNG\r\n\x1a\n" + bytes(5000))
    bare = pydicom.Dataset()
    bare.StudyDescription = "a bare data set with no image in it"
    bare.save_as(c.root / "bare_text.dcm", implicit_vr=True, little_endian=True)
    c.expected["bare_text.dcm"] = "not_dicom"

    c.raw("empty.dcm", "truncated", b"")
    c.raw("P/S/zero", "truncated", b"")
    for rel, syntax in [("cut native.dcm", None), ("cut j2k.dcm", uid.JPEG2000Lossless)]:
        path = c.dicom(rel, "truncated", **({"transfer_syntax": syntax} if syntax else {}))
        path.write_bytes(path.read_bytes()[:-5000])
    path = c.dicom("cut header.dcm", "truncated")
    data = path.read_bytes()
    path.write_bytes(data[: data.index(b"CHEST") + 3])

    target = make_cxr_dicom(outside, seed=1, filename="outside.dcm")
    (c.root / "link.dcm").symlink_to(target)
    (c.root / "linked folder").symlink_to(outside, target_is_directory=True)
    os.mkfifo(c.root / "pipe.dcm")
    c.expected.update({"link.dcm": "unreadable", "linked folder": "unreadable"})
    c.expected["pipe.dcm"] = "unreadable"


def add_rule_breakers(c: Corpus) -> None:
    """Valid DICOM that the screening rules refuse."""
    for rel, reason, tags in [
        ("hand.dcm", "not_chest", {"BodyPartExamined": "HAND"}),
        ("skull.dcm", "not_chest", {"BodyPartExamined": "SKULL"}),
        ("pelvis.dcm", "not_chest", {"BodyPartExamined": "PELVIS"}),
        ("lateral LL.dcm", "not_frontal", {"ViewPosition": "LL"}),
        ("lateral RL.dcm", "not_frontal", {"ViewPosition": "RL"}),
        ("lateral.dcm", "not_frontal", {"ViewPosition": "LATERAL"}),
        ("ct.dcm", "wrong_modality", {"Modality": "CT"}),
        ("mr.dcm", "wrong_modality", {"Modality": "MR"}),
        ("us.dcm", "wrong_modality", {"Modality": "US"}),
        ("cine 2.dcm", "multiframe", {"NumberOfFrames": 2}),
        ("cine 10.dcm", "multiframe", {"NumberOfFrames": 10}),
        ("thumb.dcm", "too_small", {"rows": 128, "cols": 128}),
        ("strip.dcm", "too_small", {"rows": 200, "cols": 600}),
        ("huge header.dcm", "too_large", {"Rows": 65535, "Columns": 65535}),
        ("big header.dcm", "too_large", {"Rows": 10000, "Columns": 10000}),
        ("long uid.dcm", "missing_uid", {"SOPInstanceUID": "1." + "9" * 70}),
    ]:
        c.dicom(rel, reason, **tags)
    c.edit(c.dicom("no sop.dcm", "missing_uid"), set_attributes(SOPInstanceUID=None))
    c.edit(c.dicom("no study.dcm", "missing_uid"), set_attributes(StudyInstanceUID=None))
    c.dicom("dup/a.dcm", PREDICTED, seed=77)
    c.dicom("dup/b.dcm", "duplicate", seed=77)


def add_broken_pixel_data(c: Corpus) -> None:
    """Headers that pass; the pixel data is missing, unsupported, lying or broken."""
    c.edit(c.dicom("no pixels.dcm", "no_pixel_data"), lambda ds: delattr(ds, "PixelData"))
    c.edit(c.dicom("empty pixels.dcm", "no_pixel_data"), set_pixel_bytes(b""))
    path = c.dicom("no fragments.dcm", "no_pixel_data", transfer_syntax=uid.JPEG2000Lossless)
    c.edit(path, set_pixel_bytes(NO_FRAGMENTS))
    for rel, syntax in [
        ("mpeg2.dcm", "1.2.840.10008.1.2.4.100"),
        ("j2k part 2.dcm", "1.2.840.10008.1.2.4.92"),
        ("private syntax.dcm", "1.2.3.4.5.6"),
    ]:
        path = c.dicom(rel, "unsupported_transfer_syntax", transfer_syntax=uid.JPEG2000Lossless)
        c.edit(path, set_attributes(file_meta=True, TransferSyntaxUID=syntax))
    for rel, syntax in [
        ("half j2k.dcm", uid.JPEG2000Lossless),
        ("half jpeg-ls.dcm", uid.JPEGLSLossless),
        ("half rle.dcm", uid.RLELossless),
        ("half jpeg lossless.dcm", uid.JPEGLosslessSV1),
    ]:
        path = c.dicom(rel, "decode_failed", transfer_syntax=syntax)
        frame = first_frame(path)
        c.edit(path, set_pixel_bytes(encapsulate([frame[: len(frame) // 2]])))
    # GDCM aborts its whole process on this JPEG: the decoder helper dies, not the worker.
    path = c.dicom(
        "decoder crash.dcm", "decode_failed", bits_stored=8, transfer_syntax=uid.JPEGBaseline8Bit
    )
    frame = bytearray(first_frame(path))
    frame[2] = 0x8E
    c.edit(path, set_pixel_bytes(encapsulate([bytes(frame)])))
    c.dicom("lying header.dcm", "decode_failed", Rows=3000, Columns=3000)
    path = c.dicom(
        "lying codestream.dcm",
        "decode_failed",
        rows=1024,
        cols=1024,
        transfer_syntax=uid.JPEG2000Lossless,
    )
    c.edit(path, set_attributes(Rows=512, Columns=512))


def add_pydicom_data(c: Corpus) -> bool:
    """RG1 (chest CR) and RG3 (extremity CR) in four encodings each; False if not installed."""
    try:
        from pydicom.data import get_testdata_file

        files = {name: get_testdata_file(f"{name}.dcm") for name in _PYDICOM_DATA}
    except (ImportError, ValueError, OSError):
        return False
    if not all(files.values()):
        return False
    for name, outcome in _PYDICOM_DATA.items():
        c.copy(Path(str(files[name])), f"pydicom-data/{name}.dcm", outcome)
    return True


# RG1_J2KI and RG1_UNCI share a SOPInstanceUID: the first read (J2KI, by name) is screened,
# the second is a duplicate. RG3 is an extremity: not a chest, in any encoding.
_PYDICOM_DATA = {
    "RG1_J2KI": PREDICTED,
    "RG1_J2KR": PREDICTED,
    "RG1_UNCI": "duplicate",
    "RG1_UNCR": PREDICTED,
    "RG3_J2KI": "not_chest",
    "RG3_J2KR": "not_chest",
    "RG3_UNCI": "not_chest",
    "RG3_UNCR": "not_chest",
}


def build_corpus(root: Path, *, outside: Path) -> Corpus:
    """The generated corpus (and pydicom-data's RG1/RG3 when installed) under ``root``."""
    corpus = Corpus(root)
    root.mkdir(parents=True, exist_ok=True)
    add_good_files(corpus)
    add_unreadable_headers(corpus, outside)
    add_rule_breakers(corpus)
    add_broken_pixel_data(corpus)
    add_pydicom_data(corpus)
    return corpus
