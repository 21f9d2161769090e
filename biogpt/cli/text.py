"""Text commands: tokenize, convert, score, generate, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time

from biogpt.cli.common import (
    AddCommand,
    add_batch_size_flag,
    add_generation_flags,
    add_json_flag,
    add_model_flags,
    add_overwrite_flag,
    add_task_flags,
    add_text_arguments,
    add_trust_pickle_flag,
    add_vocabulary_flag,
    check_device,
    check_dtype,
    check_generation_options,
    generation_options,
    load_model_and_tokenizer,
    numbered_jsonl_fields,
    numbered_texts,
    tokenizer_for_cli,
    warn_lost_characters,
)
from biogpt.errors import BioGPTError

# --------------------------------------------------------------------------------------------
# tokenize
# --------------------------------------------------------------------------------------------


def cmd_tokenize(args: argparse.Namespace) -> None:
    tokenizer = tokenizer_for_cli(args.tokenizer)
    for name, text in numbered_texts(args.text):
        ids = tokenizer.encode(text)
        warn_lost_characters(args.command, name, text, tokenizer, ids)
        pieces = [tokenizer.id_to_token(i) for i in ids]
        if args.json:
            print(json.dumps({"text": text, "ids": ids, "pieces": pieces}, ensure_ascii=False))
        elif args.show == "pieces":
            print(" ".join(pieces))
        elif args.show == "ids":
            print(" ".join(map(str, ids)))
        else:
            print(" ".join(f"{p}/{i}" for p, i in zip(pieces, ids, strict=True)))


TOKENIZE_EXAMPLES = """\
# each piece and its id; a text starts with </s>, as in fairseq, and Moses escapes "-" as @-@
$ biogpt tokenize "COVID-19 is"
</s>/2 COVID</w>/4805 @-@</w>/9 19</w>/656 is</w>/21

# one JSON object per text
$ biogpt tokenize --json "Aspirin inhibits platelet aggregation."
{"text": "Aspirin inhibits platelet aggregation.", "ids": [2, ...], "pieces": ["</s>", ...]}
"""


def register_tokenize(add: AddCommand) -> None:
    parser = add(
        "tokenize",
        cmd_tokenize,
        "Tokenize text into BioGPT BPE pieces and ids (texts as arguments or lines on stdin).",
        TOKENIZE_EXAMPLES,
    )
    add_text_arguments(parser, "texts to tokenize")
    add_vocabulary_flag(parser)
    parser.add_argument(
        "--show", choices=["both", "ids", "pieces"], default="both", help="what to print per token"
    )
    add_json_flag(parser, per="text")


# --------------------------------------------------------------------------------------------
# convert
# --------------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> None:
    from biogpt.checkpoint.pipeline import check_destination, convert

    # Checked before the source is read, which may take minutes for a large model.
    if args.dtype is not None and args.dtype.lower() == "int8":
        raise BioGPTError("--dtype int8 is a CPU inference layout, not a storage dtype")
    check_dtype(args.dtype)
    check_destination(args.dst, args.overwrite, "--overwrite")
    convert(
        args.src,
        args.dst,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        dtype=args.dtype,
        tokenizer=not args.no_tokenizer,
    )
    print(f"wrote {args.dst}", file=sys.stderr)


CONVERT_EXAMPLES = """\
# any checkpoint (a fairseq checkpoint.pt or directory, a Hub id, ...) to a Hugging Face
# directory with its tokenizer; here the built-in model
$ biogpt convert mini mini-hf
wrote mini-hf

# the weights stored in bf16 (half the size on disk)
$ biogpt convert mini-hf mini-bf16 --dtype bf16
wrote mini-bf16
"""


def register_convert(add: AddCommand) -> None:
    parser = add(
        "convert",
        cmd_convert,
        "Convert a checkpoint (fairseq, Hugging Face, Hub id) to a Hugging Face directory.",
        CONVERT_EXAMPLES,
    )
    parser.add_argument(
        "src", help="fairseq directory or .pt file, Hugging Face directory, or Hub id"
    )
    parser.add_argument("dst", help="output directory (Hugging Face layout)")
    parser.add_argument("--dtype", help="store weights as fp32, bf16 or fp16 (default: as loaded)")
    add_overwrite_flag(parser, "a checkpoint already in DST")
    add_trust_pickle_flag(parser)
    parser.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="write the weights only (for models that use a bundled vocabulary)",
    )


# --------------------------------------------------------------------------------------------
# score
# --------------------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> None:
    if args.task:
        from biogpt.cli.tasks import cmd_score_predictions

        cmd_score_predictions(args)
        return
    if not args.model:
        raise BioGPTError("pass --model to score texts, or --task with --predictions")
    from biogpt.decoding.output import NonFiniteLogits
    from biogpt.decoding.scoring import score_text

    model, tokenizer = load_model_and_tokenizer(args)
    for name, text in numbered_texts(args.text):
        warn_lost_characters(args.command, name, text, tokenizer)
        try:
            result = score_text(model, tokenizer, text)
        except NonFiniteLogits as err:
            raise BioGPTError(err.describe(name, "--dtype")) from None
        except BioGPTError as err:
            raise BioGPTError(f"{name}: {err}") from None
        if args.json:
            print(json.dumps({"text": text, **result.to_dict()}, ensure_ascii=False))
            continue
        for piece, logprob in zip(result.pieces, result.logprobs, strict=True):
            print(f"{logprob:10.4f}  {piece}")
        print(
            f"tokens {len(result.logprobs)}  log-likelihood {result.total:.4f}  "
            f"perplexity {result.perplexity:.4f}"
        )


SCORE_EXAMPLES = """\
# each token's log-probability, then the text's log-likelihood and perplexity
$ biogpt score --model mini "Aspirin inhibits platelet aggregation."
... Aspirin</w>
...
... .</w>
tokens 5  log-likelihood ...  perplexity ...

# a task's predictions (see `biogpt predict`) against the gold answers of its split
$ biogpt score --task bc5cdr --split test --predictions preds.jsonl --data data/
{"examples": ..., "f1": ..., "missing": ..., "precision": ..., "recall": ..., ...}
"""


def register_score(add: AddCommand) -> None:
    parser = add(
        "score",
        cmd_score,
        "Score texts under a model (per-token log-likelihood, perplexity), or a task's "
        "predictions against its gold answers (--task --split --predictions).",
        SCORE_EXAMPLES,
    )
    add_model_flags(parser, required=False)
    add_text_arguments(parser, "texts to score")
    add_json_flag(parser, per="text")
    add_task_flags(parser, required=False)
    parser.add_argument("--predictions", help='JSONL of {"id": ..., "prediction": ...} to score')


# --------------------------------------------------------------------------------------------
# generate
# --------------------------------------------------------------------------------------------


def prompts_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(name, prompt) for each prompt: from --input (JSONL with "prompt" or "text"; named
    file:line), the arguments ("prompt 2") or stdin lines ("stdin line 5")."""
    if not args.input:
        return list(numbered_texts(args.text, noun="prompt"))
    if args.text:
        raise BioGPTError(
            f"prompts given both as arguments and in --input {args.input}; pass one or the other"
        )
    prompts = [
        (where, prompt) for where, (prompt,) in numbered_jsonl_fields(args.input, "prompt|text")
    ]
    if not prompts:
        raise BioGPTError(f"--input {args.input}: holds no prompts")
    return prompts


def check_prompts(
    args: argparse.Namespace, model, tokenizer, prompts: list[tuple[str, str]]
) -> None:
    """Warn about characters the prompts lose to the vocabulary; refuse (naming it) a prompt
    that does not fit beside --max-new-tokens unless --truncate."""
    positions = model.config.max_positions
    limit = positions - args.max_new_tokens
    if limit < 1:
        raise BioGPTError(
            f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the "
            f"model's {positions} positions"
        )
    for name, prompt in prompts:
        ids = tokenizer.encode(prompt)
        warn_lost_characters(args.command, name, prompt, tokenizer, ids)
        if len(ids) > limit and not args.truncate:
            raise BioGPTError(
                f"{name} has {len(ids)} tokens but at most {limit} fit beside --max-new-tokens "
                f"{args.max_new_tokens} in the model's {positions} positions; shorten it, lower "
                "--max-new-tokens, or pass --truncate"
            )


def print_streamed(
    model, tokenizer, prompts: list[str], truncate: bool, options: dict, as_json: bool
) -> None:
    """Each prompt, then its pieces as they are decoded, and the time each took on stderr;
    or with `as_json`, one JSON object per piece ({"piece"}) and one per prompt once done
    ({"prompt", "completion", "seconds"})."""
    from biogpt.decoding.completion import stream
    from biogpt.decoding.output import NonFiniteLogits

    for index, prompt in enumerate(prompts):
        began = time.perf_counter()
        pieces: list[str] = []
        if not as_json:
            print(prompt, end="", flush=True)
        try:
            for piece in stream(model, tokenizer, prompt, truncate=truncate, **options):
                if as_json:
                    print(json.dumps({"piece": piece}, ensure_ascii=False), flush=True)
                else:
                    print((" " if not pieces else "") + piece, end="", flush=True)
                pieces.append(piece)
        except NonFiniteLogits as err:  # stream() sees one prompt: name it among all
            raise err.renumbered(index) from None
        seconds = time.perf_counter() - began
        if as_json:
            done = {"prompt": prompt, "completion": "".join(pieces), "seconds": round(seconds, 4)}
            print(json.dumps(done, ensure_ascii=False), flush=True)
        else:
            print(flush=True)
            print(f"[{seconds:.2f} s]", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> None:
    from biogpt.decoding.completion import complete
    from biogpt.decoding.output import NonFiniteLogits

    # Check the options and the prompts before loading a model that may take a while.
    check_generation_options(args)
    check_dtype(args.dtype, args.device)
    check_device(args.device)
    if args.stream and (args.num_beams > 1 or args.num_return_sequences > 1 or args.stop):
        raise BioGPTError("--stream works with greedy or sampling, one sequence, no --stop")
    named = prompts_of(args)
    if not named:
        raise BioGPTError("no prompts given")
    names, prompts = [name for name, _ in named], [prompt for _, prompt in named]
    model, tokenizer = load_model_and_tokenizer(args)
    check_prompts(args, model, tokenizer, named)

    options = generation_options(args)
    try:
        if args.stream:
            print_streamed(model, tokenizer, prompts, args.truncate, options, args.json)
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
    except NonFiniteLogits as err:
        raise BioGPTError(err.describe(names[err.index], "--dtype")) from None
    for result in results:
        if args.json:
            print(json.dumps(result.to_dict(), ensure_ascii=False))
        else:
            print(result.text)


GENERATE_EXAMPLES = """\
# greedy decoding: each prompt and its continuation, at most 64 new tokens
$ biogpt generate --model mini "COVID-19 is"
COVID-19 is ...

# beam search, at least 20 new tokens, no 3-gram twice
$ biogpt generate --model mini --num-beams 5 --min-new-tokens 20 --no-repeat-ngram-size 3 \\
    "Metformin is a"
Metformin is a ...

# sampling (the same seed gives the same text), three completions of the prompt
$ biogpt generate --model mini --sample --top-p 0.9 --seed 1 --num-return-sequences 3 \\
    --max-new-tokens 20 "The tumour suppressor p53"
The tumour suppressor p53 ...
The tumour suppressor p53 ...
The tumour suppressor p53 ...

# prompts from a JSONL file ({"prompt": ...} per line); a JSON object per completion
$ biogpt generate --model mini --input prompts.jsonl --json --max-new-tokens 20
{"prompt": ..., "completion": ..., "text": ..., "prompt_tokens": ..., "new_tokens": ..., ...}
...
"""


def register_generate(add: AddCommand) -> None:
    from biogpt.decoding.completion import complete

    parser = add(
        "generate",
        cmd_generate,
        "Generate text from prompts (arguments, stdin lines, or a JSONL file).",
        GENERATE_EXAMPLES,
    )
    add_model_flags(parser)
    add_text_arguments(parser, "prompts")
    parser.add_argument("--input", help='JSONL file of {"prompt": ...} (or "text") records')
    parser.add_argument(
        "--stop", action="append", help="end a completion at this string (repeatable)"
    )
    add_batch_size_flag(parser, complete)
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="cut prompts that do not fit (keeping their end) instead of refusing them",
    )
    parser.add_argument("--stream", action="store_true", help="print text as it is generated")
    add_json_flag(
        parser,
        per='completion, with counts and timing (with --stream: {"piece"} per piece, then '
        '{"prompt", "completion", "seconds"} per prompt)',
    )
    add_generation_flags(parser)


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

DEMO_TEXT = (
    "COVID-19 is caused by SARS-CoV-2. Remdesivir (GS-5734) inhibited viral replication "
    "in Vero E6 cells with an EC50 of 0.77 µM; patients' IL-6 levels fell by 35% (p<0.05)."
)
DEMO_PROMPTS = ("COVID-19 is", "Metformin is a", "The tumour suppressor p53")


def print_tokens(tokenizer, text: str) -> None:
    """The text, its pieces and ids with the bundled vocabulary, and the text decoded back."""
    ids = tokenizer.encode(text)
    print(f"text: {text}\n")
    print(f"{len(ids)} tokens with the bundled BioGPT vocabulary ({len(tokenizer)} entries):\n")
    width = max(len(tokenizer.id_to_token(i)) for i in ids)
    for i in ids:
        print(f"  {tokenizer.id_to_token(i):<{width}}  {i:>6}")
    print(f"\ndecoded back: {tokenizer.decode(ids)}")


def print_mini_continuations(tokenizer) -> None:
    """Beam-search continuations of DEMO_PROMPTS by the built-in model `mini`."""
    from biogpt.api import BioGPT
    from biogpt.decoding.completion import complete

    model = BioGPT.from_pretrained("mini").eval()
    print(
        f"\ngeneration with the built-in demonstration model `mini` "
        f"({model.num_parameters() / 1e6:.1f}M parameters, pretrained on this project's small "
        "PubMed sample: it sounds biomedical, it is neither fluent nor factual):\n"
    )
    began = time.perf_counter()
    results = complete(
        model, tokenizer, list(DEMO_PROMPTS), max_new_tokens=40, num_beams=4,
        no_repeat_ngram_size=3, repetition_penalty=1.3, early_stopping=True,
    )  # fmt: skip
    for result in results:
        print(f"  {result.text}\n")
    print(
        f"({sum(len(r.new_tokens) for r in results)} tokens, beam search with 4 beams, "
        f"{time.perf_counter() - began:.1f} s on CPU)"
    )


def cmd_demo(args: argparse.Namespace) -> None:
    """Tokenize a paragraph; then, with the built-in model, continue a few prompts."""
    from biogpt.checkpoint.pipeline import BUNDLED_MODELS

    tokenizer = tokenizer_for_cli(None)
    if args.text:
        warn_lost_characters(args.command, "--text", args.text, tokenizer)
    print_tokens(tokenizer, args.text or DEMO_TEXT)
    if "mini" in BUNDLED_MODELS:
        print_mini_continuations(tokenizer)


DEMO_EXAMPLES = """\
# a paragraph's pieces and ids, then three prompts continued by the built-in model
$ biogpt demo
text: COVID-19 is caused by SARS-CoV-2. ...
...
decoded back: COVID-19 is caused by SARS-CoV-2. ...
...
  COVID-19 is ...
...
"""


def register_demo(add: AddCommand) -> None:
    parser = add(
        "demo",
        cmd_demo,
        "Show what the package does offline: a paragraph's pieces and ids with the bundled "
        "vocabulary, then generation with the built-in model `mini`.",
        DEMO_EXAMPLES,
    )
    parser.add_argument("--text", help="paragraph to show (default: a built-in biomedical one)")


def register(add: AddCommand) -> None:
    for register_command in (
        register_tokenize,
        register_convert,
        register_score,
        register_generate,
        register_demo,
    ):
        register_command(add)
