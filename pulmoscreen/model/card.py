"""The model card: labels, thresholds and preprocessing travel with the weights."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pulmoscreen.imaging.preprocess import PreprocessSpec
from pulmoscreen.model.content import ContentCheck
from pulmoscreen.storage import sha256_file

__all__ = ["ModelCard", "card_path_for", "sha256_file"]


def card_path_for(model_path: Path) -> Path:
    """``models/x.keras`` -> ``models/x.card.json``."""
    return model_path.with_name(f"{model_path.stem}.card.json")


@dataclass(frozen=True)
class ModelCard:
    """What a worker needs to serve a model, and what a reader needs to trust it.

    Attributes:
        version: unique name of this model, stored with every prediction.
        labels: output order of the classifier.
        thresholds: per disease label, the probability at or above which an image is flagged.
        preprocess: the exact input recipe the model was trained with.
        trained: False for a randomly initialised network, whose scores are not findings.
        sha256: digest of the weights file (or of this card for an untrained network).
        details: free-form documentation (data, metrics, intended use, limitations).
        content_check: the check that refuses what is not a frontal chest radiograph, fitted
            on this model's features; None on cards written before it existed (the worker then
            scores every decoded image, and says so in its log).
    """

    version: str
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    trained: bool = True
    sha256: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    content_check: ContentCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {
            "version": self.version,
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "preprocess": self.preprocess.to_dict(),
            "trained": self.trained,
            "sha256": self.sha256,
            "details": self.details,
        }
        if self.content_check is not None:
            data["content_check"] = self.content_check.to_dict()
        return data

    def summary_dict(self) -> dict[str, Any]:
        """``to_dict`` without the content check's arrays (its version, thresholds and
        figures stay): what the ``models`` table keeps."""
        data = self.to_dict()
        if self.content_check is not None:
            data["content_check"] = self.content_check.summary_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        return cls(
            version=str(data["version"]),
            labels=tuple(data["labels"]),
            thresholds={k: float(v) for k, v in data.get("thresholds", {}).items()},
            preprocess=PreprocessSpec.from_dict(data.get("preprocess", {}) or {})
            if data.get("preprocess")
            else PreprocessSpec(),
            trained=bool(data.get("trained", True)),
            sha256=str(data.get("sha256", "")),
            details=dict(data.get("details", {})),
            content_check=ContentCheck.from_dict(data["content_check"])
            if data.get("content_check")
            else None,
        )

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        return cls.from_dict(json.loads(path.read_text()))
