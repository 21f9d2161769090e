"""Prediction files: JSONL, one `{"id": ..., "prediction": "..."}` per line."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text, read_jsonl


def read_predictions(path: str | Path) -> dict[str, str]:
    """`{id: prediction}` of a predictions file; ids become strings. A malformed line, a
    line without a string "prediction" or a repeated id is a one-line error naming
    file:line. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise BioGPTError(f"{path}: no such predictions file")
    out: dict[str, str] = {}
    for where, record in read_jsonl(path):
        if not isinstance(record, dict) or "id" not in record:
            raise BioGPTError(f'{where}: expected an object with "id" and "prediction"')
        if not isinstance(record.get("prediction"), str):
            raise BioGPTError(f'{where}: "prediction" must be a string')
        key = str(record["id"])
        if key in out:
            raise BioGPTError(f"{where}: id {key!r} appears twice")
        out[key] = record["prediction"]
    return out


def write_predictions(path: str | Path, predictions: Mapping[str, str]) -> None:
    """Write `{id: prediction}` as a predictions file, atomically, in the mapping's order."""
    text = "".join(
        json.dumps({"id": key, "prediction": value}, ensure_ascii=False) + "\n"
        for key, value in predictions.items()
    )
    atomic_write_text(path, text)
