"""The self-contained HTML summary: jinja2 template, charts embedded as base64 PNG."""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from reporting.charts import CHARTS
from reporting.heatmaps import REPORT_HEATMAPS, Overlay
from reporting.summary import DailySummary, FlaggedImage

TEMPLATES = Path(__file__).resolve().parent / "templates"

# Patient IDs and file names come from DICOM headers and drop folders: always escape them.
_env = Environment(
    loader=FileSystemLoader(TEMPLATES),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def threshold_parts(flag: FlaggedImage) -> list[str]:
    """``["TB ≥ 0.40", "pneumonia ≥ 0.50"]``: the thresholds the flag was decided by."""
    parts = []
    if flag.threshold_tuberculosis is not None:
        parts.append(f"TB ≥ {flag.threshold_tuberculosis:.2f}")
    if flag.threshold_pneumonia is not None:
        parts.append(f"pneumonia ≥ {flag.threshold_pneumonia:.2f}")
    return parts


def render_html(
    summary: DailySummary, charts: dict[str, bytes], overlays: dict[int, Overlay] | None = None
) -> str:
    """The summary page; ``charts`` maps each key of :data:`CHARTS` to its PNG bytes,
    ``overlays`` each flagged image id that has a heatmap to its overlay."""
    encoded = {key: base64.b64encode(png).decode("ascii") for key, png in charts.items()}
    heatmaps = {
        image_id: (o.label, base64.b64encode(o.png).decode("ascii"))
        for image_id, o in (overlays or {}).items()
    }
    return _env.get_template("summary.html.j2").render(
        s=summary,
        charts=encoded,
        heatmaps=heatmaps,
        heatmap_limit=REPORT_HEATMAPS,
        chart_titles=[(key, title) for key, title, _, _ in CHARTS],
        threshold_parts=threshold_parts,
    )
