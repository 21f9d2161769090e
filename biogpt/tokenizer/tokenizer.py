"""The BioGPT tokenizer: Moses words -> BPE pieces -> vocabulary ids, and back.

It gives the ids of Hugging Face's `BioGptTokenizer` (the reference), several times faster
(`benchmarks/tokenizer.py` measures both on real abstracts and checks the ids agree):
the result of every white-space separated word (Moses tokens, BPE pieces and ids together)
is cached, so a word seen before costs one dictionary lookup. `moses.analyse_word` explains
why caching words is exact, and which rare neighbourhoods fall back to the exact path.

Special and added tokens behave as in the reference: the text is first cut at every
occurrence of `<s>`, `<pad>`, `</s>`, `<unk>` or a token added with `add_tokens` (anywhere,
even inside a word: "xlearned1y" gives "x", "learned1", "y"), each such occurrence is one id,
and the pieces in between are tokenized as separate texts.

What the ids cannot carry is lost as in the reference, without a word: control characters
are deleted by Moses, and a piece the vocabulary lacks (an emoji, a CJK character) becomes
`<unk>`. `lost_characters` says which characters a text lost, for callers that warn.
"""

from __future__ import annotations

import multiprocessing
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from biogpt.errors import BioGPTError
from biogpt.tokenizer import moses
from biogpt.tokenizer.bpe import BPE, END_OF_WORD
from biogpt.tokenizer.vocab import SPECIAL_TOKENS, Vocabulary, load, save_fairseq, save_hf

BUNDLED = Path(__file__).resolve().parent / "vocab"  # biogpt/, biogpt-large/
FORMATS = ("hf", "fairseq", "both")
# Below this many characters a batch is encoded in this process: starting workers and
# shipping results back costs more than it saves.
PARALLEL_MIN_CHARS = 2_000_000

_worker_tokenizer: Tokenizer | None = None  # the tokenizer a forked worker process uses

# A word's cache entry (see `Tokenizer._encode_segment`): its ids, or for a word whose ids
# depend on its neighbours (ids, ids_with_split_full_stop, numeric_only, head_quote, tail_quote).
_WordEntry = list[int] | tuple[list[int], list[int] | None, bool, bool, bool]


@dataclass
class LostCharacters:
    """The characters of a text that its ids do not carry, each list in the text's order."""

    unknown: list[str] = field(default_factory=list)  # in pieces the vocabulary lacks: <unk>
    deleted: list[str] = field(default_factory=list)  # control characters Moses deletes

    @property
    def count(self) -> int:
        return len(self.unknown) + len(self.deleted)


class Tokenizer:
    """BioGPT tokenizer. Build it with `Tokenizer.from_pretrained("biogpt")`."""

    bos_id = 0  # <s>: the "bos" of the config, but sequences do not start with it
    pad_id = 1  # <pad>
    eos_id = 2  # </s>: starts every sequence and separates the texts of a pair
    unk_id = 3  # <unk>

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self.bpe = BPE(vocab.merges)
        self.moses = moses.MosesTokenizer()
        self._rebuild()

    def _rebuild(self) -> None:
        """(Re)build the lookup tables; called again after `add_tokens`."""
        pieces = self.vocab.pieces
        self._whole = {t: i for i, t in enumerate(SPECIAL_TOKENS)}  # texts that are one id
        self._whole.update({t: len(pieces) + k for k, t in enumerate(self.vocab.added)})
        # Like the reference, a BPE piece that equals an added token gets the added id.
        self._piece_id = {piece: i for i, piece in enumerate(pieces)}
        self._piece_id.update(self._whole)
        self._token_of = [*pieces, *self.vocab.added]
        # Longest first, so that "learned10" wins over "learned1" where both match.
        alternatives = sorted(self._whole, key=len, reverse=True)
        self._whole_re = re.compile("|".join(map(re.escape, alternatives)))
        # Word caches: white-space word -> ids (see `_word_ids`). Inner words in one table,
        # the first and last word of a text (whose rules differ) in another.
        self._inner: dict[str, _WordEntry] = {}
        self._edge: dict[tuple[str, bool, bool], _WordEntry] = {}

    # ----------------------------------------------------------------------------------------
    # Loading and saving
    # ----------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path) -> Tokenizer:
        """Load a bundled vocabulary ("biogpt", "biogpt-large") or a directory holding
        dict.txt + bpecodes (fairseq) or vocab.json + merges.txt (Hugging Face)."""
        path = Path(name_or_path)
        holds_vocab = (path / "dict.txt").is_file() or (path / "vocab.json").is_file()
        if str(name_or_path) in ("biogpt", "biogpt-large") and not holds_vocab:
            # A bundled name, unless a directory of that name holds a vocabulary (a bare
            # "biogpt" folder, like this package's own source, does not count).
            path = BUNDLED / str(name_or_path)
        return cls(load(path))

    def save_pretrained(self, directory: str | Path, format: str = "both") -> None:
        """Write the vocabulary: "hf" (vocab.json, merges.txt, tokenizer_config.json, as
        `transformers.BioGptTokenizer.from_pretrained` reads them), "fairseq" (dict.txt,
        bpecodes) or "both". Added tokens go to added_tokens.json in either format."""
        if format not in FORMATS:
            raise BioGPTError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
        if format in ("hf", "both"):
            save_hf(self.vocab, directory)
        if format in ("fairseq", "both"):
            save_fairseq(self.vocab, directory)

    # ----------------------------------------------------------------------------------------
    # Vocabulary
    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of ids, added tokens included."""
        return len(self._token_of)

    def token_to_id(self, token: str) -> int:
        """Id of a piece (Hugging Face spelling, "cell" / "s</w>") or added token; unknown
        pieces give `unk_id`, as in the reference."""
        return self._piece_id.get(token, self.unk_id)

    def id_to_token(self, index: int) -> str:
        """The piece or added token of an id; ids outside the vocabulary give "<unk>"."""
        index = int(index)
        return self._token_of[index] if 0 <= index < len(self._token_of) else "<unk>"

    def add_tokens(self, tokens: list[str]) -> list[int]:
        """Append tokens that are always one id, e.g. the "learned1".."learned9" prompt
        tokens of prompt tuning, and return their ids (also for ones already added).

        They behave like tokens added to the reference with `add_tokens`: every occurrence in
        a text is cut out as that id, even inside a word, and the rest is tokenized around
        it. Decoding gives their text back, glued to the next piece exactly as the
        reference glues it ("learned1", "is</w>" -> "learned1is").
        """
        ids = []
        for token in tokens:
            if not isinstance(token, str) or not token:
                raise BioGPTError(f"add_tokens: {token!r} is not a non-empty string")
            if token not in self._whole:
                if token in self._piece_id:
                    raise BioGPTError(f"add_tokens: {token!r} is already a vocabulary piece")
                self.vocab.added.append(token)
                self._whole[token] = len(self._token_of)
                self._token_of.append(token)
            ids.append(self._whole[token])
        self._rebuild()
        return ids

    # ----------------------------------------------------------------------------------------
    # Encoding
    # ----------------------------------------------------------------------------------------

    def encode(self, text: str, pair: str | None = None) -> list[int]:
        """Ids of `text` as the model reads them: `[</s>] + text`, or `[</s>] + text +
        [</s>] + pair` for a pair; no end token is appended (as in the reference)."""
        ids = [self.eos_id]
        ids += self._encode_text(text)
        if pair is not None:
            ids.append(self.eos_id)
            ids += self._encode_text(pair)
        return ids

    def encode_batch(self, texts: list[str], num_workers: int | None = None) -> list[list[int]]:
        """`[self.encode(t) for t in texts]`, spread over `num_workers` processes (default:
        all cores) when the batch is large; small batches stay in this process."""
        workers = num_workers or os.cpu_count() or 1
        if workers <= 1 or len(texts) < 2 or sum(map(len, texts)) < PARALLEL_MIN_CHARS:
            return [self.encode(t) for t in texts]
        return _encode_in_pool(self, list(texts), workers)

    def tokenize(self, text: str) -> list[str]:
        """The BPE pieces of `text` (Hugging Face spelling), without the leading `</s>`."""
        out: list[str] = []
        for segment, whole in self._segments(text):
            if whole:
                out.append(segment)
            else:
                for token in self.moses.tokenize(segment):
                    out += self.bpe(token)
        return out

    def lost_characters(self, text: str, ids: list[int] | None = None) -> LostCharacters:
        """The characters of `text` that its ids lose: those in pieces the vocabulary
        lacks (emoji, most non-Latin scripts: each such piece is one `<unk>`), and the
        control characters Moses deletes (NUL, ...), as the reference does both.

        `ids` is `encode(text)` if the caller has it. The pieces are looked at only when the
        ids hold `<unk>` or the text a control character, so for most texts this costs one
        scan of the ids.
        """
        if ids is None:
            ids = self.encode(text)
        lost = LostCharacters()
        if self.unk_id not in ids and not moses.needs_exact(text):
            return lost
        for segment, whole in self._segments(text):
            if whole:  # a special token written out ("<unk>" itself) is kept, not lost
                continue
            lost.deleted.extend(moses.JUNK.findall(segment))
            for token in self.moses.tokenize(segment):
                for piece in self.bpe(token):
                    if piece not in self._piece_id:
                        lost.unknown.extend(piece.removesuffix(END_OF_WORD))
        return lost

    def _segments(self, text: str) -> list[tuple[str, bool]]:
        """Cut `text` at special and added tokens: (segment, is_whole_token) pairs."""
        out = []
        start = 0
        for m in self._whole_re.finditer(text):
            if m.start() > start:
                out.append((text[start : m.start()], False))
            out.append((m.group(), True))
            start = m.end()
        if start < len(text):
            out.append((text[start:], False))
        return out

    def _encode_text(self, text: str) -> list[int]:
        if self._whole_re.search(text) is None:
            return self._encode_segment(text)
        ids: list[int] = []
        for segment, whole in self._segments(text):
            if whole:
                ids.append(self._whole[segment])
            else:
                ids += self._encode_segment(segment)
        return ids

    def _encode_segment(self, text: str) -> list[int]:
        """Ids of a text free of special/added tokens: the hot path.

        Each word's ids come from a cache entry that is either a plain list of ids, or for
        the rare words whose tokens depend on their neighbours (`moses.WordForm`), a tuple
        (ids, ids_with_split_full_stop, numeric_only, head_quote, tail_quote).
        """
        words = text.split()
        n = len(words)
        if n == 0:
            return []
        if moses.needs_exact(text):
            return self._ids_of_tokens(moses.tokenize_exact(text))
        inner = self._inner
        entries = [inner.get(w) for w in words]
        for i in range(1, n - 1):
            if entries[i] is None:
                # Looked up again: the word may have been new earlier in this same text.
                word = words[i]
                entry = inner.get(word)
                if entry is None:
                    entry = inner[word] = self._word_ids(word, False, False)
                entries[i] = entry
        entries[0] = self._edge_ids(words[0], True, n == 1)
        if n > 1:
            entries[-1] = self._edge_ids(words[-1], False, True)
        ids: list[int] = []
        filled = cast("list[_WordEntry]", entries)  # every slot is set now
        for i, entry in enumerate(filled):
            if isinstance(entry, list):
                ids += entry
                continue
            keep, split, numeric_only, head_quote, _ = entry
            if head_quote:
                before = filled[i - 1]
                if before.__class__ is tuple and before[4]:
                    # Two quote rules compete for one space: only the exact path knows.
                    return self._ids_of_tokens(moses.tokenize_exact(text))
            if split is not None and not moses.keeps_full_stop_before(words[i + 1], numeric_only):
                ids += split
            else:
                ids += keep
        return ids

    def _edge_ids(self, word: str, first: bool, last: bool) -> _WordEntry:
        key = (word, first, last)
        entry = self._edge.get(key)
        if entry is None:
            entry = self._edge[key] = self._word_ids(word, first, last)
        return entry

    def _word_ids(self, word: str, first: bool, last: bool) -> _WordEntry:
        """The cache entry of one word (see `_encode_segment`)."""
        form = moses.analyse_word(word, first, last)
        keep = self._ids_of_tokens(form.tokens)
        if form.split is None and not form.head_quote and not form.tail_quote:
            return keep
        split = None if form.split is None else self._ids_of_tokens(form.split)
        return (keep, split, form.numeric_only, form.head_quote, form.tail_quote)

    def _ids_of_tokens(self, tokens: list[str]) -> list[int]:
        get = self._piece_id.get
        bpe = self.bpe
        return [get(piece, 3) for token in tokens for piece in bpe(token)]

    # ----------------------------------------------------------------------------------------
    # Decoding
    # ----------------------------------------------------------------------------------------

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, equal to the reference's `decode`: pieces are joined (`</w>` ends a
        word), the words Moses-detokenized. With `skip_special_tokens` the ids 0-3 are left
        out; otherwise special and added tokens are glued to the next piece, as in the
        reference (they carry no `</w>`)."""
        pieces = []
        for index in ids:
            index = int(index)
            if skip_special_tokens and 0 <= index < 4:
                continue
            pieces.append(self.id_to_token(index))
        text = "".join(p.replace(" ", "").replace("</w>", " ") for p in pieces)
        return moses.detokenize(text.split())


# --------------------------------------------------------------------------------------------
# Worker processes for encode_batch
# --------------------------------------------------------------------------------------------


def _encode_in_pool(tokenizer: Tokenizer, texts: list[str], workers: int) -> list[list[int]]:
    """Encode `texts` in `workers` processes. With "fork" (Linux) the workers inherit the
    tokenizer, caches included; elsewhere it is sent to each worker once."""
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    # A few chunks per worker balance uneven texts without too many round trips.
    size = max(1, len(texts) // (workers * 4))
    chunks = [texts[i : i + size] for i in range(0, len(texts), size)]
    with context.Pool(workers, initializer=_set_worker_tokenizer, initargs=(tokenizer,)) as pool:
        results = pool.map(_encode_chunk, chunks)
    return [ids for chunk in results for ids in chunk]


def _set_worker_tokenizer(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode_chunk(texts: list[str]) -> list[list[int]]:
    assert _worker_tokenizer is not None
    return [_worker_tokenizer.encode(t) for t in texts]
