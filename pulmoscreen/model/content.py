"""The content check: is this a frontal chest radiograph, as stored? Scored on the screening
model's own penultimate features, from the same forward pass as its probabilities.

Two parts, both fitted on chest radiographs only (``training/content.py``), so no collection of
negatives is needed:

* **Out of distribution**: the Mahalanobis distance of an image's features to the nearest
  class mean of the chest training images, with one shared (tied) covariance (Lee et al.,
  NeurIPS 2018), in the span of the features' main principal components, plus the distance to
  that span (the residual, scaled by its mean per-dimension variance on the training images:
  the probabilistic-PCA form). A knee, a hand, a CT slice or a phantom lands far from every
  chest class.
* **Orientation**: a logistic regression on the same whitened features, trained
  self-supervised on chest images as stored, flipped or upside down (chest) against the same
  images rotated by 90° or 270° (not frontal as stored).

Each part has a threshold set on validation chest images at a fixed false-reject rate. The
``content_score`` of an image is the larger of the two scores divided by its threshold: 1.0 or
more is rejected.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["ContentCheck", "ContentScores", "decode_array", "encode_array"]


def encode_array(array: NDArray[Any]) -> dict[str, Any]:
    """An array as JSON: shape and little-endian float32 bytes in base64 (exact, compact)."""
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "f32_b64": base64.b64encode(data.tobytes()).decode()}


def decode_array(data: dict[str, Any]) -> NDArray[np.float32]:
    raw = base64.b64decode(data["f32_b64"])
    return np.frombuffer(raw, dtype="<f4").reshape(data["shape"]).astype(np.float32)


@dataclass(frozen=True)
class ContentScores:
    """Per image of a batch: the two scores, the combined score and the verdict."""

    distance: NDArray[np.float64]
    p_rotated: NDArray[np.float64]
    score: NDArray[np.float64]
    p_other: NDArray[np.float64] | None = None

    @property
    def passed(self) -> NDArray[np.bool_]:
        return np.asarray(self.score < 1.0)

    def detail(self, i: int, check: ContentCheck) -> str:
        """Why image ``i`` was refused (or not), with the raw scores, for ``reject_detail``."""
        text = (
            f"content score {self.score[i]:.2f} (1.00 or more is refused; check "
            f"{check.version}): feature distance to chest radiographs "
            f"{self.distance[i]:.1f} (threshold {check.ood_threshold:.1f}), "
            f"p(rotated 90 degrees) {self.p_rotated[i]:.3f} "
            f"(threshold {check.rotation_threshold:.3f})"
        )
        if self.p_other is not None:
            text += (
                f", p(not a chest radiograph) {self.p_other[i]:.3f} "
                f"(threshold {check.other_threshold:.3f})"
            )
        return text


def _logistic(
    coords: NDArray[np.float32], weights: NDArray[np.float32], bias: float
) -> NDArray[np.float64]:
    logits = np.clip(coords.astype(np.float64) @ weights + bias, -50.0, 50.0)
    return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float64)


@dataclass(frozen=True)
class ContentCheck:
    """Parameters of the content check, saved in the model card (``content_check``).

    Attributes:
        version: names this fit; changes whenever any parameter does.
        feature_mean: ``(d,)`` mean of the training features.
        basis: ``(d, k)`` orthonormal principal directions of the training features.
        class_means: ``(c, k)`` per-class means in the basis' coordinates.
        precision_factor: ``(k, k)`` ``L`` with ``L @ L.T`` the inverse shared covariance.
        residual_variance: mean per-dimension variance left outside the basis; 0 leaves the
            residual term out.
        rotation_weights: ``(k,)`` logistic weights on the basis' coordinates.
        rotation_bias: the logistic intercept.
        ood_threshold: the distance at or above which an image is refused.
        rotation_threshold: the p(rotated) at or above which an image is refused.
        other_weights: ``(k,)`` logistic weights of "not a chest radiograph" (images of other
            modalities and body parts against chest images); None in checks fitted without.
        other_bias: its intercept.
        other_threshold: the p(not a chest radiograph) at or above which an image is refused.
        figures: calibration and evaluation figures (documentation, not used to score).
    """

    version: str
    feature_mean: NDArray[np.float32]
    basis: NDArray[np.float32]
    class_means: NDArray[np.float32]
    precision_factor: NDArray[np.float32]
    residual_variance: float
    rotation_weights: NDArray[np.float32]
    rotation_bias: float
    ood_threshold: float
    rotation_threshold: float
    other_weights: NDArray[np.float32] | None = None
    other_bias: float = 0.0
    other_threshold: float = 1.0
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.feature_mean.shape[0])

    def _coords(
        self, features: NDArray[np.floating[Any]]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        centred = np.asarray(features, dtype=np.float32) - self.feature_mean
        coords = np.asarray(centred @ self.basis, dtype=np.float32)
        return np.asarray(centred, dtype=np.float32), coords

    def distances(self, features: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """``(n,)`` out-of-distribution distance of each row of ``(n, d)`` features."""
        return self._distances(*self._coords(features))

    def _distances(
        self, centred: NDArray[np.float32], coords: NDArray[np.float32]
    ) -> NDArray[np.float64]:
        diffs = coords[:, None, :] - self.class_means[None, :, :]
        maha = diffs @ self.precision_factor
        distance = np.min(np.sum(maha.astype(np.float64) ** 2, axis=2), axis=1)
        if self.residual_variance > 0:
            # the basis is orthonormal: what lies outside its span has the remaining energy
            outside = np.sum(centred.astype(np.float64) ** 2, axis=1) - np.sum(
                coords.astype(np.float64) ** 2, axis=1
            )
            distance = distance + np.maximum(outside, 0.0) / self.residual_variance
        return np.asarray(distance, dtype=np.float64)

    def p_rotated(self, features: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """``(n,)`` probability that each image is a chest rotated by 90° or 270°."""
        return self._p_rotated(self._coords(features)[1])

    def _p_rotated(self, coords: NDArray[np.float32]) -> NDArray[np.float64]:
        return _logistic(coords, self.rotation_weights, self.rotation_bias)

    def p_other(self, features: NDArray[np.floating[Any]]) -> NDArray[np.float64] | None:
        """``(n,)`` probability that each image is no chest radiograph (None without that
        part)."""
        return self._p_other(self._coords(features)[1])

    def _p_other(self, coords: NDArray[np.float32]) -> NDArray[np.float64] | None:
        if self.other_weights is None:
            return None
        return _logistic(coords, self.other_weights, self.other_bias)

    def score(self, features: NDArray[np.floating[Any]]) -> ContentScores:
        """Score ``(n, d)`` penultimate features of the screening model.

        Raises:
            ValueError: the features are not of the width the check was fitted on (a check
                fitted for another model).
        """
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(
                f"content check {self.version} expects (n, {self.n_features}) features, "
                f"got {features.shape}"
            )
        centred, coords = self._coords(features)
        distance = self._distances(centred, coords)
        p_rot = self._p_rotated(coords)
        score = np.maximum(distance / self.ood_threshold, p_rot / self.rotation_threshold)
        p_other = self._p_other(coords)
        if p_other is not None:
            score = np.maximum(score, p_other / self.other_threshold)
        return ContentScores(distance=distance, p_rotated=p_rot, score=score, p_other=p_other)

    def to_dict(self) -> dict[str, Any]:
        other: dict[str, Any] = {}
        if self.other_weights is not None:
            other = {
                "other_weights": encode_array(self.other_weights),
                "other_bias": self.other_bias,
                "other_threshold": self.other_threshold,
            }
        return {
            "version": self.version,
            "method": "mahalanobis-tied-pca+residual; rotation logistic (self-supervised)"
            + ("; not-chest logistic (other modalities and body parts)" if other else ""),
            "feature_mean": encode_array(self.feature_mean),
            "basis": encode_array(self.basis),
            "class_means": encode_array(self.class_means),
            "precision_factor": encode_array(self.precision_factor),
            "residual_variance": self.residual_variance,
            "rotation_weights": encode_array(self.rotation_weights),
            "rotation_bias": self.rotation_bias,
            "ood_threshold": self.ood_threshold,
            "rotation_threshold": self.rotation_threshold,
            **other,
            "figures": self.figures,
        }

    def summary_dict(self) -> dict[str, Any]:
        """Version, thresholds and figures, without the fitted arrays."""
        return {
            "version": self.version,
            "ood_threshold": self.ood_threshold,
            "rotation_threshold": self.rotation_threshold,
            **({"other_threshold": self.other_threshold} if self.other_weights is not None else {}),
            "figures": self.figures,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContentCheck:
        return cls(
            version=str(data["version"]),
            feature_mean=decode_array(data["feature_mean"]),
            basis=decode_array(data["basis"]),
            class_means=decode_array(data["class_means"]),
            precision_factor=decode_array(data["precision_factor"]),
            residual_variance=float(data["residual_variance"]),
            rotation_weights=decode_array(data["rotation_weights"]),
            rotation_bias=float(data["rotation_bias"]),
            ood_threshold=float(data["ood_threshold"]),
            rotation_threshold=float(data["rotation_threshold"]),
            other_weights=(
                decode_array(data["other_weights"]) if "other_weights" in data else None
            ),
            other_bias=float(data.get("other_bias", 0.0)),
            other_threshold=float(data.get("other_threshold", 1.0)),
            figures=dict(data.get("figures", {})),
        )
