"""The content check: its card field, its scoring, its fit, and the worker refusing what is no
frontal chest radiograph (SQLite, the tiny model, no services)."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ingest import Ingestor
from pulmoscreen.db import session_factory
from pulmoscreen.domain import LABELS, RejectReason
from pulmoscreen.imaging import read_dicom, to_model_input
from pulmoscreen.model import (
    ContentCheck,
    ModelCard,
    card_path_for,
    load_runner,
    predict_batch,
    predict_with_features,
)
from pulmoscreen.model.backends import KerasRunner
from tests.factories import TINY_SPEC, make_cxr_dicom
from tests.unit.test_worker_attempts import predictions_per_image, rows, settings_for
from training.content import FitConfig, build_check
from worker.inference import predict_images

K = 4  # feature width of the tiny model


def hand_check(centre: np.ndarray, *, threshold: float, version: str = "hand-1") -> ContentCheck:
    """A check with one 'chest' class at ``centre``, unit covariance and no rotation part."""
    d = centre.shape[0]
    return ContentCheck(
        version=version,
        feature_mean=centre.astype(np.float32),
        basis=np.eye(d, dtype=np.float32),
        class_means=np.zeros((1, d), np.float32),
        precision_factor=np.eye(d, dtype=np.float32),
        residual_variance=0.0,
        rotation_weights=np.zeros(d, np.float32),
        rotation_bias=-20.0,
        ood_threshold=threshold,
        rotation_threshold=0.5,
    )


class TestModelCard:
    def test_a_check_survives_the_card_file_exactly(self, tmp_path):
        rng = np.random.default_rng(0)
        check = replace(
            hand_check(rng.normal(size=8), threshold=3.0),
            basis=rng.normal(size=(8, 8)).astype(np.float32),
            figures={"test_chest_false_reject": {"all": 0.004}},
        )
        card = ModelCard(version="v", labels=LABELS, thresholds={}, content_check=check)
        card.save(tmp_path / "m.card.json")
        loaded = ModelCard.load(tmp_path / "m.card.json").content_check
        assert loaded is not None
        features = rng.normal(size=(5, 8))
        np.testing.assert_array_equal(loaded.score(features).score, check.score(features).score)
        assert loaded.figures == check.figures

    def test_a_card_written_before_the_check_existed_still_loads(self):
        card = ModelCard.load(Path("models/pulmoscreen_resnet50.card.json"))
        old = {k: v for k, v in card.to_dict().items() if k != "content_check"}
        assert ModelCard.from_dict(old).content_check is None
        assert "content_check" not in replace(card, content_check=None).to_dict()


class TestContentCheckScore:
    def test_far_features_are_refused_and_near_ones_pass(self):
        check = hand_check(np.zeros(3), threshold=4.0)
        scores = check.score(np.array([[0.1, 0.0, 0.0], [3.0, 0.0, 0.0]]))
        assert scores.passed.tolist() == [True, False]
        assert scores.score[1] == pytest.approx(9.0 / 4.0)
        assert "refused" in scores.detail(1, check)

    def test_features_of_another_width_are_an_error_not_a_verdict(self):
        with pytest.raises(ValueError, match="expects"):
            hand_check(np.zeros(3), threshold=1.0).score(np.zeros((2, 5)))


class TestBuildCheck:
    """Fitted on made-up 'features': chest classes, their rotations, and things far away."""

    def test_threshold_keeps_each_source_false_reject_low_and_refuses_outliers(self):
        rng = np.random.default_rng(1)
        d = 40
        rot_shift = np.r_[np.full(5, 3.0), np.zeros(d - 5)]

        def chest(n, label_shift):
            return rng.normal(size=(n, d)) + label_shift

        from training.dataset import Sample

        def samples(n, source):
            return [
                Sample(Path(f"{i}.png"), ["normal", "pneumonia"][i % 2], source, "", "")
                for i in range(n)
            ]

        picked = {role: samples(400, "a") + samples(400, "b") for role in ("train", "val")}
        picked["train_flipped"] = samples(200, "a")
        picked["train_rotated"] = samples(200, "a")
        feats = {
            "train": chest(800, 0.0),
            "val": chest(800, 0.0),
            "train_flipped": chest(200, 0.0),
            "train_rotated": chest(200, rot_shift),
        }
        check = build_check(feats, picked, FitConfig(components=20, false_reject=0.005))
        fresh = check.score(chest(2000, 0.0))
        assert np.mean(~fresh.passed) < 0.02
        assert not check.score(chest(50, 6.0)).passed.any()  # far from every chest
        assert np.mean(~check.score(chest(200, rot_shift)).passed) > 0.9  # rotated
        assert check.version.startswith("content-maha-rot-")
        assert check.other_weights is None
        assert check.score(chest(5, 0.0)).p_other is None

    def test_images_of_other_kinds_teach_a_part_that_refuses_their_like(self):
        """A look the Gaussians alone let through (close to the chests) is refused once
        examples of it are given as negatives; the chests' false rejects stay low."""
        rng = np.random.default_rng(2)
        d = 40
        other_shift = np.r_[np.zeros(d - 12), np.full(12, 1.2)]  # near: inside the Gaussians

        from training.dataset import Sample

        def samples(n, source):
            return [Sample(Path(f"{i}.png"), "normal", source, "", "") for i in range(n)]

        def chest(n, shift=0.0):
            return rng.normal(size=(n, d)) + shift

        picked = {role: samples(400, "a") + samples(400, "b") for role in ("train", "val")}
        picked["train_flipped"] = samples(200, "a")
        picked["train_rotated"] = samples(200, "a")
        feats = {
            "train": chest(800),
            "val": chest(800),
            "train_flipped": chest(200),
            "train_rotated": chest(200, np.r_[np.full(5, 3.0), np.zeros(d - 5)]),
        }
        config = FitConfig(components=d, false_reject=0.005, other_regularisation=1.0)
        without = build_check(feats, picked, config)
        with_negatives = build_check(feats, picked, config, negatives=chest(300, other_shift))
        assert with_negatives.version.startswith("content-maha-rot-other-")
        lookalikes = chest(200, other_shift)
        assert np.mean(~without.score(lookalikes).passed) < 0.5
        assert np.mean(~with_negatives.score(lookalikes).passed) > 0.8
        assert np.mean(~with_negatives.score(chest(2000)).passed) < 0.03
        scores = with_negatives.score(lookalikes[:3])
        assert scores.p_other is not None
        assert "p(not a chest radiograph)" in scores.detail(0, with_negatives)

    def test_the_part_survives_the_card_file_and_old_checks_load_without_it(self, tmp_path):
        rng = np.random.default_rng(3)
        check = replace(
            hand_check(np.zeros(6), threshold=50.0),
            other_weights=rng.normal(size=6).astype(np.float32),
            other_bias=-1.0,
            other_threshold=0.8,
        )
        card = ModelCard(version="v", labels=LABELS, thresholds={}, content_check=check)
        card.save(tmp_path / "m.card.json")
        loaded = ModelCard.load(tmp_path / "m.card.json").content_check
        assert loaded is not None
        features = rng.normal(size=(9, 6)) * 3
        np.testing.assert_array_equal(loaded.score(features).score, check.score(features).score)
        assert (check.score(features).score >= check.p_other(features) / 0.8).all()
        old = {k: v for k, v in check.to_dict().items() if not k.startswith("other_")}
        assert ContentCheck.from_dict(old).other_weights is None


def tiny_features(model_path: Path, pixels: np.ndarray) -> np.ndarray:
    loaded = load_runner(model_path, labels=LABELS, backend="keras", precision="f32")
    batch = to_model_input(pixels, TINY_SPEC)[None].astype(np.float32)
    return predict_with_features(loaded.model, batch)[1][0]


def stripes(n: int = 512) -> np.ndarray:
    """No chest: vertical bars."""
    return np.tile((np.arange(n) // 16 % 2).astype(np.float64), (n, 1))


@pytest.fixture
def checked_model(tmp_path, tiny_model_path) -> Path:
    """The tiny model with a check that accepts the phantom chest and refuses stripes."""
    folder = tmp_path / "model"
    folder.mkdir()
    model = folder / tiny_model_path.name
    shutil.copyfile(tiny_model_path, model)
    card = ModelCard.load(card_path_for(tiny_model_path))
    card.save(card_path_for(model))
    chest = read_dicom(make_cxr_dicom(tmp_path / "ref", seed=40)).pixels
    centre = tiny_features(model, chest)
    far = float(np.sum((tiny_features(model, stripes()) - centre) ** 2))
    assert far > 0
    replace(card, content_check=hand_check(centre, threshold=far / 2)).save(card_path_for(model))
    return model


class TestRunnerFeatures:
    @pytest.mark.parametrize("backend", ["keras", "openvino"])
    def test_features_come_with_the_same_probabilities(self, backend, tiny_model_path, tmp_path):
        loaded = load_runner(
            tiny_model_path, labels=LABELS, backend=backend, precision="f32", cache_dir=tmp_path
        )
        batch = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
        probs, features = predict_with_features(loaded.model, batch)
        np.testing.assert_allclose(probs, predict_batch(loaded.model, batch), atol=1e-5)
        assert features.shape == (3, K)
        if isinstance(loaded.model, KerasRunner):
            assert np.all(features >= 0)  # pooled ReLU activations


def ingest_three(drop: Path, url: str) -> list[int]:
    """Two phantom chests and stripes under a frontal-chest-CR header, queued."""
    make_cxr_dicom(drop, seed=40, filename="chest_a.dcm")
    make_cxr_dicom(drop, seed=40, filename="chest_b.dcm", SOPInstanceUID="1.2.3.4.1")
    # the header says a frontal chest CR; the pixels do not
    make_cxr_dicom(drop, pixels=stripes(), seed=41, filename="stripes_says_chest.dcm")
    outcomes = Ingestor(
        drop, sessions=session_factory(url), enqueue=lambda ids: None, stable_seconds=0
    ).scan_once()
    assert [o.status for o in outcomes] == ["queued"] * 3
    return [o.image_id for o in outcomes]


class TestWorkerContentCheck:
    def test_what_is_no_chest_is_quarantined_coded_and_every_score_kept(
        self, tmp_path, sqlite_url, checked_model
    ):
        drop = tmp_path / "inbox"
        ids = ingest_three(drop, sqlite_url)
        settings = settings_for(sqlite_url, checked_model, openvino_cache=tmp_path / "ov")
        predict_images(settings, ids, worker="w")
        found = rows(sqlite_url)
        refused = [i for i in ids if found[i].status == "rejected"]
        assert len(refused) == 1
        image = found[refused[0]]
        assert "stripes" in image.source_path
        assert image.reject_reason == RejectReason.NOT_CHEST_CONTENT.value
        assert "content score" in image.reject_detail
        assert image.content_score >= 1.0
        assert "/quarantine/" in image.stored_path
        sidecar = Path(image.stored_path).with_name(Path(image.stored_path).name + ".reason.json")
        assert json.loads(sidecar.read_text())["reason"] == "not_chest_content"
        accepted = [i for i in ids if i not in refused]
        assert all(found[i].content_score < 1.0 for i in accepted)
        assert predictions_per_image(sqlite_url) == dict.fromkeys(accepted, 1)

    def test_a_card_without_a_check_scores_everything_and_says_so(
        self, tmp_path, sqlite_url, tiny_model_path, caplog
    ):
        ids = ingest_three(tmp_path / "inbox", sqlite_url)
        with caplog.at_level(logging.WARNING, logger="worker.inference"):
            predict_images(
                settings_for(sqlite_url, tiny_model_path, openvino_cache=tmp_path / "ov"),
                ids,
                worker="w",
            )
        found = rows(sqlite_url)
        assert {found[i].status for i in ids} == {"predicted"}
        assert {found[i].content_score for i in ids} == {None}
        assert any("no content check" in r.getMessage() for r in caplog.records)


# What TensorFlow, XLA and absl print on their own when they load (CPU and GPU builds).
TF_CHATTER = (
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized",
    "Unable to register cu",
    "TF-TRT Warning",
    "absl::InitializeLog()",
    "cpu_feature_guard",
    "cudart_stub",
)


class TestPreviewContentScore:
    def test_preview_prints_the_score_and_the_verdict(self, tmp_path, checked_model, capsys):
        from pulmoscreen.cli import write_preview

        settings = settings_for("sqlite://", checked_model, openvino_cache=tmp_path / "ov")
        chest = make_cxr_dicom(tmp_path / "in", seed=40)
        assert write_preview(settings, chest, tmp_path / "chest.png") == 0
        assert "content check: passes" in capsys.readouterr().out
        other = make_cxr_dicom(tmp_path / "in", pixels=stripes(), seed=41)
        assert write_preview(settings, other, tmp_path / "other.png") == 3
        out = capsys.readouterr().out
        assert "refused: not_chest_content" in out
        assert "content score" in out

    def test_the_command_loads_tensorflow_without_its_start_up_chatter(
        self, tmp_path, checked_model
    ):
        from tests.integration.conftest import pulmo_env, run_cli

        env = pulmo_env(PULMO_MODEL_PATH=str(checked_model), PULMO_DATA_DIR=str(tmp_path / "s"))
        del env["TF_CPP_MIN_LOG_LEVEL"]  # the command's own default is under test
        chest = make_cxr_dicom(tmp_path / "in", seed=40)
        done = run_cli("preview", str(chest), "-o", "chest.png", env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "content check: passes" in done.stdout  # the model was loaded and run
        printed = (done.stdout + done.stderr).splitlines()
        assert [line for line in printed if any(c in line for c in TF_CHATTER)] == []


class TestDemoFolder:
    def test_real_chests_and_lying_files_pass_every_header_rule(self, tmp_path):
        pytest.importorskip("pydicom.data", reason="pydicom-data is not installed")
        from pulmoscreen.domain import Rejected
        from pulmoscreen.samples import build_demo_folder

        inbox = tmp_path / "inbox"
        build_demo_folder(inbox)
        chests = sorted(p.name for p in inbox.glob("real_chest_*"))
        assert len(chests) >= 5  # RG1 and the four shipped real chest X-rays
        lying = sorted((inbox / "LYING_HEADERS").glob("*.dcm"))
        assert len(lying) == 3
        for path in [*inbox.glob("real_chest_*"), *lying]:
            assert read_dicom(path).pixels.size  # only the content can refuse them
        with pytest.raises(Rejected, match="not_chest"):
            read_dicom(inbox / "extremity_RG3.dcm")
        # the one drawn phantom left is there to be refused
        phantoms = {p.name for p in inbox.rglob("*.dcm") if "synthetic" in p.name}
        assert phantoms == {"synthetic_phantom_says_chest.dcm"}


SHENZHEN = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "cxr" / "shenzhen_128"


class TestFitCommand:
    @pytest.mark.skipif(not SHENZHEN.is_dir(), reason=f"{SHENZHEN} is absent")
    def test_fit_writes_the_check_into_the_models_card_and_leaves_the_weights(
        self, tmp_path, tiny_model_path, monkeypatch
    ):
        from typer.testing import CliRunner

        from pulmoscreen.cli import app
        from pulmoscreen.storage import sha256_file

        model = tmp_path / tiny_model_path.name
        shutil.copyfile(tiny_model_path, model)
        shutil.copyfile(card_path_for(tiny_model_path), card_path_for(model))
        before = sha256_file(model)
        monkeypatch.setenv("PULMO_DATA_DIR", str(tmp_path / "state"))
        args = ["content-check", "fit", "--model", str(model), "--data", str(SHENZHEN)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        card = ModelCard.load(card_path_for(model))
        assert card.content_check is not None
        assert card.version == ModelCard.load(card_path_for(tiny_model_path)).version
        per_source = card.content_check.figures["test_chest_false_reject"]["per_source"]
        assert set(per_source) == {"shenzhen_128"}
        assert per_source["shenzhen_128"]["images"] > 0
        assert "test chest images refused: shenzhen_128" in result.output
        assert sha256_file(model) == before


class TestModelsTable:
    def test_the_models_row_keeps_the_checks_figures_not_its_arrays(self, sqlite_url):
        from sqlalchemy import select

        from pulmoscreen.db import ModelRow, queries

        check = replace(hand_check(np.zeros(3), threshold=2.0), figures={"split": "own"})
        card = ModelCard(version="v-cc", labels=LABELS, thresholds={}, content_check=check)
        with session_factory(sqlite_url).begin() as session:
            queries.register_model(session, card)
        with session_factory(sqlite_url)() as session:
            stored = session.scalars(select(ModelRow.card)).one()
        assert stored["content_check"] == {
            "version": "hand-1",
            "ood_threshold": 2.0,
            "rotation_threshold": 0.5,
            "figures": {"split": "own"},
        }


class TestNegativesAreNotTheEvaluation:
    def test_no_negative_is_an_evaluation_image_in_another_encoding_or_crop(self):
        """The "not a chest radiograph" part is fitted on pydicom-data images that are never
        the ones it is judged on (the corpus in the card, tests/unit/test_content_real.py):
        no shared name, and no negative that matches an evaluation image's layout (pydicom's
        examples_overlay, a crop of the Siemens MR, scores 0.66; the negatives at most 0.57)."""
        pytest.importorskip("pydicom.data", reason="pydicom-data is not installed")
        import cv2
        from pydicom.data import get_testdata_file

        from training.content import CHEST_TESTDATA, NEGATIVE_TESTDATA, NON_CHEST_TESTDATA

        judged = set(NON_CHEST_TESTDATA) | set(CHEST_TESTDATA)
        assert not set(NEGATIVE_TESTDATA) & judged

        def layout(name: str) -> np.ndarray:
            pixels = read_dicom(Path(get_testdata_file(name)), validate=False).pixels
            grey = pixels.mean(axis=2) if pixels.ndim == 3 else pixels
            small = cv2.resize(grey.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
            return ((small - small.mean()) / (small.std() + 1e-9)).ravel()

        evaluation = {name: layout(name) for name in judged}
        for name in NEGATIVE_TESTDATA:
            mine = layout(name)
            closest = max(float(np.mean(mine * other)) for other in evaluation.values())
            assert closest < 0.6, f"{name} looks like an evaluation image ({closest:.2f})"
