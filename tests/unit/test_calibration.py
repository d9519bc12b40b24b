"""Site calibration maths and its report: the operating table by hand, the DeLong interval,
the smallest sample that proves a target, the refusals, and the one-page report."""

from __future__ import annotations

import io

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from training.calibration import (
    CalibrationError,
    SiteSample,
    calibrate,
    check_sample,
    delong_auc,
    min_positives,
    operating_table,
)
from training.calibration_report import CalibrationRun, write_calibration_report
from training.metrics import threshold_for_sensitivity, wilson_lower_bound

# Ten people: four with the disease, six without.
SCORES = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.5, 0.2, 0.1, 0.05, 0.01])
POSITIVE = np.array([True] * 4 + [False] * 6)


class TestOperatingTable:
    def test_figures_equal_a_hand_computation_at_the_samples_prevalence(self):
        at_half, at_quarter, above_all = operating_table(SCORES, POSITIVE, [0.5, 0.25, 0.95])
        # >= 0.5 flags 0.9, 0.8, 0.6 (3 of 4 cases) and 0.7, 0.5 (2 of 6 without)
        assert at_half.sensitivity == pytest.approx(3 / 4)
        assert at_half.specificity == pytest.approx(4 / 6)
        assert at_half.referred == pytest.approx(5 / 10)
        assert at_half.tests_saved == pytest.approx(5 / 10)
        assert at_half.cases_found == pytest.approx(3 / 10)
        assert at_half.number_to_test == pytest.approx(5 / 3)
        # >= 0.25 flags every case and the same two without
        assert (at_quarter.sensitivity, at_quarter.referred) == pytest.approx((1.0, 6 / 10))
        assert at_quarter.tests_saved == pytest.approx(4 / 10)
        assert at_quarter.number_to_test == pytest.approx(6 / 4)
        # nobody flagged: every test saved, no case found
        assert (above_all.sensitivity, above_all.specificity) == (0.0, 1.0)
        assert (above_all.referred, above_all.tests_saved) == (0.0, 1.0)
        assert above_all.number_to_test is None

    def test_a_programmes_prevalence_changes_referrals_not_sensitivity(self):
        [row] = operating_table(SCORES, POSITIVE, [0.5], prevalence=0.1)
        # of 1,000 screened: 100 cases, 75 found; 900 without, 300 flagged
        assert row.sensitivity == pytest.approx(0.75)
        assert row.cases_found == pytest.approx(0.075)
        assert row.referred == pytest.approx(0.375)
        assert row.tests_saved == pytest.approx(0.625)
        assert row.number_to_test == pytest.approx(5.0)

    def test_one_class_is_refused(self):
        with pytest.raises(CalibrationError, match="with and without"):
            operating_table(SCORES, np.ones(10, dtype=bool), [0.5])


class TestDelongAuc:
    def test_auc_and_interval_equal_a_hand_computation(self):
        positive = np.array([True, True, True, False, False, False, False])
        scores = np.array([0.9, 0.8, 0.3, 0.7, 0.2, 0.1, 0.05])
        auc, low, high = delong_auc(positive, scores)
        # 11 of 12 pairs ranked right; structural components [1, 1, .75] and [2/3, 1, 1, 1]:
        # variance .020833 / 3 + .027778 / 4 = .013889
        assert auc == pytest.approx(11 / 12)
        assert auc == pytest.approx(roc_auc_score(positive, scores))
        assert low == pytest.approx(11 / 12 - 1.959964 * np.sqrt(0.0138889), abs=1e-5)
        assert high == 1.0  # clipped

    def test_ties_count_one_half(self):
        auc, _, _ = delong_auc(np.array([True, False]), np.array([0.5, 0.5]))
        assert auc == 0.5


class TestMinPositives:
    def test_the_smallest_sample_that_proves_the_target(self):
        n = min_positives(0.9, 0.95)
        assert n == 25
        assert wilson_lower_bound(n, n, 0.95) >= 0.9 > wilson_lower_bound(n - 1, n - 1, 0.95)
        one_miss = min_positives(0.9, 0.95, misses=1)
        assert wilson_lower_bound(one_miss - 1, one_miss, 0.95) >= 0.9
        assert wilson_lower_bound(one_miss - 2, one_miss - 1, 0.95) < 0.9

    def test_the_plain_rule_needs_one(self):
        assert min_positives(0.9, 0.0) == 1


class TestCheckSample:
    def test_one_class_is_refused(self):
        with pytest.raises(CalibrationError, match=r"one class only \(tuberculosis, 30 images\)"):
            check_sample(["tuberculosis"] * 30, ["tuberculosis"], target=0.9, confidence=0.95)

    def test_too_few_positives_are_refused_with_the_number_it_takes(self):
        labels = ["tuberculosis"] * 12 + ["normal"] * 40
        with pytest.raises(CalibrationError) as refused:
            check_sample(labels, ["tuberculosis"], target=0.9, confidence=0.95)
        message = str(refused.value)
        assert "tuberculosis: 12 positives cannot prove a sensitivity of 0.90" in message
        assert "at least 25 positives" in message
        assert "42 to allow one miss" in message

    def test_enough_positives_pass(self):
        labels = ["tuberculosis"] * 25 + ["normal"] * 5
        check_sample(labels, ["tuberculosis"], target=0.9, confidence=0.95)


def site_sample(n_tb: int = 30, n_normal: int = 40, seed: int = 3) -> SiteSample:
    """Cases score higher than the rest, with overlap; no pneumonia in the sample."""
    rng = np.random.default_rng(seed)
    p_tb = np.concatenate([rng.beta(5, 2, n_tb), rng.beta(2, 5, n_normal)])
    probs = np.stack([1 - p_tb, np.zeros_like(p_tb), p_tb], axis=1).astype(np.float32)
    return SiteSample(("tuberculosis",) * n_tb + ("normal",) * n_normal, probs, "test sample")


MODEL = ("m-1", "ab" * 32, {"pneumonia": 0.5, "tuberculosis": 0.2})


class TestCalibrate:
    def test_thresholds_follow_the_one_sided_rule_on_the_sample(self):
        sample = site_sample()
        found = calibrate(sample, model=MODEL, target=0.9, confidence=0.95)
        [tb] = found.diseases
        expected = threshold_for_sensitivity(
            sample.probs[:, 2].astype(np.float64),
            np.array(sample.true_labels) == "tuberculosis",
            0.9,
            0.95,
        )
        assert tb.threshold == pytest.approx(expected, abs=1e-6)
        assert tb.threshold <= expected
        assert tb.sensitivity_lower_bound >= 0.9
        # pneumonia has no case here: not calibrated, the card's threshold stays
        assert found.thresholds == {"tuberculosis": tb.threshold}
        assert found.skipped == ("pneumonia",)
        assert found.sample_counts == {"normal": 40, "pneumonia": 0, "tuberculosis": 30}
        assert "site sample sensitivity" in found.rule
        assert tb.card_threshold == 0.2
        assert tb.threshold in [r.threshold for r in tb.table]

    def test_a_disease_asked_for_without_enough_cases_is_refused(self):
        with pytest.raises(CalibrationError, match="pneumonia: 0 positives"):
            calibrate(
                site_sample(), model=MODEL, target=0.9, confidence=0.95, diseases=["pneumonia"]
            )

    def test_unknown_labels_are_refused(self):
        sample = SiteSample(("tb", "normal"), np.zeros((2, 3), np.float32), "x")
        with pytest.raises(CalibrationError, match="unknown reference labels"):
            calibrate(sample, model=MODEL, target=0.9, confidence=0.0)


class TestCalibrationReport:
    def test_one_page_html_and_pdf_with_the_table(self, tmp_path):
        from datetime import UTC, datetime

        from pypdf import PdfReader

        sample = site_sample()
        found = calibrate(sample, model=MODEL, target=0.9, confidence=0.95)
        run = CalibrationRun("amina", datetime(2026, 12, 3, 9, 0, tzinfo=UTC), applied=False)
        names = [f"img{k}.png" for k in range(len(sample.true_labels))]
        html = write_calibration_report(found, sample, names, tmp_path, run)
        page = html.read_text()
        [tb] = found.diseases
        assert f"tuberculosis: threshold {tb.threshold:.3f}" in page
        assert "Not applied" in page
        assert "by amina" in page
        assert len(PdfReader(io.BytesIO((tmp_path / "calibration.pdf").read_bytes())).pages) == 1
        table = (tmp_path / "operating_table.csv").read_text().splitlines()
        assert table[0].startswith("disease,threshold,sensitivity,specificity,referred")
        assert len(table) == 1 + len(tb.table)
        assert len((tmp_path / "scores.csv").read_text().splitlines()) == 1 + len(names)
