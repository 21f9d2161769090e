"""What a store holds, read back: the top relation pairs (`query`) and whole exports
(`export`), the format taken from the output's name.

Records: by default one per document and model, with `pmid`, `model`, `task`, `raw`,
`structure` (the parsed answer as JSON, possibly empty), `confidence` and the rest of the
provenance (`biogpt.mine.store.RESULT_FIELDS`); with `relations=True` one per relation
(`biogpt.mine.relations`) with its result's provenance.

Formats: `.jsonl`; `.csv` (`structure` and `decoding` as JSON text); `.parquet` (the
optional pyarrow); `.graphml` (entities as nodes, one edge per relation); `neo4j`: a folder
of `nodes.csv` and `relations.csv` with the headers `neo4j-admin database import` reads
(`id:ID`, `:LABEL`, `:START_ID`, `:END_ID`, `:TYPE`). Every output is written beside its
place and renamed onto it when complete, and an existing one is replaced only with
`overwrite`.
"""

from __future__ import annotations

import csv
import importlib
import json
import os
import shutil
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_path
from biogpt.mine.store import RELATION_FIELDS, RESULT_FIELDS, Store

FORMATS = ("jsonl", "csv", "parquet", "graphml", "neo4j")
GRAPH_FORMATS = ("graphml", "neo4j")  # one edge per relation, whatever `relations` says
PARQUET_ROWS = 10_000  # rows per Parquet row group: a bounded buffer
SUPPORT_SHOWN = 10  # supporting PMIDs listed per pair


# --------------------------------------------------------------------------------------------
# Query
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """A (head, relation, tail) found in `count` documents; `pmids` the first of them."""

    head: str
    tail: str
    relation: str
    biored: str | None
    pubtator: str | None
    count: int
    pmids: list[str]


def query(
    store: Store,
    entity: str | None = None,
    relation: str | None = None,
    pmid: str | None = None,
    model: str | None = None,
    top: int = 20,
) -> list[Pair]:
    """The `top` relation pairs by the number of documents that state them, filtered by an
    entity (head or tail, case ignored), a relation type (the task's word, the BioRED or
    the PubTator3 name, case ignored), a PMID and a model; ties by name."""
    conditions, params = [], []
    if entity is not None:
        conditions.append("(LOWER(head) = ? OR LOWER(tail) = ?)")
        params += [entity.lower()] * 2
    if relation is not None:
        conditions.append(
            "(LOWER(relation) = ? OR LOWER(COALESCE(biored, '')) = ? "
            "OR LOWER(COALESCE(pubtator, '')) = ?)"
        )
        params += [relation.lower()] * 3
    for column, value in (("pmid", pmid), ("model", model)):
        if value is not None:
            conditions.append(f"{column} = ?")
            params.append(value)
    where = " WHERE " + " AND ".join(conditions) if conditions else ""
    groups = store.fetchall(
        "SELECT head, tail, relation, MAX(biored), MAX(pubtator), COUNT(DISTINCT pmid) AS n "
        f"FROM relations{where} GROUP BY head, tail, relation "
        "ORDER BY n DESC, head, tail, relation LIMIT ?",
        [*params, top],
    )
    pairs = []
    for head, tail, kind, biored, pubtator, count in groups:
        extra = " AND " + " AND ".join(conditions) if conditions else ""
        support = store.fetchall(
            "SELECT DISTINCT pmid FROM relations WHERE head = ? AND tail = ? AND relation = ?"
            f"{extra} ORDER BY pmid LIMIT ?",
            [head, tail, kind, *params, SUPPORT_SHOWN],
        )
        pairs.append(Pair(head, tail, kind, biored, pubtator, int(count), [r[0] for r in support]))
    store.commit()
    return pairs


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------


def format_of(out: str | Path, fmt: str | None = None) -> str:
    """The export format: `fmt` where given, else from the output's extension."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise BioGPTError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".")
    if suffix not in FORMATS or suffix == "neo4j":
        raise BioGPTError(
            f"--out {out}: unknown format (name it .jsonl, .csv, .parquet or .graphml, "
            "or pass --format neo4j for a folder of CSVs)"
        )
    return suffix


def records(store: Store, relations: bool = False, model: str | None = None) -> Iterator[dict]:
    """The records of an export (see the module docstring), streamed."""
    return store.relations(model=model) if relations else store.results(model=model)


def export(
    store: Store,
    out: str | Path,
    fmt: str | None = None,
    relations: bool = False,
    model: str | None = None,
    overwrite: bool = False,
) -> int:
    """Write the store's records to `out` in `fmt` (else the extension's); returns how many
    records (edges for graph formats) were written."""
    fmt = format_of(out, fmt)
    out = Path(out)
    if out.exists() and not overwrite:
        raise BioGPTError(f"--out {out}: exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise BioGPTError(f"--out {out}: no such directory {out.parent}")
    if fmt == "neo4j":
        return _neo4j(store, out, model)
    if fmt == "parquet":
        try:
            importlib.import_module("pyarrow")  # checked before any writing
        except ImportError:
            raise BioGPTError(
                "--out .parquet needs pyarrow (pip install 'biogpt[mine-parquet]')"
            ) from None
    with atomic_path(out) as tmp:
        if fmt == "graphml":
            return _graphml(store, tmp, model)
        rows = records(store, relations, model)
        if fmt == "jsonl":
            return _jsonl(rows, tmp)
        if fmt == "csv":
            fields = _fields(relations)
            return _csv(rows, tmp, fields)
        return _parquet(rows, tmp, _fields(relations))


def _fields(relations: bool) -> tuple[str, ...]:
    if relations:
        return ("pmid", "model", "index", *RELATION_FIELDS, "task", "checkpoint",
                "template_version", "confidence", "mined_at")  # fmt: skip
    return RESULT_FIELDS


def _flat(value: Any) -> Any:
    """A value for a flat table: lists and objects as JSON text."""
    return (
        json.dumps(value, ensure_ascii=False, sort_keys=True)
        if isinstance(value, (list, dict))
        else value
    )


def _jsonl(rows: Iterator[dict], path: Path) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        _sync(f)
    return count


def _csv(rows: Iterator[dict], path: Path, fields: tuple[str, ...]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for row in rows:
            writer.writerow([_flat(row[k]) for k in fields])
            count += 1
        _sync(f)
    return count


def _parquet(rows: Iterator[dict], path: Path, fields: tuple[str, ...]) -> int:
    # imported by name: the optional pyarrow ships no type information
    pa = importlib.import_module("pyarrow")
    pq = importlib.import_module("pyarrow.parquet")

    types = {"template_version": pa.int64(), "unparseable": pa.int64(), "line": pa.int64(),
             "index": pa.int64(), "confidence": pa.float64()}  # fmt: skip
    schema = pa.schema([(k, types.get(k, pa.string())) for k in fields])
    count = 0
    with pq.ParquetWriter(path, schema) as writer:
        buffer: list[dict] = []
        for row in rows:
            buffer.append({k: _flat(row[k]) for k in fields})
            count += 1
            if len(buffer) == PARQUET_ROWS:
                writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
                buffer = []
        if buffer or count == 0:
            writer.write_table(pa.Table.from_pylist(buffer, schema=schema))
    return count


def _node_id(name: str, kind: str | None) -> str:
    return f"{kind or 'Entity'}:{name}"


def _graphml(store: Store, path: Path, model: str | None) -> int:
    """Entities as nodes (name, type), relations as directed edges head -> tail."""
    keys = (
        ("name", "node"), ("type", "node"), ("pmid", "edge"), ("model", "edge"),
        ("relation", "edge"), ("biored", "edge"), ("pubtator", "edge"), ("sentence", "edge"),
        ("confidence", "edge"),
    )  # fmt: skip
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        f.write('<graphml xmlns="http://graphml.graphdrawing.org/xmlns">\n')
        for name, where in keys:
            typed = "double" if name == "confidence" else "string"
            f.write(f'  <key id="{name}" for="{where}" attr.name="{name}" attr.type="{typed}"/>\n')
        f.write('  <graph id="mined" edgedefault="directed">\n')
        for name, kind in store.entities():
            node = ET.Element("node", id=_node_id(name, kind))
            _data(node, "name", name)
            _data(node, "type", kind or "")
            f.write("    " + ET.tostring(node, encoding="unicode") + "\n")
        for row in store.relations(model=model):
            edge = ET.Element(
                "edge",
                id=f"e{count}",
                source=_node_id(row["head"], row["head_type"]),
                target=_node_id(row["tail"], row["tail_type"]),
            )
            for name in ("pmid", "model", "relation", "biored", "pubtator", "sentence"):
                if row[name] is not None:
                    _data(edge, name, row[name])
            _data(edge, "confidence", repr(row["confidence"]))
            f.write("    " + ET.tostring(edge, encoding="unicode") + "\n")
            count += 1
        f.write("  </graph>\n</graphml>\n")
        _sync(f)
    return count


def _data(parent: ET.Element, key: str, value: str) -> None:
    ET.SubElement(parent, "data", key=key).text = value


def _neo4j(store: Store, out: Path, model: str | None) -> int:
    """A folder of `nodes.csv` and `relations.csv`, made beside `out` and renamed onto it."""
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        with open(work / "nodes.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id:ID", "name", ":LABEL"])
            for name, kind in store.entities():
                writer.writerow([_node_id(name, kind), name, kind or "Entity"])
            _sync(f)
        count = 0
        with open(work / "relations.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([":START_ID", ":END_ID", ":TYPE", "pmid", "model", "relation",
                             "biored", "pubtator", "sentence", "confidence:double"])  # fmt: skip
            for row in store.relations(model=model):
                kind = (row["pubtator"] or row["relation"]).upper().replace(" ", "_")
                writer.writerow([
                    _node_id(row["head"], row["head_type"]),
                    _node_id(row["tail"], row["tail_type"]),
                    kind, row["pmid"], row["model"], row["relation"], row["biored"] or "",
                    row["pubtator"] or "", row["sentence"] or "", row["confidence"],
                ])  # fmt: skip
                count += 1
            _sync(f)
        os.chmod(work, 0o755)
        if out.exists():  # the old output steps aside first: a rename cannot replace a folder
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(work, out)
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        else:
            os.replace(work, out)
        return count
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sync(f: IO[str]) -> None:
    f.flush()
    os.fsync(f.fileno())
