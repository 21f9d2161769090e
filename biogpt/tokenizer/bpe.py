"""Byte-pair encoding of single Moses tokens, as BioGPT's fairseq/fastBPE setup applies it.

What BPE does
-------------
A word vocabulary large enough for biomedical text would be enormous, and a character
vocabulary makes sequences long. BPE sits between the two: training starts from characters
and repeatedly glues together the most frequent adjacent pair of symbols, writing each glue
step ("merge") to a file. BioGPT's file is `bpecodes` (fairseq) or `merges.txt` (Hugging
Face): line r holds the pair merged at step r, e.g. `t i` first, then `t h`, ...

Applying it to a word
---------------------
Encoding a word replays the training: split it into characters, mark the last one as the
end of the word by gluing `</w>` to it (so "cells" becomes `c e l l s</w>`: a final "s" is a
different symbol from an inner one), then repeatedly

1. look at every adjacent pair of symbols,
2. pick the pair that was merged earliest in training (the lowest rank, i.e. line number),
3. glue every occurrence of that pair, left to right,

until no adjacent pair is in the merge list. The symbols left are the word's pieces, e.g.
`cell s</w>`. Each piece is then looked up in the vocabulary; a piece not in it maps to
`<unk>`.

Spelling of pieces
------------------
Pieces are spelled the Hugging Face way here: a piece that ends a word ends in `</w>`. In
fairseq's `dict.txt` the same pieces are spelled the other way round: a piece that does
*not* end a word ends in `@@` ("cell@@", "s"). `vocab.py` converts between the two.

Speed
-----
The same words come back again and again in real text, so each word's pieces are computed
once and kept in a cache. Merging itself is the simple quadratic loop (words are short).
"""

from __future__ import annotations

from itertools import pairwise

END_OF_WORD = "</w>"


class BPE:
    """Applies a ranked list of merges to words, with a per-word cache.

    `merges` is the list of pairs in training order; a pair listed twice keeps its last
    rank, as in the Hugging Face tokenizer.
    """

    def __init__(self, merges: list[tuple[str, str]]) -> None:
        self.merges = list(merges)
        self.ranks: dict[tuple[str, str], int] = {pair: r for r, pair in enumerate(self.merges)}
        self.cache: dict[str, list[str]] = {}

    def __call__(self, word: str) -> list[str]:
        """The pieces of one non-empty Moses token, e.g. "cells" -> ["cell", "s</w>"]."""
        pieces = self.cache.get(word)
        if pieces is None:
            pieces = self.cache[word] = self._merge(word)
        return pieces

    def _merge(self, word: str) -> list[str]:
        # Start from characters, the last one carrying the end-of-word mark.
        symbols = [*word[:-1], word[-1] + END_OF_WORD]
        get_rank = self.ranks.get
        never = len(self.ranks)  # larger than every rank: "not a merge"
        # ranks[i] is the rank of the pair (symbols[i], symbols[i + 1]). Only the two pairs
        # around a merge change, so the list is updated rather than rebuilt.
        ranks = [get_rank(pair, never) for pair in pairwise(symbols)]
        while ranks:
            # Steps 1+2: the pair merged earliest in training, and its first occurrence.
            best = min(ranks)
            if best == never:
                break  # no adjacent pair is a merge: done
            i = ranks.index(best)
            # Step 3: glue every occurrence, left to right. A merged symbol never forms the
            # same pair again with a neighbour, so the next occurrence (if any) lies to the
            # right, and overlapping ones ("a a a" with the merge (a, a)) resolve to the
            # leftmost: "aa a".
            while True:
                merged = symbols[i] + symbols[i + 1]
                symbols[i : i + 2] = [merged]
                del ranks[i]
                if i > 0:
                    ranks[i - 1] = get_rank((symbols[i - 1], merged), never)
                if i < len(ranks):
                    ranks[i] = get_rank((merged, symbols[i + 1]), never)
                if best not in ranks:
                    break
                i = ranks.index(best, i)
        return symbols
