"""Learning a BPE vocabulary from a corpus, the way BioGPT's was learned.

The pipeline
------------
1. Moses-tokenize every text with the same tokenizer `Tokenizer` uses (`moses.py`), and
   count the tokens ("words"). Everything after this works on word types with counts.
2. Split each word into characters and glue `</w>` to the last one, as `bpe.py` does when
   applying merges: "cells" is `c e l l s</w>` with the count of "cells".
3. Repeat `num_merges` times: count every adjacent pair of symbols over all words (each
   occurrence weighted by its word's count), take the most frequent pair, record it as the
   next merge and glue all its occurrences in every word, left to right.
   Ties: among pairs of equal count the smallest `(left, right)` in Python string order
   wins, so the result does not depend on dictionary order or on the order of the texts.
   Learning stops early when the best pair occurs fewer than `min_count` times.
4. Apply the learned merges to every word type with `bpe.BPE` (exactly what the tokenizer
   will do) and count the pieces: these are the vocabulary, so every word of the corpus
   encodes without `<unk>`.

Speed
-----
Recounting every pair after each merge would cost (merges x corpus). Instead the pair
counts are kept and updated: a merge only touches the words that contain its pair (an
index maps each pair to those words), and for each of them the counts of its old pairs are
taken away and those of its new pairs added. The most frequent pair comes from a heap with
lazy deletion: an entry whose count is stale is dropped when it reaches the top.

Output files (fairseq layout, loadable with `Tokenizer.from_pretrained(out_dir)`)
------------------------------------------------------------------------------------
- `bpecodes`: `left right count` per merge in training order; `count` is the pair's
  frequency when it was merged.
- `dict.txt`: `piece count`, every piece sorted by count (descending), then by spelling;
  a piece that continues a word ends in `@@`. Padded with `madeupword0000`, ... (count 0)
  so that the number of ids, the 4 special tokens included, is a multiple of 8, as in the
  released dictionary (fairseq pads for efficient matrix shapes).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path

from biogpt.errors import BioGPTError
from biogpt.tokenizer import moses
from biogpt.tokenizer.bpe import BPE, END_OF_WORD
from biogpt.tokenizer.vocab import Vocabulary, save_fairseq

Pair = tuple[str, str]
PAD_MULTIPLE = 8  # the id count (specials included) is padded to a multiple of this
PAD_PIECE = "madeupword{:04d}"


def count_words(texts: Iterable[str]) -> Counter[str]:
    """Moses tokens of all texts with their counts (the tokenizer's own Moses settings:
    English, aggressive hyphen splitting, XML escaping)."""
    tokenizer = moses.MosesTokenizer()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(tokenizer.tokenize(text))
    return counts


def learn_merges(
    word_counts: dict[str, int], num_merges: int, min_count: int = 2
) -> list[tuple[Pair, int]]:
    """The first `num_merges` merges (pair, frequency) over the given word counts (see the
    module docstring for the algorithm and the tie rule)."""
    words = [[*w[:-1], w[-1] + END_OF_WORD] for w in word_counts if w]
    freqs = [word_counts[w] for w in word_counts if w]

    pair_counts: defaultdict[Pair, int] = defaultdict(int)
    where: defaultdict[Pair, set[int]] = defaultdict(set)  # pair -> ids of words holding it
    for index, (symbols, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(symbols):
            pair_counts[pair] += freq
            where[pair].add(index)
    # Min-heap of (-count, left, right): the top is the most frequent pair, ties going to
    # the smallest (left, right).
    heap = [(-c, a, b) for (a, b), c in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[Pair, int]] = []
    while len(merges) < num_merges and heap:
        negative, a, b = heapq.heappop(heap)
        count = pair_counts.get((a, b), 0)
        if count != -negative:
            continue  # stale entry: the pair's count changed since it was pushed
        if count < min_count:
            break
        merges.append(((a, b), count))
        merged = a + b
        touched: set[Pair] = set()
        for index in where.pop((a, b)):
            symbols, freq = words[index], freqs[index]
            # Take the word's pairs away, glue every (a, b) left to right, add them back.
            for pair in pairwise(symbols):
                pair_counts[pair] -= freq
                touched.add(pair)
            out: list[str] = []
            i = 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            words[index] = out
            for pair in pairwise(out):
                pair_counts[pair] += freq
                where[pair].add(index)
                touched.add(pair)
        del pair_counts[(a, b)]
        touched.discard((a, b))
        for pair in touched:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, *pair))
            else:
                # Gone from every word; its `where` entry may list words that lost it
                # (entries are never pruned one by one: stale ids are harmless, skipped
                # above because the pair is no longer in them).
                del pair_counts[pair]
                where.pop(pair, None)
    return merges


def piece_counts(word_counts: dict[str, int], merges: list[Pair]) -> Counter[str]:
    """Counts of the pieces (Hugging Face spelling) the merges give on the words, computed
    with the same `BPE` the tokenizer applies."""
    bpe = BPE(merges)
    counts: Counter[str] = Counter()
    for word, freq in word_counts.items():
        if word:
            for piece in bpe(word):
                counts[piece] += freq
    return counts


def learn_vocabulary(
    texts: Iterable[str], num_merges: int, out_dir: str | Path, min_count: int = 2
) -> Path:
    """Learn `num_merges` BPE merges from `texts` and write `bpecodes` and `dict.txt` to
    `out_dir` (fairseq layout, see the module docstring); returns `out_dir`.

    `min_count`: stop early when the most frequent pair occurs fewer times than this.
    """
    if num_merges < 0:
        raise BioGPTError(f"number of merges {num_merges}: expected >= 0")
    if min_count < 1:
        raise BioGPTError(f"min_count {min_count}: expected >= 1")
    word_counts = count_words(texts)
    if not word_counts:
        raise BioGPTError("the corpus holds no words: nothing to learn a vocabulary from")
    learned = learn_merges(word_counts, num_merges, min_count)
    merges = [pair for pair, _ in learned]
    pieces = piece_counts(word_counts, merges)
    # fairseq's dict order: most frequent first; equal counts by spelling, for determinism.
    ordered = sorted(pieces.items(), key=lambda item: (-item[1], item[0]))
    names = [piece for piece, _ in ordered]
    counts = [count for _, count in ordered]
    padding = -(len(names) + 4) % PAD_MULTIPLE
    taken = set(names)  # a corpus may itself hold the word "madeupword0000"
    pad = (PAD_PIECE.format(k) + END_OF_WORD for k in range(len(names) + padding + 1))
    names += [name for name in pad if name not in taken][:padding]
    counts += [0] * padding
    vocab = Vocabulary(
        pieces=["<s>", "<pad>", "</s>", "<unk>", *names],
        merges=merges,
        counts=counts,
        merge_counts=[count for _, count in learned],
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_fairseq(vocab, out)
    return out
