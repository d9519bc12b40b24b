"""The flagged list's heatmaps: each flagged image's heatmap over its model input, as PNG.

A heatmap shows where the model looked for the flagged finding, not where a disease is
(docs/explain.md). An image whose heatmap or radiograph cannot be read is listed without one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2

from pulmoscreen.db import session_factory
from pulmoscreen.db.heatmaps import HeatmapSource, heatmap_sources
from pulmoscreen.imaging import PreprocessSpec, read_dicom, to_model_input
from pulmoscreen.model.explain import overlay, read_heatmap_png
from pulmoscreen.storage import resolve_stored_path

log = logging.getLogger(__name__)

# The report shows the heatmaps of the most urgent flagged images only: each costs a read of
# its radiograph (about 0.2 s), and a screening day can flag thousands (a backlog, a new site
# before calibration). The others are in the PACS (the heatmap series) or `pulmoscreen explain`.
REPORT_HEATMAPS = 100


def shown_heatmap_ids(flagged_ids: Sequence[int]) -> list[int]:
    """The image ids whose heatmaps the report shows: the first :data:`REPORT_HEATMAPS` of
    the flagged list, which is ordered most urgent first."""
    return list(flagged_ids[:REPORT_HEATMAPS])


@dataclass(frozen=True)
class Overlay:
    """One flagged image's heatmap over its radiograph (RGB PNG) and the finding it explains."""

    label: str
    png: bytes


def render_overlay(source: HeatmapSource, storage_root: Path | None) -> bytes:
    """The heatmap over the model input it was computed on (the card's own recipe), as PNG."""
    heat = read_heatmap_png(resolve_stored_path(source.path, storage_root).read_bytes())
    if source.stored_path is None:
        raise FileNotFoundError("the image has no stored file")
    spec = PreprocessSpec.from_dict(source.card.get("preprocess") or {})
    pixels = read_dicom(resolve_stored_path(source.stored_path, storage_root)).pixels
    rgb = overlay(to_model_input(pixels, spec)[:, :, 0], heat)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return bytes(encoded.tobytes())


def load_overlays(
    database_url: str, image_ids: Sequence[int], *, storage_root: Path | None
) -> dict[int, Overlay]:
    """The overlay of each image of ``image_ids`` that has a heatmap, by image id."""
    with session_factory(database_url)() as session:
        sources = heatmap_sources(session, image_ids)
    found: dict[int, Overlay] = {}
    for source in sources:
        try:
            found[source.image_id] = Overlay(source.label, render_overlay(source, storage_root))
        except Exception as exc:  # a report never fails on a heatmap
            log.warning("image %d: heatmap not shown (%s)", source.image_id, type(exc).__name__)
    return found
