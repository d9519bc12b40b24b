"""The nightly report's flagged list shows each flagged image's heatmap (HTML and PDF)."""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from pulmoscreen.config import Settings
from pulmoscreen.db import Image, session_factory
from pulmoscreen.model.explain import overlay
from reporting.charts import render_charts
from reporting.heatmaps import Overlay, load_overlays
from reporting.html import render_html
from reporting.pdf import HEATMAPS_PER_PAGE, page_count, write_pdf
from tests.unit.test_reporting import DAY, at, flagged, received, summarise
from tests.unit.test_worker_calibration import ingest
from tests.unit.test_worker_heatmaps import FLAG_ALL
from worker.inference import predict_images, served_model


def overlay_png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    rgb = overlay(rng.uniform(0, 255, (32, 32)), rng.uniform(0, 1, (8, 8)).astype(np.float32))
    return bytes(cv2.imencode(".png", rgb[:, :, ::-1])[1].tobytes())


@pytest.fixture(scope="module")
def day():  # type: ignore[no-untyped-def]
    rows = [flagged(at(DAY, 9, i), p_tb=0.6, p_pn=0.1) for i in range(HEATMAPS_PER_PAGE + 2)]
    rows.append(received(at(DAY, 12, 0)))
    return summarise(rows)


@pytest.fixture(scope="module")
def charts(day):  # type: ignore[no-untyped-def]
    return render_charts(day)


class TestHtml:
    def test_each_flagged_image_with_a_heatmap_shows_it(self, day, charts):
        first = day.flagged_images[0]
        overlays = {first.image_id: Overlay("tuberculosis", overlay_png(1))}
        page = render_html(day, charts, overlays)
        encoded = base64.b64encode(overlays[first.image_id].png).decode("ascii")
        assert f'src="data:image/png;base64,{encoded}"' in page
        assert 'alt="heatmap of tuberculosis"' in page
        assert page.count('alt="heatmap of') == 1  # the second has none: a dash, no image
        assert "not where a disease is" in page


class TestPdf:
    def test_heatmap_pages_follow_the_list(self, day, charts, tmp_path):
        from pypdf import PdfReader

        overlays = {
            f.image_id: Overlay("tuberculosis", overlay_png(k))
            for k, f in enumerate(day.flagged_images)
        }
        path = tmp_path / "summary.pdf"
        pages = write_pdf(day, path, charts, overlays)
        reader = PdfReader(io.BytesIO(path.read_bytes()))
        # totals, one list page, two heatmap pages (15 + 2), four charts
        assert len(reader.pages) == pages == page_count(day, len(overlays)) == 1 + 1 + 2 + 4
        text = reader.pages[2].extract_text()
        assert "Heatmaps · page 1 of 2" in text
        assert f"#1 {day.flagged_images[0].patient_id}" in text
        assert reader.pages[2].images  # the overlays are drawn
        assert page_count(day) == 1 + 1 + 4  # no heatmap, no heatmap page


class TestLoadOverlays:
    def test_the_workers_heatmaps_over_their_radiographs(
        self, sqlite_url, tiny_model_path, tmp_path, caplog
    ):
        ids = ingest(tmp_path / "in", sqlite_url, 3, seed=60)
        settings = Settings(
            database_url=sqlite_url, model_path=tiny_model_path, thresholds=FLAG_ALL
        )
        try:
            predict_images(settings, ids, worker="w1")
        finally:
            served_model.cache_clear()
        with session_factory(sqlite_url).begin() as session:  # one radiograph gone since
            gone = session.get(Image, ids[2])
            assert gone is not None
            Path(gone.stored_path).unlink()  # absolute: no storage root
        with caplog.at_level(logging.WARNING):
            found = load_overlays(sqlite_url, [*ids, 9999], storage_root=None)
        assert sorted(found) == ids[:2]
        for shown in found.values():
            assert shown.label == "tuberculosis"
            rgb = cv2.imdecode(np.frombuffer(shown.png, np.uint8), cv2.IMREAD_COLOR)
            assert rgb.shape == (32, 32, 3)
        assert f"image {ids[2]}: heatmap not shown" in caplog.text


def test_page_count_rounds_up_heatmap_pages(day):  # type: ignore[no-untyped-def]
    assert page_count(day, 1) - page_count(day) == 1
    assert page_count(day, HEATMAPS_PER_PAGE + 1) - page_count(day) == 2


def test_the_report_shows_the_heatmaps_of_the_most_urgent_only():
    """A day that flags thousands must not read thousands of radiographs for its report: the
    first REPORT_HEATMAPS of the flagged list (most urgent first), in its order."""
    from reporting.heatmaps import REPORT_HEATMAPS, shown_heatmap_ids

    flagged = list(range(5000, 0, -1))
    assert shown_heatmap_ids(flagged) == flagged[:REPORT_HEATMAPS]
    assert shown_heatmap_ids(flagged[:3]) == flagged[:3]
    assert 0 < REPORT_HEATMAPS <= 200
