"""Fit and calibrate the content check (``pulmoscreen.model.content``) for a trained model.

The Gaussians and the orientation classifier are fitted on training-split chest images of the
model's own split, the "not a chest radiograph" classifier on those and on pydicom-data images of
other modalities and body parts (:data:`NEGATIVE_TESTDATA`, never used to evaluate), the
thresholds set on validation-split chest images at a fixed false-reject rate, and the figures
measured on test-split images, per source. Sources the
model was not trained on are split the same way (patient-disjoint, seed of the card). A few
thousand forward passes in all: the images are sampled, evenly per source.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pulmoscreen.model import ContentCheck, ModelCard, card_path_for, predict_with_features
from pulmoscreen.samples import pydicom_data_file
from training.dataset import Sample, discover, split_samples
from training.images import model_input_for

log = logging.getLogger(__name__)

Runner = Any
# rotations of a model input, as np.rot90's k (counter-clockwise quarter turns)
QUARTER_TURNS = (1, 3)


@dataclass(frozen=True)
class FitConfig:
    """How many images of each source, per split and role, and the false-reject target."""

    n_train: int = 140
    n_val: int = 200
    n_test: int = 200
    n_train_rotated: int = 60
    n_train_flipped: int = 30
    n_test_rotated: int = 30
    components: int = 128
    false_reject: float = 0.005
    seed: int = 0
    negative_variants: int = 48
    other_regularisation: float = 0.03


def model_splits(card: ModelCard, roots: Sequence[Path]) -> tuple[dict[str, list[Sample]], str]:
    """Train/val/test of every source under ``roots``: the model's own split (rebuilt from its
    card, as ``training/train.py`` made it) for the sources it was trained on, the same
    patient-disjoint rule for the others. Also says whether the model's split was matched."""
    from training.finalize import split_digests
    from training.train import make_splits

    training = card.details.get("training") or {}
    trained_on = {Path(p).name for p in training.get("data", [])}
    seed = int(training.get("seed", 0))
    mine = [r for r in roots if r.name in trained_on]
    others = [r for r in roots if r.name not in trained_on]
    splits: dict[str, list[Sample]] = {"train": [], "val": [], "test": []}
    note = "no source of the model's training data given"
    if mine:
        ours = make_splits(discover(mine), hold_out=training.get("hold_out", []), seed=seed)
        expected = card.details.get("split_digests") or {}
        same = all(split_digests(ours).get(k) == v for k, v in expected.items() if k in ours)
        note = (
            "the model's own split (digests match its card)"
            if same and len(mine) == len(trained_on) and expected
            else "rebuilt with the model's rule and seed; digests differ from its card"
        )
        for name in splits:
            splits[name] += ours.get(name, [])
    for root in others:
        for name, items in split_samples(discover([root]), seed=seed).items():
            splits[name] += items
    return splits, note


def _pick(items: list[Sample], n: int, rng: np.random.Generator) -> list[Sample]:
    """``n`` samples of each source (all when fewer), in a reproducible order."""
    out: list[Sample] = []
    for source in sorted({s.source for s in items}):
        of_source = [s for s in items if s.source == source]
        idx = rng.permutation(len(of_source))[:n]
        out += [of_source[i] for i in sorted(idx)]
    return out


def extract(
    runner: Runner,
    inputs: Callable[[int], NDArray[np.float32]],
    n: int,
    *,
    batch: int = 32,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Probabilities and features of ``n`` model inputs, made ``batch`` at a time."""
    probs, feats = [], []
    for start in range(0, n, batch):
        chunk = np.stack([inputs(i) for i in range(start, min(n, start + batch))])
        p, f = predict_with_features(runner, chunk.astype(np.float32))
        probs.append(p)
        feats.append(f)
    return np.concatenate(probs), np.concatenate(feats)


def _features_of(
    runner: Runner,
    samples: list[Sample],
    spec: Any,
    *,
    turns: Sequence[int] | None = None,
    flips: bool = False,
) -> NDArray[np.float32]:
    """Features of each sample's model input, rotated by ``turns[i]`` quarter turns, or (with
    ``flips``) mirrored, turned upside down or both, cycling through the three."""

    def one(i: int) -> NDArray[np.float32]:
        x = model_input_for(samples[i].path, spec)
        if turns is not None:
            x = np.rot90(x, k=turns[i], axes=(0, 1))
        if flips:
            x = [x[:, ::-1], x[::-1, :], x[::-1, ::-1]][i % 3]
        return np.ascontiguousarray(x)

    return extract(runner, one, len(samples))[1]


def fit_gaussians(
    features: NDArray[np.floating[Any]], labels: Sequence[str], components: int
) -> dict[str, Any]:
    """Class means and one shared covariance (Ledoit-Wolf shrinkage) in the span of the main
    principal components, and the residual's mean per-dimension variance."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    basis = vt[:components].T
    coords = centred @ basis
    names = sorted(set(labels))
    index = np.array([names.index(label) for label in labels])
    class_means = np.stack([coords[index == c].mean(axis=0) for c in range(len(names))])
    cov = LedoitWolf().fit(coords - class_means[index]).covariance_
    factor = np.linalg.cholesky(np.linalg.inv(cov))
    residual = centred - coords @ basis.T
    dof = max(1, int(np.sum(residual.var(axis=0) > 1e-12)))
    return {
        "feature_mean": mean,
        "basis": basis,
        "class_means": class_means,
        "precision_factor": factor,
        "residual_variance": float(np.sum(residual**2) / len(x) / dof),
    }


def fit_refusal(
    upright: NDArray[np.floating[Any]],
    rotated: NDArray[np.floating[Any]],
    *,
    mean: NDArray[np.floating[Any]],
    basis: NDArray[np.floating[Any]],
    regularisation: float = 1.0,
) -> tuple[NDArray[np.float64], float]:
    """Logistic regression on the basis' standardised coordinates: rotated, or otherwise
    refused (1), vs upright or flipped chest (0); weights returned for the raw coordinates.
    ``regularisation`` is scikit-learn's ``C`` (smaller: stronger)."""
    from sklearn.linear_model import LogisticRegression

    coords = (np.concatenate([upright, rotated]) - mean) @ basis
    target = np.r_[np.zeros(len(upright)), np.ones(len(rotated))]
    scale = coords.std(axis=0) + 1e-9
    clf = LogisticRegression(C=regularisation, max_iter=5000, class_weight="balanced")
    clf.fit(coords / scale, target)
    return clf.coef_[0] / scale, float(clf.intercept_[0])


def _rate(mask: NDArray[np.bool_]) -> float:
    return round(float(np.mean(mask)), 4) if len(mask) else float("nan")


def per_source(sources: Sequence[str], refused: NDArray[np.bool_]) -> dict[str, dict[str, Any]]:
    """Per source: images and the fraction refused."""
    src = np.asarray(sources)
    return {
        s: {"images": int(np.sum(src == s)), "refused": _rate(refused[src == s])}
        for s in sorted(set(sources))
    }


def _threshold(scores: NDArray[np.float64], sources: Sequence[str], false_reject: float) -> float:
    """The score that refuses at most ``false_reject`` of each source's validation images:
    the largest of the per-source quantiles (a pooled quantile lets a small source pay)."""
    src = np.asarray(sources)
    return float(max(np.quantile(scores[src == s], 1.0 - false_reject) for s in set(sources)))


def build_check(
    feats: dict[str, NDArray[np.float32]],
    picked: dict[str, list[Sample]],
    config: FitConfig,
    negatives: NDArray[np.float32] | None = None,
) -> ContentCheck:
    """Fit on the training roles (and ``negatives``, features of images that are no chest
    radiograph, when given), set every threshold on validation chest images."""
    gauss = fit_gaussians(feats["train"], [s.label for s in picked["train"]], config.components)
    upright = np.concatenate([feats["train"], feats["train_flipped"]])
    weights, bias = fit_refusal(
        upright, feats["train_rotated"], mean=gauss["feature_mean"], basis=gauss["basis"]
    )
    other_weights, other_bias = None, 0.0
    if negatives is not None and len(negatives):
        other_weights, other_bias = fit_refusal(
            upright,
            negatives,
            mean=gauss["feature_mean"],
            basis=gauss["basis"],
            regularisation=config.other_regularisation,
        )
    draft = ContentCheck(
        version="draft",
        feature_mean=gauss["feature_mean"],
        basis=gauss["basis"],
        class_means=gauss["class_means"],
        precision_factor=gauss["precision_factor"],
        residual_variance=gauss["residual_variance"],
        rotation_weights=weights,
        rotation_bias=bias,
        ood_threshold=1.0,
        rotation_threshold=1.0,
        other_weights=other_weights,
        other_bias=other_bias,
    )
    sources = [s.source for s in picked["val"]]
    ood_threshold = _threshold(draft.distances(feats["val"]), sources, config.false_reject)
    rotation_threshold = _threshold(draft.p_rotated(feats["val"]), sources, config.false_reject)
    # never below one half: the classifier's own decision boundary
    rotation_threshold = max(rotation_threshold, 0.5)
    other_threshold = 1.0
    p_other = draft.p_other(feats["val"])
    if p_other is not None:
        other_threshold = max(_threshold(p_other, sources, config.false_reject), 0.5)
    fitted = replace(
        draft,
        ood_threshold=ood_threshold,
        rotation_threshold=rotation_threshold,
        other_threshold=other_threshold,
    )
    digest = hashlib.sha256(json.dumps(fitted.to_dict(), sort_keys=True).encode()).hexdigest()
    kind = "maha-rot-other" if other_weights is not None else "maha-rot"
    return replace(fitted, version=f"content-{kind}-{digest[:8]}")


def calibration_figures(
    check: ContentCheck,
    feats: dict[str, NDArray[np.float32]],
    picked: dict[str, list[Sample]],
) -> dict[str, Any]:
    """False-reject rate per source on val and test chest images; rotated chests refused."""
    out: dict[str, Any] = {}
    for role in ("val", "test"):
        refused = ~check.score(feats[role]).passed
        out[f"{role}_chest_false_reject"] = {
            "all": _rate(refused),
            "per_source": per_source([s.source for s in picked[role]], refused),
        }
    refused = ~check.score(feats["test_rotated"]).passed
    out["test_rotated_90_270_refused"] = {
        "all": _rate(refused),
        "per_source": per_source([s.source for s in picked["test_rotated"]], refused),
    }
    return out


def fit_content_check(
    runner: Runner,
    card: ModelCard,
    roots: Sequence[Path],
    config: FitConfig | None = None,
    *,
    cache_dir: Path | None = None,
) -> ContentCheck:
    """The content check for the model ``runner`` serves, fitted and calibrated on the chest
    images under ``roots`` (one folder per source, ``<label>/<file>`` inside)."""
    config = config or FitConfig()
    splits, split_note = model_splits(card, roots)
    rng = np.random.default_rng(config.seed)
    picked = {
        "train": _pick(splits["train"], config.n_train, rng),
        "val": _pick(splits["val"], config.n_val, rng),
        "test": _pick(splits["test"], config.n_test, rng),
    }
    picked["train_rotated"] = _pick(splits["train"], config.n_train_rotated, rng)
    picked["train_flipped"] = _pick(splits["train"], config.n_train_flipped, rng)
    picked["test_rotated"] = _pick(splits["test"], config.n_test_rotated, rng)
    turns = {
        role: [QUARTER_TURNS[i % 2] for i in range(len(picked[role]))]
        for role in ("train_rotated", "test_rotated")
    }
    feats = _cached_features(runner, card, picked, turns, cache_dir)
    negative_inputs, negative_files = negative_examples(card.preprocess, config)
    negatives = extract(runner, lambda i: negative_inputs[i], len(negative_inputs))[1]
    check = build_check(feats, picked, config, negatives if len(negative_inputs) else None)
    figures = {
        "fitted": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_version": card.version,
        "split": split_note,
        "false_reject_target_per_part": config.false_reject,
        "images": {role: len(items) for role, items in picked.items()},
        "components": config.components,
        "negatives": {
            "files": negative_files,
            "variants_each": config.negative_variants,
            "images": len(negative_inputs),
            "regularisation_C": config.other_regularisation,
        },
        **calibration_figures(check, feats, picked),
    }
    return replace(check, figures=figures)


def _cached_features(
    runner: Runner,
    card: ModelCard,
    picked: dict[str, list[Sample]],
    turns: dict[str, list[int]],
    cache_dir: Path | None,
) -> dict[str, NDArray[np.float32]]:
    """Features of every role, from ``cache_dir`` when this model and these images were seen."""
    key = hashlib.sha256(
        json.dumps(
            [
                card.sha256,
                card.preprocess.to_dict(),
                {r: [s.sha256 for s in v] for r, v in picked.items()},
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"content_features_{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        with np.load(path) as data:
            return {role: data[role] for role in picked}
    spec = card.preprocess
    feats = {}
    for role, items in picked.items():
        log.info("content check: features of %d %s images", len(items), role)
        feats[role] = _features_of(
            runner, items, spec, turns=turns.get(role), flips=role == "train_flipped"
        )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **feats)
    return feats


def write_check(model_path: Path, check: ContentCheck) -> ModelCard:
    """Put ``check`` into the card beside ``model_path`` (the weights are not touched)."""
    card_file = card_path_for(model_path)
    card = replace(ModelCard.load(card_file), content_check=check)
    card.save(card_file)
    return card


# pydicom-data / pydicom test images that are no chest radiograph (never used to fit)
NON_CHEST_TESTDATA = (
    "RG3_UNCR.dcm",  # CR, extremity
    "693_UNCR.dcm",  # CT
    "MR2_UNCR.dcm",  # MR
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # MR abdomen
    "US1_UNCR.dcm",  # US
    "OBXXXX1A.dcm",  # US, obstetric
    "JPEG2000_UNC.dcm",  # NM whole body
    "CT_small.dcm",  # CT (128 px)
    "MR_small.dcm",  # MR (64 px)
)
CHEST_TESTDATA = ("RG1_UNCR.dcm",)
# pydicom-data images that are no chest radiograph, used to FIT the "not a chest radiograph"
# part: other modalities, body parts, segmentations and screen captures. Disjoint from the
# evaluation corpus above and from tests/unit/test_content_real.py's files, and from every
# other encoding or crop of the same images (MR_small, CT_small, 693, MR2, RG2, RG3, US1, the
# obstetric US, the Siemens MR and the NM whole body are evaluation only; pydicom's
# examples_rgb_color, examples_palette and examples_overlay are crops of three of them).
NEGATIVE_TESTDATA = (
    "J2K_pixelrep_mismatch.dcm",  # CT head
    "bad_sequence.dcm",  # CT neck
    "eCT_Supplemental.dcm",  # CT
    "explicit_VR-UN.dcm",  # CT pancreas
    "emri_small.dcm",  # MR head (64 px)
    "image_dfl.dcm",  # OT
    "mlut_18.dcm",  # OT
    "vlut_04.dcm",  # OT
    "color-pl.dcm",  # US, colour
    "liver_1frame.dcm",  # SEG (a binary mask)
    "SC_jpeg_no_color_transform.dcm",  # secondary capture
    "GDCMJ2K_TextGBR.dcm",  # a picture of text
)
# the demo's real chest radiographs (test-split images of the model's sources)
SAMPLE_DATA = Path(__file__).resolve().parent.parent / "pulmoscreen" / "sample_data"


def negative_examples(spec: Any, config: FitConfig) -> tuple[list[NDArray[np.float32]], list[str]]:
    """Model inputs of :data:`NEGATIVE_TESTDATA`, ``config.negative_variants`` of each: a random
    crop (60 to 100 % a side), quarter turn, mirror, gamma and, for half of them, a low-resolution
    version (32 to 128 px a side), so that no single look stands for "not a chest". Empty when
    pydicom-data is not installed. Also the names of the files used."""
    import cv2

    from pulmoscreen.imaging import read_dicom, to_model_input

    rng = np.random.default_rng(config.seed + 1)
    inputs: list[NDArray[np.float32]] = []
    used: list[str] = []
    for name in NEGATIVE_TESTDATA:
        path = pydicom_data_file(name)
        if path is None:
            continue
        pixels = np.asarray(read_dicom(path, validate=False).pixels, dtype=np.float32)
        grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
        used.append(name)
        for _ in range(config.negative_variants):
            h, w = grey.shape
            f = rng.uniform(0.6, 1.0)
            ch, cw = max(8, int(h * f)), max(8, int(w * f))
            y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = np.rot90(grey[y : y + ch, x : x + cw], int(rng.integers(0, 4)))
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crop = np.clip(crop, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
            if rng.random() < 0.5:
                side = int(rng.integers(32, 129))
                scale = side / max(crop.shape)
                size = (max(4, round(crop.shape[1] * scale)), max(4, round(crop.shape[0] * scale)))
                crop = cv2.resize(np.ascontiguousarray(crop), size, interpolation=cv2.INTER_AREA)
            inputs.append(to_model_input(np.ascontiguousarray(crop, dtype=np.float32), spec))
    return inputs, used


def corpus_pixels(shared_dicom: Path | None) -> dict[str, tuple[str, NDArray[Any]]]:
    """The evaluation corpus as display pixels: ``name -> (kind, pixels)``, kind ``chest`` or
    ``not_chest``. Non-chest radiographs and other modalities (pydicom-data, the shared
    ``other_cr``), chests rotated by 90 and 270 degrees (not frontal as stored), synthetic
    phantoms (not radiographs), and the real chest DICOMs (which must pass)."""
    from pulmoscreen.imaging import read_dicom
    from pulmoscreen.synthetic import chest_phantom

    out: dict[str, tuple[str, NDArray[Any]]] = {}
    for name in NON_CHEST_TESTDATA + CHEST_TESTDATA:
        path = pydicom_data_file(name)
        if path is not None:
            kind = "chest" if name in CHEST_TESTDATA else "not_chest"
            out[name] = (kind, read_dicom(path, validate=False).pixels)
    if shared_dicom is not None:
        for path in sorted((shared_dicom / "other_cr").glob("*")):
            try:
                out[f"other_cr/{path.name}"] = (
                    "not_chest",
                    read_dicom(path, validate=False).pixels,
                )
            except Exception as exc:  # RG2_JPLY does not decode: no content to check
                log.info("corpus: %s skipped (%s)", path.name, type(exc).__name__)
        for path in sorted((shared_dicom / "chest_cr").glob("*.dcm")):
            out[f"chest_cr/{path.name}"] = ("chest", read_dicom(path).pixels)
    for path in sorted(SAMPLE_DATA.glob("*.dcm")):
        out[f"sample_data/{path.name}"] = ("chest", read_dicom(path).pixels)
    chests = [(n, p) for n, (k, p) in out.items() if k == "chest"]
    for name, pixels in chests:
        out[f"{name} rotated 90"] = ("not_chest", np.rot90(pixels, 1))
        out[f"{name} rotated 270"] = ("not_chest", np.rot90(pixels, 3))
        out[f"{name} upside down"] = ("chest", pixels[::-1])
        out[f"{name} mirrored"] = ("chest", pixels[:, ::-1])
    for seed in (1, 2, 3):
        out[f"synthetic phantom {seed}"] = ("not_chest", chest_phantom(512, 512, seed=seed))
    return out


def score_corpus(
    runner: Runner, card: ModelCard, check: ContentCheck, shared_dicom: Path | None
) -> dict[str, dict[str, Any]]:
    """Each corpus image's content score and whether it was refused (as it should be)."""
    from pulmoscreen.imaging import to_model_input

    corpus = corpus_pixels(shared_dicom)
    names = list(corpus)
    inputs = [to_model_input(corpus[n][1], card.preprocess) for n in names]
    _, feats = extract(runner, lambda i: inputs[i], len(names))
    scores = check.score(feats)
    return {
        name: {
            "kind": corpus[name][0],
            "score": round(float(scores.score[i]), 3),
            "distance": round(float(scores.distance[i]), 1),
            "p_rotated": round(float(scores.p_rotated[i]), 3),
            "refused": bool(not scores.passed[i]),
        }
        for i, name in enumerate(names)
    }
