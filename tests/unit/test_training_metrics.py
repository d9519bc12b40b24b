import numpy as np
import pytest

from training.metrics import (
    compute_metrics,
    sensitivity_specificity,
    threshold_for_sensitivity,
    wilson_lower_bound,
)

LABELS = ("normal", "pneumonia", "tuberculosis")


class TestThresholdForSensitivity:
    def test_highest_threshold_meeting_the_target(self):
        scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.2])
        positive = np.array([True, True, True, True, True, False, False])
        # 5 positives, target 0.8 -> 4 must be flagged -> threshold at the 4th highest, 0.6
        assert threshold_for_sensitivity(scores, positive, 0.8) == pytest.approx(0.6)
        assert threshold_for_sensitivity(scores, positive, 1.0) == pytest.approx(0.5)

    def test_no_positive_cases(self):
        assert threshold_for_sensitivity(np.array([0.3]), np.array([False]), 0.9) is None

    def test_confidence_asks_for_a_margin(self):
        # 113 positives scored 1.00, 0.99, ...: observed 0.90 needs 102 flagged, but the
        # one-sided 95 % Wilson bound first reaches 0.90 at 107 of 113 (0.8896 at 106).
        scores = np.linspace(1.0, 0.0, 113, endpoint=False)
        positive = np.ones(113, dtype=bool)
        assert threshold_for_sensitivity(scores, positive, 0.9) == pytest.approx(scores[101])
        at_95 = threshold_for_sensitivity(scores, positive, 0.9, confidence=0.95)
        assert at_95 == pytest.approx(scores[106])

    def test_confidence_out_of_reach_flags_every_positive(self):
        # 5 of 5 gives a 95 % lower bound of 0.649 < 0.8: the lowest positive score is used
        scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1, 0.2])
        positive = np.array([True, True, True, True, True, False, False])
        assert threshold_for_sensitivity(scores, positive, 0.8, confidence=0.95) == 0.5


class TestWilsonLowerBound:
    def test_hand_computed(self):
        # p = 0.8, z = 1.6449: (0.8 + z^2/20 - z*sqrt(0.016 + z^2/400)) / (1 + z^2/10)
        assert wilson_lower_bound(8, 10, 0.95) == pytest.approx(0.54079, abs=1e-5)
        assert wilson_lower_bound(107, 113, 0.95) == pytest.approx(0.90061, abs=1e-5)
        assert wilson_lower_bound(106, 113, 0.95) == pytest.approx(0.88955, abs=1e-5)

    def test_confidence_zero_is_the_proportion_and_no_cases_is_none(self):
        assert wilson_lower_bound(8, 10, 0.0) == pytest.approx(0.8)
        assert wilson_lower_bound(0, 0, 0.95) is None


class TestSensitivitySpecificity:
    def test_hand_computed(self):
        flagged = np.array([True, True, False, False, True])
        positive = np.array([True, False, True, False, True])
        sens, spec = sensitivity_specificity(flagged, positive)
        assert sens == pytest.approx(2 / 3)
        assert spec == pytest.approx(1 / 2)

    def test_missing_side_is_none(self):
        assert sensitivity_specificity(np.array([True]), np.array([True])) == (1.0, None)


class TestComputeMetrics:
    def test_hand_computed_case(self):
        probs = np.array(
            [
                [0.8, 0.1, 0.1],  # normal, right
                [0.2, 0.7, 0.1],  # pneumonia, right
                [0.5, 0.1, 0.4],  # tb, predicted normal but over the TB threshold
                [0.1, 0.1, 0.8],  # tb, right
            ]
        )
        truth = ["normal", "pneumonia", "tuberculosis", "tuberculosis"]
        m = compute_metrics(truth, probs, LABELS, {"pneumonia": 0.5, "tuberculosis": 0.3})
        assert m["n"] == 4
        assert m["accuracy"] == pytest.approx(0.75)
        assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
        tb = m["per_class"]["tuberculosis"]
        assert tb["sensitivity"] == 1.0  # 0.4 and 0.8 both >= 0.3
        assert tb["specificity"] == 1.0
        assert tb["threshold"] == 0.3
        assert tb["auc"] == 1.0
        assert m["per_class"]["normal"]["threshold"] is None

    def test_single_label_folder_gives_nulls_not_a_crash(self):
        probs = np.array([[0.2, 0.1, 0.7], [0.6, 0.1, 0.3]])
        m = compute_metrics(["tuberculosis"] * 2, probs, LABELS, {"tuberculosis": 0.5})
        assert m["macro_auc"] is None
        assert m["per_class"]["tuberculosis"]["auc"] is None
        assert m["per_class"]["tuberculosis"]["sensitivity"] == 0.5
        assert m["per_class"]["tuberculosis"]["specificity"] is None
        assert m["per_class"]["pneumonia"]["sensitivity"] is None


class TestChooseThresholds:
    def test_stored_threshold_still_flags_the_positive_it_was_read_from(self):
        from training.finalize import choose_thresholds

        # the 9th of 10 tuberculosis scores is 0.6628346: rounding to 6 places must go down
        tb = [0.99, 0.98, 0.97, 0.96, 0.95, 0.94, 0.93, 0.92, 0.6628346, 0.1]
        probs = np.array([[1 - p, 0.0, p] for p in tb] + [[0.1, 0.9, 0.0]] * 10)
        labels = ["tuberculosis"] * 10 + ["pneumonia"] * 10
        thresholds = choose_thresholds(labels, probs, 0.9)
        assert thresholds["tuberculosis"] == 0.662834
        assert thresholds["pneumonia"] == 0.9
        flagged = probs[:10, 2] >= thresholds["tuberculosis"]
        assert flagged.sum() == 9
