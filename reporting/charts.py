"""The report's charts: one function per chart, a Figure in, PNG bytes out (Agg, no pyplot).

The same PNGs go into the HTML page and onto the PDF's chart pages, so each chart is drawn
once. Margins are fixed rather than computed by tight_layout, which costs more than the drawing.
"""

from __future__ import annotations

import io
from collections.abc import Callable

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from reporting.summary import DailySummary

DPI = 150
COLOURS = {
    "normal": "#4c8c4a",
    "pneumonia": "#d08c00",
    "tuberculosis": "#b3261e",
    "received": "#5b7aa6",
    "screened": "#2e4a73",
    "rate": "#b3261e",
}


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _nothing_to_show(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=14, color="#555555")
    ax.set_xticks([])
    ax.set_yticks([])


def label_chart(fig: Figure, summary: DailySummary) -> bytes:
    """Horizontal bars: how many screened files got each predicted label."""
    ax = fig.add_subplot()
    names = list(summary.labels)
    counts = [summary.labels[name] for name in names]
    if not any(counts):
        _nothing_to_show(ax, "No files were screened on this day")
    else:
        bars = ax.barh(names, counts, color=[COLOURS.get(n, "#777777") for n in names])
        ax.bar_label(bars, padding=3, fontsize=11)
        ax.invert_yaxis()
        ax.set_xlabel("files")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.margins(x=0.15)
    ax.set_title("Predicted labels", fontsize=13, loc="left")
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.2, top=0.86)
    return png_bytes(fig)


def _histogram(ax: Axes, scores: tuple[float, ...], thresholds: list[float], label: str) -> None:
    ax.hist(scores, bins=20, range=(0.0, 1.0), color=COLOURS[label], alpha=0.85)
    for value in thresholds:
        ax.axvline(value, color="black", linestyle="--", linewidth=1.5)
        ax.annotate(
            f"threshold {value:.2f}",
            xy=(value, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(4, -14),
            textcoords="offset points",
            fontsize=10,
        )
    if not thresholds:
        ax.text(0.98, 0.92, "no threshold: never flags", transform=ax.transAxes, ha="right")
    ax.set_xlim(0, 1)
    ax.set_xlabel(f"P({label})")
    ax.set_ylabel("files")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{label.capitalize()} score", fontsize=12, loc="left")


def score_histograms(fig: Figure, summary: DailySummary) -> bytes:
    """Histograms of P(tuberculosis) and P(pneumonia), with the flag thresholds marked."""
    left, right = fig.subplots(1, 2)
    if not summary.screened:
        _nothing_to_show(left, "No scores")
        _nothing_to_show(right, "No scores")
    else:
        _histogram(left, summary.p_tuberculosis, summary.thresholds("tuberculosis"), "tuberculosis")
        _histogram(right, summary.p_pneumonia, summary.thresholds("pneumonia"), "pneumonia")
    fig.suptitle(
        "Score distributions (dashed line: flag threshold)", fontsize=13, x=0.01, ha="left"
    )
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.15, top=0.8, wspace=0.18)
    return png_bytes(fig)


def throughput_chart(fig: Figure, summary: DailySummary) -> bytes:
    """Files received and results written per local hour of the day."""
    ax = fig.add_subplot()
    hours = range(24)
    width = 0.4
    ax.bar(
        [h - width / 2 for h in hours],
        summary.hourly_received,
        width,
        label="received",
        color=COLOURS["received"],
    )
    ax.bar(
        [h + width / 2 for h in hours],
        summary.hourly_screened,
        width,
        label="results written",
        color=COLOURS["screened"],
    )
    ax.set_xticks(list(range(0, 24, 2)), [f"{h:02d}h" for h in range(0, 24, 2)])
    ax.set_xlim(-0.7, 23.7)
    ax.set_ylabel("files")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"hour ({summary.timezone})")
    if not any(summary.hourly_received) and not any(summary.hourly_screened):
        ax.text(0.5, 0.5, "No activity on this day", transform=ax.transAxes, ha="center")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=2, frameon=False)
    ax.set_title("Throughput over the day", fontsize=13, loc="left")
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.88)
    return png_bytes(fig)


def trend_chart(fig: Figure, summary: DailySummary) -> bytes:
    """Files received per day (bars) and flag rate (line) over the last seven days."""
    ax = fig.add_subplot()
    names = [d.day.strftime("%a %d %b") for d in summary.trend]
    bars = ax.bar(names, [d.received for d in summary.trend], color=COLOURS["received"])
    ax.bar_label(bars, padding=2, fontsize=10)
    ax.set_ylabel("files received")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(y=0.2)
    rate_ax = ax.twinx()
    rates = [100 * r if (r := d.flag_rate) is not None else float("nan") for d in summary.trend]
    rate_ax.plot(names, rates, color=COLOURS["rate"], marker="o", linewidth=2, label="flag rate")
    rate_ax.set_ylabel("flagged, % of screened", color=COLOURS["rate"])
    rate_ax.set_ylim(0, max([10.0, *[r for r in rates if r == r]]) * 1.2)
    ax.tick_params(axis="x", labelrotation=30)
    ax.set_title("Last 7 days: volume and flag rate", fontsize=13, loc="left")
    fig.subplots_adjust(left=0.07, right=0.9, bottom=0.22, top=0.88)
    return png_bytes(fig)


#: The charts in report order: (key, title, function, width and height in inches for HTML).
Chart = Callable[[Figure, DailySummary], bytes]
CHARTS: tuple[tuple[str, str, Chart, tuple[float, float]], ...] = (
    ("labels", "Predicted labels", label_chart, (10.0, 2.8)),
    ("scores", "Score distributions", score_histograms, (10.0, 3.8)),
    ("throughput", "Throughput over the day", throughput_chart, (10.0, 3.6)),
    ("trend", "Last 7 days", trend_chart, (10.0, 3.8)),
)


def render_charts(summary: DailySummary) -> dict[str, bytes]:
    """Every chart of :data:`CHARTS` as PNG bytes, keyed by name."""
    return {key: chart(Figure(figsize=size), summary) for key, _, chart, size in CHARTS}
