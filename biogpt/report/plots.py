"""The report's figures, drawn with matplotlib's Agg canvas into PNG files.

matplotlib is the optional `plot` extra: it is imported inside `_figure`, when the first
figure is drawn, and its absence is `PlotsUnavailable`, which the report turns into one
line. The object-oriented canvas (no pyplot) keeps drawing off any global figure manager
and the user's backend, as `biogpt.training.plot` does, whose loss curve the report draws.

Every function takes plain numbers (what report.json holds) and a path, and returns it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biogpt.io import atomic_path
from biogpt.report.bootstrap import confidence_text
from biogpt.training import plot as training_plot

INSTALL_HINT = "plots need matplotlib: pip install 'biogpt[plot]'"
DPI = 100


class PlotsUnavailable(Exception):
    """matplotlib is not installed."""


@dataclass(frozen=True)
class Bar:
    """One result beside the paper's: a label, our value and interval, the paper's value."""

    label: str
    value: float
    low: float | None
    high: float | None
    paper: float | None


def _figure(width: float, height: float) -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotsUnavailable(INSTALL_HINT) from None
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def draw_paper(bars: Sequence[Bar], path: Path, confidence: float) -> Path:
    """Our value of each result with its `confidence` interval as an error bar, the paper's
    as a mark."""
    figure = _figure(max(5.0, 1.2 * len(bars) + 2), 4)
    axes = figure.add_subplot()
    x = list(range(len(bars)))
    values = [b.value for b in bars]
    below = [b.value - b.low if b.low is not None else 0.0 for b in bars]
    above = [b.high - b.value if b.high is not None else 0.0 for b in bars]
    axes.bar(
        x, values, width=0.6, color="#4c78a8", label=f"ours ({confidence_text(confidence)} CI)"
    )
    axes.errorbar(x, values, yerr=[below, above], fmt="none", ecolor="black", capsize=4)
    papers = [(i, b.paper) for i, b in enumerate(bars) if b.paper is not None]
    if papers:
        axes.scatter(
            [i for i, _ in papers], [p for _, p in papers], marker="D", color="#e45756",
            zorder=3, label="paper",
        )  # fmt: skip
    axes.set_xticks(x, [b.label for b in bars], rotation=20, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("score (0-1)")
    axes.set_title("Ours vs the paper")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper right")
    return _save(figure, path)


def draw_prf(title: str, table: Mapping[str, Mapping[str, float]], path: Path) -> Path:
    """Grouped P/R/F1 bars, one group per relation type or label, named with its count of
    gold items where the table has one."""
    names = list(table)
    shown = [f"{n} ({table[n]['gold']:g})" if "gold" in table[n] else n for n in names]
    horizontal = len(names) > 6
    figure = _figure(8, max(3.0, 0.45 * len(names) + 1.5) if horizontal else 4)
    axes = figure.add_subplot()
    width = 0.27
    for offset, (metric, colour) in enumerate(
        (("precision", "#4c78a8"), ("recall", "#f58518"), ("f1", "#54a24b"))
    ):
        positions = [i + (offset - 1) * width for i in range(len(names))]
        values = [table[name][metric] for name in names]
        if horizontal:
            axes.barh(positions, values, height=width, color=colour, label=metric)
        else:
            axes.bar(positions, values, width=width, color=colour, label=metric)
    if horizontal:
        axes.set_yticks(range(len(names)), shown)
        axes.invert_yaxis()
        axes.set_xlim(0, 1.05)
    else:
        axes.set_xticks(range(len(names)), shown, rotation=20, ha="right")
        axes.set_ylim(0, 1.05)
    axes.set_title(title)
    axes.grid(axis="x" if horizontal else "y", alpha=0.3)
    axes.legend(loc="lower right" if horizontal else "upper right", fontsize="small")
    return _save(figure, path)


def draw_confusion(title: str, table: Mapping[str, Mapping[str, int]], path: Path) -> Path:
    """A count matrix: gold labels down, predicted labels across."""
    rows = list(table)
    columns = list(next(iter(table.values())))
    figure = _figure(5, 4)
    axes = figure.add_subplot()
    counts = [[table[r][c] for c in columns] for r in rows]
    image = axes.imshow(counts, cmap="Blues")
    top = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, count in enumerate(row):
            colour = "white" if count > top / 2 else "black"
            axes.text(j, i, str(count), ha="center", va="center", color=colour)
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    axes.set_title(title)
    figure.colorbar(image, ax=axes)
    return _save(figure, path)


def draw_loss(title: str, records: Sequence[Mapping[str, Any]], path: Path) -> Path | None:
    """Training loss per update (validation loss where logged), the figure `biogpt train`
    draws (`biogpt.training.plot.draw_loss`); None for a log without training lines."""
    try:
        return training_plot.draw_loss(records, path, title=title)
    except training_plot.MatplotlibMissing:
        raise PlotsUnavailable(INSTALL_HINT) from None


def draw_errors(rows: Mapping[str, Mapping[str, int]], path: Path) -> Path:
    """Errors by kind: one stacked horizontal bar per source."""
    names = list(rows)
    kinds = list(next(iter(rows.values())))
    figure = _figure(8, max(2.5, 0.6 * len(names) + 1.5))
    axes = figure.add_subplot()
    left = [0] * len(names)
    colours = ("#e45756", "#f58518", "#b279a2", "#9d755d", "#bab0ac")
    for kind, colour in zip(kinds, colours, strict=False):
        counts = [rows[name][kind] for name in names]
        axes.barh(range(len(names)), counts, left=left, color=colour, label=kind)
        left = [a + b for a, b in zip(left, counts, strict=True)]
    axes.set_yticks(range(len(names)), names)
    axes.invert_yaxis()
    axes.set_xlabel("errors")
    axes.set_title("Errors by kind")
    axes.legend(fontsize="small", loc="lower right")
    return _save(figure, path)
