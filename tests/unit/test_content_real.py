"""The shipped model's content check on real pixels: files made here from pydicom-data images
(and the shared DICOMs) with lying headers (CHEST, PA, CR/DX) pass every header rule and are
refused by their content; real chest radiographs pass.

Uses the check in the shipped model's card; when the card has none yet, fits one on a copy
(``training/content.py``, the model's own split of ``../shared/data/cxr``; features cached in
``var/content-cache``). None of these files is used to fit or calibrate the check.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import read_dicom
from pulmoscreen.model import LoadedModel, ModelCard, card_path_for, load_runner
from pulmoscreen.model import predict_with_features as features_of
from pulmoscreen.synthetic import chest_phantom
from tests.factories import make_cxr_dicom
from worker.inference import prepare_inputs

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "pulmoscreen_resnet50.npz"
SHARED = ROOT.parent / "shared" / "data"
SOURCES = ("kermany_pediatric_224", "mixed_tb", "nih_adult_512", "shenzhen_128", "tbx11k_tb_512")
SAMPLES = ROOT / "pulmoscreen" / "sample_data"


def pydicom_file(name: str) -> Path:
    pytest.importorskip("pydicom.data", reason="pydicom-data is not installed")
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    if not found:
        pytest.skip(f"{name} is not in this pydicom-data")
    return Path(found)


def small(pixels: np.ndarray, side: int = 512) -> np.ndarray:
    grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
    scale = side / max(grey.shape)
    size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
    return np.asarray(cv2.resize(grey.astype(np.float32), size, interpolation=cv2.INTER_AREA))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    if not SHIPPED.exists():
        pytest.skip("no shipped model in models/")
    if ModelCard.load(card_path_for(SHIPPED)).content_check is not None:
        return load_runner(SHIPPED, labels=LABELS, cache_dir=ROOT / "var" / "openvino")
    roots = [SHARED / "cxr" / s for s in SOURCES]
    if not all(r.is_dir() for r in roots):
        pytest.skip(f"the shipped card has no content check and {SHARED / 'cxr'} is absent")
    from training.content import fit_content_check, write_check

    copy = tmp_path_factory.mktemp("model") / SHIPPED.name
    shutil.copyfile(SHIPPED, copy)
    shutil.copyfile(card_path_for(SHIPPED), card_path_for(copy))
    loaded = load_runner(copy, labels=LABELS, cache_dir=ROOT / "var" / "openvino")
    check = fit_content_check(
        loaded.model, loaded.card, roots, cache_dir=ROOT / "var" / "content-cache"
    )
    write_check(copy, check)
    return load_runner(copy, labels=LABELS, cache_dir=ROOT / "var" / "openvino")


def content_scores(served: LoadedModel, files: dict[str, Path]) -> dict[str, float]:
    """Each file through the worker's own decode and preprocessing, then the check."""
    names = list(files)
    ids, batch, failures = prepare_inputs(dict(enumerate(files.values())), served.card.preprocess)
    assert failures == [], f"the headers were to pass every rule: {failures}"
    check = served.card.content_check
    assert check is not None
    scores = check.score(features_of(served.model, batch)[1]).score
    return {names[i]: float(s) for i, s in zip(ids, scores, strict=True)}


def lying_files(folder: Path) -> dict[str, Path]:
    """Non-chest and non-frontal pixels in files whose headers say frontal chest CR/DX."""
    chest = read_dicom(pydicom_file("RG1_UNCR.dcm")).pixels
    pixels = {
        "extremity CR (RG3)": read_dicom(pydicom_file("RG3_UNCR.dcm"), validate=False).pixels,
        "CT slice (693)": read_dicom(pydicom_file("693_UNCR.dcm"), validate=False).pixels,
        "MR (MR2)": read_dicom(pydicom_file("MR2_UNCR.dcm"), validate=False).pixels,
        "MR, 64 px (MR_small)": read_dicom(pydicom_file("MR_small.dcm"), validate=False).pixels,
        "ultrasound (US1)": read_dicom(pydicom_file("US1_UNCR.dcm"), validate=False).pixels,
        "chest rotated 90 (RG1)": np.rot90(chest),
        "chest rotated 270 (RG1)": np.rot90(chest, 3),
        "synthetic phantom": chest_phantom(512, 512, seed=3),
    }
    hip = SHARED / "dicom" / "other_cr" / "RG2_J2KR"
    if hip.exists():
        pixels["hip CR (RG2)"] = read_dicom(hip, validate=False).pixels
    return {
        name: make_cxr_dicom(
            folder,
            pixels=small(p),
            seed=500 + k,
            modality="DX" if k % 2 else "CR",
            filename=f"lying_{k}.dcm",
            BodyPartExamined="CHEST",
            ViewPosition="PA",
        )
        for k, (name, p) in enumerate(pixels.items())
    }


# Files the shipped check is known to let through, with what was measured. They are reported
# as expected failures (xfail), never dropped from the corpus: a model or check that refuses
# them turns the mark into a pass to be removed.
KNOWN_MISSES: dict[str, str] = {}
# (MR2, an MR slice under a CHEST/PA CR header, scored 0.22 under the 264fa849 model's first
# check; the check's "not a chest radiograph" part refuses it since.)


class TestContentCheckOnRealPixels:
    def test_every_non_chest_file_with_a_lying_header_is_refused(self, served, tmp_path):
        scores = content_scores(served, lying_files(tmp_path))
        assert len(scores) >= 8
        passed = {name: round(s, 2) for name, s in scores.items() if s < 1.0}
        unexpected = {name: s for name, s in passed.items() if name not in KNOWN_MISSES}
        assert unexpected == {}, f"scored as chest radiographs: {unexpected}"
        missed = sorted(set(passed) & set(KNOWN_MISSES))
        if missed:
            pytest.xfail("; ".join(f"{name} {KNOWN_MISSES[name]}" for name in missed))

    def test_real_chest_radiographs_pass(self, served, tmp_path):
        files = {"RG1 (pydicom-data)": pydicom_file("RG1_UNCR.dcm")}
        upright = small(read_dicom(files["RG1 (pydicom-data)"]).pixels)
        files["RG1 re-wrapped"] = make_cxr_dicom(tmp_path, pixels=upright, seed=600)
        files.update({f"sample {p.name}": p for p in sorted(SAMPLES.glob("*.dcm"))})
        siim = SHARED / "dicom" / "chest_cr" / "siim_acr_chest_jpeg_baseline.dcm"
        if siim.exists():
            files["SIIM-ACR chest CR"] = siim
        scores = content_scores(served, files)
        refused = {name: round(s, 2) for name, s in scores.items() if s >= 1.0}
        assert refused == {}, f"real chest radiographs refused: {refused}"
