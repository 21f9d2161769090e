"""`biogpt report`: score runs and predictions, put each number beside the paper's with a
bootstrap interval, and write it all to a folder.

    write_report(["runs/repro", "hoc:test:preds.jsonl"], "report/")

writes, each file atomically:
    report/report.json    results (one per task, split and metric), sources, provenance
    report/samples.jsonl  one line per example: input, gold, answer, structure, score, errors
    report/report.md      the results table, the models, a section per source
    report/report.html    the same, self-contained (plots inline, no URL of any kind)
    report/plots/*.png    ours vs the paper, per-type / per-label / confusion, loss, errors
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.report import plots, render
from biogpt.report.analysis import Scored, add_intervals, sample_records, score_source, tables
from biogpt.report.bootstrap import CONFIDENCE, MAX_RESAMPLES
from biogpt.report.breakdown import KINDS
from biogpt.report.inputs import read_sources
from biogpt.report.paper import paper_number
from biogpt.report.provenance import hardware_info, package_info
from biogpt.training.plot import read_log

PLOTS_DIR = "plots"
ERROR_EXAMPLES = 3  # examples of each error kind shown per source
OVERALL_FIGURES = ("paper.png", "errors.png")  # the figures of all sources together
# each source's figures, named `{slug}-{suffix}.png`
SOURCE_FIGURES = ("types", "labels", "confusion", "loss")


def say(line: str) -> None:
    print(line, file=sys.stderr)


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse, in one line, an --out that is a file, or a folder with something in it
    unless `overwrite`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise BioGPTError(f"--out {out_dir}: not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise BioGPTError(f"--out {out_dir}: exists and is not empty; pass --overwrite")


def write_report(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
    plots: bool = True,
    note: Callable[[str], None] = say,
) -> Path:
    """Report on `inputs` (see `biogpt.report.inputs`) into `out_dir`; returns the path of
    report.json. `bootstrap` resamples of the examples (documents, or sentences where those
    are a task's examples) give each interval, at `bootstrap.CONFIDENCE` (0: none), drawn
    from `seed`. The gold comes from `data_dir`, else the data root an input
    recorded, else $BIOGPT_DATA. `note` gets one line per thing left out (an unfinished
    reproduce stage, the plots without matplotlib)."""
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    if not 0 <= bootstrap <= MAX_RESAMPLES:
        raise BioGPTError(f"bootstrap must be 0 to {MAX_RESAMPLES:,} resamples, got {bootstrap}")
    if seed < 0:
        raise BioGPTError(f"seed must be >= 0, got {seed}")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise BioGPTError(f"--data {data_dir}: no such directory")
    sources = read_sources(inputs, note)
    if not sources:
        raise BioGPTError("no finished results in the inputs: nothing to report")
    scored = [score_source(source, data_dir) for source in sources]
    for each in scored:
        check_recorded(each, note)
        add_intervals(each, bootstrap, seed)
    samples = [record for i, each in enumerate(scored) for record in sample_records(each, i)]
    report: dict[str, Any] = {
        "results": results(scored),
        "sources": [each.source.record() for each in scored],
        "details": [details(each, i, samples) for i, each in enumerate(scored)],
        "bootstrap": {"resamples": bootstrap, "seed": seed, "confidence": CONFIDENCE},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "package": package_info(),
        "hardware": hardware_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    for name in figure_names(report):  # an earlier report's must not pass for this one's
        (out / PLOTS_DIR / name).unlink(missing_ok=True)
    report["plots"] = draw(report, scored, out, note) if plots else []
    path = out / "report.json"
    atomic_write_text(
        out / "samples.jsonl",
        "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in samples),
    )
    blocks = render.document(report)
    atomic_write_text(out / "report.md", render.to_markdown(blocks))
    atomic_write_text(out / "report.html", render.to_html(blocks, out))
    atomic_write_text(path, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return path


def check_recorded(each: Scored, note: Callable[[str], None]) -> None:
    """One line where the input states a metric that scoring it here does not give (other
    gold data, or a file changed since): the report's number is the one computed here."""
    for metric, stated in each.source.recorded.items():
        found = each.scores.get(metric)
        if isinstance(stated, (int, float)) and found is not None and abs(found - stated) > 1e-9:
            note(
                f"{each.source.input}: {each.task.name} {metric} was recorded as {stated}, "
                f"scored here {found}; the report shows the latter"
            )
            return


def results(scored: Sequence[Scored]) -> list[dict[str, Any]]:
    """One entry per source and metric, in the order the task's `score` returns them."""
    out = []
    for index, each in enumerate(scored):
        for metric, value in each.metrics.items():
            interval = each.intervals.get(metric)
            paper = paper_number(each.task.name, each.source.split, metric)
            out.append(
                {
                    "task": each.task.name,
                    "split": each.source.split,
                    "metric": metric,
                    "value": value,
                    "ci_low": None if interval is None else interval.low,
                    "ci_high": None if interval is None else interval.high,
                    "n": len(each.examples),
                    "unit": each.unit,  # what n counts and the bootstrap resamples
                    "paper": None if paper is None else paper.value,
                    "main": metric == each.task.main_metric,
                    "source": index,
                    "counts": each.counts,
                }
            )
    return out


def details(each: Scored, index: int, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A source's tables, its errors counted by kind, and a few examples of each kind."""
    counts = dict.fromkeys(KINDS, 0)
    shown: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    for record in samples:
        if record["source"] != index:
            continue
        for item in record["error_items"]:
            counts[item["kind"]] += 1
            if len(shown[item["kind"]]) < ERROR_EXAMPLES:
                shown[item["kind"]].append({"id": record["id"], **item})
    return {"source": index, **tables(each), "errors": counts, "error_examples": shown}


def slug(report: dict[str, Any], index: int) -> str:
    """A file-name stem for a source's figures: task-split, numbered where repeated."""
    source = report["sources"][index]
    stem = f"{source['task']}-{source['split']}"
    same = [
        s for s in report["sources"] if (s["task"], s["split"]) == (source["task"], source["split"])
    ]
    return stem if len(same) == 1 else f"{stem}-{index + 1}"


def figure_names(report: dict[str, Any]) -> list[str]:
    """The file name of every figure this report may draw into out/plots (and only those,
    so that `--overwrite` deletes no other file there)."""
    stems = [slug(report, index) for index in range(len(report["sources"]))]
    each = [f"{stem}-{suffix}.png" for stem in stems for suffix in SOURCE_FIGURES]
    return [*OVERALL_FIGURES, *each]


def source_figures(
    each: Scored, detail: dict[str, Any], folder: Path, stem: str
) -> Iterator[tuple[str, Path | None]]:
    """(title, PNG path) of each figure of one source, drawn as they are asked for."""
    name = f"{each.task.name} {each.source.split}"
    types, labels, confusion, loss = (folder / f"{stem}-{s}.png" for s in SOURCE_FIGURES)
    if detail["per_type"]:
        title = f"{name}: P/R/F1 per relation type"
        yield title, plots.draw_prf(title, detail["per_type"], types)
    if detail["per_label"]:
        title = f"{name}: P/R/F1 per label"
        yield title, plots.draw_prf(title, detail["per_label"], labels)
    if detail["confusion"]:
        title = f"{name}: confusion matrix"
        yield title, plots.draw_confusion(title, detail["confusion"], confusion)
    if each.source.log is not None:
        title = f"{name}: fine-tuning loss"
        yield title, plots.draw_loss(title, read_log(each.source.log), loss)


def draw(
    report: dict[str, Any], scored: Sequence[Scored], out: Path, note: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Draw every figure into out/plots; [{"title", "path" (relative to out), "source"
    (its index, None for a figure of all sources)}]. Without matplotlib: none, and one
    line through `note`."""
    folder = out / PLOTS_DIR
    figures: list[dict[str, Any]] = []

    def keep(title: str, path: Path | None, source: int | None) -> None:
        if path is not None:
            figures.append({"title": title, "path": str(path.relative_to(out)), "source": source})

    numbered = len(scored) > 1
    bars = [
        plots.Bar(
            f"{r['task']} {r['metric']}" + (f" [{r['source'] + 1}]" if numbered else ""),
            r["value"], r["ci_low"], r["ci_high"], r["paper"],
        )
        for r in report["results"]
        if r["main"] or r["paper"] is not None
    ]  # fmt: skip
    errors = {
        f"[{i + 1}] {each.task.name} {each.source.split}": detail["errors"]
        for i, (each, detail) in enumerate(zip(scored, report["details"], strict=True))
    }
    paper_png, errors_png = (folder / name for name in OVERALL_FIGURES)
    confidence = report["bootstrap"]["confidence"]
    try:
        keep("Ours vs the paper", plots.draw_paper(bars, paper_png, confidence), None)
        for index, (each, detail) in enumerate(zip(scored, report["details"], strict=True)):
            for title, path in source_figures(each, detail, folder, slug(report, index)):
                keep(title, path, index)
        keep("Errors by kind", plots.draw_errors(errors, errors_png), None)
    except plots.PlotsUnavailable as missing:
        note(f"{missing}; the report is written without them")
        for figure in figures:
            (out / figure["path"]).unlink(missing_ok=True)
        return []
    return figures
