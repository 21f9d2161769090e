"""What the subcommand modules share: reading texts and models, and the blocks of flags that
several commands take (model, task, run directory, training, decoding), each declared once.

A flag whose default lives in the library takes it from there (a dataclass field or a
function's signature) instead of repeating it: the decoding flags are built from
`GenerationConfig`'s fields, so each of their defaults is written in one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from biogpt.errors import BioGPTError
from biogpt.io import read_jsonl

if TYPE_CHECKING:
    from biogpt.config import ModelConfig
    from biogpt.tokenizer import Tokenizer

# add(name, function, help, examples) -> the subcommand's parser (see biogpt.cli.build_parser)
AddCommand = Callable[
    [str, Callable[[argparse.Namespace], None], str, str], argparse.ArgumentParser
]

# The vocabulary that ships with the package, used when no other is named.
BUNDLED_TOKENIZER = "biogpt"


def default_of(function: Callable[..., Any], parameter: str) -> Any:
    """The default of `function`'s `parameter` (a dataclass's field works too: its class is
    the function that builds it), for a flag that shows or uses the library's default."""
    return inspect.signature(function).parameters[parameter].default


# --------------------------------------------------------------------------------------------
# Reading inputs
# --------------------------------------------------------------------------------------------


def texts_or_stdin(args_texts: Sequence[str]) -> Iterable[str]:
    """The texts given on the command line, or else one per line of standard input."""
    if args_texts:
        yield from args_texts
        return
    if sys.stdin.isatty():
        raise BioGPTError("no text given: pass TEXT arguments or pipe lines on standard input")
    for line in sys.stdin:
        yield line.rstrip("\n")


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


def tokenizer_for_cli(name_or_dir: str | None, model: tuple[str, int] | None = None):
    """The tokenizer asked for, else the one stored beside `model` (a (path, vocab_size)
    pair; its prompt-token rows named), else the bundled one."""
    from biogpt.checkpoint.pipeline import tokenizer_for
    from biogpt.tokenizer import Tokenizer

    if name_or_dir:
        return Tokenizer.from_pretrained(name_or_dir)
    if model is None:
        return Tokenizer.from_pretrained(BUNDLED_TOKENIZER)
    path, vocab_size = model
    return tokenizer_for(path, vocab_size)


def load_model_and_tokenizer(args: argparse.Namespace):
    """The model named by --model (with --dtype, --device, --trust-pickle) and its tokenizer."""
    from biogpt.api import BioGPT

    model = BioGPT.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_pickle=args.trust_pickle
    ).eval()
    tokenizer = tokenizer_for_cli(args.tokenizer, (args.model, model.config.vocab_size))
    if args.tokenizer:
        check_tokenizer_fits(tokenizer, args.tokenizer, model.config, args.model)
    return model, tokenizer


def check_tokenizer_fits(
    tokenizer: Tokenizer, name: str, config: ModelConfig, model_path: str
) -> None:
    """A one-line error unless the tokenizer named by --tokenizer fits the model: as many
    ids as the model has rows (or the model's own base vocabulary, where the model carries
    prompt-token rows beyond it), and the special ids the model was trained with."""
    from biogpt.checkpoint.pipeline import tokenizer_for

    size, rows = len(tokenizer), config.vocab_size
    if size < rows:
        # Fine where the model's own vocabulary starts with this one: its extra rows are
        # learned prompt tokens (a fine-tuned fairseq model's dict.txt does not name them).
        own = tokenizer_for(model_path, rows)
        fits = all(own.id_to_token(i) == tokenizer.id_to_token(i) for i in range(size))
    else:
        fits = size == rows
    if not fits:
        raise BioGPTError(
            f"--tokenizer {name}: its vocabulary has {size} ids but the model {model_path} "
            f"has {rows} token rows; pass the model's own vocabulary (or leave --tokenizer out)"
        )
    for what, model_id, tokenizer_id, token in (
        ("pad", config.pad_token_id, tokenizer.pad_id, "<pad>"),
        ("eos", config.eos_token_id, tokenizer.eos_id, "</s>"),
    ):
        if model_id != tokenizer_id or tokenizer.id_to_token(tokenizer_id) != token:
            raise BioGPTError(
                f"--tokenizer {name}: the model {model_path} uses {what} id {model_id}, the "
                f"tokenizer {tokenizer_id} (its token {tokenizer.id_to_token(tokenizer_id)}, "
                f"expected {token})"
            )


def refuse_overwrite(path: str | Path | None, overwrite: bool) -> None:
    """A one-line error if `path` exists and --overwrite was not given."""
    if path and Path(path).exists() and not overwrite:
        raise BioGPTError(f"{path} exists; pass --overwrite to replace it")


# --------------------------------------------------------------------------------------------
# Flags several commands take
# --------------------------------------------------------------------------------------------


def add_text_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """The TEXT arguments; without them, the command reads one text per line of stdin."""
    parser.add_argument("text", nargs="*", help=f"{what} (default: one per line of stdin)")


def add_json_flag(parser: argparse.ArgumentParser, per: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"one JSON object per {per}")


def add_vocabulary_flag(parser: argparse.ArgumentParser) -> None:
    """--tokenizer for the commands that need a vocabulary but no model."""
    parser.add_argument(
        "--tokenizer",
        default=BUNDLED_TOKENIZER,
        help="bundled name (biogpt, biogpt-large) or directory (default: %(default)s)",
    )


def add_trust_pickle_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--trust-pickle",
        action="store_true",
        help="allow a .pt/.bin file that needs full unpickling (runs code from the file)",
    )


def add_model_flag(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--model",
        required=required,
        help="a Hugging Face directory, a fairseq directory or checkpoint.pt, a Hub id, "
        "or mini (the built-in demonstration model)",
    )


def add_model_flags(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model and how to load it: --tokenizer, --dtype, --device, --trust-pickle."""
    add_model_flag(parser, required)
    parser.add_argument(
        "--tokenizer", help="vocabulary name or directory (default: the model's own)"
    )
    parser.add_argument(
        "--dtype",
        help="fp32 (default); bf16 (half the memory; on CPU about 1.5-2x fp32's decoding "
        "speed with fp32 products and logits; beam search and batches pack the weights for "
        "a few seconds on their first call); fp16; or int8 "
        "(int8 linear weights, fp32 elsewhere: the fastest decoding on CPU; "
        "slightly lossy)",
    )
    parser.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    add_trust_pickle_flag(parser)


def task_names() -> list[str]:
    from biogpt import tasks

    return tasks.names()


def add_task_flags(
    parser: argparse.ArgumentParser,
    required: bool = True,
    default: str | None = None,
    split: bool = True,
    data: bool = True,
) -> None:
    """--task, and (unless turned off) --split and --data, where its examples come from."""
    parser.add_argument(
        "--task", required=required, default=default, choices=task_names(), help="task name"
    )
    if split:
        parser.add_argument("--split", help="train, valid or test")
    if data:
        parser.add_argument(
            "--data",
            help="data root, one folder per dataset (bc5cdr/, ddi/, hoc/, ...); "
            "default: $BIOGPT_DATA",
        )


def add_batch_size_flag(parser: argparse.ArgumentParser, function: Callable[..., Any]) -> None:
    """--batch-size, defaulting to the `batch_size` of the library `function` it goes to."""
    parser.add_argument(
        "--batch-size",
        type=int,
        default=default_of(function, "batch_size"),
        help="prompts decoded together (default: %(default)s)",
    )


def add_answer_length_flag(parser: argparse.ArgumentParser) -> None:
    """--max-new-tokens for task answers: unset, each task has its own limit."""
    parser.add_argument(
        "--max-new-tokens", type=int, help="answer length limit (default: per task)"
    )


def add_overwrite_flag(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what}")


def add_run_directory_flags(parser: argparse.ArgumentParser, required: bool) -> None:
    """--out, --resume, --overwrite: where a training run writes, and what it does with an
    earlier run found there."""
    parser.add_argument(
        "--out", required=required, help="run directory: checkpoints, log.jsonl, loss.png"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--overwrite", action="store_true", help="delete an earlier run in --out")


def add_training_flags(
    parser: argparse.ArgumentParser, defaults: Any, per_task: Sequence[str] = ()
) -> None:
    """The optimisation flags of finetune and pretrain. Each is named after its field of the
    training config (see `config_overrides`) and left None when not given, so that the
    config's own default (or a config file's value) stands; the help shows `defaults`' value,
    or "the task's" for the fields in `per_task`."""

    def shown(name: str) -> str:
        return "the task's" if name in per_task else str(getattr(defaults, name))

    parser.add_argument("--lr", type=float, help=f"peak learning rate (default: {shown('lr')})")
    parser.add_argument(
        "--tokens-per-update",
        type=int,
        help=f"tokens per optimiser update (default: {shown('tokens_per_update')})",
    )
    parser.add_argument(
        "--dtype",
        choices=["fp32", "bf16"],
        help=f"fp32 (the paper) or bf16 autocast (default: {shown('dtype')})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        help=f"random seed of new weights, data order and dropout (default: {shown('seed')})",
    )


def config_overrides(
    args: argparse.Namespace, config_class: type, renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """The flags given that name a field of `config_class` ({flag dest: field} in `renamed`
    where the flag is spelt otherwise), as keyword overrides; flags not given (None) are left
    out, so the config's default stands."""
    renamed = renamed or {}
    names = {f.name for f in dataclasses.fields(config_class)}
    given = {renamed.get(dest, dest): value for dest, value in vars(args).items()}
    return {name: value for name, value in given.items() if name in names and value is not None}


# --------------------------------------------------------------------------------------------
# Decoding flags, built from GenerationConfig's fields
# --------------------------------------------------------------------------------------------

# Fields without a flag: the tokenizer supplies them.
SET_BY_TOKENIZER = ("eos_token_id", "pad_token_id")
# Flags spelt otherwise than --field-name (kept as the first release named them).
GENERATION_FLAG_NAMES = {"do_sample": "--sample"}
# --early-stopping's words for the field's values (True, False or "never", as in Hugging Face).
EARLY_STOPPING_WORDS: dict[str, bool | str] = {"true": True, "false": False, "never": "never"}


def early_stopping_value(word: str) -> bool | str:
    """The `GenerationConfig.early_stopping` value that --early-stopping WORD stands for."""
    try:
        return EARLY_STOPPING_WORDS[word]
    except KeyError:
        words = ", ".join(EARLY_STOPPING_WORDS)
        raise argparse.ArgumentTypeError(
            f"invalid choice: {word!r} (choose from {words})"
        ) from None


def generation_fields() -> list[dataclasses.Field]:
    """The `GenerationConfig` fields that have a flag, in the dataclass's order."""
    from biogpt.decoding.config import GenerationConfig

    return [f for f in dataclasses.fields(GenerationConfig) if f.name not in SET_BY_TOKENIZER]


def value_type(hint: Any) -> type:
    """What reads a flag's text for a field typed `hint`: int for `int` or `int | None`."""
    (kind,) = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    return kind


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `GenerationConfig` field: its name, type, default and help come from the
    field, and the parsed value lands under the field's name (see `generation_options`)."""
    from biogpt.decoding.config import GenerationConfig

    group = parser.add_argument_group("decoding options (biogpt.decoding.GenerationConfig)")
    types = typing.get_type_hints(GenerationConfig)
    for option in generation_fields():
        flag = GENERATION_FLAG_NAMES.get(option.name, "--" + option.name.replace("_", "-"))
        help_text = option.metadata["help"]
        if option.name == "early_stopping":
            group.add_argument(
                flag,
                dest=option.name,
                type=early_stopping_value,
                default=option.default,
                metavar="{" + ",".join(EARLY_STOPPING_WORDS) + "}",
                help=f"{help_text} (default: {str(option.default).lower()})",
            )
        elif types[option.name] is bool:
            # A switch turns the option on; one that defaults to on would need a --no- flag.
            assert option.default is False, f"{option.name}: a switch that is on by default"
            group.add_argument(flag, dest=option.name, action="store_true", help=help_text)
        else:
            shown = "" if option.default is None else f" (default: {option.default})"
            group.add_argument(
                flag,
                dest=option.name,
                type=value_type(types[option.name]),
                default=option.default,
                help=help_text + shown,
            )


def generation_options(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding flags as `GenerationConfig` keyword options: every field with a flag,
    given or default, so that validation sees (and refuses) e.g. --top-k without --sample."""
    return {option.name: getattr(args, option.name) for option in generation_fields()}
