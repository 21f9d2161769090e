"""Pieces every subcommand module shares: reading texts, loading models, common flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from biogpt.errors import BioGPTError
from biogpt.io import read_jsonl

# add(name, function, help, example) -> the subcommand's parser (see biogpt.cli.build_parser)
AddCommand = Callable[
    [str, Callable[[argparse.Namespace], None], str, str], argparse.ArgumentParser
]


def texts_or_stdin(args_texts: Sequence[str]) -> Iterable[str]:
    """The texts given on the command line, or else one per line of standard input."""
    if args_texts:
        yield from args_texts
        return
    if sys.stdin.isatty():
        raise BioGPTError("no text given: pass TEXT arguments or pipe lines on standard input")
    for line in sys.stdin:
        yield line.rstrip("\n")


def tokenizer_for_cli(name_or_dir: str | None, model=None):
    """The tokenizer asked for, else the one stored beside the model (its prompt-token rows
    named), else the bundled one."""
    from biogpt.checkpoint.pipeline import tokenizer_for
    from biogpt.tokenizer import Tokenizer

    if name_or_dir:
        return Tokenizer.from_pretrained(name_or_dir)
    if model is None:
        return Tokenizer.from_pretrained("biogpt")
    path, vocab_size = model
    return tokenizer_for(path, vocab_size)


def load_model_and_tokenizer(args: argparse.Namespace):
    """The model named by --model (with --dtype, --device, --trust-pickle) and its tokenizer."""
    from biogpt.model import BioGPT

    model = BioGPT.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_pickle=args.trust_pickle
    ).eval()
    return model, tokenizer_for_cli(args.tokenizer, (args.model, model.config.vocab_size))


def refuse_overwrite(path: str | Path | None, overwrite: bool) -> None:
    if path and Path(path).exists() and not overwrite:
        raise BioGPTError(f"{path} exists; pass --overwrite to replace it")


def add_model_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--model",
        required=required,
        help="a Hugging Face directory, a fairseq directory or checkpoint.pt, or a Hub id",
    )
    p.add_argument("--tokenizer", help="vocabulary name or directory (default: the model's own)")
    p.add_argument(
        "--dtype",
        help="fp32 (default); bf16 (half the memory; on CPU about 1.5-2x fp32's decoding "
        "speed with fp32 products and logits; beam search and batches pack the weights for "
        "a few seconds on their first call); fp16; or int8 "
        "(int8 linear weights, fp32 elsewhere: the fastest decoding on CPU; "
        "slightly lossy)",
    )
    p.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    p.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pt/.bin file that needs full unpickling (runs code from the file)",
    )


def task_names() -> list[str]:
    from biogpt import tasks

    return tasks.names()


def add_task_flags(p: argparse.ArgumentParser, model_needed: bool = True) -> None:
    p.add_argument("--task", required=model_needed, choices=task_names(), help="task name")
    p.add_argument("--split", help="train, valid or test" if model_needed else "split to score")
    p.add_argument(
        "--data",
        help="data root, one folder per dataset (bc5cdr/, ddi/, hoc/, ...); default: $BIOGPT_DATA",
    )
    if model_needed:
        p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together")
        p.add_argument("--max-new-tokens", type=int, help="answer length limit (default: per task)")


def jsonl_fields(path: str | Path, *fields: str) -> Iterator[tuple[str, ...]]:
    """The given fields of each record of a JSONL file, as strings; a field written `a|b`
    takes `a`, else `b`. A record that lacks them is a one-line error naming file:line."""
    wanted = " and ".join(f'"{f}"' for f in fields).replace("|", '" or "')
    for where, record in read_jsonl(path):
        try:
            yield tuple(
                str(record[next((k for k in f.split("|") if k in record), f.split("|")[-1])])
                for f in fields
            )
        except (KeyError, TypeError):
            raise BioGPTError(f"{where}: expected a JSON object with {wanted}") from None
