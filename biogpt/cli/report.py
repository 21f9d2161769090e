"""`biogpt report`: results beside the paper's numbers, with intervals, samples and plots.
It parses its flags and calls `biogpt.report.build.write_report`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from biogpt.cli.common import AddCommand, default_of, non_negative_int

EXAMPLES = """\
# a predictions file (here the gold answers) scored as `biogpt score` does, beside the
# paper's number, with a bootstrap interval over documents; then the report's files
$ biogpt report bc5cdr:test:preds.jsonl --data data/ --out report/
bc5cdr test precision ... paper - n ... documents
bc5cdr test recall ... paper - n ... documents
bc5cdr test f1 ... [..., ...] paper 0.4498 n ... documents

# again into the same folder, with fewer resamples and no plots; the inputs may also be
# `biogpt reproduce` run directories and `biogpt evaluate --report` files
$ biogpt report bc5cdr:test:preds.jsonl --data data/ --out report/ --overwrite \\
    --bootstrap 200 --seed 1 --no-plots
...
bc5cdr test f1 ... [..., ...] paper 0.4498 n ... documents
"""


def cmd_report(args: argparse.Namespace) -> None:
    from biogpt.report.build import write_report

    path = write_report(
        args.inputs,
        args.out,
        data_dir=args.data,
        bootstrap=args.bootstrap,
        seed=args.seed,
        overwrite=args.overwrite,
        plots=not args.no_plots,
    )
    report = json.loads(path.read_text(encoding="utf-8"))
    for r in report["results"]:
        interval = "" if r["ci_low"] is None else f" [{r['ci_low']:.4f}, {r['ci_high']:.4f}]"
        paper = "-" if r["paper"] is None else f"{r['paper']:.4f}"
        print(
            f"{r['task']} {r['split']} {r['metric']} {r['value']:.4f}{interval} "
            f"paper {paper} n {r['n']} {r['unit']}"
        )
    folder = Path(args.out)
    print(
        f"wrote {path}, {folder / 'report.md'}, {folder / 'report.html'}, "
        f"{folder / 'samples.jsonl'} and {len(report['plots'])} plots",
        file=sys.stderr,
    )


def resample_count(text: str) -> int:
    """argparse type of --bootstrap: 0 (no intervals) to MAX_RESAMPLES."""
    from biogpt.report.bootstrap import MAX_RESAMPLES

    value = non_negative_int(text)
    if value > MAX_RESAMPLES:
        raise argparse.ArgumentTypeError(f"must be <= {MAX_RESAMPLES:,}, got {value}")
    return value


def register(add: AddCommand) -> None:
    from biogpt.report.build import write_report

    parser = add(
        "report",
        cmd_report,
        "Report results beside the paper's numbers: each metric as `biogpt score` computes "
        "it, with a bootstrap interval, per-example samples, error kinds and plots, as JSON, "
        "Markdown and a self-contained HTML page.",
        EXAMPLES,
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="a `biogpt reproduce` run directory, a `biogpt evaluate --report` JSON, or "
        "TASK:SPLIT:PREDICTIONS.jsonl",
    )
    parser.add_argument("--out", required=True, help="folder to write the report into")
    parser.add_argument(
        "--data",
        help="data root of the gold answers (default: the one an input recorded, else "
        "$BIOGPT_DATA)",
    )
    parser.add_argument(
        "--bootstrap",
        type=resample_count,
        default=default_of(write_report, "bootstrap"),
        help="resamples of the examples (documents; HoC's sentences) for each interval; "
        "0: none (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=non_negative_int,
        default=default_of(write_report, "seed"),
        help="seed of the resampling (default: %(default)s)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into a --out that is not empty"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
