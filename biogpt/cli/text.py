"""Text commands: tokenize, convert, score, generate, demo."""

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
    texts_or_stdin,
    tokenizer_for_cli,
)
from biogpt.errors import BioGPTError

DEMO_TEXT = (
    "COVID-19 is caused by SARS-CoV-2. Remdesivir (GS-5734) inhibited viral replication "
    "in Vero E6 cells with an EC50 of 0.77 µM; patients' IL-6 levels fell by 35% (p<0.05)."
)


def cmd_tokenize(args: argparse.Namespace) -> None:
    tokenizer = tokenizer_for_cli(args.tokenizer)
    for text in texts_or_stdin(args.text):
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
    from biogpt.checkpoint.pipeline import convert

    convert(
        args.src,
        args.dst,
        overwrite=args.overwrite,
        trust_pickle=args.trust_pickle,
        dtype=args.dtype,
        tokenizer=not args.no_tokenizer,
    )
    print(f"wrote {args.dst}", file=sys.stderr)


def cmd_score(args: argparse.Namespace) -> None:
    if args.task:
        from biogpt.cli.tasks import cmd_score_predictions

        cmd_score_predictions(args)
        return
    if not args.model:
        raise BioGPTError("pass --model to score texts, or --task with --predictions")
    from biogpt.decoding.scoring import score_text

    model, tokenizer = load_model_and_tokenizer(args)
    for text in texts_or_stdin(args.text):
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
        return [prompt for (prompt,) in jsonl_fields(args.input, "prompt|text")]
    return list(texts_or_stdin(args.text))


def cmd_generate(args: argparse.Namespace) -> None:
    import time

    from biogpt.decoding.completion import complete, stream

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
    options["compile_step"] = args.compile_step
    # Check the options and the prompts before loading a model that may take a while.
    from biogpt.decoding.config import GenerationConfig

    GenerationConfig.from_options(None, **options).validate()
    prompts = _prompts(args)
    if not prompts:
        raise BioGPTError("no prompts given")
    if args.stream and (args.num_beams > 1 or args.num_return_sequences > 1 or args.stop):
        raise BioGPTError("--stream works with greedy or sampling, one sequence, no --stop")
    model, tokenizer = load_model_and_tokenizer(args)

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


DEMO_PROMPTS = ("COVID-19 is", "Metformin is a", "The tumour suppressor p53")


def cmd_demo(args: argparse.Namespace) -> None:
    """Tokenize a paragraph; then, with the built-in model, continue a few prompts."""
    tokenizer = tokenizer_for_cli(None)
    text = args.text or DEMO_TEXT
    ids = tokenizer.encode(text)
    print(f"text: {text}\n")
    print(f"{len(ids)} tokens with the bundled BioGPT vocabulary ({len(tokenizer)} entries):\n")
    width = max(len(tokenizer.id_to_token(i)) for i in ids)
    for i in ids:
        print(f"  {tokenizer.id_to_token(i):<{width}}  {i:>6}")
    print(f"\ndecoded back: {tokenizer.decode(ids)}")

    from biogpt.checkpoint.pipeline import BUNDLED_MODELS

    if "mini" not in BUNDLED_MODELS:
        return
    import time

    from biogpt.decoding.completion import complete
    from biogpt.model import BioGPT

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


def register(add: AddCommand) -> None:
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
    p.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="write the weights only (for models that use a bundled vocabulary)",
    )

    p = add(
        "score",
        cmd_score,
        "Score texts under a model (per-token log-likelihood, perplexity), or a task's "
        "predictions against its gold answers (--task --split --predictions).",
        'biogpt score --model ./biogpt-hf "Aspirin inhibits platelet aggregation."\n'
        "  biogpt score --task bc5cdr --split test --predictions preds.jsonl --data DIR",
    )
    add_model_flags(p, required=False)
    p.add_argument("text", nargs="*", help="texts to score (default: read lines from stdin)")
    p.add_argument("--json", action="store_true", help="one JSON object per text")
    add_task_flags(p, model_needed=False)
    p.add_argument("--predictions", help='JSONL of {"id": ..., "prediction": ...} to score')

    p = add(
        "generate",
        cmd_generate,
        "Generate text from prompts (arguments, stdin lines, or a JSONL file).",
        'biogpt generate --model ./biogpt-hf --num-beams 5 --min-new-tokens 100 "COVID-19 is"',
    )
    add_model_flags(p)
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
        "--compile-step",
        action="store_true",
        help="greedy/sampling: decode with a torch.compile'd fixed-shape step (CUDA graphs on a "
        "GPU; the first call compiles, so it pays off on long or repeated runs)",
    )
    p.add_argument(
        "--json", action="store_true", help="one JSON object per completion, with counts and timing"
    )

    p = add(
        "demo",
        cmd_demo,
        "Show what the package does offline: a paragraph's pieces and ids with the bundled "
        "vocabulary, then generation with the built-in model `mini`.",
        "biogpt demo",
    )
    p.add_argument("--text", help="paragraph to show (default: a built-in biomedical one)")
