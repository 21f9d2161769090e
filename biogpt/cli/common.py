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
import json
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
    """The texts given on the command line, or else one per non-blank line of standard
    input (see `numbered_texts`)."""
    for _, text in numbered_texts(args_texts):
        yield text


def numbered_texts(args_texts: Sequence[str], noun: str = "text") -> Iterator[tuple[str, str]]:
    """(name, text) for each text given on the command line ("text 2", counted from 1 as
    the user counts arguments; `noun` says what they are), or else for each non-blank line
    of standard input ("stdin line 5").

    Standard input is read as UTF-8, and a line that is not is a one-line error naming it
    rather than text read with replacement characters: a file in another encoding (Latin-1
    abstracts, say) would otherwise change every accented letter into U+FFFD, which the
    vocabulary holds, so nothing would warn. Blank lines are skipped: each would be an
    empty text (a completion of nothing, a score of no tokens).
    """
    if args_texts:
        for number, text in enumerate(args_texts, 1):
            yield f"{noun} {number}", text
        return
    stdin = sys.stdin
    if stdin is None:  # started with standard input closed (`<&-`): Python sets None
        raise BioGPTError("standard input is closed: pass the texts as arguments or pipe them")
    if stdin.isatty():
        raise BioGPTError("no text given: pass TEXT arguments or pipe lines on standard input")
    # The bytes where there are any (a real stream), to decode each line on its own.
    lines: Iterable[bytes | str] = getattr(stdin, "buffer", stdin)
    for number, line in enumerate(lines, 1):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise BioGPTError(
                    f"stdin line {number}: not UTF-8 (byte 0x{line[err.start]:02x} at byte "
                    f"{err.start + 1}); convert the input, e.g. iconv -f latin1 -t utf-8"
                ) from None
        line = line.removesuffix("\n").removesuffix("\r")
        if line.strip():
            yield f"stdin line {number}", line


def warn_lost_characters(
    command: str, name: str, text: str, tokenizer: Tokenizer, ids: list[int] | None = None
) -> int:
    """Say on stderr how many characters of the input `name` (e.g. "stdin line 3") its
    tokens lose: characters the vocabulary lacks become `<unk>` and control characters
    are deleted, as the reference tokenizer does, so the model reads something else than
    was given. `ids` is `tokenizer.encode(text)` where the caller has it. Returns the count.

        biogpt generate: warning: prompt 2 lost 3 characters to <unk> (e.g. '😀')
    """
    lost = tokenizer.lost_characters(text, ids)
    parts = []
    for chars, what in ((lost.unknown, "to <unk>"), (lost.deleted, "deleted")):
        if chars:
            examples = ", ".join(repr(c) for c in list(dict.fromkeys(chars))[:3])
            plural = "s" if len(chars) > 1 else ""
            parts.append(f"{len(chars)} character{plural} {what} (e.g. {examples})")
    if parts:
        print(f"biogpt {command}: warning: {name} lost " + " and ".join(parts), file=sys.stderr)
    return lost.count


def jsonl_fields(path: str | Path, *fields: str) -> Iterator[tuple[str, ...]]:
    """The given fields of each record of a JSONL file, as strings; a field written `a|b`
    takes `a`, else `b`. A record that lacks them is a one-line error naming file:line."""
    for _, values in numbered_jsonl_fields(path, *fields):
        yield values


def numbered_jsonl_fields(path: str | Path, *fields: str) -> Iterator[tuple[str, tuple[str, ...]]]:
    """("file:line", fields) for each record of a JSONL file: `jsonl_fields` with where
    each record came from, for messages about it."""
    wanted = " and ".join(f'"{f}"' for f in fields).replace("|", '" or "')
    for where, record in read_jsonl(path):
        try:
            keys = [
                next((k for k in f.split("|") if k in record), f.split("|")[-1]) for f in fields
            ]
            values = [record[key] for key in keys]
        except (KeyError, TypeError):
            raise BioGPTError(f"{where}: expected a JSON object with {wanted}") from None
        for key, value in zip(keys, values, strict=True):
            # Texts must be strings; an id may be a number, as JSON writers often make it.
            if not isinstance(value, str) and not (key == "id" and type(value) is int):
                raise BioGPTError(f'{where}: "{key}" must be a string, got {json.dumps(value)}')
        yield where, tuple(str(value) for value in values)


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


def check_device(device: str | None, flag: str = "--device") -> None:
    """A one-line error unless `device` (as given to `flag`) is one this machine has: a
    typo, or cuda without a GPU, fails here rather than deep in torch after loading."""
    if device is None:
        return
    import torch

    try:
        where = torch.device(device)
    except (RuntimeError, ValueError):
        raise BioGPTError(f"{flag} {device}: not a device; use cpu, cuda or cuda:N") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            why = "torch is built without CUDA" if torch.version.cuda is None else "no GPU found"
            raise BioGPTError(f"{flag} {device}: CUDA is not available here ({why})")
        if where.index is not None and where.index >= count:
            raise BioGPTError(f"{flag} {device}: this machine has cuda:0..cuda:{count - 1}")
    elif where.type == "mps":
        if not torch.backends.mps.is_available():
            raise BioGPTError(f"{flag} {device}: MPS is not available here")
    elif where.type != "cpu":
        raise BioGPTError(f"{flag} {device}: not supported; use cpu, cuda or cuda:N")


def check_dtype(dtype: str | None, device: str | None = None, flag: str = "--dtype") -> None:
    """A one-line error unless `dtype` names one `BioGPT.from_pretrained` loads with (int8
    on the CPU only)."""
    if dtype is None:
        return
    from biogpt.checkpoint import resolve_dtype

    if dtype.lower() == "int8":
        if device is not None and not device.startswith("cpu"):
            raise BioGPTError(f"{flag} int8 runs on the CPU only, not --device {device}")
        return
    try:
        resolve_dtype(dtype)
    except BioGPTError:
        raise BioGPTError(f"{flag} {dtype}: unknown; use fp32, bf16, fp16 or int8") from None


def load_model_and_tokenizer(args: argparse.Namespace):
    """The model named by --model (with --dtype, --device, --trust-pickle) and its tokenizer.
    --device and --dtype are checked first, so a bad one fails before any loading."""
    from biogpt.api import BioGPT

    check_dtype(args.dtype, args.device)
    check_device(args.device)

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


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count of prompts, tokens, updates ...)."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


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
        type=positive_int,
        default=default_of(function, "batch_size"),
        help="prompts decoded together (default: %(default)s)",
    )


def add_answer_length_flag(parser: argparse.ArgumentParser) -> None:
    """--max-new-tokens for task answers: unset, each task has its own limit."""
    parser.add_argument(
        "--max-new-tokens", type=positive_int, help="answer length limit (default: per task)"
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


def generation_flag(option: str) -> str:
    """The flag of a `GenerationConfig` field: --field-name, or as `GENERATION_FLAG_NAMES`."""
    return GENERATION_FLAG_NAMES.get(option, "--" + option.replace("_", "-"))


def check_generation_options(args: argparse.Namespace) -> None:
    """Validate the decoding flags together (`GenerationConfig.validate`), each named in
    messages as the user typed it: a one-line error before any model is loaded."""
    from biogpt.decoding.config import GenerationConfig

    flags = {option.name: generation_flag(option.name) for option in generation_fields()}
    GenerationConfig.from_options(None, **generation_options(args)).validate(flags)


def add_generation_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `GenerationConfig` field: its name, type, default and help come from the
    field, and the parsed value lands under the field's name (see `generation_options`)."""
    from biogpt.decoding.config import GenerationConfig

    group = parser.add_argument_group("decoding options (biogpt.decoding.GenerationConfig)")
    types = typing.get_type_hints(GenerationConfig)
    for option in generation_fields():
        flag = generation_flag(option.name)
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
