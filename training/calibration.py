"""Site calibration: flag thresholds chosen on a programme's own labelled sample.

A vendor's threshold does not transfer to a new population (WHO, consolidated guidelines on
TB screening, 2021): a programme chooses it on a sample of its own people with a reference
standard, for the sensitivity it needs, and looks at what that costs in confirmatory tests.
Per disease this gives the ROC curve and AUC (DeLong interval), the threshold that reaches the
target sensitivity under the one-sided Wilson rule of ``training.finalize``, and the operating
table a programme manager reads.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import roc_curve

from pulmoscreen.domain import DISEASE_LABELS, LABELS
from pulmoscreen.model import LoadedModel, predict_batch, predict_with_features
from training.finalize import threshold_rule
from training.images import model_input_for
from training.metrics import sensitivity_specificity, threshold_for_sensitivity, wilson_lower_bound

log = logging.getLogger(__name__)

#: The operating table's evenly spaced thresholds; the chosen and the card's are added.
TABLE_GRID = tuple(round(0.1 * k, 1) for k in range(1, 10))
#: Two-sided level of the AUC's confidence interval.
AUC_LEVEL = 0.95
#: Beyond this many positives the search for the minimum gives up (a target of 1.0).
MAX_POSITIVES = 100_000


class CalibrationError(ValueError):
    """The sample cannot support the calibration asked for; the message says why."""


@dataclass(frozen=True)
class OperatingPoint:
    """What flagging at ``threshold`` gives, per screened person.

    ``referred`` is the share sent for a confirmatory test, ``tests_saved`` the share of tests
    saved against testing everyone (``1 - referred``), ``cases_found`` the share of screened
    people who are true cases found, and ``number_to_test`` the confirmatory tests per case
    found (None when none is found).
    """

    threshold: float
    sensitivity: float
    specificity: float
    referred: float
    tests_saved: float
    cases_found: float
    number_to_test: float | None


@dataclass(frozen=True)
class DiseaseCalibration:
    """One disease's calibration on the sample."""

    disease: str
    n_positive: int
    n_negative: int
    auc: float
    auc_low: float
    auc_high: float
    threshold: float
    sensitivity: float
    sensitivity_lower_bound: float
    specificity: float
    card_threshold: float | None
    card_sensitivity: float | None
    card_specificity: float | None
    prevalence: float
    roc_fpr: tuple[float, ...]
    roc_tpr: tuple[float, ...]
    table: tuple[OperatingPoint, ...]

    def figures(self) -> dict[str, Any]:
        """The figures kept in SQL with the calibration."""
        return {
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "auc": self.auc,
            "auc_ci": [self.auc_low, self.auc_high],
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "sensitivity_lower_bound": self.sensitivity_lower_bound,
            "specificity": self.specificity,
            "card_threshold": self.card_threshold,
        }


@dataclass(frozen=True)
class Calibration:
    """A site calibration: per calibrated disease its figures, and the thresholds to apply."""

    model_version: str
    model_sha256: str
    target: float
    confidence: float
    rule: str
    sample_counts: dict[str, int]
    sample_source: str
    diseases: tuple[DiseaseCalibration, ...]
    excluded: int = 0
    skipped: tuple[str, ...] = field(default=())

    @property
    def thresholds(self) -> dict[str, float]:
        return {d.disease: d.threshold for d in self.diseases}


def min_positives(target: float, confidence: float, *, misses: int = 0) -> int:
    """The fewest positives with which ``misses`` missed cases still prove ``target`` (the
    one-sided Wilson lower bound of the sensitivity reaches it): below ``min_positives(t, c)``
    not even a sample with every case flagged can."""
    for n in range(misses + 1, MAX_POSITIVES):
        if (wilson_lower_bound(n - misses, n, confidence) or 0.0) >= target - 1e-12:
            return n
    raise CalibrationError(f"no sample proves a sensitivity of {target}")


def delong_auc(
    positive: NDArray[np.bool_], scores: NDArray[np.floating], level: float = AUC_LEVEL
) -> tuple[float, float, float]:
    """ROC AUC with its two-sided ``level`` confidence interval (DeLong et al. 1988: the
    variance from the structural components; ties count one half)."""
    pos = np.asarray(scores[positive], dtype=np.float64)
    neg = np.asarray(scores[~positive], dtype=np.float64)
    m, n = len(pos), len(neg)
    # psi[i, j]: 1 when positive i outscores negative j, 1/2 on a tie
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    auc = float(psi.mean())
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    s10 = float(v10.var(ddof=1)) if m > 1 else 0.0
    s01 = float(v01.var(ddof=1)) if n > 1 else 0.0
    half = NormalDist().inv_cdf(0.5 + level / 2) * math.sqrt(s10 / m + s01 / n)
    return auc, max(0.0, auc - half), min(1.0, auc + half)


def operating_table(
    scores: NDArray[np.floating],
    positive: NDArray[np.bool_],
    thresholds: Sequence[float],
    *,
    prevalence: float | None = None,
) -> tuple[OperatingPoint, ...]:
    """For each threshold (flag when ``score >= t``), sensitivity and specificity on the
    sample, and what they mean for a screened population with ``prevalence`` (default: the
    sample's own) of the disease."""
    if positive.all() or not positive.any():
        raise CalibrationError("an operating table needs people with and without the disease")
    prev = float(positive.mean()) if prevalence is None else prevalence
    rows = []
    for t in thresholds:
        flagged = scores >= t
        sens = float((flagged & positive).sum() / positive.sum())
        spec = float((~flagged & ~positive).sum() / (~positive).sum())
        found = sens * prev
        referred = found + (1.0 - spec) * (1.0 - prev)
        rows.append(
            OperatingPoint(
                threshold=float(t),
                sensitivity=sens,
                specificity=spec,
                referred=referred,
                tests_saved=1.0 - referred,
                cases_found=found,
                number_to_test=referred / found if found > 0 else None,
            )
        )
    return tuple(rows)


def check_sample(
    true_labels: Sequence[str], diseases: Sequence[str], *, target: float, confidence: float
) -> None:
    """Refuse a sample of one class, or one with too few cases of a disease to prove
    ``target`` at ``confidence``; the message gives the number of positives it would take."""
    counts = Counter(true_labels)
    if len(counts) < 2:
        only = next(iter(counts), "nothing")
        raise CalibrationError(
            f"the sample holds one class only ({only}, {len(true_labels)} images): a threshold "
            "needs people with and without the disease"
        )
    if not diseases:
        raise CalibrationError("the sample holds no case of any disease the model flags")
    needed = min_positives(target, confidence)
    for disease in diseases:
        n = counts.get(disease, 0)
        if n < needed:
            raise CalibrationError(
                f"{disease}: {n} positives cannot prove a sensitivity of {target:.2f} with "
                f"{confidence:.0%} confidence (one-sided Wilson bound): it takes at least "
                f"{needed} positives with every one flagged, "
                f"{min_positives(target, confidence, misses=1)} to allow one miss; add cases "
                "of the disease, confirmed by the reference standard"
            )


def table_thresholds(*chosen: float | None) -> list[float]:
    """The operating table's thresholds: :data:`TABLE_GRID` and ``chosen``, highest first."""
    return sorted({*TABLE_GRID, *(t for t in chosen if t is not None)}, reverse=True)


def calibrate_disease(
    disease: str,
    scores: NDArray[np.floating],
    positive: NDArray[np.bool_],
    *,
    target: float,
    confidence: float,
    card_threshold: float | None,
    prevalence: float | None = None,
) -> DiseaseCalibration:
    """One disease's threshold for ``target`` sensitivity, with its ROC, AUC and table."""
    found = threshold_for_sensitivity(scores, positive, target, confidence)
    assert found is not None  # check_sample saw positives
    # rounded down, as the card's are: the positive the threshold was read from stays flagged
    threshold = math.floor(found * 1e6) / 1e6
    flagged = scores >= threshold
    sens, spec = sensitivity_specificity(flagged, positive)
    card_sens, card_spec = (
        sensitivity_specificity(scores >= card_threshold, positive)
        if card_threshold is not None
        else (None, None)
    )
    auc, low, high = delong_auc(positive, scores)
    fpr, tpr, _ = roc_curve(positive.astype(int), scores)
    n_pos = int(positive.sum())
    return DiseaseCalibration(
        disease=disease,
        n_positive=n_pos,
        n_negative=len(positive) - n_pos,
        auc=auc,
        auc_low=low,
        auc_high=high,
        threshold=threshold,
        sensitivity=float(sens or 0.0),
        sensitivity_lower_bound=float(
            wilson_lower_bound(int((flagged & positive).sum()), n_pos, confidence or AUC_LEVEL)
            or 0.0
        ),
        specificity=float(spec or 0.0),
        card_threshold=card_threshold,
        card_sensitivity=card_sens,
        card_specificity=card_spec,
        prevalence=float(positive.mean()) if prevalence is None else prevalence,
        roc_fpr=tuple(float(x) for x in fpr),
        roc_tpr=tuple(float(x) for x in tpr),
        table=operating_table(
            scores, positive, table_thresholds(threshold, card_threshold), prevalence=prevalence
        ),
    )


@dataclass(frozen=True)
class SiteSample:
    """A site's labelled sample, scored by the served model: reference labels, probabilities
    (one row per image, in the order of ``LABELS``) and where it came from."""

    true_labels: tuple[str, ...]
    probs: NDArray[np.float32]
    source: str
    excluded: int = 0


def calibrate(
    sample: SiteSample,
    *,
    model: tuple[str, str, dict[str, float]],
    target: float,
    confidence: float,
    diseases: Sequence[str] = (),
    prevalence: dict[str, float] | None = None,
) -> Calibration:
    """The site calibration of ``model`` (version, weights sha256, card thresholds) on
    ``sample``: every disease of ``diseases`` (default: each with a case in the sample)."""
    if not 0.0 < target < 1.0:
        raise CalibrationError(f"the target sensitivity must be between 0 and 1 ({target})")
    unknown = set(sample.true_labels) - set(LABELS)
    if unknown:
        raise CalibrationError(f"unknown reference labels {sorted(unknown)}; use {LABELS}")
    present = [d for d in DISEASE_LABELS if d in sample.true_labels]
    chosen = list(diseases) or present
    check_sample(sample.true_labels, chosen, target=target, confidence=confidence)
    version, sha256, card_thresholds = model
    labels = np.array(sample.true_labels)
    results = tuple(
        calibrate_disease(
            disease,
            np.asarray(sample.probs[:, LABELS.index(disease)], dtype=np.float64),
            labels == disease,
            target=target,
            confidence=confidence,
            card_threshold=card_thresholds.get(disease),
            prevalence=(prevalence or {}).get(disease),
        )
        for disease in chosen
    )
    return Calibration(
        model_version=version,
        model_sha256=sha256,
        target=target,
        confidence=confidence,
        rule=threshold_rule(target, confidence).replace("validation", "site sample"),
        sample_counts={label: int((labels == label).sum()) for label in LABELS},
        sample_source=sample.source,
        diseases=results,
        excluded=sample.excluded,
        skipped=tuple(d for d in DISEASE_LABELS if d not in chosen),
    )


def score_files(
    loaded: LoadedModel, paths: Sequence[Path], *, batch_size: int = 32
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """The served model's probabilities for the files it would score, and which files those
    are: the worker's input (``to_model_input``) and, when the card has one, its content
    check. A file that cannot be read, or that the check refuses, is left out, as the worker
    would quarantine it."""
    spec, check = loaded.card.preprocess, loaded.card.content_check
    inputs: list[NDArray[np.float32]] = []
    kept = np.zeros(len(paths), dtype=bool)
    for k, path in enumerate(paths):
        try:
            inputs.append(model_input_for(path, spec))
            kept[k] = True
        except Exception as exc:  # one bad file must not fail the sample
            log.warning("%s left out of the sample: %s", path.name, exc)
    probs: list[NDArray[np.float32]] = []
    passed: list[NDArray[np.bool_]] = []
    for start in range(0, len(inputs), batch_size):
        batch = np.stack(inputs[start : start + batch_size])
        if check is None:
            probs.append(predict_batch(loaded.model, batch))
            passed.append(np.ones(len(batch), dtype=bool))
        else:
            p, features = predict_with_features(loaded.model, batch)
            probs.append(p)
            passed.append(check.score(features).passed)
    if not probs:
        return np.zeros((0, len(loaded.card.labels)), np.float32), kept
    ok = np.concatenate(passed)
    kept[np.flatnonzero(kept)[~ok]] = False
    return np.concatenate(probs)[ok], kept
