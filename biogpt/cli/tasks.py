"""Task commands: finetune, predict, evaluate, extract (and `score --task`)."""

from __future__ import annotations

import argparse
import json
import sys

from biogpt.cli.common import (
    AddCommand,
    add_model_flags,
    add_task_flags,
    jsonl_fields,
    load_model_and_tokenizer,
    refuse_overwrite,
    task_names,
    texts_or_stdin,
)
from biogpt.errors import BioGPTError


def _task_and_examples(args: argparse.Namespace):
    from biogpt import tasks

    task = tasks.get(args.task)
    return task, task.load(args.split, args.data)


def cmd_finetune(args: argparse.Namespace) -> None:
    from biogpt.training.finetune import finetune

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
        lr=args.lr,
        warmup_updates=args.warmup,
        max_epochs=args.epochs,
        max_updates=args.max_updates,
        tokens_per_update=args.tokens_per_update,
        max_tokens_per_batch=args.max_tokens_per_batch,
        dtype=args.dtype,
        loss=args.loss,
        seed=args.seed,
        average_last=args.average_last,
        save_every_epoch=not args.save_last_only,
    )
    print(
        f"fine-tuned model: {final}  ({result.steps} updates, {result.epochs} epochs; "
        f"log {result.log})"
    )


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


def cmd_evaluate(args: argparse.Namespace) -> None:
    from biogpt import tasks
    from biogpt.tasks.evaluation import evaluate, write_report

    report_path = args.report or f"{args.task}-{args.split}-report.json"
    refuse_overwrite(report_path, args.overwrite)
    refuse_overwrite(args.predictions, args.overwrite)
    task, examples = _task_and_examples(args)
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


def cmd_score_predictions(args: argparse.Namespace) -> None:
    from biogpt import tasks

    if not (args.split and args.predictions):
        raise BioGPTError("scoring a task needs --split and --predictions")
    task, examples = _task_and_examples(args)
    predictions = tasks.read_predictions(args.predictions)
    print(json.dumps(tasks.score_predictions(task, examples, predictions), sort_keys=True))


def cmd_extract(args: argparse.Namespace) -> None:
    from biogpt import tasks
    from biogpt.tasks.evaluation import extract

    task = tasks.get(args.task)
    texts = list(texts_or_stdin(args.text))
    model, tokenizer = load_model_and_tokenizer(args)
    for result in extract(model, tokenizer, task, texts, args.max_new_tokens):
        print(json.dumps(result, ensure_ascii=False))


def register(add: AddCommand) -> None:
    p = add(
        "finetune",
        cmd_finetune,
        "Fine-tune a model on a task with the paper's recipe (prompt tokens, Adam, "
        "inverse-sqrt schedule); defaults are the task's published hyper-parameters.",
        "biogpt finetune --task bc5cdr --model ./biogpt-hf --out runs/bc5cdr --data DIR",
    )
    p.add_argument("--task", required=True, help="task name: " + ", ".join(task_names()))
    p.add_argument("--model", required=True, help="pretrained model (HF dir, fairseq, Hub id)")
    p.add_argument("--out", required=True, help="run directory: checkpoints, log.jsonl, loss.png")
    p.add_argument("--data", help="data root (bc5cdr/, ddi/, ...); default: $BIOGPT_DATA")
    p.add_argument("--epochs", type=int, help="epochs to train (default: the task's)")
    p.add_argument("--max-updates", type=int, help="stop after this many optimiser updates")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's)")
    p.add_argument("--warmup", type=int, help="warmup updates (default: the task's)")
    p.add_argument("--tokens-per-update", type=int, help="accumulate to this many tokens (32768)")
    p.add_argument("--max-tokens-per-batch", type=int, help="micro-batch size in tokens (4096)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], help="fp32 (the paper) or bf16 autocast")
    p.add_argument("--loss", choices=["full", "target"], help="whole sequence (paper) or target")
    p.add_argument("--seed", type=int, help="data order and dropout seed")
    p.add_argument("--average-last", type=int, help="average the last k epoch checkpoints")
    p.add_argument("--save-last-only", action="store_true", help="checkpoint only at the end")
    p.add_argument("--limit", type=int, help="train on the first N examples only")
    p.add_argument("--no-valid", action="store_true", help="skip the validation loss")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out")
    p.add_argument("--trust-pickle", action="store_true", help="allow full unpickling of --model")

    p = add(
        "predict",
        cmd_predict,
        "Predict a task's answers with a fine-tuned model (greedy, as the paper).",
        "biogpt predict --task bc5cdr --model ./bc5cdr-model --split test --output preds.jsonl",
    )
    add_model_flags(p)
    add_task_flags(p)
    p.add_argument("--input", help='JSONL of {"id": ..., "text": ...} raw texts instead of --split')
    p.add_argument("--output", help="predictions JSONL to write (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    p = add(
        "evaluate",
        cmd_evaluate,
        "Predict a split and score it with the task's metric; writes a JSON report.",
        "biogpt evaluate --task pubmedqa --model ./pqa-model --split test --data DIR",
    )
    add_model_flags(p)
    add_task_flags(p)
    p.add_argument("--report", help="report path (default: TASK-SPLIT-report.json)")
    p.add_argument("--predictions", help="also write the predictions JSONL here")
    p.add_argument("--overwrite", action="store_true", help="replace existing report/predictions")

    p = add(
        "extract",
        cmd_extract,
        "Run a fine-tuned task model on raw texts; prints the answer and its structure as JSON.",
        'biogpt extract --model ./ddi-model --task ddi "Aspirin increases the effect of warfarin."',
    )
    add_model_flags(p)
    p.add_argument("text", nargs="*", help="texts (default: one per line of stdin)")
    p.add_argument("--task", default="bc5cdr", help="which task the model was tuned for")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: per task)")
