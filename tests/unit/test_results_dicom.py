"""The DICOM results: the SR's content and references, the SC's pixels and burned-in text."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from pulmoscreen import results_dicom as rd
from pulmoscreen.db.deliveries import retry_delay
from tests.dicom_results import dciodvfy_errors
from tests.factories import make_cxr_dicom

RESULT = rd.ScreeningResult(
    p_normal=0.21,
    p_pneumonia=0.09,
    p_tuberculosis=0.70,
    abnormality_score=79,
    predicted_label="tuberculosis",
    flagged=True,
    model_version="pulmoscreen-test-7",
    thresholds={"pneumonia": 0.5, "tuberculosis": 0.35},
)


@pytest.fixture
def rg1() -> Path:
    return Path(get_testdata_file("RG1_UNCR.dcm"))


def _items(sr) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """Concept name meaning -> value of the report's top-level items."""
    found: dict[str, object] = {}
    for item in sr.ContentSequence:
        name = item.ConceptNameCodeSequence[0].CodeMeaning
        if item.ValueType == "NUM":
            found[name] = float(item.MeasuredValueSequence[0].NumericValue)
        elif item.ValueType == "TEXT":
            found[name] = item.TextValue
        elif item.ValueType == "CODE":
            found[name] = item.ConceptCodeSequence[0].CodeMeaning
        elif item.ValueType == "IMAGE":
            found[name] = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
    return found


class TestBuildSr:
    def test_states_the_findings_flag_thresholds_model_and_second_reader(self, rg1, tmp_path):
        sr = rd.build_sr(rd.read_source_header(rg1), RESULT)
        back = dcmread(rd.write_dataset(sr, tmp_path, "sr.dcm"))
        items = _items(back)
        assert items["Probability of normal"] == pytest.approx(0.21)
        assert items["Probability of pneumonia"] == pytest.approx(0.09)
        assert items["Probability of tuberculosis"] == pytest.approx(0.70)
        assert items["Abnormality score"] == 79
        assert items["Flagged for clinician review"] == "Yes"
        assert items["Flag threshold for tuberculosis"] == pytest.approx(0.35)
        assert items["Flag threshold for pneumonia"] == pytest.approx(0.5)
        assert items["Finding"] == "Tuberculosis"
        assert items["Algorithm Version"] == "pulmoscreen-test-7"
        assert "not a diagnosis" in str(items["Comment"])
        assert back.CompletionFlag == "COMPLETE"
        assert back.VerificationFlag == "UNVERIFIED"

    def test_files_into_the_source_study_as_a_new_series_referencing_the_image(self, rg1):
        source = dcmread(rg1, stop_before_pixels=True)
        sr = rd.build_sr(rd.read_source_header(rg1), RESULT)
        assert sr.StudyInstanceUID == source.StudyInstanceUID
        assert sr.SeriesInstanceUID != source.SeriesInstanceUID
        assert sr.PatientID == source.PatientID
        assert sr.PatientName == source.PatientName
        assert sr.Modality == "SR"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == source.StudyInstanceUID
        series = evidence.ReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert _items(sr)["Source of Measurement"] == source.SOPInstanceUID

    def test_an_unflagged_result_says_no(self, rg1):
        calm = rd.ScreeningResult(0.9, 0.05, 0.05, 10, "normal", False, "m", {})
        items = _items(rd.build_sr(rd.read_source_header(rg1), calm))
        assert items["Flagged for clinician review"] == "No"
        assert items["Finding"] == "Normal"

    def test_same_source_and_model_give_the_same_uids_another_model_others(self, rg1):
        source = rd.read_source_header(rg1)
        one, again = rd.build_sr(source, RESULT), rd.build_sr(source, RESULT)
        other = rd.build_sr(source, rd.ScreeningResult(**{**RESULT.__dict__, "model_version": "x"}))
        assert one.SOPInstanceUID == again.SOPInstanceUID
        assert one.SeriesInstanceUID == again.SeriesInstanceUID
        assert other.SOPInstanceUID != one.SOPInstanceUID

    def test_validates_with_dciodvfy_and_reads_back_in_highdicom(self, rg1, tmp_path):
        path = rd.write_dataset(rd.build_sr(rd.read_source_header(rg1), RESULT), tmp_path, "a")
        assert dciodvfy_errors(path) == []
        doc = hd.sr.srread(path)
        assert isinstance(doc, hd.sr.ComprehensiveSR)
        assert doc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"

    def test_a_source_without_patient_attributes_files_with_them_empty(self, tmp_path):
        path = make_cxr_dicom(tmp_path, rows=64, cols=64)
        source = dcmread(path)
        for keyword in ("PatientName", "PatientBirthDate", "StudyID", "AccessionNumber"):
            if keyword in source:
                delattr(source, keyword)
        source.save_as(path)
        out = rd.write_dataset(rd.build_sr(rd.read_source_header(path), RESULT), tmp_path, "b")
        assert dciodvfy_errors(out) == []
        assert dcmread(out).StudyInstanceUID == source.StudyInstanceUID

    def test_values_that_break_their_vr_are_not_copied_into_the_results(self, tmp_path):
        path = make_cxr_dicom(tmp_path, rows=64, cols=64, PatientAge="62", StudyTime="10:30")
        source = rd.read_source_header(path)
        assert "PatientAge" not in source  # AS wants "062Y": not repaired by a guess
        assert source.StudyTime == ""  # type 2: kept, empty
        out = rd.write_dataset(rd.build_sr(source, RESULT), tmp_path, "c")
        assert dciodvfy_errors(out) == []


class TestBuildSc:
    def test_burns_in_the_statement_and_score_over_the_top_and_keeps_the_rest(self, rg1):
        grey = np.full((800, 640, 3), 100, np.uint8)
        sc = rd.build_sc(rd.read_source_header(rg1), grey, RESULT)
        pixels = sc.pixel_array
        assert pixels.shape == (800, 640, 3)
        band = pixels[:120]
        assert (band == 0).all(axis=2).mean() > 0.3  # black bands behind the text
        assert (band > 200).all(axis=2).sum() > 500  # white strokes of the letters
        assert (pixels[-200:] == 100).all()  # the image below is untouched
        assert sc.BurnedInAnnotation == "YES"

    def test_text_scales_with_the_image_width(self, rg1):
        source = rd.read_source_header(rg1)
        small = rd.build_sc(source, np.full((400, 300, 3), 100, np.uint8), RESULT).pixel_array
        large = rd.build_sc(source, np.full((1600, 1200, 3), 100, np.uint8), RESULT).pixel_array
        rows_small = int((small[:, :, 0] != 100).any(axis=1).sum())
        rows_large = int((large[:, :, 0] != 100).any(axis=1).sum())
        assert 3 * rows_small <= rows_large <= 5 * rows_small

    def test_the_flag_line_differs_between_flagged_and_not(self, rg1):
        source = rd.read_source_header(rg1)
        grey = np.full((600, 600, 3), 100, np.uint8)
        calm = rd.ScreeningResult(**{**RESULT.__dict__, "flagged": False})
        flagged = rd.build_sc(source, grey, RESULT).pixel_array
        assert not np.array_equal(flagged, rd.build_sc(source, grey, calm).pixel_array)

    def test_same_study_new_series_and_dciodvfy_passes(self, rg1, tmp_path):
        source = dcmread(rg1, stop_before_pixels=True)
        rgb = np.random.default_rng(0).integers(0, 255, (512, 512, 3), dtype=np.uint8)
        sc = rd.build_sc(rd.read_source_header(rg1), rgb, RESULT)
        path = rd.write_dataset(sc, tmp_path, "sc.dcm")
        back = dcmread(path)
        assert back.StudyInstanceUID == source.StudyInstanceUID
        assert back.SeriesInstanceUID not in (source.SeriesInstanceUID, rd.build_sr(
            rd.read_source_header(rg1), RESULT).SeriesInstanceUID)  # fmt: skip
        assert back.PatientID == source.PatientID
        assert back.PhotometricInterpretation == "RGB"
        assert dciodvfy_errors(path) == []


class TestWriteDataset:
    def test_leaves_only_the_final_file(self, rg1, tmp_path):
        path = rd.write_dataset(rd.build_sr(rd.read_source_header(rg1), RESULT), tmp_path, "r")
        assert [p.name for p in tmp_path.iterdir()] == ["r"]
        assert dcmread(path).Modality == "SR"


class TestRetryDelay:
    def test_doubles_from_the_first_wait_up_to_the_cap(self):
        waits = [retry_delay(n, first=30, longest=3600) for n in range(1, 10)]
        assert waits == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]

    def test_stays_capped_after_very_many_failures(self):
        assert retry_delay(10_000, first=30, longest=3600) == 3600
