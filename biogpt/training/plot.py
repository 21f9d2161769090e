"""The loss curve of a training run, drawn from its `log.jsonl`.

matplotlib is an optional extra (`pip install 'biogpt[plot]'`), imported only here and only
when a plot is asked for. The object-oriented Agg canvas is used instead of pyplot so that
drawing from a training job never touches a global figure manager or the user's backend.
`draw_loss` is the figure itself, shared by `plot_log` and `biogpt report`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_path

INSTALL_HINT = "matplotlib is not installed; pip install 'biogpt[plot]' to draw loss curves"


class MatplotlibMissing(BioGPTError):
    """matplotlib, the `plot` extra, is not installed."""


def read_log(log_jsonl: str | Path) -> list[dict]:
    """The records of a `log.jsonl` file, one dict per line (a torn last line is skipped)."""
    records = []
    for line in Path(log_jsonl).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write
    return records


def draw_loss(
    records: Sequence[Mapping[str, Any]], png: str | Path, title: str | None = None
) -> Path | None:
    """Draw training loss per update (and validation loss, where logged) of a log's
    `records` to `png`, under `title` where given; returns `png`, or None (nothing drawn)
    when the records hold no training lines.

    Raises MatplotlibMissing (a BioGPTError) when matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MatplotlibMissing(INSTALL_HINT) from None
    steps = [r for r in records if "loss" in r and "step" in r]
    valid = [r for r in records if "valid_loss" in r and "step" in r]
    if not steps:
        return None

    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=1, label="train")
    if valid:
        axes.plot(
            [r["step"] for r in valid],
            [r["valid_loss"] for r in valid],
            marker="o",
            label="valid",
        )
    axes.set_xlabel("update")
    axes.set_ylabel("loss (nats per token)")
    if title is not None:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    png = Path(png)
    with atomic_path(png) as tmp:
        figure.savefig(tmp, format="png")
    return png


def plot_log(log_jsonl: str | Path, png: str | Path) -> Path:
    """Draw training loss per update (and validation loss per epoch, if logged) to `png`.

    Raises BioGPTError when matplotlib is not installed or the log has no training lines.
    """
    drawn = draw_loss(read_log(log_jsonl), png)
    if drawn is None:
        raise BioGPTError(f"{log_jsonl}: no training steps to plot")
    return drawn
