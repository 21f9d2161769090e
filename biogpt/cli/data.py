"""Pretraining-data commands: learn-vocab, binarize."""

from __future__ import annotations

import argparse
import sys

from biogpt.cli.common import AddCommand


def _documents(args: argparse.Namespace):
    from biogpt.corpus.readers import read_documents

    return read_documents(args.input, paragraphs=args.paragraphs)


def cmd_learn_vocab(args: argparse.Namespace) -> None:
    from biogpt.tokenizer.learn import learn_vocabulary

    texts = (doc.text for doc in _documents(args))
    out = learn_vocabulary(texts, args.merges, args.out, min_count=args.min_count)
    print(f"wrote {out / 'bpecodes'} and {out / 'dict.txt'}", file=sys.stderr)


def cmd_binarize(args: argparse.Namespace) -> None:
    from biogpt.corpus.readers import exclude, read_pmid_list
    from biogpt.corpus.shards import binarize

    documents = _documents(args)
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


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="FILE",
        help="MEDLINE/PubMed XML (.xml, .xml.gz, in publication order), JSONL "
        '({"text"} or {"title","abstract"}, optional "pmid") or text (.txt, a document per line)',
    )
    p.add_argument(
        "--paragraphs",
        action="store_true",
        help=".txt inputs: a document per blank-line-separated paragraph instead of per line",
    )


def register(add: AddCommand) -> None:
    p = add(
        "learn-vocab",
        cmd_learn_vocab,
        "Learn a BPE vocabulary (bpecodes + dict.txt) from a corpus, as BioGPT's was learned.",
        "biogpt learn-vocab --input pubmed24n0001.xml.gz abstracts.jsonl --merges 40000 "
        "--out vocab/",
    )
    _add_inputs(p)
    p.add_argument("--merges", type=int, required=True, help="number of BPE merges to learn")
    p.add_argument("--out", required=True, help="directory for bpecodes and dict.txt")
    p.add_argument(
        "--min-count", type=int, default=2, help="stop when the best pair occurs fewer times"
    )

    p = add(
        "binarize",
        cmd_binarize,
        "Tokenise a corpus into token shards for pretraining (resumable: re-run to continue).",
        "biogpt binarize --input pubmed24n*.xml.gz --tokenizer biogpt --out shards/ "
        "--valid-fraction 0.01 --exclude test_pmids.txt --workers 8",
    )
    _add_inputs(p)
    p.add_argument(
        "--tokenizer", default="biogpt", help="bundled name (biogpt, biogpt-large) or directory"
    )
    p.add_argument("--out", required=True, help="output directory (manifest.json + shards)")
    p.add_argument(
        "--valid-fraction",
        type=float,
        default=0.0,
        help="share of documents (by a hash of the PMID or text) put in the valid split",
    )
    p.add_argument(
        "--exclude",
        nargs="+",
        metavar="FILE",
        help="files of PMIDs (one per line) to leave out, e.g. evaluation test documents",
    )
    p.add_argument("--workers", type=int, help="tokenising processes (default: all cores)")
    p.add_argument(
        "--shard-tokens", type=int, default=50_000_000, help="tokens per shard file (about)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
