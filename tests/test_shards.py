"""Token shards: contents, resume after a kill, idempotent re-runs, the block reader."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from shared_data import DATA

from biogpt.corpus.readers import Document, read_jsonl
from biogpt.corpus.shards import TokenShards, binarize, dtype_for
from biogpt.errors import BioGPTError
from biogpt.tokenizer import Tokenizer

SHARD_TOKENS = 20_000  # a few shards from a few hundred abstracts


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    path = DATA / "pretrain" / "abstracts.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return list(islice(read_jsonl(path), 300))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained("biogpt")


@pytest.fixture(scope="module")
def built(documents, tokenizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    binarize(
        documents,
        tokenizer,
        out,
        shard_tokens=SHARD_TOKENS,
        valid_fraction=0.1,
        workers=2,
        progress=False,
    )
    return out


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_shards_hold_the_documents(built, documents, tokenizer):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["complete"] is True
    assert manifest["dtype"] == "uint16" and manifest["eos"] == 2
    assert manifest["vocab_size"] == len(tokenizer)
    assert len(manifest["splits"]["train"]) > 1
    for shard in manifest["splits"]["train"]:
        assert (built / shard["file"]).stat().st_size == 2 * shard["tokens"]

    from biogpt.corpus.readers import split_of

    for split in ("train", "valid"):
        expected = [d for d in documents if split_of(d, 0.1) == split]
        shards = TokenShards(built, split)
        assert shards.documents == len(expected) > 0
        stream = shards.read(0, len(shards))
        assert stream[-1] == 2
        # Split the stream after each </s>: one document each, in input order.
        ends = np.flatnonzero(stream == 2)
        pieces = np.split(stream, ends[:-1] + 1)
        assert len(pieces) == len(expected)
        for ids, doc in zip(pieces, expected, strict=True):
            encoded = tokenizer.encode(doc.text)
            assert ids.tolist() == [*encoded[1:], 2]
            assert tokenizer.decode(ids) == tokenizer.decode(encoded[1:])


def test_resume_after_kill_is_byte_identical(built, documents, tokenizer, tmp_path):
    class Killed(Exception):
        pass

    def dies_midway():
        yield from documents[:200]
        raise Killed

    out = tmp_path / "resumed"
    with pytest.raises(Killed):
        binarize(
            dies_midway(),
            tokenizer,
            out,
            shard_tokens=SHARD_TOKENS,
            valid_fraction=0.1,
            workers=1,
            progress=False,
        )
    partial = json.loads((out / "manifest.json").read_text())
    assert partial["complete"] is False and partial["splits"]["train"]
    binarize(
        documents,
        tokenizer,
        out,
        shard_tokens=SHARD_TOKENS,
        valid_fraction=0.1,
        workers=1,
        progress=False,
    )
    assert files(out) == files(built)


def test_complete_run_is_not_redone(built, tokenizer):
    def untouchable():
        raise AssertionError("a complete directory must not read its input")
        yield

    before = {p: p.stat().st_mtime_ns for p in built.rglob("*")}
    manifest = binarize(
        untouchable(),
        tokenizer,
        built,
        shard_tokens=SHARD_TOKENS,
        valid_fraction=0.1,
        progress=False,
    )
    assert manifest["complete"] is True
    assert {p: p.stat().st_mtime_ns for p in built.rglob("*")} == before
    with pytest.raises(BioGPTError, match="other settings"):
        binarize([], tokenizer, built, shard_tokens=SHARD_TOKENS + 1, valid_fraction=0.1)


def test_given_splits_and_strings(tokenizer, tmp_path):
    manifest = binarize(
        (["Aspirin inhibits COX-1.", "Second."], ["Held out."]),
        tokenizer,
        tmp_path,
        progress=False,
    )
    assert [s["documents"] for s in manifest["splits"]["train"]] == [2]
    valid = TokenShards(tmp_path, "valid")
    assert valid.read(0, 100).tolist() == [*tokenizer.encode("Held out.")[1:], 2]


def test_blocks_cover_the_stream(built):
    shards = TokenShards(built, "train")
    n = len(shards)
    stream = shards.read(0, n)
    for size in (1000, n, 7):
        count = shards.blocks(size)
        assert count == -(-n // size)
        joined = np.concatenate([shards.block(i, size) for i in range(count)])
        assert np.array_equal(joined, stream)
        assert shards.blocks(size, drop_last=True) == n // size
    # Reads across a shard boundary.
    boundary = json.loads((built / "manifest.json").read_text())["splits"]["train"][0]["tokens"]
    assert np.array_equal(shards.read(boundary - 5, 10), stream[boundary - 5 : boundary + 5])
    # fairseq's (input, target): input is the stream shifted right, </s> first.
    source, target = shards.sample(0, 1000)
    assert source[0] == 2 and np.array_equal(source[1:], target[:-1])
    source, target = shards.sample(3, 1000)
    assert np.array_equal(source, stream[2999:3999]) and np.array_equal(target, stream[3000:4000])
    with pytest.raises(IndexError):
        shards.block(shards.blocks(1000), 1000)


def test_dtype_rule():
    assert dtype_for(42384) == "uint16"
    assert dtype_for(65535) == "uint16"
    assert dtype_for(65536) == "int32"
