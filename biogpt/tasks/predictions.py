"""Prediction files: JSONL, one `{"id": ..., "prediction": "..."}` per line.

`read_predictions` and `write_predictions` read and write a whole file. A run that predicts
a split (`biogpt predict`, `biogpt evaluate`) writes through a `PredictionsFile` instead, a
batch at a time, so that an interrupted run keeps what it finished and can be continued:

- each batch's lines are appended, flushed and fsynced before the next batch decodes, so a
  killed run leaves the whole lines of its finished batches (perhaps some of the batch it
  was writing) and at most one torn last line (no "\\n" at its end), which a resumed run
  drops;
- `FILE.meta.json` beside the file records the run it belongs to (`run`: the task, the
  model, where the examples come from, the answer length, ...); resuming it with another
  run is refused, since the file would mix the answers of two models or two datasets;
- the lines follow the order of the run's examples, so the file of a run is the start of
  the file of any run over more of the same examples (a larger limit). Resuming checks that
  the file's ids are the first ids of the run's examples, in order (which also refuses a
  file cut from other examples), and appends the rest: the finished file is byte for byte
  the file an uninterrupted run writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text, read_jsonl

META_SUFFIX = ".meta.json"


def prediction_line(example_id: str, prediction: str) -> str:
    """One line of a predictions file, its "\\n" included."""
    return json.dumps({"id": example_id, "prediction": prediction}, ensure_ascii=False) + "\n"


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
    atomic_write_text(path, "".join(prediction_line(k, v) for k, v in predictions.items()))


def meta_path(path: str | Path) -> Path:
    """Where the record of the run that writes `path` lives: `path` + ".meta.json"."""
    path = Path(path)
    return path.with_name(path.name + META_SUFFIX)


class PredictionsFile:
    """A predictions file that a run writes batch by batch (see the module docstring).

    `run` describes the run (JSON values; its keys name what a resumed run must repeat),
    `ids` are the ids of its examples in the order they are predicted. With `resume` and
    an existing file, `done` holds the predictions already there (the first of `ids`) and
    a torn last line is cut off at once; without, the file is replaced, but only when the
    first batch is appended, so a run that fails before predicting anything leaves an
    earlier file as it was.
    """

    def __init__(
        self, path: str | Path, run: Mapping[str, Any], ids: Sequence[str], resume: bool = False
    ) -> None:
        self.path = Path(path)
        self.run = dict(run)
        self.done: dict[str, str] = {}
        self._file: IO[bytes] | None = None
        self._fresh = not (resume and self.path.exists())
        if not self._fresh:
            self._check_run()
            self.done = self._read_done(ids)

    def _check_run(self) -> None:
        """A one-line error unless the file's meta record describes this same run."""
        meta = meta_path(self.path)
        try:
            recorded = json.loads(meta.read_text(encoding="utf-8"))["run"]
            if not isinstance(recorded, dict):
                raise TypeError
        except FileNotFoundError:
            raise BioGPTError(
                f"{self.path}: no {meta.name} says which run wrote it, so it cannot be "
                "resumed; pass --overwrite to start again"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise BioGPTError(f'{meta}: not a run record (expected {{"run": {{...}}}})') from None
        for key in sorted(set(recorded) | set(self.run)):
            if recorded.get(key) != self.run.get(key):
                raise BioGPTError(
                    f"{self.path}: written with {key} {_shown(recorded.get(key))}, this run has "
                    f"{key} {_shown(self.run.get(key))}; resume with the same flags, or pass "
                    "--overwrite to start again"
                )

    def _read_done(self, ids: Sequence[str]) -> dict[str, str]:
        """The predictions of the file's whole lines, checked to be those of the first
        `ids`; a torn last line is cut off the file."""
        data = self.path.read_bytes()
        whole = data.rfind(b"\n") + 1
        done: dict[str, str] = {}
        for number, line in enumerate(data[:whole].split(b"\n")[:-1], 1):
            where = f"{self.path}:{number}"
            try:
                record = json.loads(line.decode("utf-8"))
                example_id, prediction = record["id"], record["prediction"]
                if not (isinstance(example_id, str) and isinstance(prediction, str)):
                    raise TypeError
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                raise BioGPTError(
                    f'{where}: not a prediction line ({{"id": ..., "prediction": ...}})'
                ) from None
            position = len(done)
            if position >= len(ids):
                raise BioGPTError(
                    f"{where}: the file holds more predictions than this run's {len(ids)} "
                    "examples (was it made with a larger limit?)"
                )
            if ids[position] != example_id:
                raise BioGPTError(
                    f"{where}: holds id {example_id!r} where this run's example {position + 1} "
                    f"is {ids[position]!r}; the file is not the start of this run's predictions"
                )
            done[example_id] = prediction
        if whole < len(data):
            os.truncate(self.path, whole)  # the torn line of a run killed mid-write
        return done

    def append(self, batch: Sequence[tuple[str, str]]) -> None:
        """Add a finished batch's (id, prediction) lines and make them durable."""
        if self._file is None:
            self._file = open(self.path, "wb" if self._fresh else "ab")  # noqa: SIM115
            if self._fresh:
                # After emptying the file: a crash in between leaves an empty file under
                # an earlier run's record, never an earlier run's lines under this one's.
                atomic_write_text(
                    meta_path(self.path), json.dumps({"run": self.run}, indent=2) + "\n"
                )
        self._file.write("".join(prediction_line(i, p) for i, p in batch).encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> PredictionsFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _shown(value: Any) -> str:
    return "(none)" if value is None else json.dumps(value, ensure_ascii=False)
