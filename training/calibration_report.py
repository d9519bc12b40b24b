"""The calibration report: one page of HTML and PDF with each disease's ROC curve and operating
table, in the nightly summary's style, plus ``operating_table.csv``, ``scores.csv`` and
``calibration.json`` for whoever checks the figures."""

from __future__ import annotations

import base64
import csv
import io
import json
import textwrap
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from jinja2 import Environment, PackageLoader, StrictUndefined
from matplotlib.axes import Axes
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from pulmoscreen.domain import LABELS
from training.calibration import Calibration, DiseaseCalibration, SiteSample

HTML_NAME, PDF_NAME = "calibration.html", "calibration.pdf"
A4_PORTRAIT = (8.27, 11.69)
FLAG = "#b3261e"  # the nightly summary's flag colour
TABLE_COLUMNS = (
    "disease",
    "threshold",
    "sensitivity",
    "specificity",
    "referred",
    "tests_saved",
    "cases_found",
    "number_to_test",
    "prevalence",
)

# Labels and file names come from the site's folders and CSV: always escaped.
_env = Environment(loader=PackageLoader("training"), autoescape=True, undefined=StrictUndefined)


@dataclass(frozen=True)
class CalibrationRun:
    """Who ran a calibration, when, and whether it was applied."""

    created_by: str
    created_at: datetime
    applied: bool


def draw_roc(ax: Axes, d: DiseaseCalibration) -> None:
    """The ROC curve of ``d`` with its chosen operating point."""
    ax.plot(d.roc_fpr, d.roc_tpr, color="#1a56a6", label=f"AUC {d.auc:.3f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.scatter(
        [1 - d.specificity], [d.sensitivity], color=FLAG, zorder=3, label=f"≥ {d.threshold:.3f}"
    )
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC, {d.disease}")
    ax.legend(loc="lower right", fontsize=8)


def roc_png(d: DiseaseCalibration) -> bytes:
    fig, ax = plt.subplots(figsize=(4, 3.6))
    draw_roc(ax, d)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def render_html(calibration: Calibration, run: CalibrationRun) -> str:
    charts = {d.disease: base64.b64encode(roc_png(d)).decode("ascii") for d in calibration.diseases}
    template = _env.get_template("calibration.html.j2")
    return template.render(c=calibration, run=run, roc=charts)


def _table_lines(d: DiseaseCalibration) -> list[str]:
    lines = [
        f"{'threshold':>11} {'sens':>6} {'spec':>6} {'referred':>9} {'saved':>7} {'tests/case':>10}"
    ]
    for r in d.table:
        mark = "*" if r.threshold == d.threshold else " "
        nnt = f"{r.number_to_test:10.1f}" if r.number_to_test is not None else f"{'–':>10}"
        lines.append(
            f"{mark}{r.threshold:10.3f} {r.sensitivity:6.3f} {r.specificity:6.3f} "
            f"{100 * r.referred:8.1f}% {100 * r.tests_saved:6.1f}% {nnt}"
        )
    return lines


def calibration_page(calibration: Calibration, run: CalibrationRun) -> Figure:
    """One A4 page: the heading, then per disease its ROC curve above its operating table."""
    fig = Figure(figsize=A4_PORTRAIT)
    fig.text(0.06, 0.96, f"Site calibration · {calibration.model_version}", fontsize=14)
    counts = ", ".join(f"{k} {v}" for k, v in calibration.sample_counts.items())
    status = "" if run.applied else "; NOT APPLIED"
    fig.text(
        0.06,
        0.94,
        f"{run.created_at:%Y-%m-%d %H:%M %Z} by {run.created_by}; sample {counts}{status}",
        fontsize=8,
        color="#555555",
    )
    rule = "\n".join(textwrap.wrap(f"Rule: {calibration.rule}", 130))
    fig.text(0.06, 0.93, rule, fontsize=7, color="#555555", va="top")
    height = min(0.42, 0.86 / max(1, len(calibration.diseases)))
    for k, d in enumerate(calibration.diseases):
        top = 0.89 - k * height
        ax = fig.add_axes((0.08, top - 0.26, 0.34, 0.23))
        draw_roc(ax, d)
        heading = (
            f"{d.disease}: threshold {d.threshold:.3f}\nAUC {d.auc:.3f} "
            f"(95% CI {d.auc_low:.3f}–{d.auc_high:.3f}, DeLong)\n{d.n_positive} positives, "
            f"{d.n_negative} negatives; prevalence {100 * d.prevalence:.1f}%"
        )
        fig.text(0.5, top - 0.02, heading, fontsize=9, va="top")
        table = "\n".join(_table_lines(d))
        fig.text(0.48, top - 0.08, table, fontsize=7.5, family="monospace", va="top")
    fig.text(
        0.06,
        0.03,
        "* the chosen threshold. PulmoScreen is a second reader, never a diagnosis.",
        fontsize=7,
        color="#555555",
    )
    return fig


def write_pdf(calibration: Calibration, run: CalibrationRun, path: Path) -> None:
    with PdfPages(path) as pdf:
        pdf.savefig(calibration_page(calibration, run))


def write_table_csv(calibration: Calibration, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(TABLE_COLUMNS)
        for d in calibration.diseases:
            for r in d.table:
                writer.writerow(
                    [d.disease, *(getattr(r, c) for c in TABLE_COLUMNS[1:-1]), d.prevalence]
                )


def write_scores_csv(sample: SiteSample, names: Sequence[str], path: Path) -> None:
    """Each image of the sample with its reference label and the served model's scores."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "reference_label", *(f"p_{label}" for label in LABELS)])
        for name, label, p in zip(names, sample.true_labels, sample.probs, strict=True):
            writer.writerow([name, label, *(f"{v:.6f}" for v in p)])


def write_calibration_report(
    calibration: Calibration,
    sample: SiteSample,
    names: Sequence[str],
    out: Path,
    run: CalibrationRun,
) -> Path:
    """Every file of the calibration into ``out``; returns the HTML page's path."""
    out.mkdir(parents=True, exist_ok=True)
    html = out / HTML_NAME
    html.write_text(render_html(calibration, run), encoding="utf-8")
    write_pdf(calibration, run, out / PDF_NAME)
    write_table_csv(calibration, out / "operating_table.csv")
    write_scores_csv(sample, names, out / "scores.csv")
    document = {**asdict(calibration), **asdict(run), "thresholds": calibration.thresholds}
    (out / "calibration.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    return html
