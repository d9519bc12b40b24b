"""Domain values shared by every service: labels, statuses, reject reasons, predictions."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Label(StrEnum):
    """The classes the screening model distinguishes."""

    NORMAL = "normal"
    PNEUMONIA = "pneumonia"
    TUBERCULOSIS = "tuberculosis"


LABELS: tuple[str, ...] = tuple(label.value for label in Label)
DISEASE_LABELS: tuple[str, ...] = (Label.PNEUMONIA.value, Label.TUBERCULOSIS.value)


class StudyStatus(StrEnum):
    """Where a study stands: it is screened once none of its images is pending."""

    RECEIVED = "received"
    SCREENED = "screened"
    REJECTED = "rejected"


class ImageStatus(StrEnum):
    """Life of one image: queued at ingest, then predicted or rejected."""

    QUEUED = "queued"
    PREDICTED = "predicted"
    REJECTED = "rejected"


class RejectReason(StrEnum):
    """Coded reasons a file is quarantined, recorded in SQL and in the sidecar file."""

    NOT_DICOM = "not_dicom"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    DECODE_FAILED = "decode_failed"
    MISSING_UID = "missing_uid"
    NOT_CHEST = "not_chest"
    NOT_FRONTAL = "not_frontal"
    WRONG_MODALITY = "wrong_modality"
    MULTIFRAME = "multiframe"
    TOO_SMALL = "too_small"
    TOO_LARGE = "too_large"
    DUPLICATE = "duplicate"
    UNREADABLE = "unreadable"
    WORKER_CRASH = "worker_crash"
    PATIENT_MISMATCH = "patient_mismatch"
    INVALID_HEADER = "invalid_header"
    # decoded, but the content check on the model's own features says it is no frontal chest
    # radiograph as stored (another body part, another modality, rotated by 90 degrees)
    NOT_CHEST_CONTENT = "not_chest_content"


class Rejected(Exception):  # noqa: N818 - reads as "raise Rejected(reason, ...)"
    """A file that cannot be screened, with its coded reason and a human-readable detail."""

    def __init__(self, reason: RejectReason, detail: str, *, retry: bool = False) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        # the failure may pass (a decoder killed or timed out): try again before giving up
        self.retry = retry


@dataclass(frozen=True)
class Prediction:
    """One image's result under one model.

    ``abnormality_score`` is ``round(100 * (1 - p_normal))``: the probability, in percent, that
    the image shows any of the diseases. ``flagged`` is true when any disease's probability
    reaches that disease's threshold; an untrained model never flags.
    """

    probabilities: dict[str, float]
    label: str
    abnormality_score: int
    flagged: bool
