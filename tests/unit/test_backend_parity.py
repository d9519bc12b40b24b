"""Every backend and precision agrees with Keras float32 on real chest X-rays.

The shipped model on 30 images from each label folder of every source in ../shared/data/cxr:
the same predicted label for at least 99 % of images, every probability within 0.02, and the
same flag decisions (at the card's thresholds) for at least 99 %. The measured figures are
printed (``pytest -s``) and recorded in docs/performance.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pulmoscreen.config import REPO_ROOT, Settings
from pulmoscreen.domain import LABELS
from pulmoscreen.model import load_runner, predict_batch, score_probabilities
from pulmoscreen.model.backends import cpu_has_bf16

CXR = REPO_ROOT.parent / "shared" / "data" / "cxr"
PER_FOLDER = 30
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
MODEL = Settings().resolved_model_path()  # the shipped model unless PULMO_MODEL_PATH is set

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CXR.is_dir(), reason=f"real chest X-rays not found at {CXR} (../shared/data absent)"
    ),
    pytest.mark.skipif(
        MODEL is None, reason="no trained model: none shipped in models/ and none configured"
    ),
]
pytest.importorskip("openvino", reason="OpenVINO is not installed on this platform")


def _real_images() -> list[Path]:
    files: list[Path] = []
    for label_dir in sorted(p for p in CXR.glob("*/*") if p.is_dir() and p.name in LABELS):
        images = (f for f in label_dir.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files += sorted(images)[:PER_FOLDER]
    return files


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, object, np.ndarray]:
    from training.images import model_input_for

    loaded = load_runner(MODEL, labels=LABELS, backend="keras", precision="f32")
    spec = loaded.card.preprocess
    inputs = np.stack([model_input_for(f, spec) for f in _real_images()])
    probs = np.concatenate(
        [predict_batch(loaded.model, inputs[i : i + 32]) for i in range(0, len(inputs), 32)]
    )
    return inputs, loaded.card, probs


CANDIDATES = [("openvino", "f32"), ("openvino", "bf16"), ("keras", "bf16")]


@pytest.mark.parametrize(("backend", "precision"), CANDIDATES)
def test_backend_agrees_with_keras_float32(reference, tmp_path, backend, precision):
    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("this CPU has no native bf16 (AMX or AVX-512 BF16)")
    inputs, card, want = reference
    loaded = load_runner(
        MODEL,
        labels=LABELS,
        backend=backend,
        precision=precision,
        cache_dir=tmp_path,
    )
    got = np.concatenate(
        [predict_batch(loaded.model, inputs[i : i + 32]) for i in range(0, len(inputs), 32)]
    )
    same_label = float(np.mean(got.argmax(1) == want.argmax(1)))
    flags_want = [score_probabilities(p, card).flagged for p in want]
    flags_got = [score_probabilities(p, card).flagged for p in got]
    same_flag = float(np.mean(np.array(flags_want) == np.array(flags_got)))
    worst = float(np.abs(got - want).max())
    print(  # noqa: T201  (the measured agreement, shown with pytest -s)
        f"\n{loaded.model.describe()} vs keras f32 on {len(inputs)} real images: "
        f"label agreement {same_label:.4f}, flag agreement {same_flag:.4f}, "
        f"max |dp| {worst:.4f}"
    )
    assert len(inputs) >= 6 * PER_FOLDER
    assert same_label >= 0.99
    assert same_flag >= 0.99
    assert worst <= 0.02
