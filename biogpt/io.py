"""Atomic file writes: a reader never sees half a file, and a crash never leaves one behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from biogpt.errors import BioGPTError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    The temporary file lives in the same folder so the final `os.replace` is atomic.
    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` atomically with `write(file_object)` (its return value is ignored)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json_record(path: Path, section: str, refusal: str) -> dict[str, Any] | None:
    """The JSON object in `path` whose `section` is an object itself (a run's record), or
    None where there is no such file; anything else is one line, `path: refusal`."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record, dict) or not isinstance(record.get(section), dict):
            raise ValueError
    except (OSError, UnicodeDecodeError, ValueError):
        raise BioGPTError(f"{path}: {refusal}") from None
    return record


def read_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(`file:line`, record) for each non-blank line of a JSONL file; a line that is not
    UTF-8 or not JSON, or a file that cannot be read, is a one-line `BioGPTError` naming it.

    Lines end at "\n" only: `str.splitlines` would also break at the Unicode line
    separators that occur inside abstracts.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as err:
        raise BioGPTError(f"{file}: cannot read ({err.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        bad_line = data.count(b"\n", 0, err.start) + 1
        raise BioGPTError(
            f"{file}:{bad_line}: not UTF-8 (byte 0x{data[err.start]:02x}); JSON Lines are UTF-8"
        ) from None
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            raise BioGPTError(f"{where}: not valid JSON ({err.msg})") from None
