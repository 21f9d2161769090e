"""Mining commands: mine (literature files into a store), query and export (the store read
back). Each parses its flags and calls one function of `biogpt.mine`."""

from __future__ import annotations

import argparse
import json
import sys

from biogpt.cli.common import (
    AddCommand,
    add_answer_length_flag,
    add_trust_pickle_flag,
    check_device,
    check_dtype,
    positive_int,
)
from biogpt.errors import BioGPTError
from biogpt.mine.pipeline import PROMPT_LOOKUP

DEFAULT_STORE = "mined.sqlite"


def cmd_mine(args: argparse.Namespace) -> None:
    from biogpt.cpu.memory import fix_mmap_threshold
    from biogpt.mine.pipeline import ModelRunner, mine, mine_model

    # Flat memory over a long corpus (biogpt.cpu.memory).
    fix_mmap_threshold()
    check_dtype(args.dtype, args.device)
    check_device(args.device)
    runner: ModelRunner = mine_model
    if args.ray is not None:
        from biogpt.mine.ray import RayRunner

        cpus = 1.0 if args.ray_worker_cpus is None else args.ray_worker_cpus
        runner = RayRunner(args.ray, args.store, args.ray_staging, args.ray_workers, cpus)
    else:
        for flag in ("ray_staging", "ray_workers", "ray_worker_cpus"):
            if getattr(args, flag) is not None:
                raise BioGPTError(f"--{flag.replace('_', '-')} needs --ray")
    summary = mine(
        args.model,
        args.input,
        args.store,
        batch_size=args.batch_size,
        dtype=args.dtype,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        device=args.device,
        trust_pickle=args.trust_pickle,
        progress=None if args.quiet else sys.stderr,
        runner=runner,
        prompt_lookup=args.prompt_lookup,
    )
    print(summary.format())


def cmd_query(args: argparse.Namespace) -> None:
    from biogpt.mine.export import query
    from biogpt.mine.store import open_store

    existing_store(args.store)
    with open_store(args.store) as store:
        pairs = query(store, args.entity, args.relation, args.pmid, args.model_name, args.top)
    for pair in pairs:
        if args.json:
            print(json.dumps(pair.__dict__, ensure_ascii=False))
        else:
            standard = "/".join(t for t in (pair.biored, pair.pubtator) if t)
            kind = f"{pair.relation} ({standard})" if standard else pair.relation
            print(f"{pair.count}\t{pair.head}\t{kind}\t{pair.tail}\tPMIDs {' '.join(pair.pmids)}")
    if not pairs:
        print("no relations match", file=sys.stderr)


def cmd_export(args: argparse.Namespace) -> None:
    from biogpt.mine.export import GRAPH_FORMATS, export, format_of
    from biogpt.mine.store import open_store

    fmt = format_of(args.out, args.format)
    existing_store(args.store)
    with open_store(args.store) as store:
        count = export(store, args.out, fmt, args.relations, args.model_name, args.overwrite)
    noun = "relations" if args.relations or fmt in GRAPH_FORMATS else "records"
    print(f"wrote {count} {noun} to {args.out}")


def existing_store(location: str) -> None:
    """query and export read a store: a missing file is an error, not a new empty store."""
    from pathlib import Path

    from biogpt.mine.store import is_postgres

    if not is_postgres(location) and not Path(location).is_file():
        raise BioGPTError(f"--store {location}: no such file")


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def add_store_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--store",
        default=DEFAULT_STORE,
        help="a SQLite file or a postgresql://user@host/db URL (default: %(default)s)",
    )


def register(add: AddCommand) -> None:
    mine = add(
        "mine",
        cmd_mine,
        "run fine-tuned task models over MEDLINE XML, JSONL or PubTator files into a store, "
        "each document once per model (a killed run resumes; a rerun does nothing new)",
        "# mine abstracts with a model fine-tuned for BC5CDR, named cdr in the store\n"
        "$ biogpt mine --model cdr=runs/bc5cdr/averaged --input texts.jsonl --store mined.sqlite\n"
        "documents read: 1 (1 new, ...\n"
        "model cdr (bc5cdr): mined 1, skipped as done 0, ...\n"
        "# the same command again finds everything done\n"
        "$ biogpt mine --model cdr=runs/bc5cdr/averaged --input texts.jsonl --store mined.sqlite\n"
        "...\n"
        "model cdr (bc5cdr): mined 0, skipped as done 1, ...\n",
    )
    mine.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a fine-tuned model (its task from its task.json), named NAME in the store; a "
        "bare PATH names itself; repeat for several models",
    )
    mine.add_argument(
        "--input",
        nargs="+",
        required=True,
        help="MEDLINE/PubMed .xml(.gz), .jsonl(.gz) or .pubtator(.gz) files or globs, "
        "in publication order (a later version of a record wins)",
    )
    add_store_flag(mine)
    mine.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        help="documents decoded together; up to 8 gives exactly the answers of "
        "`biogpt predict` (default: %(default)s)",
    )
    mine.add_argument("--dtype", help="fp32 (default), bf16, fp16 or int8")
    mine.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    add_answer_length_flag(mine)
    mine.add_argument(
        "--prompt-lookup",
        type=int,
        default=PROMPT_LOOKUP,
        metavar="K",
        help="draft up to K tokens a document a pass from its abstract and answer, verified "
        "in one pass where that gives exactly the same answers (fp32 on CPUs with AVX-512), "
        "as many as the rows' acceptance so far makes worth it; 0: one token a pass "
        "(default: %(default)s)",
    )
    mine.add_argument(
        "--limit", type=positive_int, help="mine at most this many documents per model"
    )
    mine.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_trust_pickle_flag(mine)
    mine.add_argument(
        "--ray",
        metavar="ADDRESS",
        help="mine on a Ray cluster (the mine-ray extra): auto, HOST:PORT or ray://HOST:PORT "
        "to join one, local:N to start one here with N CPUs; the store stays here",
    )
    mine.add_argument(
        "--ray-staging",
        metavar="DIR",
        help="where Ray's workers leave their result parts for the store: a folder every node "
        "sees at the same path (default: the SQLite store's path + .ray)",
    )
    mine.add_argument(
        "--ray-workers",
        type=positive_int,
        help="Ray actors, each holding the model (default: one per --ray-worker-cpus CPUs "
        "of the cluster, or one per GPU with --device cuda)",
    )
    mine.add_argument(
        "--ray-worker-cpus",
        type=positive_float,
        help="CPUs each Ray actor takes, its torch threads (default: 1)",
    )

    query = add(
        "query",
        cmd_query,
        "the relations a mining store holds: top pairs with their counts and supporting PMIDs",
        "# what the store knows about famotidine\n"
        "$ biogpt mine --model cdr=runs/bc5cdr/averaged --input texts.jsonl --quiet\n"
        "...\n"
        "$ biogpt query --store mined.sqlite --entity famotidine --top 5\n"
        "...\n",
    )
    add_store_flag(query)
    query.add_argument("--entity", help="a head or tail name (case ignored)")
    query.add_argument(
        "--relation", help="a relation type: the task's, BioRED's or PubTator3's name"
    )
    query.add_argument("--pmid", help="only this document's relations")
    query.add_argument("--model", dest="model_name", help="only this model's relations")
    query.add_argument(
        "--top", type=positive_int, default=20, help="pairs shown (default: %(default)s)"
    )
    query.add_argument("--json", action="store_true", help="one JSON object per pair")

    export = add(
        "export",
        cmd_export,
        "write a mining store's results (or relations) as JSONL, CSV, Parquet, GraphML or "
        "Neo4j import CSVs",
        "# one record per document and model, then one per relation as a graph\n"
        "$ biogpt mine --model cdr=runs/bc5cdr/averaged --input texts.jsonl --quiet\n"
        "...\n"
        "$ biogpt export --store mined.sqlite --out mined.jsonl\n"
        "wrote 1 records to mined.jsonl\n"
        "$ biogpt export --store mined.sqlite --out graph.graphml\n"
        "wrote ... relations to graph.graphml\n",
    )
    add_store_flag(export)
    export.add_argument(
        "--out",
        required=True,
        help="the output; its extension picks the format: .jsonl, .csv, .parquet, .graphml",
    )
    export.add_argument(
        "--format",
        choices=["jsonl", "csv", "parquet", "graphml", "neo4j"],
        help="the format, whatever the extension; neo4j writes a folder of node and "
        "relation CSVs for neo4j-admin database import",
    )
    export.add_argument(
        "--relations", action="store_true", help="one record per relation, not per document"
    )
    export.add_argument("--model", dest="model_name", help="only this model's results")
    export.add_argument("--overwrite", action="store_true", help="replace an existing --out")
