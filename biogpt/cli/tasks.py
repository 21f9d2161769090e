"""Task commands: finetune, predict, evaluate, extract (and `score --task`)."""

from __future__ import annotations

import argparse
import json
import sys

from biogpt.cli.common import (
    AddCommand,
    add_answer_length_flag,
    add_batch_size_flag,
    add_model_flag,
    add_model_flags,
    add_overwrite_flag,
    add_run_directory_flags,
    add_task_flags,
    add_text_arguments,
    add_training_flags,
    add_trust_pickle_flag,
    config_overrides,
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
# finetune
# --------------------------------------------------------------------------------------------

# finetune flag dest -> TrainConfig field, where the names differ
FINETUNE_RENAMED = {"epochs": "max_epochs", "warmup": "warmup_updates"}


def cmd_finetune(args: argparse.Namespace) -> None:
    from biogpt.training.config import TrainConfig
    from biogpt.training.finetune import finetune

    overrides = config_overrides(args, TrainConfig, FINETUNE_RENAMED)
    if args.save_last_only:
        overrides["save_every_epoch"] = False
    final, result = finetune(
        args.task,
        args.model,
        args.out,
        data_dir=args.data,
        limit=args.limit,
        validate=not args.no_valid,
        resume=args.resume,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        **overrides,
    )
    print(
        f"fine-tuned model: {final}  ({result.steps} updates, {result.epochs} epochs; "
        f"log {result.log})"
    )


FINETUNE_EXAMPLES = """\
# the paper's recipe for BC5CDR (its data under --data, or $BIOGPT_DATA); the last line
# names the model to predict with: the average of the last epochs' checkpoints
$ biogpt finetune --task bc5cdr --model mini --out runs/bc5cdr --data data/
fine-tuned model: runs/bc5cdr/averaged  (... updates, ... epochs; log runs/bc5cdr/log.jsonl)

# a quick trial: the first 2 examples, 3 updates, no validation, the last checkpoint only
$ biogpt finetune --task bc5cdr --model mini --out runs/trial --data data/ --limit 2 \\
    --max-updates 3 --no-valid --average-last 0
fine-tuned model: runs/trial/checkpoints/...  (... updates, ... epochs; log runs/trial/log.jsonl)
"""


def register_finetune(add: AddCommand) -> None:
    from biogpt.training.config import TrainConfig

    parser = add(
        "finetune",
        cmd_finetune,
        "Fine-tune a model on a task with the paper's recipe (prompt tokens, Adam, "
        "inverse-sqrt schedule); defaults are the task's published hyper-parameters.",
        FINETUNE_EXAMPLES,
    )
    add_task_flags(parser, split=False)
    add_model_flag(parser)
    add_trust_pickle_flag(parser)
    add_run_directory_flags(parser, required=True)
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the task's)")
    parser.add_argument("--max-updates", type=int, help="stop after this many optimiser updates")
    parser.add_argument("--warmup", type=int, help="warmup updates (default: the task's)")
    add_training_flags(parser, TrainConfig(), per_task=("lr", "tokens_per_update"))
    parser.add_argument(
        "--max-tokens-per-batch",
        type=int,
        help=f"micro-batch size in tokens (default: {TrainConfig.max_tokens_per_batch})",
    )
    parser.add_argument(
        "--loss", choices=["full", "target"], help="whole sequence (the paper) or target only"
    )
    parser.add_argument(
        "--average-last",
        type=int,
        help="average the last k epoch checkpoints (default: the task's)",
    )
    parser.add_argument("--save-last-only", action="store_true", help="checkpoint only at the end")
    parser.add_argument("--limit", type=int, help="train on the first N examples only")
    parser.add_argument("--no-valid", action="store_true", help="skip the validation loss")


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
        register_finetune,
        register_predict,
        register_evaluate,
        register_extract,
    ):
        register_command(add)
