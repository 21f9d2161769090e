"""Binarised pretraining data: documents -> token shards on disk, and a reader over them.

Format (format 1)
-----------------
A directory with `manifest.json`:

    {"format": 1, "dtype": "uint16" | "int32", "vocab_size": V, "eos": 2,
     "splits": {"train": [{"file": "train/00000.bin", "tokens": N, "documents": D}, ...],
                "valid": [...]},
     "tokenizer": "<name or path>", "complete": true | false}

and raw little-endian token files (`numpy.memmap`-able, no header). The documents of a split
are stored one after another, each as its ids WITHOUT the leading `</s>` that
`Tokenizer.encode` adds, followed by `</s>` (id 2): fairseq's language-model stream, where
`</s>` ends every document. A document never straddles two shard files. The dtype is uint16
while every id fits (vocab_size <= 65535), else int32.

Writing is resumable and idempotent
-----------------------------------
A split's shard closes at the first document boundary where it holds at least
`shard_tokens` tokens, so shard boundaries depend only on the documents, never on timing
or on the number of workers. Each shard is written to a temporary file and renamed, then
recorded in the manifest (also replaced atomically). A re-run after a kill skips as many
documents of each split as its recorded shards hold and carries on: the files come out
byte-identical to an uninterrupted run. A re-run on a complete manifest reads nothing.
The settings that shape the files (tokenizer, shard size) are kept in `build.json`, and a
re-run with different ones is refused instead of mixing two layouts.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import chain, islice
from pathlib import Path

import numpy as np

from biogpt.corpus.readers import Document, split_of
from biogpt.errors import BioGPTError
from biogpt.io import atomic_write, atomic_write_text
from biogpt.tokenizer import Tokenizer

FORMAT = 1
EOS = 2
SPLITS = ("train", "valid")
MANIFEST = "manifest.json"
BUILD = "build.json"
CHUNK_DOCUMENTS = 64  # documents per task sent to a worker (~100 kB of abstracts)

_worker_tokenizer: Tokenizer | None = None  # inherited by forked workers


def dtype_for(vocab_size: int) -> str:
    """ "uint16" when every id fits in 16 bits, else "int32"."""
    return "uint16" if vocab_size <= 65535 else "int32"


# --------------------------------------------------------------------------------------------
# Tokenising in worker processes
# --------------------------------------------------------------------------------------------


def _set_worker_tokenizer(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_documents(texts: list[str]) -> list[list[int]]:
    """Stream ids of each text: `encode` without its leading `</s>`, with a closing one."""
    tokenizer = _worker_tokenizer
    assert tokenizer is not None
    return [[*tokenizer.encode(text)[1:], EOS] for text in texts]


def _encoded_chunks(
    tokenizer: Tokenizer, chunks: Iterator[list[str]], workers: int
) -> Iterator[list[list[int]]]:
    """Encoded chunks in input order, `workers` processes kept busy.

    At most 2 x workers chunks are in flight, so the input is read lazily and memory stays
    bounded however large the corpus (`Pool.imap` would read the whole input ahead).
    """
    if workers <= 1:
        _set_worker_tokenizer(tokenizer)
        for chunk in chunks:
            yield _encode_documents(chunk)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with context.Pool(workers, _set_worker_tokenizer, (tokenizer,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_encode_documents, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BioGPTError(f"{path}: cannot be read ({e})") from None


def _write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=1) + "\n")


class _ShardWriter:
    """Collects one split's stream and writes a shard each time it reaches `shard_tokens`."""

    def __init__(self, out: Path, split: str, manifest: dict, shard_tokens: int, dtype: str):
        self.out, self.split, self.manifest = out, split, manifest
        self.shard_tokens, self.dtype = shard_tokens, np.dtype(dtype).newbyteorder("<")
        self.buffer: list[np.ndarray] = []
        self.tokens = 0

    @property
    def shards(self) -> list[dict]:
        return self.manifest["splits"][self.split]

    def add(self, ids: list[int]) -> int:
        self.buffer.append(np.asarray(ids, dtype=self.dtype))
        self.tokens += len(ids)
        if self.tokens >= self.shard_tokens:
            self.flush()
        return len(ids)

    def flush(self) -> None:
        if not self.buffer:
            return
        data = np.concatenate(self.buffer)
        name = f"{self.split}/{len(self.shards):05d}.bin"
        atomic_write(self.out / name, lambda f: f.write(data.tobytes()))
        self.shards.append({"file": name, "tokens": len(data), "documents": len(self.buffer)})
        # The manifest follows the shard: a kill between the two leaves a file that the
        # re-run simply writes again, identically.
        _write_json(self.out / MANIFEST, self.manifest)
        self.buffer, self.tokens = [], 0


def binarize(
    documents: Iterable[Document | str] | tuple[Iterable[Document | str], Iterable[Document | str]],
    tokenizer: Tokenizer | str | Path,
    out_dir: str | Path,
    shard_tokens: int = 50_000_000,
    valid_fraction: float = 0.0,
    workers: int | None = None,
    progress: bool = True,
) -> dict:
    """Tokenise documents into shards under `out_dir` (format in the module docstring) and
    return the manifest.

    `documents` is one iterable, split into train/valid by `corpus.split_of(doc,
    valid_fraction)` (plain strings have no PMID and are split by their text), or a pair
    `(train_documents, valid_documents)`. `tokenizer` is a `Tokenizer` or a name/directory
    for `Tokenizer.from_pretrained` (recorded in the manifest). `workers` processes
    tokenise (default: all cores). Re-running resumes an interrupted run and does nothing
    after a complete one.
    """
    if shard_tokens < 1:
        raise BioGPTError(f"shard_tokens {shard_tokens}: expected >= 1")
    if isinstance(tokenizer, Tokenizer):
        name = getattr(tokenizer, "name_or_path", None) or "<in memory>"
    else:
        name, tokenizer = str(tokenizer), Tokenizer.from_pretrained(tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab_size = len(tokenizer)
    dtype = dtype_for(vocab_size)
    settings = {"tokenizer": name, "vocab_size": vocab_size, "shard_tokens": shard_tokens}
    if isinstance(documents, tuple):
        settings["split"] = "given"
    else:
        settings["valid_fraction"] = valid_fraction

    manifest_path, build_path = out / MANIFEST, out / BUILD
    if manifest_path.exists():
        manifest = _read_json(manifest_path)
        built = _read_json(build_path) if build_path.exists() else None
        if built != settings:
            raise BioGPTError(
                f"{out}: holds shards built with other settings ({built}); "
                "use a new directory or delete this one"
            )
        if manifest.get("complete"):
            return manifest
    else:
        _write_json(build_path, settings)
        manifest = {
            "format": FORMAT,
            "dtype": dtype,
            "vocab_size": vocab_size,
            "eos": EOS,
            "splits": {split: [] for split in SPLITS},
            "tokenizer": name,
            "complete": False,
        }
        _write_json(manifest_path, manifest)

    writers = {s: _ShardWriter(out, s, manifest, shard_tokens, dtype) for s in SPLITS}
    # Documents the recorded shards already hold, per split: skipped on a resumed run.
    skip = {s: sum(shard["documents"] for shard in writers[s].shards) for s in SPLITS}

    def routed() -> Iterator[tuple[str, str]]:
        """(split, text) of every document not yet in a recorded shard, in input order."""
        pairs: Iterable[tuple[str | None, Document | str]]
        if isinstance(documents, tuple):
            train, valid = documents
            pairs = chain((("train", d) for d in train), (("valid", d) for d in valid))
        else:
            pairs = ((None, d) for d in documents)
        seen = dict.fromkeys(SPLITS, 0)
        for given, item in pairs:
            doc = _as_document(item)
            split = given or split_of(doc, valid_fraction)
            seen[split] += 1
            if seen[split] > skip[split]:
                yield split, doc.text

    bar = _progress_bar(progress, sum(sum(x["tokens"] for x in w.shards) for w in writers.values()))
    items = routed()
    chunks = iter(lambda: list(islice(items, CHUNK_DOCUMENTS)), [])
    # Each chunk carries its splits alongside the texts sent to the workers.
    split_chunks: deque[list[str]] = deque()

    def texts() -> Iterator[list[str]]:
        for chunk in chunks:
            split_chunks.append([split for split, _ in chunk])
            yield [text for _, text in chunk]

    for encoded in _encoded_chunks(tokenizer, texts(), workers or os.cpu_count() or 1):
        for split, ids in zip(split_chunks.popleft(), encoded, strict=True):
            n = writers[split].add(ids)
            if bar is not None:
                bar.update(n)
    for writer in writers.values():
        writer.flush()
    if bar is not None:
        bar.close()
    manifest["complete"] = True
    _write_json(manifest_path, manifest)
    return manifest


def _as_document(item: Document | str) -> Document:
    return item if isinstance(item, Document) else Document(None, item)


def _progress_bar(enabled: bool, initial: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(initial=initial, unit=" tokens", unit_scale=True, desc="binarize", mininterval=1.0)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class TokenShards:
    """One split of a binarised directory as a single token stream, memory-mapped.

    Blocks follow fairseq's `TokenBlockDataset` with `break_mode="none"`: the stream is cut
    into consecutive blocks of `tokens_per_sample` tokens regardless of documents, so a
    block may start or end inside a document, and the `</s>` that ends each document falls
    wherever it falls. The final block is the remainder (shorter) when the stream length is
    not a multiple of `tokens_per_sample`, as in fairseq; pass `drop_last=True` to leave it
    out. `sample(i)` gives fairseq's (input, target) pair for block i: the target is the
    block, the input the same tokens shifted right by one, starting with `</s>` for block 0
    (fairseq's `include_targets`): every document is thus read as `</s> document`.
    """

    def __init__(self, directory: str | Path, split: str = "train") -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.is_file():
            raise BioGPTError(f"{self.directory}: no {MANIFEST} (not a binarised directory)")
        self.manifest = _read_json(manifest_path)
        if self.manifest.get("format") != FORMAT:
            raise BioGPTError(
                f"{manifest_path}: format {self.manifest.get('format')!r}, expected 1"
            )
        if split not in self.manifest["splits"]:
            raise BioGPTError(f"{manifest_path}: no split {split!r}")
        self.split = split
        self.vocab_size: int = self.manifest["vocab_size"]
        self.eos: int = self.manifest["eos"]
        self.dtype = np.dtype(self.manifest["dtype"]).newbyteorder("<")
        self.shards: list[np.ndarray] = []
        for shard in self.manifest["splits"][split]:
            path = self.directory / shard["file"]
            if shard["tokens"] == 0:
                continue  # numpy cannot map an empty file
            data = np.memmap(path, dtype=self.dtype, mode="r")
            if len(data) != shard["tokens"]:
                raise BioGPTError(
                    f"{path}: {len(data)} tokens, the manifest says {shard['tokens']}"
                )
            self.shards.append(data)
        # offsets[k] = stream position of shard k's first token; offsets[-1] = total.
        self.offsets = np.cumsum([0, *(len(s) for s in self.shards)])
        self.documents = sum(shard["documents"] for shard in self.manifest["splits"][split])

    def __len__(self) -> int:
        """Total number of tokens in the split's stream."""
        return int(self.offsets[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start + length) of the stream (clipped at its end), across shard
        boundaries, as a new int64 array."""
        if start < 0 or length < 0:
            raise IndexError(f"read({start}, {length}): negative start or length")
        end = min(start + length, len(self))
        parts = []
        k = int(np.searchsorted(self.offsets, start, side="right")) - 1
        position = start
        while position < end:
            local = position - int(self.offsets[k])
            take = min(end, int(self.offsets[k + 1])) - position
            parts.append(self.shards[k][local : local + take])
            position += take
            k += 1
        if not parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(parts).astype(np.int64)

    def blocks(self, tokens_per_sample: int = 1024, drop_last: bool = False) -> int:
        """Number of blocks of `tokens_per_sample` tokens (see the class docstring)."""
        if tokens_per_sample < 1:
            raise BioGPTError(f"tokens_per_sample {tokens_per_sample}: expected >= 1")
        full, rest = divmod(len(self), tokens_per_sample)
        return full + (1 if rest and not drop_last else 0)

    def block(self, i: int, tokens_per_sample: int = 1024) -> np.ndarray:
        """Block i: stream tokens [i * T, (i + 1) * T), the last one possibly shorter."""
        if not 0 <= i < self.blocks(tokens_per_sample):
            raise IndexError(f"block {i} of {self.blocks(tokens_per_sample)}")
        return self.read(i * tokens_per_sample, tokens_per_sample)

    def sample(self, i: int, tokens_per_sample: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """(input, target) of block i: target = `block(i)`, input = the stream shifted
        right by one token, with `</s>` before the very first token."""
        target = self.block(i, tokens_per_sample)
        start = i * tokens_per_sample
        if start == 0:
            source = np.concatenate([[self.eos], target[:-1]]).astype(np.int64)
        else:
            source = self.read(start - 1, len(target))
        return source, target
