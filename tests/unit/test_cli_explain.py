"""`pulmoscreen explain FILE -o out.png`: the heatmap over the model input, and the result."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from pulmoscreen.cli import app
from pulmoscreen.config import get_settings
from pulmoscreen.domain import LABELS
from pulmoscreen.imaging import read_dicom, to_model_input
from pulmoscreen.model.build import load_screening_model
from pulmoscreen.model.explain import feature_map_model, heatmaps_for, overlay
from tests.factories import TINY_SPEC, make_cxr_dicom, store_calibration


@pytest.fixture
def run(tiny_model_path, monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """Invoke ``pulmoscreen`` with the tiny model served on Keras, from ``tmp_path``."""
    monkeypatch.setenv("PULMO_MODEL_PATH", str(tiny_model_path))
    monkeypatch.setenv("PULMO_INFERENCE_BACKEND", "keras")
    monkeypatch.chdir(tmp_path)

    def invoke(  # type: ignore[no-untyped-def]
        *args: str, thresholds: dict[str, float] | None = None, database: str | None = None
    ):
        if database is not None:
            monkeypatch.setenv("PULMO_DATABASE_URL", database)
        if thresholds is not None:
            monkeypatch.setenv("PULMO_THRESHOLDS", json.dumps(thresholds))
        get_settings.cache_clear()
        try:
            return CliRunner().invoke(app, ["explain", *args])
        finally:
            get_settings.cache_clear()

    yield invoke
    from worker.inference import served_model

    served_model.cache_clear()


class TestExplainCommand:
    def test_writes_the_overlay_and_prints_the_flagged_result(self, run, tmp_path, tiny_model_path):
        dicom = make_cxr_dicom(tmp_path / "in", seed=3)
        out = tmp_path / "out" / "heat.png"
        result = run(str(dicom), "-o", str(out), thresholds={"tuberculosis": 0.0})
        assert result.exit_code == 0, result.output
        assert "FLAGGED" in result.output
        assert "heatmap of tuberculosis" in result.output
        assert "not a diagnosis" in result.output
        for label in LABELS:
            assert label in result.output
        written = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
        # the same overlay as the core computes from the model's feature map
        model = load_screening_model(tiny_model_path, labels=LABELS).model
        batch = to_model_input(read_dicom(dicom).pixels, TINY_SPEC)[None]
        _, _, maps = feature_map_model(model).predict_on_batch(batch)
        kernel = model.get_layer("probs").get_weights()[0]
        [heat] = heatmaps_for(np.asarray(maps), kernel, [LABELS.index("tuberculosis")], size=32)
        assert written.shape == (32, 32, 3)
        assert np.abs(written.astype(int) - overlay(batch[0, :, :, 0], heat)).max() <= 1

    def test_an_unflagged_file_shows_the_most_probable_disease(self, run, tmp_path):
        dicom = make_cxr_dicom(tmp_path, seed=4)
        result = run(str(dicom), thresholds={"tuberculosis": 1.01, "pneumonia": 1.01})
        assert result.exit_code == 0, result.output
        assert "not flagged" in result.output
        assert (tmp_path / f"{dicom.name}.heatmap.png").is_file()

    def test_a_grey_image_file_and_a_chosen_label(self, run, tmp_path):
        picture = tmp_path / "chest.png"
        cv2.imwrite(str(picture), np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1)))
        result = run(str(picture), "--label", "pneumonia", "-o", str(tmp_path / "o.png"))
        assert result.exit_code == 0, result.output
        assert "heatmap of pneumonia" in result.output
        assert cv2.imread(str(tmp_path / "o.png")).shape == (32, 32, 3)

    def test_a_refused_file_writes_nothing(self, run, tmp_path):
        dicom = make_cxr_dicom(tmp_path, seed=5, ViewPosition="LL")
        result = run(str(dicom), "-o", str(tmp_path / "o.png"))
        assert result.exit_code == 2
        assert "not_frontal" in result.output
        assert not (tmp_path / "o.png").exists()


class TestExplainFlagsAsTheWorker:
    """The flag printed is the worker's: under the site's active calibration of the served
    model, unless PULMO_THRESHOLDS overrides it, and the output says which."""

    def test_the_site_calibration_flags(self, run, tmp_path, sqlite_url, tiny_model_path):
        dicom = make_cxr_dicom(tmp_path / "in", seed=3)
        calibration = store_calibration(sqlite_url, tiny_model_path, {"tuberculosis": 0.0})
        result = run(str(dicom), database=sqlite_url)
        assert result.exit_code == 0, result.output
        assert "FLAGGED" in result.output
        assert f"site calibration {calibration}" in result.output
        assert "heatmap of tuberculosis" in result.output
        nobody = store_calibration(
            sqlite_url, tiny_model_path, {"tuberculosis": 1.01, "pneumonia": 1.01}
        )
        superseded = run(str(dicom), database=sqlite_url)
        assert "not flagged" in superseded.output
        assert f"site calibration {nobody}" in superseded.output
        everyone = store_calibration(sqlite_url, tiny_model_path, {"tuberculosis": 0.0})
        overridden = run(
            str(dicom), thresholds={"tuberculosis": 1.01, "pneumonia": 1.01}, database=sqlite_url
        )
        assert overridden.exit_code == 0, overridden.output
        assert "not flagged" in overridden.output
        assert "PULMO_THRESHOLDS" in overridden.output
        assert f"site calibration {everyone}" not in overridden.output

    def test_without_a_database_the_card_decides_and_says_so(self, run, tmp_path):
        dicom = make_cxr_dicom(tmp_path / "in", seed=3)
        missing = f"sqlite:///{tmp_path / 'none' / 'pulmo.db'}"
        result = run(str(dicom), database=missing)
        assert result.exit_code == 0, result.output
        assert "model card" in result.output
        assert not (tmp_path / "none").exists()

    def test_an_unreadable_database_is_said_and_the_card_decides(self, run, tmp_path):
        dicom = make_cxr_dicom(tmp_path / "in", seed=3)
        empty = tmp_path / "empty.db"
        empty.write_bytes(b"")  # a file without the schema: the query fails
        result = run(str(dicom), database=f"sqlite:///{empty}")
        assert result.exit_code == 0, result.output
        assert "site calibration could not be read" in result.output
        assert "model card" in result.output
