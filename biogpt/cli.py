"""The `biogpt` command line: each subcommand parses its flags and calls one library function.

Errors the user can fix (a missing file, a bad flag value) come out as one line on stderr
and exit status 2; nothing prints a stack trace for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from biogpt.errors import BioGPTError

DEMO_TEXT = (
    "COVID-19 is caused by SARS-CoV-2. Remdesivir (GS-5734) inhibited viral replication "
    "in Vero E6 cells with an EC50 of 0.77 µM; patients' IL-6 levels fell by 35% (p<0.05)."
)


def _texts(args_texts: Sequence[str]) -> Iterable[str]:
    """The texts given on the command line, or else one per line of standard input."""
    if args_texts:
        yield from args_texts
        return
    if sys.stdin.isatty():
        raise BioGPTError("no text given: pass TEXT arguments or pipe lines on standard input")
    for line in sys.stdin:
        yield line.rstrip("\n")


def _tokenizer_for(name_or_dir: str | None, model=None):
    """The tokenizer asked for, else the one stored beside the model (its prompt-token rows
    named), else the bundled one."""
    from biogpt.checkpoint import tokenizer_for
    from biogpt.tokenizer import Tokenizer

    if name_or_dir:
        return Tokenizer.from_pretrained(name_or_dir)
    if model is None:
        return Tokenizer.from_pretrained("biogpt")
    path, vocab_size = model
    return tokenizer_for(path, vocab_size)


# --- Subcommands ----------------------------------------------------------------------------


def cmd_tokenize(args: argparse.Namespace) -> None:
    tokenizer = _tokenizer_for(args.tokenizer)
    for text in _texts(args.text):
        ids = tokenizer.encode(text)
        pieces = [tokenizer.id_to_token(i) for i in ids]
        if args.json:
            print(json.dumps({"text": text, "ids": ids, "pieces": pieces}, ensure_ascii=False))
        elif args.show == "pieces":
            print(" ".join(pieces))
        elif args.show == "ids":
            print(" ".join(map(str, ids)))
        else:
            print(" ".join(f"{p}/{i}" for p, i in zip(pieces, ids, strict=True)))


def cmd_convert(args: argparse.Namespace) -> None:
    from biogpt.checkpoint import convert

    convert(
        args.src,
        args.dst,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        dtype=args.dtype,
    )
    print(f"wrote {args.dst}", file=sys.stderr)


def cmd_score(args: argparse.Namespace) -> None:
    if args.task:
        cmd_score_predictions(args)
        return
    if not args.model:
        raise BioGPTError("pass --model to score texts, or --task with --predictions")
    from biogpt.model import BioGPT
    from biogpt.scoring import score_text

    model = BioGPT.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_pickle=args.trust_pickle
    ).eval()
    tokenizer = _tokenizer_for(args.tokenizer, (args.model, model.config.vocab_size))
    for text in _texts(args.text):
        result = score_text(model, tokenizer, text)
        if args.json:
            print(json.dumps({"text": text, **result.to_dict()}, ensure_ascii=False))
            continue
        for piece, logprob in zip(result.pieces, result.logprobs, strict=True):
            print(f"{logprob:10.4f}  {piece}")
        print(
            f"tokens {len(result.logprobs)}  log-likelihood {result.total:.4f}  "
            f"perplexity {result.perplexity:.4f}"
        )


def _prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from --input (JSONL with "prompt" or "text"), the arguments, or stdin lines."""
    if args.input:
        prompts = []
        path = Path(args.input)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise BioGPTError(f"{path}: cannot read ({err.strerror})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                prompts.append(record["prompt"] if "prompt" in record else record["text"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BioGPTError(
                    f'{path}:{n}: expected a JSON object with a "prompt" or "text" field'
                ) from None
        return prompts
    return list(_texts(args.text))


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    from biogpt.completion import complete, stream
    from biogpt.model import BioGPT

    options = {
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.min_new_tokens,
        "num_beams": args.num_beams,
        "do_sample": args.sample,
        "num_return_sequences": args.num_return_sequences,
        "no_repeat_ngram_size": args.no_repeat_ngram_size,
        "repetition_penalty": args.repetition_penalty,
    }
    options["length_penalty"] = args.length_penalty
    options["early_stopping"] = {"true": True, "false": False}.get(
        args.early_stopping, args.early_stopping
    )
    # Sampling options go in whenever given, so that validation can refuse them without
    # --sample instead of ignoring them.
    options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    options["seed"] = args.seed
    # Check the options and the prompts before loading a model that may take a while.
    from biogpt.generation import GenerationConfig

    GenerationConfig.from_options(None, **options).validate()
    prompts = _prompts(args)
    if not prompts:
        raise BioGPTError("no prompts given")
    if args.stream and (args.num_beams > 1 or args.num_return_sequences > 1 or args.stop):
        raise BioGPTError("--stream works with greedy or sampling, one sequence, no --stop")
    model = BioGPT.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_pickle=args.trust_pickle
    ).eval()
    tokenizer = _tokenizer_for(args.tokenizer, (args.model, model.config.vocab_size))

    if args.stream:
        for prompt in prompts:
            began, pieces = time.perf_counter(), []
            print(prompt, end="", flush=True)
            for piece in stream(model, tokenizer, prompt, truncate=args.truncate, **options):
                print((" " if not pieces else "") + piece, end="", flush=True)
                pieces.append(piece)
            seconds = time.perf_counter() - began
            print(flush=True)
            print(f"[{seconds:.2f} s]", file=sys.stderr)
        return
    results = complete(
        model,
        tokenizer,
        prompts,
        stop=args.stop or (),
        truncate=args.truncate,
        batch_size=args.batch_size,
        progress=len(prompts) > args.batch_size,
        **options,
    )
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(result.text)


# --- Tasks ----------------------------------------------------------------------------------


def _task_and_examples(args: argparse.Namespace):
    from biogpt import tasks

    task = tasks.get(args.task)
    return task, task.load(args.split, args.data)


def _load_for_task(args: argparse.Namespace):
    from biogpt.model import BioGPT

    model = BioGPT.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_pickle=args.trust_pickle
    ).eval()
    return model, _tokenizer_for(args.tokenizer, (args.model, model.config.vocab_size))


def _refuse_overwrite(path: str | None, overwrite: bool) -> None:
    if path and Path(path).exists() and not overwrite:
        raise BioGPTError(f"{path} exists; pass --overwrite to replace it")


def _raw_inputs(path: str) -> list[tuple[str, str]]:
    """(id, text) pairs from a JSONL file of {"id": ..., "text": ...} records."""
    pairs = []
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").split("\n")
    except OSError as err:
        raise BioGPTError(f"{file}: cannot read ({err.strerror})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            pairs.append((str(record["id"]), str(record["text"])))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise BioGPTError(f'{file}:{n}: expected a JSON object with "id" and "text"') from None
    return pairs


def cmd_finetune(args: argparse.Namespace) -> None:
    from biogpt.finetune import finetune

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
    from biogpt.evaluation import predict

    if bool(args.split) == bool(args.input):
        raise BioGPTError("pass exactly one of --split and --input")
    _refuse_overwrite(args.output, args.overwrite)
    task = tasks.get(args.task)
    if args.split:
        examples = task.load(args.split, args.data)
    else:
        examples = [
            tasks.Example(id=i, source=task.source_of_text(text), target="", gold=None)
            for i, text in _raw_inputs(args.input)
        ]
    model, tokenizer = _load_for_task(args)
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
    from biogpt.evaluation import evaluate, write_report

    report_path = args.report or f"{args.task}-{args.split}-report.json"
    _refuse_overwrite(report_path, args.overwrite)
    _refuse_overwrite(args.predictions, args.overwrite)
    task, examples = _task_and_examples(args)
    model, tokenizer = _load_for_task(args)
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
    from biogpt.evaluation import extract

    task = tasks.get(args.task)
    texts = list(_texts(args.text))
    model, tokenizer = _load_for_task(args)
    for result in extract(model, tokenizer, task, texts, args.max_new_tokens):
        print(json.dumps(result, ensure_ascii=False))


def cmd_demo(args: argparse.Namespace) -> None:
    tokenizer = _tokenizer_for(None)
    text = args.text or DEMO_TEXT
    ids = tokenizer.encode(text)
    print(f"text: {text}\n")
    print(f"{len(ids)} tokens with the bundled BioGPT vocabulary ({len(tokenizer)} entries):\n")
    width = max(len(tokenizer.id_to_token(i)) for i in ids)
    for i in ids:
        print(f"  {tokenizer.id_to_token(i):<{width}}  {i:>6}")
    print(f"\ndecoded back: {tokenizer.decode(ids)}")


# --- Parser ---------------------------------------------------------------------------------


def _add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="a Hugging Face directory, a fairseq directory or checkpoint.pt, or a Hub id",
    )
    p.add_argument("--tokenizer", help="vocabulary name or directory (default: the model's own)")
    p.add_argument("--dtype", help="fp32 (default), bf16 or fp16")
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pt/.bin file that needs full unpickling (runs code from the file)",
    )


def _task_names() -> list[str]:
    from biogpt import tasks

    return tasks.names()


def _add_task_flags(p: argparse.ArgumentParser, model_needed: bool = True) -> None:
    p.add_argument("--task", required=model_needed, choices=_task_names(), help="task name")
    p.add_argument("--split", help="train, valid or test" if model_needed else "split to score")
    p.add_argument(
        "--data",
        help="data root laid out like shared/data (bc5cdr/, ddi/, ...); default: $BIOGPT_DATA",
    )
    if model_needed:
        p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
        p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: per task)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biogpt",
        description="BioGPT for biomedical text: tokenize, generate, score, convert checkpoints.",
        epilog="Run `biogpt COMMAND --help` for the flags of each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], None], help: str, example: str):
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add(
        "tokenize",
        cmd_tokenize,
        "Tokenize text into BioGPT BPE pieces and ids (texts as arguments or lines on stdin).",
        'biogpt tokenize "COVID-19 is"   ->   </s>/2 COVID/4805 -/9 19</w>/656 is</w>/21',
    )
    p.add_argument("text", nargs="*", help="texts to tokenize (default: read lines from stdin)")
    p.add_argument(
        "--tokenizer", default="biogpt", help="bundled name (biogpt, biogpt-large) or directory"
    )
    p.add_argument(
        "--show", choices=["both", "ids", "pieces"], default="both", help="what to print per token"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per text")

    p = add(
        "convert",
        cmd_convert,
        "Convert a checkpoint (fairseq, Hugging Face, Hub id) to a Hugging Face directory.",
        "biogpt convert checkpoints/RE-BC5CDR-BioGPT/checkpoint_avg.pt bc5cdr-hf",
    )
    p.add_argument("src", help="fairseq directory or .pt file, Hugging Face directory, or Hub id")
    p.add_argument("dst", help="output directory (Hugging Face layout)")
    p.add_argument("--dtype", help="store weights as fp32, bf16 or fp16 (default: as loaded)")
    p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in DST")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pt file that needs full unpickling (runs code from the file)",
    )

    p = add(
        "score",
        cmd_score,
        "Score texts under a model (per-token log-likelihood, perplexity), or a task's "
        "predictions against its gold answers (--task --split --predictions).",
        'biogpt score --model ./biogpt-hf "Aspirin inhibits platelet aggregation."\n'
        "  biogpt score --task bc5cdr --split test --predictions preds.jsonl --data DIR",
    )
    _add_model_flags(p, required=False)
    p.add_argument("text", nargs="*", help="texts to score (default: read lines from stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    _add_task_flags(p, model_needed=False)
    p.add_argument("--predictions", help='JSONL of {"id": ..., "prediction": ...} to score')

    p = add(
        "finetune",
        cmd_finetune,
        "Fine-tune a model on a task with the paper's recipe (prompt tokens, Adam, "
        "inverse-sqrt schedule); defaults are the task's published hyper-parameters.",
        "biogpt finetune --task bc5cdr --model ./biogpt-hf --out runs/bc5cdr --data DIR",
    )
    p.add_argument("--task", required=True, help="task name: " + ", ".join(_task_names()))
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
    _add_model_flags(p)
    _add_task_flags(p)
    p.add_argument("--input", help='JSONL of {"id": ..., "text": ...} raw texts instead of --split')
    p.add_argument("--output", help="predictions JSONL to write (default: standard output)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")

    p = add(
        "evaluate",
        cmd_evaluate,
        "Predict a split and score it with the task's metric; writes a JSON report.",
        "biogpt evaluate --task pubmedqa --model ./pqa-model --split test --data DIR",
    )
    _add_model_flags(p)
    _add_task_flags(p)
    p.add_argument("--report", help="report path (default: TASK-SPLIT-report.json)")
    p.add_argument("--predictions", help="also write the predictions JSONL here")
    p.add_argument("--overwrite", action="store_true", help="replace existing report/predictions")

    p = add(
        "extract",
        cmd_extract,
        "Run a fine-tuned task model on raw texts; prints the answer and its structure as JSON.",
        'biogpt extract --model ./ddi-model --task ddi "Aspirin increases the effect of warfarin."',
    )
    _add_model_flags(p)
    p.add_argument("text", nargs="*", help="texts (default: one per line of stdin)")
    p.add_argument("--task", default="bc5cdr", help="which task the model was tuned for")
    p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: per task)")

    p = add(
        "generate",
        cmd_generate,
        "Generate text from prompts (arguments, stdin lines, or a JSONL file).",
        'biogpt generate --model ./biogpt-hf --num-beams 5 --min-new-tokens 100 "COVID-19 is"',
    )
    _add_model_flags(p)
    p.add_argument("text", nargs="*", help="prompts (default: one per line of stdin)")
    p.add_argument("--input", help='JSONL file of {"prompt": ...} (or "text") records')
    p.add_argument("--max-new-tokens", type=int, default=64, help="at most this many new tokens")
    p.add_argument("--min-new-tokens", type=int, default=0, help="forbid </s> before this many")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score / length ** this")
    p.add_argument(
        "--early-stopping",
        choices=["true", "false", "never"],
        default="false",
        help="beam search: stop when num_beams hypotheses are done (true), when none can improve "
        "(false), or only at max length (never)",
    )
    p.add_argument("--sample", action="store_true", help="sample instead of taking the best token")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same samples")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats")
    p.add_argument("--no-repeat-ngram-size", type=int, default=0, help="no n-gram occurs twice")
    p.add_argument("--num-return-sequences", type=int, default=1, help="completions per prompt")
    p.add_argument("--stop", action="append", help="end a completion at this string (repeatable)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
    p.add_argument(
        "--truncate",
        action="store_true",
        help="cut prompts that do not fit (keeping their end) instead of refusing them",
    )
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument(
        "--json", action="store_true", help="one JSON object per completion, with counts and timing"
    )

    p = add(
        "demo",
        cmd_demo,
        "Show what the package does with the bundled vocabulary: pieces and ids of a paragraph.",
        "biogpt demo",
    )
    p.add_argument("--text", help="paragraph to show (default: a built-in biomedical one)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except BioGPTError as err:
        print(f"biogpt {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"biogpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `biogpt tokenize ... | head`
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
