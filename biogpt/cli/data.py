"""Pretraining-data commands: learn-vocab, binarize."""

from __future__ import annotations

import argparse
import sys

from biogpt.cli.common import AddCommand, add_vocabulary_flag, default_of, positive_int


def documents_of(args: argparse.Namespace):
    """The documents of the --input files (see `biogpt.corpus.readers.read_documents`)."""
    from biogpt.corpus.readers import read_documents

    return read_documents(args.input, paragraphs=args.paragraphs)


def cmd_learn_vocab(args: argparse.Namespace) -> None:
    from biogpt.tokenizer.learn import learn_vocabulary

    texts = (doc.text for doc in documents_of(args))
    out = learn_vocabulary(texts, args.merges, args.out, min_count=args.min_count)
    print(f"wrote {out / 'bpecodes'} and {out / 'dict.txt'}", file=sys.stderr)


def cmd_binarize(args: argparse.Namespace) -> None:
    from biogpt.corpus.readers import exclude, read_pmid_list
    from biogpt.corpus.shards import binarize

    documents = documents_of(args)
    if args.exclude:
        pmids: set[str] = set()
        for path in args.exclude:
            pmids |= read_pmid_list(path)
        documents = exclude(documents, pmids)
    manifest = binarize(
        documents,
        args.tokenizer,
        args.out,
        shard_tokens=args.shard_tokens,
        valid_fraction=args.valid_fraction,
        workers=args.workers,
        progress=not args.quiet,
    )
    for split, shards in manifest["splits"].items():
        tokens = sum(s["tokens"] for s in shards)
        documents_n = sum(s["documents"] for s in shards)
        print(
            f"{split}: {documents_n} documents, {tokens} tokens, {len(shards)} shards",
            file=sys.stderr,
        )


def add_corpus_flags(parser: argparse.ArgumentParser) -> None:
    """--input files of documents, and how a .txt file splits into documents."""
    parser.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="MEDLINE/PubMed XML (.xml, .xml.gz, in publication order), JSONL "
        '({"text"} or {"title","abstract"}, optional "pmid") or text (.txt, a document per line)',
    )
    parser.add_argument(
        "--paragraphs",
        action="store_true",
        help=".txt inputs: a document per blank-line-separated paragraph instead of per line",
    )


LEARN_VOCAB_EXAMPLES = """\
# BioGPT's recipe: 40,000 merges learned from PubMed titles and abstracts (learning stops
# early when no pair occurs --min-count times, as on a small sample)
$ biogpt learn-vocab --input abstracts.jsonl --merges 40000 --out vocab/
wrote vocab/bpecodes and vocab/dict.txt
"""


def register_learn_vocab(add: AddCommand) -> None:
    from biogpt.tokenizer.learn import learn_vocabulary

    parser = add(
        "learn-vocab",
        cmd_learn_vocab,
        "Learn a BPE vocabulary (bpecodes + dict.txt) from a corpus, as BioGPT's was learned.",
        LEARN_VOCAB_EXAMPLES,
    )
    add_corpus_flags(parser)
    parser.add_argument("--merges", type=int, required=True, help="number of BPE merges to learn")
    parser.add_argument("--out", required=True, help="directory for bpecodes and dict.txt")
    parser.add_argument(
        "--min-count",
        type=int,
        default=default_of(learn_vocabulary, "min_count"),
        help="stop when the best pair occurs fewer times (default: %(default)s)",
    )


BINARIZE_EXAMPLES = """\
# token shards for `biogpt pretrain`: 1% of the documents for validation, the PMIDs of
# evaluation test documents (one per line) left out; a line per split on stderr
$ biogpt binarize --input abstracts.jsonl --out shards/ --valid-fraction 0.01 \\
    --exclude test_pmids.txt --workers 2
train: ... documents, ... tokens, ... shards
valid: ... documents, ... tokens, ... shards
"""


def register_binarize(add: AddCommand) -> None:
    from biogpt.corpus.shards import binarize

    parser = add(
        "binarize",
        cmd_binarize,
        "Tokenise a corpus into token shards for pretraining (resumable: re-run to continue).",
        BINARIZE_EXAMPLES,
    )
    add_corpus_flags(parser)
    add_vocabulary_flag(parser)
    parser.add_argument("--out", required=True, help="output directory (manifest.json + shards)")
    parser.add_argument(
        "--valid-fraction",
        type=float,
        default=default_of(binarize, "valid_fraction"),
        help="share of documents (by a hash of the PMID or text) put in the valid split "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--exclude",
        nargs="+",
        metavar="FILE",
        help="files of PMIDs (one per line) to leave out, e.g. evaluation test documents",
    )
    parser.add_argument(
        "--workers", type=positive_int, help="tokenising processes (default: all cores)"
    )
    parser.add_argument(
        "--shard-tokens",
        type=int,
        default=default_of(binarize, "shard_tokens"),
        help="tokens per shard file, about (default: %(default)s)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def register(add: AddCommand) -> None:
    register_learn_vocab(add)
    register_binarize(add)
