"""report.md and report.html from report.json's data.

Both render one list of blocks (headings, paragraphs, tables, lists, figures), so they say
the same thing: the Markdown links the figures' PNG files, the HTML holds them inline as
`data:` URIs, with its CSS inline too, so the page asks nothing of any host. Text uses
`backticks` for names, which the HTML shows as code.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from biogpt.report.bootstrap import confidence_text
from biogpt.report.paper import TASK_NOTES, paper_number

Cell = str


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[Cell]
    rows: Sequence[Sequence[Cell]]
    css: str = ""  # the HTML table's class


@dataclass(frozen=True)
class Items:
    items: Sequence[str]


@dataclass(frozen=True)
class Figure:
    title: str
    path: str  # relative to the report folder


Block = Heading | Paragraph | Table | Items | Figure


# --------------------------------------------------------------------------------------------
# The content
# --------------------------------------------------------------------------------------------


def number(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def with_interval(result: dict[str, Any]) -> str:
    if result["ci_low"] is None:
        return number(result["value"])
    return f"{number(result['value'])} [{number(result['ci_low'])}, {number(result['ci_high'])}]"


def bootstrap_text(report: dict[str, Any]) -> str:
    """How the intervals were drawn, over what each result's `unit` says: documents,
    sentences, or both (then each n names its own)."""
    boot = report["bootstrap"]
    units = list(dict.fromkeys(r["unit"] for r in report["results"])) or ["documents"]
    over = counted = units[0]
    if len(units) > 1:
        over = f"the examples of each result ({' or '.join(units)}, as its n says)"
        counted = "examples"
    return (
        f"Each interval is a {confidence_text(boot['confidence'])} percentile bootstrap over "
        f"{over}, with {boot['resamples']} resamples from seed {boot['seed']}; n is the "
        f"number of {counted} scored."
    )


def _said(value: Any, unit: str = "") -> str:
    return "not recorded" if value is None else f"{value}{unit}"


def recipe(source: dict[str, Any]) -> str | None:
    """How a reproduce run's recipe departs from the paper's; None where nothing says."""
    changes = source.get("recipe_changes")
    if changes is None and source.get("quick") is None:
        return None
    shown = ", ".join(
        f"{what} {change.get('used')} (paper {change.get('paper')})"
        for what, change in (changes or {}).items()
        if isinstance(change, dict)
    )
    quick = "a --quick smoke test, " if source.get("quick") else ""
    return f"{quick}not the paper's recipe: {shown}" if shown else f"{quick}the paper's recipe"


def model_line(index: int, source: dict[str, Any]) -> str:
    """Which model produced source `index`'s numbers, and everything known about how."""
    digest = source["checkpoint_hash"]
    parts = [
        f"[{index + 1}] `{source['task']}` {source['split']}: "
        + (f"model `{source['model']}`" if source["model"] else "model not recorded")
        + (f" (weights sha256 {digest[:16]}…)" if digest else " (weights hash not recorded)")
    ]
    if source["base_model"]:
        parts.append(f"fine-tuned from `{source['base_model']}`")
    if recipe(source):
        parts.append(f"recipe: {recipe(source)}")
    parts.append(f"template version {_said(source['template_version'])}")
    decoding = source["decoding"]
    shown = ", ".join(f"{k} {v}" for k, v in decoding.items()) if decoding else None
    parts.append(f"decoding: {_said(shown)}")
    package = source["package"] or {}
    if package:
        parts.append(
            f"biogpt {_said(package.get('version'))} commit {_said(package.get('commit'))}"
        )
    hardware = source["hardware"] or {}
    if hardware:
        parts.append(f"on {hardware.get('gpu') or hardware.get('cpu') or 'an unnamed machine'}")
    parts.append(
        f"fine-tuning {_said(source['train_seconds'], ' s')}, predicting "
        f"{_said(source['predict_seconds'], ' s')}, {_said(source['tokens_per_s'])} tokens/s"
    )
    limit = f"the first {source['limit']} examples" if source["limit"] else "every example"
    parts.append(f"{limit}; input `{source['input']}` ({source['kind']})")
    return "; ".join(parts) + "."


def header_blocks(report: dict[str, Any]) -> list[Block]:
    package, hardware = report["package"], report["hardware"]
    commit = package.get("commit")
    built = f"biogpt {_said(package.get('version'))}" + (
        f" (commit {commit[:12]}{', modified' if package.get('dirty') else ''})" if commit else ""
    )
    machine = hardware.get("gpu") or hardware.get("cpu")
    return [
        Heading(1, "BioGPT evaluation report"),
        Paragraph(f"Created {report['created']} by {built} on {machine}."),
        Paragraph(
            "Every value is on the 0-1 scale `biogpt score` prints; the paper's numbers "
            "(BioGPT 347M, test split, printed there as percentages) are divided by 100. "
            + bootstrap_text(report)
        ),
        Paragraph(
            "Errors by kind: missed (a gold item the answer lacks), spurious (an answered "
            "item not in the gold), wrong type (the right pair with another relation type, "
            "or the wrong label), unparseable (a piece of the answer the task cannot read), "
            "missing (no answer at all; its gold items count as missed too)."
        ),
    ]


def model_name(report: dict[str, Any], index: int) -> str:
    """`[i] model` for the results table; the Models section says the rest."""
    source = report["sources"][index]
    name = source["model"] or "model not recorded"
    scaled = source.get("quick") or source.get("recipe_changes")
    return f"[{index + 1}] {name}" + (" (not the paper's recipe)" if scaled else "")


def results_table(report: dict[str, Any]) -> Table:
    rows = [
        [
            r["task"], r["split"], r["metric"], with_interval(r),
            number(r["paper"]), f"{r['n']} {r['unit']}", model_name(report, r["source"]),
        ]
        for r in report["results"]
    ]  # fmt: skip
    level = confidence_text(report["bootstrap"]["confidence"])
    header = ["task", "split", "metric", f"ours [{level} CI]", "paper", "n", "model"]
    return Table(header, rows, css="results")


def prf_table(first: str, table: dict[str, dict[str, float]]) -> Table:
    rows = [
        [name, number(t["precision"]), number(t["recall"]), number(t["f1"]), str(t["gold"])]
        for name, t in table.items()
    ]
    return Table([first, "precision", "recall", "F1", "gold items"], rows)


def shown_item(item: Any) -> str:
    if isinstance(item, dict):
        return " / ".join(str(v) for v in item.values())
    return str(item)


def example_text(error: dict[str, Any]) -> str:
    """`id: gold X, predicted Y`, leaving out a side the error has not."""
    sides = [
        f"{side} {shown_item(error[side])}"
        for side in ("gold", "predicted")
        if error[side] is not None
    ]
    return f"{error['id']}: {', '.join(sides)}" if sides else str(error["id"])


def source_blocks(report: dict[str, Any], index: int) -> list[Block]:
    source, detail = report["sources"][index], report["details"][index]
    blocks: list[Block] = [Heading(2, f"[{index + 1}] {source['task']} {source['split']}")]
    if source["task"] in TASK_NOTES:
        blocks.append(Paragraph(TASK_NOTES[source["task"]]))
    metrics = [r for r in report["results"] if r["source"] == index]
    for result in metrics:
        paper = paper_number(source["task"], source["split"], result["metric"])
        if paper is not None:
            blocks.append(
                Paragraph(
                    f"The paper reports {result['metric']} {paper.percent} ({paper.setting}); "
                    f"ours is {with_interval(result)}."
                )
            )
    if metrics:  # every result of a source has the same n, unit and counts
        first = metrics[0]
        shown = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in first["counts"].items())
        blocks.append(
            Paragraph(
                f"{first['n']} {first['unit']} scored, bootstrap over {first['unit']}: {shown}."
            )
        )
    if detail["per_type"]:
        blocks += [Heading(3, "Per relation type"), prf_table("type", detail["per_type"])]
    if detail["per_label"]:
        blocks += [Heading(3, "Per label"), prf_table("label", detail["per_label"])]
    if detail["confusion"]:
        table = detail["confusion"]
        columns = list(next(iter(table.values())))
        rows = [[gold, *(str(row[c]) for c in columns)] for gold, row in table.items()]
        blocks += [
            Heading(3, "Confusion matrix (gold down, predicted across)"),
            Table(["gold", *columns], rows),
        ]
    blocks.append(Heading(3, "Errors by kind"))
    rows = []
    for kind, count in detail["errors"].items():
        seen = [example_text(e) for e in detail["error_examples"][kind]]
        rows.append([kind, str(count), "; ".join(seen) or "—"])
    blocks.append(Table(["kind", "count", "examples"], rows))
    blocks += [Figure(f["title"], f["path"]) for f in report["plots"] if f["source"] == index]
    return blocks


def document(report: dict[str, Any]) -> list[Block]:
    """The report's blocks, top to bottom."""
    blocks = header_blocks(report)
    blocks += [Heading(2, "Results"), results_table(report)]
    blocks += [
        Heading(2, "Models"),
        Paragraph("Which model produced which number (the numbers of the model column above):"),
        Items([model_line(i, s) for i, s in enumerate(report["sources"])]),
    ]
    blocks += [
        Figure(f["title"], f["path"]) for f in report["plots"] if f["path"] == "plots/paper.png"
    ]
    for index in range(len(report["sources"])):
        blocks += source_blocks(report, index)
    overall = [f for f in report["plots"] if f["source"] is None and f["path"] != "plots/paper.png"]
    if overall:
        blocks += [Heading(2, "All sources"), *(Figure(f["title"], f["path"]) for f in overall)]
    return blocks


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            out.append(block.text)
        elif isinstance(block, Table):
            lines = ["| " + " | ".join(map(_md_cell, block.header)) + " |"]
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            out.append("\n".join(lines))
        elif isinstance(block, Items):
            out.append("\n".join(f"- {item}" for item in block.items))
        else:
            out.append(f"![{block.title}]({block.path})")
    return "\n\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.8rem 0; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td:nth-child(n+2) { font-variant-numeric: tabular-nums; }
code { background: #f4f4f4; padding: 0 0.2rem; border-radius: 3px; }
figure { margin: 1rem 0; }
img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 0.9rem; }
"""


def _inline(text: str) -> str:
    """Escaped text, `backticked` names as code."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


def _image(out_dir: Path, path: str) -> str:
    data = base64.b64encode((out_dir / path).read_bytes()).decode("ascii")
    return f"data:image/png;base64,{data}"


def to_html(blocks: Sequence[Block], out_dir: Path) -> str:
    """A self-contained page: the figures are read from `out_dir` and inlined."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Table):
            css = f' class="{block.css}"' if block.css else ""
            head = "".join(f"<th>{_inline(c)}</th>" for c in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>"
                for row in block.rows
            )
            body.append(f"<table{css}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Items):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        else:
            source, title = _image(out_dir, block.path), html.escape(block.title)
            body.append(
                f'<figure><img src="{source}" alt="{title}">'
                f"<figcaption>{_inline(block.title)}</figcaption></figure>"
            )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>BioGPT evaluation report</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
