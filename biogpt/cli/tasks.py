"""Task commands: predict, evaluate, extract (and `score --task`).

Everything a command can refuse is refused before the model loads, one line each:
- the task: the one recorded beside a model `biogpt finetune` wrote (task.json), or
  --task, which must agree with that record; a model without one needs --task;
- the numbers (--batch-size, --max-new-tokens, --limit: positive, as they are parsed);
- every output path (--output, --report, --predictions): a directory, a path in a folder
  that does not exist or cannot be written, or a file that exists without --overwrite
  (or --resume, which continues it);
- the examples: --split of --data (else $BIOGPT_DATA), or predict's --input, read whole.

predict and evaluate write each finished batch of answers at once (flushed and fsynced;
`biogpt.tasks.predictions.PredictionsFile`), so a run that is stopped keeps them, and the
same command with --resume predicts only the rest. The file's lines follow the examples'
order and `FILE.meta.json` records the run: a resume with another task, model, dtype,
tokenizer, answer length or other examples is refused, and so is a file that is not the
start of the run's examples (--limit may grow between runs, since a shorter run's file is
the start of a longer one's). The finished file equals, byte for byte, the file of a run
that was never stopped. evaluate keeps its predictions beside the report (or in
--predictions) the same way, and writes the report when they are complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biogpt.cli.common import (
    AddCommand,
    add_answer_length_flag,
    add_batch_size_flag,
    add_model_flags,
    add_overwrite_flag,
    add_task_flags,
    add_text_arguments,
    load_model_and_tokenizer,
    positive_int,
    texts_or_stdin,
)
from biogpt.errors import BioGPTError

if TYPE_CHECKING:
    from biogpt.tasks import Example, Task

# --------------------------------------------------------------------------------------------
# Checks made before any work
# --------------------------------------------------------------------------------------------


def check_resume_flags(args: argparse.Namespace) -> None:
    if args.resume and args.overwrite:
        raise BioGPTError(
            "pass --resume (continue the file) or --overwrite (start it again), not both"
        )


def check_output(path: str | Path, name: str, overwrite: bool, resume: bool = False) -> None:
    """A one-line error, naming the output by `name` (its flag), for a path the command
    could not write or must not replace: a directory, a folder that does not exist or is
    not writable, or an existing file without --overwrite (or --resume, where `resume`
    says the command continues it)."""
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise BioGPTError(f"{name} {path}: is a directory")
    if not folder.is_dir():
        raise BioGPTError(f"{name} {path}: no such directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise BioGPTError(f"{name} {path}: cannot write in {folder} (permission denied)")
    if path.exists():
        if not (overwrite or resume):
            raise BioGPTError(f"{name} {path}: exists; pass --overwrite to replace it")
        if not os.access(path, os.W_OK):
            raise BioGPTError(f"{name} {path}: cannot write it (permission denied)")


def check_distinct(*outputs: tuple[str, Path | None]) -> None:
    """A one-line error where two of the (name, path) files are one file."""
    seen: dict[Path, str] = {}
    for name, path in outputs:
        if path is None:
            continue
        key = path.resolve()
        if key in seen:
            raise BioGPTError(f"{name} {path}: the same file as {seen[key]}")
        seen[key] = f"{name} {path}"


def model_task(args: argparse.Namespace) -> Task:
    """The task named by --task, checked against the model's record, or else the recorded
    one (`biogpt.tasks.task_for_model`)."""
    from biogpt import tasks

    return tasks.task_for_model(args.model, args.task)


def first(examples: list[Example], limit: int | None, where: str) -> list[Example]:
    """The first `limit` examples (all without one); none at all is a one-line error."""
    examples = examples[:limit]
    if not examples:
        raise BioGPTError(f"{where}: no examples")
    return examples


def split_examples(args: argparse.Namespace, task: Task) -> list[Example]:
    """The first --limit examples of --split under --data, the flags checked first."""
    if not task.accepts_split(args.split):
        raise BioGPTError(
            f"--split {args.split}: task {task.name} has no such split "
            f"(expected one of {', '.join(task.splits)})"
        )
    if args.data is not None and not Path(args.data).is_dir():
        raise BioGPTError(f"--data {args.data}: no such directory")
    examples = task.load(args.split, args.data)
    return first(examples, getattr(args, "limit", None), f"--split {args.split}")


def input_examples(args: argparse.Namespace, task: Task) -> list[Example]:
    """The first --limit records of the --input file, as examples of the task."""
    from biogpt.tasks.evaluation import read_texts, text_examples

    if not Path(args.input).is_file():
        raise BioGPTError(f"--input {args.input}: no such file")
    examples = text_examples(task, read_texts(args.input))
    return first(examples, args.limit, f"--input {args.input}")


def located(path: str | Path | None) -> str | None:
    """A path as its absolute form (a name that is no path, `mini` or a Hub id, as is), so
    that a run resumed from another folder is still recognised."""
    if path is None:
        return None
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def run_record(args: argparse.Namespace, task: Task) -> dict[str, Any]:
    """What a predictions file's meta record holds: what a resumed run must repeat, under
    the flags that set it. --limit is left out (the file's ids are checked instead), and so
    are the batch size and the device, which a resumed run may change: each row decodes as
    it would alone, so the batch size changes no answer (another device may round
    otherwise)."""
    record: dict[str, Any] = {
        "--task": task.name,
        "task options": task.options(),
        "--model": located(args.model),
        "--tokenizer": located(args.tokenizer),
        "--dtype": args.dtype,
        "--max-new-tokens": args.max_new_tokens,
    }
    if getattr(args, "input", None):
        record["--input"] = located(args.input)
    else:
        named = args.split in task.splits  # else a custom task's file
        record["--split"] = args.split if named else located(args.split)
        record["--data"] = located(args.data or os.environ.get("BIOGPT_DATA"))
    return record


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def print_batch(batch: list[tuple[str, str]]) -> None:
    """A finished batch's answers as JSON lines on stdout, at once."""
    for example_id, text in batch:
        print(json.dumps({"id": example_id, "prediction": text}, ensure_ascii=False))
    sys.stdout.flush()


def cmd_predict(args: argparse.Namespace) -> None:
    from biogpt.tasks.evaluation import predict
    from biogpt.tasks.predictions import PredictionsFile

    if bool(args.split) == bool(args.input):
        raise BioGPTError("pass exactly one of --split and --input")
    check_resume_flags(args)
    if args.resume and not args.output:
        raise BioGPTError("--resume needs --output (standard output cannot be continued)")
    task = model_task(args)
    if args.output:
        check_output(args.output, "--output", args.overwrite, args.resume)
        check_distinct(
            ("--input", Path(args.input) if args.input else None),
            ("--output", Path(args.output)),
        )
    examples = split_examples(args, task) if args.split else input_examples(args, task)
    if not args.output:
        model, tokenizer = load_model_and_tokenizer(args)
        predict(
            model,
            tokenizer,
            task,
            examples,
            args.batch_size,
            args.max_new_tokens,
            on_batch=print_batch,
        )
        return
    ids = [example.id for example in examples]
    with PredictionsFile(args.output, run_record(args, task), ids, args.resume) as out:
        todo = examples[len(out.done) :]
        if todo:
            model, tokenizer = load_model_and_tokenizer(args)
            predict(
                model,
                tokenizer,
                task,
                todo,
                args.batch_size,
                args.max_new_tokens,
                on_batch=out.append,
            )
    earlier = f" after the {len(out.done)} already there" if out.done else ""
    print(f"wrote {len(todo)} predictions to {args.output}{earlier}", file=sys.stderr)


PREDICT_EXAMPLES = """\
# a split's answers, by the model `biogpt finetune` wrote, into a file for `biogpt score`
# (written a batch at a time, as they are made)
$ biogpt predict --task bc5cdr --model runs/bc5cdr/averaged --split test --data data/ \\
    --output preds.jsonl
wrote ... predictions to preds.jsonl

# the first 2 examples only; then the rest, after the lines already in the file (the same
# command with --resume also continues a run that was stopped)
$ biogpt predict --task bc5cdr --model runs/bc5cdr/averaged --split test --data data/ \\
    --limit 2 --output part.jsonl
wrote 2 predictions to part.jsonl
$ biogpt predict --task bc5cdr --model runs/bc5cdr/averaged --split test --data data/ \\
    --output part.jsonl --resume
wrote ... predictions to part.jsonl after the 2 already there

# raw texts (JSONL of {"id": ..., "text": ...}); one JSON object per answer on stdout
$ biogpt predict --task bc5cdr --model runs/bc5cdr/averaged --input texts.jsonl
{"id": "1", "prediction": ...}
"""


def add_limit_and_resume_flags(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--limit", type=positive_int, help="predict the first N examples only")
    parser.add_argument(
        "--resume",
        action="store_true",
        help=f"continue {what} that a stopped run (or one with a smaller --limit) wrote",
    )


def register_predict(add: AddCommand) -> None:
    from biogpt.tasks.evaluation import predict

    parser = add(
        "predict",
        cmd_predict,
        "Predict a task's answers with a fine-tuned model (greedy, as the paper); the task "
        "is the one the model records, else --task.",
        PREDICT_EXAMPLES,
    )
    add_model_flags(parser)
    add_task_flags(parser, required=False)
    add_batch_size_flag(parser, predict)
    add_answer_length_flag(parser)
    parser.add_argument(
        "--input",
        help='JSONL of {"id": ..., "text": ...} raw texts instead of --split ("id" optional: '
        "the record's index)",
    )
    parser.add_argument("--output", help="predictions JSONL to write (default: standard output)")
    add_limit_and_resume_flags(parser, "the --output")
    add_overwrite_flag(parser, "an existing --output")


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> None:
    from biogpt.tasks import score_predictions
    from biogpt.tasks.evaluation import evaluate, write_report
    from biogpt.tasks.predictions import PredictionsFile

    check_resume_flags(args)
    task = model_task(args)
    if not args.split:
        raise BioGPTError(f"pass --split ({', '.join(task.splits)})")
    report = Path(args.report or f"{task.name}-{Path(args.split).stem}-report.json")
    kept = Path(args.predictions or report.with_suffix(".predictions.jsonl"))
    report_name = "--report" if args.report else "report"
    kept_name = "--predictions" if args.predictions else "predictions"
    # --resume continues the predictions and writes the report when they are complete.
    check_output(report, report_name, args.overwrite, args.resume)
    check_output(kept, kept_name, args.overwrite, args.resume)
    check_distinct((report_name, report), (kept_name, kept))
    examples = split_examples(args, task)

    ids = [example.id for example in examples]
    with PredictionsFile(kept, run_record(args, task), ids, args.resume) as out:
        if len(out.done) < len(examples):
            model, tokenizer = load_model_and_tokenizer(args)
            metrics, _ = evaluate(
                model,
                tokenizer,
                task,
                examples,
                args.batch_size,
                args.max_new_tokens,
                done=out.done,
                on_batch=out.append,
            )
        else:
            metrics = {**score_predictions(task, examples, out.done), "seconds": 0.0}
    header: dict[str, Any] = {"task": task.name, "split": args.split, "model": str(args.model)}
    if args.limit:
        header["limit"] = args.limit
    report_data = {**header, "predictions": str(kept), **metrics}
    write_report(report, report_data, overwrite=args.overwrite or args.resume)
    print(json.dumps(metrics, sort_keys=True))
    print(f"report written to {report}, predictions to {kept}", file=sys.stderr)


EVALUATE_EXAMPLES = """\
# predict the test split and score it: the metrics on stdout, a JSON report
# (bc5cdr-test-report.json) that also names the task, the split and the model, and the
# predictions beside it, written as they are made (bc5cdr-test-report.predictions.jsonl)
$ biogpt evaluate --task bc5cdr --model runs/bc5cdr/averaged --split test --data data/
{"examples": ..., "f1": ..., "missing": ..., "precision": ..., "recall": ..., "seconds": ...}

# the validation split's first 2 documents; the same command with --resume would continue
# it after a stop
$ biogpt evaluate --task bc5cdr --model runs/bc5cdr/averaged --split valid --data data/ \\
    --limit 2 --report valid.json
{"examples": 2, "f1": ..., "missing": 0, ...}
"""


def register_evaluate(add: AddCommand) -> None:
    from biogpt.tasks.evaluation import evaluate

    parser = add(
        "evaluate",
        cmd_evaluate,
        "Predict a split and score it with the task's metric; writes a JSON report. The "
        "task is the one the model records, else --task.",
        EVALUATE_EXAMPLES,
    )
    add_model_flags(parser)
    add_task_flags(parser, required=False)
    add_batch_size_flag(parser, evaluate)
    add_answer_length_flag(parser)
    parser.add_argument("--report", help="report path (default: TASK-SPLIT-report.json)")
    parser.add_argument(
        "--predictions",
        help="predictions JSONL, written as they are made "
        "(default: the report's path ending .predictions.jsonl)",
    )
    add_limit_and_resume_flags(parser, "the predictions")
    add_overwrite_flag(parser, "an existing report and predictions file")


# --------------------------------------------------------------------------------------------
# score --task (registered with `score` in biogpt.cli.text)
# --------------------------------------------------------------------------------------------


def cmd_score_predictions(args: argparse.Namespace) -> None:
    from biogpt import tasks
    from biogpt.tasks.evaluation import score_file

    if not (args.split and args.predictions):
        raise BioGPTError("scoring a task needs --split and --predictions")
    if not Path(args.predictions).is_file():
        raise BioGPTError(f"--predictions {args.predictions}: no such file")
    task = tasks.get(args.task)
    examples = split_examples(args, task)
    print(json.dumps(score_file(task, examples, args.predictions), sort_keys=True))


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> None:
    from biogpt.tasks.evaluation import extract

    task = model_task(args)
    texts = list(texts_or_stdin(args.text))
    model, tokenizer = load_model_and_tokenizer(args)
    for result in extract(model, tokenizer, task, texts, args.max_new_tokens):
        print(json.dumps(result, ensure_ascii=False))


EXTRACT_EXAMPLES = """\
# a task model on your own text: the answer, and its structure under the task's name
$ biogpt extract --task bc5cdr --model runs/bc5cdr/averaged \\
    "Cisplatin-induced nephrotoxicity was seen in two patients."
{"text": "Cisplatin-induced ...", "answer": ..., "bc5cdr": [...], "unparseable": ...}
"""


def register_extract(add: AddCommand) -> None:
    parser = add(
        "extract",
        cmd_extract,
        "Run a fine-tuned task model on raw texts; prints the answer and its structure as "
        "JSON. The task is the one the model records, else --task.",
        EXTRACT_EXAMPLES,
    )
    add_model_flags(parser)
    add_text_arguments(parser, "texts")
    add_task_flags(parser, required=False, split=False, data=False)
    add_answer_length_flag(parser)


def register(add: AddCommand) -> None:
    for register_command in (
        register_predict,
        register_evaluate,
        register_extract,
    ):
        register_command(add)
