"""``summary.pdf`` through matplotlib's PdfPages (A4 landscape).

Pages: the totals page, the flagged patients list (:data:`ROWS_PER_PAGE` per page, at least one
page, which says so when nobody was flagged), the flagged images' heatmaps
(:data:`HEATMAPS_PER_PAGE` per page, in the list's order; none without heatmaps), then one page
per chart of :data:`CHARTS` (the same PNGs as in the HTML page).
"""

from __future__ import annotations

import io
import math
from datetime import datetime
from pathlib import Path

from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.image import imread
from matplotlib.patches import Rectangle

from reporting.charts import CHARTS
from reporting.heatmaps import Overlay
from reporting.summary import DailySummary, FlaggedImage

A4_LANDSCAPE = (11.69, 8.27)
ROWS_PER_PAGE = 22
HEATMAP_COLUMNS, HEATMAP_ROWS = 5, 3
HEATMAPS_PER_PAGE = HEATMAP_COLUMNS * HEATMAP_ROWS
# (header, width in characters, right-aligned); rows are set in a monospaced font.
_FLAG_COLUMNS = (
    ("#", 4, True),
    ("Patient ID", 18, False),
    ("Accession", 14, False),
    ("Study date", 10, False),
    ("Label", 12, False),
    ("P(TB)", 5, True),
    ("P(pneu)", 7, True),
    ("Score", 5, True),
    ("Threshold", 20, False),
    ("Source file", 42, False),
)


def flagged_page_count(n_flagged: int) -> int:
    return max(1, math.ceil(n_flagged / ROWS_PER_PAGE))


def page_count(summary: DailySummary, n_heatmaps: int = 0) -> int:
    """How many pages :func:`write_pdf` writes for ``summary`` and ``n_heatmaps`` heatmaps."""
    heatmap_pages = math.ceil(n_heatmaps / HEATMAPS_PER_PAGE)
    return 1 + flagged_page_count(len(summary.flagged_images)) + heatmap_pages + len(CHARTS)


def _summary_lines(s: DailySummary) -> list[str]:
    lines = [
        f"Files received: {s.files_received} ({s.studies_received} studies)",
        f"Screened: {s.screened}    Rejected: {s.rejected}    Still pending: {s.pending}",
        f"Flagged for review: {s.flagged}",
        "",
        "Rejected, by reason: "
        + (", ".join(f"{k} {v}" for k, v in s.reject_reasons.items()) or "none"),
        "Predicted labels: " + ", ".join(f"{k} {v}" for k, v in s.labels.items()),
        "",
    ]
    for m in s.models or ():
        limits = ", ".join(f"{k} ≥ {v:.2f}" for k, v in m.thresholds.items()) or "none"
        trained = "" if m.trained else " (UNTRAINED)"
        source = m.calibration or "model card"
        lines.append(
            f"Model {m.version}{trained}: thresholds {limits} ({source}); {m.images} files"
        )
    if not s.models:
        lines.append("Model: no results on this day")
    return lines


def _summary_page(fig: Figure, s: DailySummary) -> None:
    fig.text(0.05, 0.92, f"PulmoScreen screening summary · {s.day:%A %d %B %Y}", fontsize=20)
    fig.text(
        0.05,
        0.875,
        f"Local day in {s.timezone}; generated {s.generated_at:%Y-%m-%d %H:%M %Z}. "
        "A second reader, never a diagnosis: every flag is for a clinician to review.",
        fontsize=10,
        color="#555555",
    )
    y = 0.80
    if s.untrained:
        fig.text(0.05, y, "UNTRAINED MODEL: scores are not findings.", fontsize=14, color="#b3261e")
        y -= 0.06
    if s.is_empty:
        fig.text(0.05, y, "No studies were received on this day.", fontsize=16, weight="bold")
        y -= 0.07
    for line in _summary_lines(s):
        fig.text(0.05, y, line, fontsize=13, parse_math=False)
        y -= 0.05


def _threshold_cell(f: FlaggedImage) -> str:
    parts = []
    if f.threshold_tuberculosis is not None:
        parts.append(f"TB ≥ {f.threshold_tuberculosis:.2f}")
    if f.threshold_pneumonia is not None:
        parts.append(f"pn ≥ {f.threshold_pneumonia:.2f}")
    return ", ".join(parts) or "none"


def _flag_row(rank: int, f: FlaggedImage) -> list[str]:
    return [
        str(rank),
        f.patient_id or "",
        f.accession or "",
        f.study_date.isoformat() if f.study_date else "",
        f.label,
        f"{f.p_tuberculosis:.2f}",
        f"{f.p_pneumonia:.2f}",
        str(f.abnormality_score),
        _threshold_cell(f),
        f.source_path,
    ]


def _fixed_width(cells: list[str]) -> str:
    """One table row as a line of text, each cell cut or padded to its column's width."""
    out = []
    for text, (_, width, right) in zip(cells, _FLAG_COLUMNS, strict=True):
        text = text if len(text) <= width else "…" + text[-(width - 1) :]
        out.append(text.rjust(width) if right else text.ljust(width))
    return "  ".join(out)


def _flagged_page(fig: Figure, s: DailySummary, page: int, pages: int) -> None:
    title = f"Flagged patients, most urgent first ({s.flagged}) · page {page + 1} of {pages}"
    fig.text(0.04, 0.93, title, fontsize=16)
    first = page * ROWS_PER_PAGE
    chunk = s.flagged_images[first : first + ROWS_PER_PAGE]
    if not chunk:
        fig.text(0.04, 0.85, "No patient was flagged on this day.", fontsize=14)
        return
    header = _fixed_width([name for name, _, _ in _FLAG_COLUMNS])
    rows = [_fixed_width(_flag_row(first + i + 1, f)) for i, f in enumerate(chunk)]
    _draw_lines(fig, [header, *rows], top=0.89)


def _draw_lines(fig: Figure, lines: list[str], *, top: float) -> None:
    """Table rows as one monospaced text each (a text per cell is ten times slower in PDF)."""
    row_h = (top - 0.05) / (ROWS_PER_PAGE + 1)
    for i, line in enumerate(lines):
        y = top - (i + 1) * row_h
        if i % 2 == 0:
            fig.patches.append(
                Rectangle((0.03, y), 0.94, row_h, transform=fig.transFigure, color="#eef0f3", lw=0)
            )
        weight = "bold" if i == 0 else "normal"
        fig.text(
            0.035,
            y + row_h / 2,
            line,
            family="DejaVu Sans Mono",
            fontsize=8,
            va="center",
            weight=weight,
            # header text (PatientID, file names) may hold '$': never read it as mathtext
            parse_math=False,
        )


def _heatmap_page(fig: Figure, shown: list[tuple[int, FlaggedImage, Overlay]], title: str) -> None:
    """A grid of heatmaps over their radiographs, each named by its rank in the list."""
    fig.text(0.04, 0.94, title, fontsize=16)
    fig.text(
        0.04,
        0.91,
        "Where the model looked for the flagged finding (red: most), not where a disease is.",
        fontsize=10,
    )
    width, height = 0.92 / HEATMAP_COLUMNS, 0.84 / HEATMAP_ROWS
    for k, (rank, flag, found) in enumerate(shown):
        row, column = divmod(k, HEATMAP_COLUMNS)
        left, bottom = 0.04 + column * width, 0.86 - (row + 1) * height
        ax = fig.add_axes((left, bottom + 0.03, width * 0.92, height - 0.06))
        ax.imshow(imread(io.BytesIO(found.png), format="png"), interpolation="bilinear")
        ax.axis("off")
        caption = f"#{rank} {flag.patient_id or '(none)'} · {found.label}"
        fig.text(left, bottom + 0.01, caption[:40], fontsize=8, parse_math=False)


def _heatmap_pages(
    summary: DailySummary, overlays: dict[int, Overlay]
) -> list[list[tuple[int, FlaggedImage, Overlay]]]:
    """The flagged images that have a heatmap, in the list's order, a page at a time."""
    shown = [
        (rank, f, overlays[f.image_id])
        for rank, f in enumerate(summary.flagged_images, start=1)
        if f.image_id in overlays
    ]
    return [shown[i : i + HEATMAPS_PER_PAGE] for i in range(0, len(shown), HEATMAPS_PER_PAGE)]


def _chart_page(fig: Figure, png: bytes) -> None:
    ax = fig.add_axes((0.03, 0.03, 0.94, 0.94))
    ax.imshow(imread(io.BytesIO(png), format="png"), interpolation="none")
    ax.axis("off")


def write_pdf(
    summary: DailySummary,
    path: Path,
    charts: dict[str, bytes],
    overlays: dict[int, Overlay] | None = None,
) -> int:
    """Write ``summary.pdf`` to ``path`` with the PNG ``charts`` and the flagged images'
    heatmap ``overlays`` (by image id); returns the number of pages."""
    pages = 0
    metadata = {
        "Title": f"PulmoScreen screening summary {summary.day.isoformat()}",
        "CreationDate": summary.generated_at,
        "ModDate": datetime.now(summary.generated_at.tzinfo),
    }
    with PdfPages(path, metadata=metadata) as pdf:
        fig = Figure(figsize=A4_LANDSCAPE)
        _summary_page(fig, summary)
        pdf.savefig(fig)
        pages += 1
        n_flag_pages = flagged_page_count(len(summary.flagged_images))
        for page in range(n_flag_pages):
            fig = Figure(figsize=A4_LANDSCAPE)
            _flagged_page(fig, summary, page, n_flag_pages)
            pdf.savefig(fig)
            pages += 1
        heatmap_pages = _heatmap_pages(summary, overlays or {})
        for k, shown in enumerate(heatmap_pages):
            fig = Figure(figsize=A4_LANDSCAPE)
            _heatmap_page(fig, shown, f"Heatmaps · page {k + 1} of {len(heatmap_pages)}")
            pdf.savefig(fig)
            pages += 1
        for key, _, _, _ in CHARTS:
            fig = Figure(figsize=A4_LANDSCAPE)
            _chart_page(fig, charts[key])
            pdf.savefig(fig)
            pages += 1
    return pages
