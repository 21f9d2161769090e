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


def _tokenizer_for(name_or_dir: str | None, model: str | None = None):
    """The tokenizer asked for, else the one stored beside the model, else the bundled one."""
    from biogpt.tokenizer import Tokenizer

    if name_or_dir:
        return Tokenizer.from_pretrained(name_or_dir)
    if model and Path(model).is_dir():
        folder = Path(model)
        if (folder / "dict.txt").exists() or (folder / "vocab.json").exists():
            return Tokenizer.from_pretrained(folder)
    return Tokenizer.from_pretrained("biogpt")


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
        args.src, args.dst, overwrite=args.overwrite, trust_pickle=args.trust_pickle, dtype=args.dtype
    )
    print(f"wrote {args.dst}", file=sys.stderr)


def cmd_score(args: argparse.Namespace) -> None:
    from biogpt.model import BioGPT
    from biogpt.scoring import score_text

    model = BioGPT.from_pretrained(
        args.model, dtype=args.dtype, device=args.device, trust_pickle=args.trust_pickle
    ).eval()
    tokenizer = _tokenizer_for(args.tokenizer, args.model)
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


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biogpt",
        description="BioGPT for biomedical text: tokenize, score, convert checkpoints.",
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
        "Per-token log-likelihood and perplexity of texts under a model.",
        'biogpt score --model ./biogpt-hf "Aspirin inhibits platelet aggregation."',
    )
    _add_model_flags(p)
    p.add_argument("text", nargs="*", help="texts to score (default: read lines from stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")

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
