"""The studies a fault scenario drops, and what must become of each file.

Files are built in a staging folder outside the drop folder (the sender copies them in later),
from a few synthetic radiographs made by the one factory (``make_cxr_dicom``) and given new
UIDs and patients. Every file's :class:`Expected` entry names the outcomes it may end with:
``predicted``, reject codes, or :data:`ABSENT` (its sender deleted it before PulmoScreen took it).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import generate_uid

from tests.factories import make_cxr_dicom

PREDICTED = "predicted"
ABSENT = "absent"  # the file was deleted by its sender before ingest took it: no row at all
DEFAULT_SIDE = 256  # the smallest side PulmoScreen accepts: small files, fast runs
TEMPLATES = 6  # distinct phantoms, so the tiny model's outputs (and flags) vary


@dataclass(frozen=True)
class Expected:
    """What must become of one delivered file.

    ``sop_uid``/``study_uid``/``patient_id`` are what its (final) header says; a predicted image
    must be listed under exactly that study and patient. Members of one ``group`` (a file and
    its duplicate, two PatientIDs in one study) may each end either way, but exactly one of the
    group is predicted.
    """

    name: str
    sha256: str
    outcomes: frozenset[str]
    sop_uid: str | None = None
    study_uid: str | None = None
    patient_id: str | None = None
    group: str | None = None


@dataclass
class CorpusFile:
    """The bytes to deliver (``staged``) and what must become of them."""

    staged: Path
    expected: Expected


@dataclass
class Corpus:
    """Files in delivery order. Senders and tamperers update ``expected`` as they act."""

    files: list[CorpusFile] = field(default_factory=list)
    studies: int = 0

    @property
    def expected(self) -> list[Expected]:
        return [f.expected for f in self.files]

    def update(self, index: int, **changes: Any) -> None:
        self.files[index].expected = replace(self.files[index].expected, **changes)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CorpusBuilder:
    """Writes studies into ``staging`` and records each file's expectation."""

    def __init__(self, staging: Path, *, run: str, bits_stored: int = 12) -> None:
        self.staging = staging
        self.run = run
        staging.mkdir(parents=True, exist_ok=True)
        templates = staging / ".templates"
        self._templates = [
            make_cxr_dicom(
                templates,
                seed=70_000 + k,
                rows=DEFAULT_SIDE,
                cols=DEFAULT_SIDE,
                bits_stored=bits_stored,
            ).read_bytes()
            for k in range(TEMPLATES)
        ]
        self.corpus = Corpus()

    def uid(self, *parts: object) -> str:
        return str(generate_uid(entropy_srcs=[self.run, *map(str, parts)]))

    def dataset(self, template: int) -> pydicom.Dataset:
        return pydicom.dcmread(io.BytesIO(self._templates[template % TEMPLATES]))

    def add(self, name: str, data: bytes, outcomes: Iterable[str], **expected: Any) -> CorpusFile:
        """Stage ``data`` under ``name`` (a path relative to the drop folder)."""
        staged = self.staging / f"{len(self.corpus.files):06d}"
        staged.write_bytes(data)
        item = CorpusFile(
            staged,
            Expected(
                name=name, sha256=sha256_bytes(data), outcomes=frozenset(outcomes), **expected
            ),
        )
        self.corpus.files.append(item)
        return item

    def image_bytes(
        self, *, study: int, image: int, patient_id: str, **tags: Any
    ) -> tuple[bytes, dict[str, Any]]:
        """A frontal chest image of study ``study``; returns its bytes and header facts."""
        ds = self.dataset(study * 3 + image)
        ds.SOPInstanceUID = self.uid("sop", study, image)
        ds.StudyInstanceUID = self.uid("study", study)
        ds.SeriesInstanceUID = self.uid("series", study, image)
        ds.PatientID = patient_id
        ds.PatientName = f"Fault^Patient{study}"
        ds.AccessionNumber = f"F{study:07d}"
        ds.ViewPosition = ("PA", "AP")[image % 2]
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        facts = {"sop_uid": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID)}
        return out.getvalue(), facts

    def study(self, index: int, *, images: int = 1, folder: str = "") -> list[CorpusFile]:
        """A valid study of ``images`` frontal images of one patient; all must be predicted."""
        patient = f"FLT{index:06d}"
        out = []
        for k in range(images):
            data, facts = self.image_bytes(study=index, image=k, patient_id=patient)
            name = f"{folder}study_{index:06d}_{k}.dcm"
            out.append(self.add(name, data, {PREDICTED}, patient_id=patient, **facts))
        self.corpus.studies += 1
        return out

    def reject(self, index: int, kind: str, *, folder: str = "") -> CorpusFile:
        """A file PulmoScreen must quarantine with code ``kind`` (or a duplicate pair)."""
        name = f"{folder}bad_{index:06d}_{kind}.dcm"
        if kind == "not_dicom":
            return self.add(name, b"scanned referral letter, not an image\n" * 20, {kind})
        if kind == "duplicate":
            original = next(
                f for f in reversed(self.corpus.files) if PREDICTED in f.expected.outcomes
            )
            group = f"dup-{index}"
            self.corpus.files[self.corpus.files.index(original)].expected = replace(
                original.expected, outcomes=frozenset({PREDICTED, kind}), group=group
            )
            return self.add(
                name,
                original.staged.read_bytes(),
                {PREDICTED, kind},
                sop_uid=original.expected.sop_uid,
                study_uid=original.expected.study_uid,
                patient_id=original.expected.patient_id,
                group=group,
            )
        tags = {"not_frontal": {"ViewPosition": "LL"}, "wrong_modality": {"Modality": "CT"}}
        data, _ = self.image_bytes(
            study=900_000 + index, image=0, patient_id=f"REJ{index:06d}", **tags.get(kind, {})
        )
        if kind == "truncated":
            data = data[: len(data) * 3 // 5]
        return self.add(name, data, {kind})


REJECT_KINDS = ("not_frontal", "wrong_modality", "truncated", "not_dicom", "duplicate")


def standard_corpus(staging: Path, *, studies: int, run: str, bits_stored: int = 12) -> Corpus:
    """``studies`` studies (every 4th with two images, some in sub-folders as PACS exports
    are), and after every 20th study one file to quarantine, the kinds in turn."""
    builder = CorpusBuilder(staging, run=run, bits_stored=bits_stored)
    for index in range(studies):
        folder = f"site{index % 3}/" if index % 5 == 0 else ""
        builder.study(index, images=2 if index % 4 == 0 else 1, folder=folder)
        if index % 20 == 19:
            builder.reject(index, REJECT_KINDS[(index // 20) % len(REJECT_KINDS)])
    return builder.corpus


def iter_valid(corpus: Corpus) -> Iterator[int]:
    """Indexes of files that must be predicted and belong to no group."""
    for i, item in enumerate(corpus.files):
        if item.expected.outcomes == {PREDICTED}:
            yield i
