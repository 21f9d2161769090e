"""Tokenizer throughput: ours against transformers' BioGptTokenizer, on one core.

Encodes every document of the pretraining sample (title + " " + abstract) once with each
tokenizer, both starting from empty caches, in this one process, and prints MB/s, tokens/s,
the speed ratio and the number of documents whose ids differ.

    .venv/bin/python benchmarks/tokenizer.py [--limit N] [--vocab DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from biogpt.tokenizer import Tokenizer  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


def load_texts(limit: int | None) -> list[str]:
    path = DATA / "pretrain" / "abstracts.jsonl"
    with open(path, encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    return [d["title"] + " " + d["abstract"] for d in docs[:limit]]


def timed(encode, texts: list[str]) -> tuple[list[list[int]], float]:
    start = time.perf_counter()
    out = [encode(t) for t in texts]
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="only the first N documents")
    parser.add_argument("--vocab", default="biogpt", help="bundled name or vocabulary folder")
    args = parser.parse_args()

    texts = load_texts(args.limit)
    megabytes = sum(len(t.encode("utf-8")) for t in texts) / 1e6

    ours = Tokenizer.from_pretrained(args.vocab)
    with tempfile.TemporaryDirectory() as tmp:
        # The reference reads the same vocabulary, written in its own format.
        ours.save_pretrained(tmp, format="hf")
        from transformers import BioGptTokenizer

        hf = BioGptTokenizer.from_pretrained(tmp)

    our_ids, our_s = timed(ours.encode, texts)
    hf_ids, hf_s = timed(lambda t: hf(t)["input_ids"], texts)
    tokens = sum(map(len, our_ids))
    mismatches = sum(a != b for a, b in zip(our_ids, hf_ids, strict=True))

    print(f"documents: {len(texts)}  ({megabytes:.2f} MB, {tokens} tokens)")
    print(f"ours: {megabytes / our_s:6.2f} MB/s  {tokens / our_s:9.0f} tokens/s  ({our_s:.2f} s)")
    print(f"HF:   {megabytes / hf_s:6.2f} MB/s  {tokens / hf_s:9.0f} tokens/s  ({hf_s:.2f} s)")
    print(f"ratio: {hf_s / our_s:.2f}x")
    print(f"mismatching documents: {mismatches}")


if __name__ == "__main__":
    main()
