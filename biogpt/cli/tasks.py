"""Task commands: predict, evaluate, extract (and `score --task`)."""

from __future__ import annotations

import argparse
import json
import sys

from biogpt.cli.common import (
    AddCommand,
    add_answer_length_flag,
    add_batch_size_flag,
    add_model_flags,
    add_overwrite_flag,
    add_task_flags,
    add_text_arguments,
    jsonl_fields,
    load_model_and_tokenizer,
    refuse_overwrite,
    texts_or_stdin,
)
from biogpt.errors import BioGPTError


def task_and_examples(args: argparse.Namespace):
    """The task named by --task and the examples of its --split (under --data)."""
    from biogpt import tasks

    task = tasks.get(args.task)
    return task, task.load(args.split, args.data)


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------


def cmd_predict(args: argparse.Namespace) -> None:
    from biogpt import tasks
    from biogpt.tasks.evaluation import predict

    if bool(args.split) == bool(args.input):
        raise BioGPTError("pass exactly one of --split and --input")
    refuse_overwrite(args.output, args.overwrite)
    task = tasks.get(args.task)
    if args.split:
        examples = task.load(args.split, args.data)
    else:
        examples = [
            tasks.Example(id=i, source=task.source_of_text(text), target="", gold=None)
            for i, text in jsonl_fields(args.input, "id", "text")
        ]
    model, tokenizer = load_model_and_tokenizer(args)
    answers = predict(model, tokenizer, task, examples, args.batch_size, args.max_new_tokens)
    ordered = {ex.id: answers[ex.id] for ex in examples}
    if args.output:
        tasks.write_predictions(args.output, ordered)
        print(f"wrote {len(ordered)} predictions to {args.output}", file=sys.stderr)
    else:
        for example_id, text in ordered.items():
            print(json.dumps({"id": example_id, "prediction": text}, ensure_ascii=False))


PREDICT_EXAMPLES = """\
# a split's answers, by the model `biogpt finetune` wrote, into a file for `biogpt score`
$ biogpt predict --task bc5cdr --model runs/bc5cdr/averaged --split test --data data/ \\
    --output preds.jsonl
wrote ... predictions to preds.jsonl

# raw texts (JSONL of {"id": ..., "text": ...}); one JSON object per answer on stdout
$ biogpt predict --task bc5cdr --model runs/bc5cdr/averaged --input texts.jsonl
{"id": "1", "prediction": ...}
"""


def register_predict(add: AddCommand) -> None:
    from biogpt.tasks.evaluation import predict

    parser = add(
        "predict",
        cmd_predict,
        "Predict a task's answers with a fine-tuned model (greedy, as the paper).",
        PREDICT_EXAMPLES,
    )
    add_model_flags(parser)
    add_task_flags(parser)
    add_batch_size_flag(parser, predict)
    add_answer_length_flag(parser)
    parser.add_argument(
        "--input", help='JSONL of {"id": ..., "text": ...} raw texts instead of --split'
    )
    parser.add_argument("--output", help="predictions JSONL to write (default: standard output)")
    add_overwrite_flag(parser, "an existing --output")


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> None:
    from biogpt import tasks
    from biogpt.tasks.evaluation import evaluate, write_report

    report_path = args.report or f"{args.task}-{args.split}-report.json"
    refuse_overwrite(report_path, args.overwrite)
    refuse_overwrite(args.predictions, args.overwrite)
    task, examples = task_and_examples(args)
    model, tokenizer = load_model_and_tokenizer(args)
    metrics, predictions = evaluate(
        model, tokenizer, task, examples, args.batch_size, args.max_new_tokens
    )
    report = {"task": task.name, "split": args.split, "model": str(args.model), **metrics}
    write_report(report_path, report, overwrite=args.overwrite)
    if args.predictions:
        tasks.write_predictions(args.predictions, predictions)
    print(json.dumps(metrics, sort_keys=True))
    print(f"report written to {report_path}", file=sys.stderr)


EVALUATE_EXAMPLES = """\
# predict the test split and score it: the metrics on stdout, and a JSON report
# (bc5cdr-test-report.json) that also names the task, the split and the model
$ biogpt evaluate --task bc5cdr --model runs/bc5cdr/averaged --split test --data data/
{"examples": ..., "f1": ..., "missing": ..., "precision": ..., "recall": ..., "seconds": ...}
"""


def register_evaluate(add: AddCommand) -> None:
    from biogpt.tasks.evaluation import evaluate

    parser = add(
        "evaluate",
        cmd_evaluate,
        "Predict a split and score it with the task's metric; writes a JSON report.",
        EVALUATE_EXAMPLES,
    )
    add_model_flags(parser)
    add_task_flags(parser)
    add_batch_size_flag(parser, evaluate)
    add_answer_length_flag(parser)
    parser.add_argument("--report", help="report path (default: TASK-SPLIT-report.json)")
    parser.add_argument("--predictions", help="also write the predictions JSONL here")
    add_overwrite_flag(parser, "an existing report or predictions file")


# --------------------------------------------------------------------------------------------
# score --task (registered with `score` in biogpt.cli.text)
# --------------------------------------------------------------------------------------------


def cmd_score_predictions(args: argparse.Namespace) -> None:
    from biogpt import tasks

    if not (args.split and args.predictions):
        raise BioGPTError("scoring a task needs --split and --predictions")
    task, examples = task_and_examples(args)
    predictions = tasks.read_predictions(args.predictions)
    print(json.dumps(tasks.score_predictions(task, examples, predictions), sort_keys=True))


# --------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------


def cmd_extract(args: argparse.Namespace) -> None:
    from biogpt import tasks
    from biogpt.tasks.evaluation import extract

    task = tasks.get(args.task)
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
        "Run a fine-tuned task model on raw texts; prints the answer and its structure as JSON.",
        EXTRACT_EXAMPLES,
    )
    add_model_flags(parser)
    add_text_arguments(parser, "texts")
    add_task_flags(parser, required=False, default="bc5cdr", split=False, data=False)
    add_answer_length_flag(parser)


def register(add: AddCommand) -> None:
    for register_command in (
        register_predict,
        register_evaluate,
        register_extract,
    ):
        register_command(add)
