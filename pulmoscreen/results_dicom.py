"""Screening results as DICOM objects that file into the patient's own study.

Two objects per screened image, each in a new series of the source study:

* a Comprehensive SR: the three probabilities, the abnormality score, the flag with the
  thresholds that decided it, the model version and the statement that PulmoScreen is a
  computer-aided second reader, not a diagnosis; it references the source study, series and
  SOP instance;
* for a flagged image, a Secondary Capture: the heatmap over the radiograph, with the score and
  the same statement burned into the pixels, so any PACS viewer shows them.

Patient and study modules are copied from the source header, so a PACS lists both objects in
the patient's study, beside the radiograph. UIDs are derived from the source SOPInstanceUID and
the model version: building the same result twice gives the same UIDs, and a PACS that receives
it again replaces the earlier copy instead of showing two.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom import Dataset, config, dcmread
from pydicom.sr.coding import Code
from pydicom.valuerep import validate_value

from pulmoscreen.imaging.dicom import configure_pydicom
from pulmoscreen.storage import write_durably

MANUFACTURER = "PulmoScreen"
ALGORITHM_NAME = "PulmoScreen chest X-ray screening"
SECOND_READER_STATEMENT = (
    "Computer-aided second reader, not a diagnosis: every flag is for a clinician to review."
)
SC_BANNER = "PulmoScreen: second reader, not a diagnosis"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "PulmoScreen screening report (second reader, not a diagnosis)"
SC_SERIES_DESCRIPTION = "PulmoScreen heatmap (second reader, not a diagnosis)"
# Codes of this project, in a private coding scheme (PS3.16 8.2: schemes starting with "99").
SCHEME = "99PULMO"
SCHEME_NAME = "PulmoScreen codes"

REPORT_TITLE = Code("18748-4", "LN", "Diagnostic imaging report")
SOURCE_IMAGE = Code("121112", "DCM", "Source of Measurement")
FINDING = Code("121071", "DCM", "Finding")
COMMENT = Code("121106", "DCM", "Comment")
FLAGGED = Code("flagged", SCHEME, "Flagged for clinician review")
SCORE = Code("abnormality-score", SCHEME, "Abnormality score")
YES = Code("373066001", "SCT", "Yes")
NO = Code("373067005", "SCT", "No")
UNITLESS = Code("1", "UCUM", "no units")
PERCENT = Code("%", "UCUM", "percent")
LABEL_CODES: Mapping[str, Code] = {
    "normal": Code("17621005", "SCT", "Normal"),
    "pneumonia": Code("233604007", "SCT", "Pneumonia"),
    "tuberculosis": Code("56717001", "SCT", "Tuberculosis"),
}
# Value representations whose values sources often break (ages, dates, times, numbers as text)
_CHECKED_VRS = frozenset({"AS", "DA", "TM", "DT", "DS", "IS"})
# (0010,0010) PatientName and the other type 2 attributes that highdicom copies from the
# source: a source without them files with them empty, as type 2 allows.
_TYPE2_COPIED = (
    "PatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)


@dataclass(frozen=True)
class ScreeningResult:
    """One image's result as the report states it.

    ``thresholds`` are the flag thresholds that decided ``flagged`` (per disease label).
    """

    p_normal: float
    p_pneumonia: float
    p_tuberculosis: float
    abnormality_score: int
    predicted_label: str
    flagged: bool
    model_version: str
    thresholds: Mapping[str, float] = field(default_factory=dict)

    def probabilities(self) -> dict[str, float]:
        return {
            "normal": self.p_normal,
            "pneumonia": self.p_pneumonia,
            "tuberculosis": self.p_tuberculosis,
        }


def read_source_header(path: Path) -> Dataset:
    """The source radiograph's header (no pixel data), with empty type 2 patient and study
    attributes where it lacks them."""
    configure_pydicom()  # pydicom's read warnings would quote header values into the logs
    source = dcmread(path, stop_before_pixels=True)
    _drop_invalid_values(source)
    for keyword in _TYPE2_COPIED:
        if keyword not in source:
            setattr(source, keyword, "")
    return source


def _drop_invalid_values(source: Dataset) -> None:
    """Remove top-level values that break their VR's rules, e.g. (0010,1010) PatientAge "62"
    (AS wants "062Y"): copied into the results, they would make them invalid. A type 2
    attribute comes back empty (read_source_header); guessing a repair could state a falsehood.
    """
    for element in list(source):
        if element.VR not in _CHECKED_VRS or element.VM != 1:
            continue
        try:
            validate_value(element.VR, element.value, config.RAISE)
        except ValueError:
            del source[element.tag]


def _named_uid(*parts: str) -> str:
    """A UID under ``2.25`` from a name-based (SHA-1) UUID of ``parts`` (PS3.5 B.2)."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, '|'.join(parts)).int}"


def result_uid(source: Dataset, *, kind: str, model_version: str) -> str:
    """The SOPInstanceUID of one result object: the same source, kind and model give the same
    UID."""
    return _named_uid("pulmoscreen-result", str(source.SOPInstanceUID), kind, model_version)


def series_uid(source: Dataset, *, kind: str, model_version: str) -> str:
    """The results series of one study: one per kind (SR, SC) and model version."""
    return _named_uid("pulmoscreen-series", str(source.StudyInstanceUID), kind, model_version)


def _num(name: Code, value: float, unit: Code) -> hd.sr.NumContentItem:
    return hd.sr.NumContentItem(name=name, value=value, unit=unit, relationship_type="CONTAINS")


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value, relationship_type="CONTAINS")


def probability_code(label: str) -> Code:
    return Code(f"p-{label}", SCHEME, f"Probability of {label}")


def threshold_code(label: str) -> Code:
    return Code(f"threshold-{label}", SCHEME, f"Flag threshold for {label}")


def _content_items(source: Dataset, result: ScreeningResult) -> list[hd.sr.ContentItem]:
    """The report's findings, in reading order."""
    items: list[hd.sr.ContentItem] = [
        _text(COMMENT, SECOND_READER_STATEMENT),
        _text(Code("111001", "DCM", "Algorithm Name"), ALGORITHM_NAME),
        _text(Code("111003", "DCM", "Algorithm Version"), result.model_version),
        hd.sr.ImageContentItem(
            name=SOURCE_IMAGE,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type="CONTAINS",
        ),
        hd.sr.CodeContentItem(
            name=FINDING,
            value=LABEL_CODES[result.predicted_label],
            relationship_type="CONTAINS",
        ),
    ]
    items += [
        _num(probability_code(label), p, UNITLESS) for label, p in result.probabilities().items()
    ]
    items.append(_num(SCORE, result.abnormality_score, PERCENT))
    items.append(
        hd.sr.CodeContentItem(
            name=FLAGGED, value=YES if result.flagged else NO, relationship_type="CONTAINS"
        )
    )
    items += [
        _num(threshold_code(label), value, UNITLESS)
        for label, value in sorted(result.thresholds.items())
    ]
    return items


def _scheme_identification() -> Dataset:
    """(0008,0110) CodingSchemeIdentificationSequence item naming the private scheme."""
    item = Dataset()
    item.CodingSchemeDesignator = SCHEME
    item.CodingSchemeName = SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = MANUFACTURER
    return item


def build_sr(source: Dataset, result: ScreeningResult) -> hd.sr.ComprehensiveSR:
    """The screening report of one image, in the source's study, in the results series.

    Args:
        source: the screened radiograph's header (:func:`read_source_header`).
        result: its result under one model.
    """
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE)
    root.ContentSequence = hd.sr.ContentSequence(_content_items(source, result))
    with warnings.catch_warnings():
        # highdicom warns about odd person names, quoting them: header values stay out of logs
        warnings.simplefilter("ignore", UserWarning)
        sr = hd.sr.ComprehensiveSR(
            evidence=[source],
            content=root,
            series_instance_uid=series_uid(source, kind="sr", model_version=result.model_version),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=result_uid(source, kind="sr", model_version=result.model_version),
            instance_number=int(source.get("InstanceNumber") or 1),
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=SR_SERIES_DESCRIPTION,
        )
    sr.CodingSchemeIdentificationSequence = [_scheme_identification()]
    return sr


def _put_line(image: NDArray[np.uint8], text: str, *, row: int, scale: float) -> int:
    """Draw one line of white text on a black band at ``row``; the next free row."""
    thickness = max(1, round(scale * 2))
    (width, height), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    pad = max(2, height // 3)
    bottom = row + height + base + 2 * pad
    image[row:bottom, : width + 2 * pad] = 0
    origin = (pad, row + pad + height)
    cv2.putText(
        image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
        cv2.LINE_AA,
    )  # fmt: skip
    return bottom


def burn_in(overlay_rgb: NDArray[np.uint8], result: ScreeningResult) -> NDArray[np.uint8]:
    """The overlay with the score, the flag and the second-reader statement drawn into it,
    white on black bands at the top left, sized to the image's width."""
    image = np.ascontiguousarray(overlay_rgb, dtype=np.uint8).copy()
    lines = [
        SC_BANNER,
        f"Abnormality score {result.abnormality_score}/100",
        "FLAGGED for clinician review" if result.flagged else "Not flagged",
        f"p(TB) {result.p_tuberculosis:.2f}  p(pneumonia) {result.p_pneumonia:.2f}",
    ]
    # the longest line spans about 60 % of the width: legible, and the apices stay in view
    widest = max(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 1.0, 2)[0][0] for line in lines)
    scale = max(0.3, 0.6 * image.shape[1] / widest)
    row = 0
    for line in lines:
        row = _put_line(image, line, row=row, scale=scale)
    return image


def _orientation(source: Dataset) -> tuple[str, str]:
    """The source's (0020,0020) PatientOrientation when it has two values (the overlay keeps
    the source's geometry); else a placeholder that :func:`build_sc` empties again."""
    values = list(source.get("PatientOrientation") or [])
    if len(values) == 2 and all(values):
        return str(values[0]), str(values[1])
    return "L", "F"


def build_sc(
    source: Dataset, overlay_rgb: NDArray[np.uint8], result: ScreeningResult
) -> hd.sc.SCImage:
    """The heatmap Secondary Capture of a flagged image, text burned in, in the source's study.

    Args:
        source: the screened radiograph's header (:func:`read_source_header`).
        overlay_rgb: the heatmap over the radiograph, ``(rows, cols, 3)`` uint8.
        result: the image's result; its score and flag are drawn into the pixels.
    """
    pixels = burn_in(overlay_rgb, result)
    with warnings.catch_warnings():
        # highdicom warns about odd person names, quoting them: header values stay out of logs
        warnings.simplefilter("ignore", UserWarning)
        sc = _sc_image(source, pixels, result)
    # (0020,0020) PatientOrientation, type 2C: empty where the source does not state it
    if _orientation(source) != tuple(source.get("PatientOrientation") or ()):
        sc["PatientOrientation"].value = None
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    # (0020,0060) Laterality, type 2C: a chest is no paired structure
    sc.add_new("Laterality", "CS", None)
    # (0028,0301) BurnedInAnnotation: the score and statement are in the pixels
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = SECOND_READER_STATEMENT
    return sc


def _sc_image(source: Dataset, pixels: NDArray[np.uint8], result: ScreeningResult) -> hd.sc.SCImage:
    return hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid(source, kind="sc", model_version=result.model_version),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid(source, kind="sc", model_version=result.model_version),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_orientation=_orientation(source),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )


def write_dataset(dataset: Dataset, folder: Path, name: str) -> Path:
    """Write ``dataset`` to ``folder/name`` atomically: a temporary name in the same folder,
    fsync, rename, fsync of the folder. A reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f".partial-{uuid.uuid4().hex}.dcm"
    return write_durably(
        folder / name,
        lambda out: dataset.save_as(out, enforce_file_format=True),
        temp=temp,
    )
