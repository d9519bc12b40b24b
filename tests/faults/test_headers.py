"""Hostile headers among ordinary studies: NUL bytes, matplotlib math text, 64 characters of
junk (in PatientIDs and in UIDs), over-long UIDs, and two PatientIDs in one study. Every study
is flagged (the suite's thresholds are 0), so every header text reaches the night's HTML, PDF
and CSV."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.corpus import PREDICTED, Corpus, CorpusBuilder
from tests.faults.scenario import Scenario, studies_per_scenario
from tests.faults.sender import Sender

pytestmark = [pytest.mark.faults]

# 64 characters a PatientID (LO) may hold, chosen to hurt SQL, HTML, CSV, paths and mathtext
JUNK = "'; DROP TABLE images;--%_\"<b>&amp;</b>=cmd|{x}[y]$^~#!?*@`,./()+"
JUNK_BACKSLASH = JUNK[:30] + "\\" + JUNK[31:]
assert len(JUNK) == len(JUNK_BACKSLASH) == 64

KINDS = (
    "nul_inside",
    "nul_padding",
    "mathtext",
    "junk_patient",
    "junk_backslash",
    "junk_uids",
    "uid_too_long",
    "two_patients",
)


def hostile_study(b: CorpusBuilder, index: int, kind: str) -> None:
    """One study of ``kind``; its files and what must become of them."""
    patient = f"FLT{index:06d}"
    name = f"hostile/{kind}_{index:06d}"

    def image(k: int, outcomes: set[str], shown_as: str | None, **tags: object) -> None:
        data, facts = b.image_bytes(study=index, image=k, patient_id=patient, **tags)
        facts["sop_uid"] = str(tags.get("SOPInstanceUID", facts["sop_uid"]))
        facts["study_uid"] = str(tags.get("StudyInstanceUID", facts["study_uid"]))
        group = f"two-{index}" if kind == "two_patients" else None
        b.add(f"{name}_{k}.dcm", data, outcomes, patient_id=shown_as, group=group, **facts)

    if kind == "nul_inside":  # no DICOM text may hold a NUL; a database refuses one
        image(0, {"invalid_header"}, None, PatientID=f"{patient}\0X")
    elif kind == "nul_padding":  # trailing NUL padding is how some writers pad: stripped
        image(0, {PREDICTED}, patient, PatientID=f"{patient}\0")
    elif kind == "mathtext":  # '$' opens matplotlib math text in the report's charts and PDF
        pid = f"$x^{{{index}}}_{{0$^{{"  # no backslash: that one is junk_backslash's
        image(
            0,
            {PREDICTED},
            pid,
            PatientID=pid,
            PatientName="$x_{$^Broken{",
            AccessionNumber="$$",
            StudyDescription="CHEST $x^{2$",
        )
    elif kind == "junk_patient":
        image(0, {PREDICTED}, JUNK, PatientID=JUNK)
    elif kind == "junk_backslash":  # '\' separates values: shown as sent, or refused
        image(0, {PREDICTED, "invalid_header"}, JUNK_BACKSLASH, PatientID=JUNK_BACKSLASH)
    elif kind == "junk_uids":  # 64 characters, no digits-and-dots UID: paths must stay inside
        sop = f"../../../{index:06d}/" + "x" * 64
        study = f"../{index:06d}/../" + "y" * 64  # no '\\': that one is junk_backslash's
        image(
            0,
            {PREDICTED, "missing_uid", "invalid_header"},
            patient,
            SOPInstanceUID=sop[:64],
            StudyInstanceUID=study[:64],
        )
    elif kind == "uid_too_long":
        image(0, {"missing_uid"}, None, SOPInstanceUID="1." + "2" * 63)
    else:  # two PatientIDs in one study: whichever comes second must not join the first
        image(0, {PREDICTED, "patient_mismatch"}, patient)
        image(
            1, {PREDICTED, "patient_mismatch"}, f"OTHER{index:06d}", PatientID=f"OTHER{index:06d}"
        )
    b.corpus.studies += 1


def hostile_corpus(staging: Path, *, studies: int, run: str) -> Corpus:
    """``studies`` studies; every third is hostile, the kinds in turn."""
    builder = CorpusBuilder(staging, run=run)
    for index in range(studies):
        if index % 3 == 0:
            hostile_study(builder, index, KINDS[(index // 3) % len(KINDS)])
        else:
            builder.study(index, images=2 if index % 4 == 1 else 1)
    return builder.corpus


class TestHostileHeaders:
    def test_each_file_once_under_its_own_patient(self, deploy, fault_results, tmp_path):
        pipeline = deploy()
        corpus = hostile_corpus(
            tmp_path / "staging", studies=studies_per_scenario(), run="hostile headers"
        )
        run = Scenario(
            "hostile headers", pipeline, corpus, fault_results, Sender(corpus, pipeline.drop)
        )
        run.assert_held(run.run(lambda run: run.cleared()))
