"""Reading and writing BioGPT vocabularies in both of their released formats.

fairseq (the original release)
    `dict.txt`: one `piece count` line per id from 4 on (ids 0-3 are `<s> <pad> </s> <unk>`
    and are not listed); a piece that continues a word ends in `@@`.
    `bpecodes`: one `left right count` merge per line, in training order.
Hugging Face (`microsoft/biogpt`)
    `vocab.json`: `{piece: id}` with the four special tokens at ids 0-3; a piece that ends a
    word ends in `</w>`. `merges.txt`: `left right` per line, no header (the BioGPT
    tokenizer of transformers reads every line as a merge).

Tokens added with `Tokenizer.add_tokens` are stored in `added_tokens.json` (`{token: id}`,
the Hugging Face convention) in both formats, and in `tokenizer_config.json` for HF.
In memory everything is kept in the Hugging Face spelling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text

SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>"]  # ids 0..3, fairseq's fixed order
CONTINUES = "@@"  # fairseq: the piece continues a word
ENDS = "</w>"  # Hugging Face: the piece ends a word


@dataclass
class Vocabulary:
    """A BioGPT vocabulary: pieces by id, the BPE merges, and any added tokens."""

    pieces: list[str]  # index = id, Hugging Face spelling, ids 0..3 the special tokens
    merges: list[tuple[str, str]]  # in training order (rank = index)
    added: list[str] = field(default_factory=list)  # ids len(pieces), len(pieces) + 1, ...
    counts: list[int] | None = None  # fairseq frequency of pieces[4:], when known
    merge_counts: list[int] | None = None  # fairseq frequency of each merge, when known


def to_fairseq(piece: str) -> str:
    """Hugging Face spelling -> fairseq spelling ("cell" -> "cell@@", "s</w>" -> "s")."""
    return piece[: -len(ENDS)] if piece.endswith(ENDS) else piece + CONTINUES


def from_fairseq(piece: str) -> str:
    """fairseq spelling -> Hugging Face spelling ("cell@@" -> "cell", "s" -> "s</w>")."""
    return piece[: -len(CONTINUES)] if piece.endswith(CONTINUES) else piece + ENDS


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load(directory: str | Path) -> Vocabulary:
    """Load the vocabulary in `directory`: fairseq files if present, else Hugging Face ones."""
    directory = Path(directory)
    if not directory.is_dir():
        raise BioGPTError(f"{directory}: not a directory holding a BioGPT vocabulary")
    if (directory / "dict.txt").is_file() and (directory / "bpecodes").is_file():
        pieces, counts = _read_dict(directory / "dict.txt")
        merges, merge_counts = _read_merges(directory / "bpecodes", with_counts=True)
        vocab = Vocabulary(pieces, merges, counts=counts, merge_counts=merge_counts)
    elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        pieces = _read_vocab_json(directory / "vocab.json")
        merges, _ = _read_merges(directory / "merges.txt", with_counts=False)
        vocab = Vocabulary(pieces, merges)
    else:
        raise BioGPTError(
            f"{directory}: no vocabulary found (need dict.txt + bpecodes, "
            "or vocab.json + merges.txt)"
        )
    vocab.added = _read_added(directory, len(vocab.pieces))
    return vocab


def _read_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BioGPTError(f"{path}: cannot be read ({e})") from e
    # Split at "\n" only: pieces may hold characters that `splitlines` also breaks at.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_dict(path: Path) -> tuple[list[str], list[int]]:
    pieces = list(SPECIAL_TOKENS)
    counts = []
    seen = set(pieces)
    for number, line in enumerate(_read_lines(path), start=1):
        # fairseq lines are "piece count", optionally followed by a "#fairseq:..." flag.
        fields = line.split(" ")
        if len(fields) == 3 and fields[2].startswith("#fairseq:"):
            fields = fields[:2]
        if len(fields) != 2 or not fields[0] or not fields[1].lstrip("-").isdigit():
            raise BioGPTError(f"{path}:{number}: expected 'piece count', got {line!r}")
        piece = from_fairseq(fields[0])
        if piece in seen:
            raise BioGPTError(f"{path}:{number}: piece {fields[0]!r} is listed twice")
        seen.add(piece)
        pieces.append(piece)
        counts.append(int(fields[1]))
    return pieces, counts


def _read_merges(path: Path, with_counts: bool) -> tuple[list[tuple[str, str]], list[int]]:
    merges: list[tuple[str, str]] = []
    counts: list[int] = []
    for number, line in enumerate(_read_lines(path), start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue  # blank lines and a tokenizers-style header carry no merge
        fields = line.split()
        if len(fields) < 2 or (with_counts and (len(fields) != 3 or not fields[2].isdigit())):
            expected = "'left right count'" if with_counts else "'left right'"
            raise BioGPTError(f"{path}:{number}: expected {expected}, got {line!r}")
        merges.append((fields[0], fields[1]))
        counts.append(int(fields[2]) if with_counts else 0)
    return merges, counts


def _read_vocab_json(path: Path) -> list[str]:
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BioGPTError(f"{path}: cannot be read as JSON ({e})") from e
    if not isinstance(table, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in table.items()
    ):
        raise BioGPTError(f"{path}: expected a JSON object mapping pieces to integer ids")
    pieces = [""] * len(table)
    for piece, index in table.items():
        if not 0 <= index < len(table) or pieces[index]:
            raise BioGPTError(f"{path}: ids must be 0..{len(table) - 1}, each once (see {piece!r})")
        pieces[index] = piece
    if pieces[:4] != SPECIAL_TOKENS:
        raise BioGPTError(f"{path}: ids 0-3 must be {', '.join(SPECIAL_TOKENS)}")
    return pieces


def _read_added(directory: Path, first_id: int) -> list[str]:
    """Added tokens from added_tokens.json, or from tokenizer_config.json's
    added_tokens_decoder when only that exists (as transformers writes it)."""
    table: dict[str, int] = {}
    path = directory / "added_tokens.json"
    try:
        if path.is_file():
            table = json.loads(path.read_text(encoding="utf-8"))
        elif (directory / "tokenizer_config.json").is_file():
            path = directory / "tokenizer_config.json"
            config = json.loads(path.read_text(encoding="utf-8"))
            for index, entry in config.get("added_tokens_decoder", {}).items():
                if int(index) >= first_id:
                    table[entry["content"]] = int(index)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise BioGPTError(f"{path}: cannot read the added tokens ({e})") from e
    if not isinstance(table, dict):
        raise BioGPTError(f"{path}: expected a JSON object mapping tokens to ids")
    added = sorted(table, key=lambda token: table[token])
    if [table[t] for t in added] != list(range(first_id, first_id + len(added))):
        raise BioGPTError(f"{path}: added token ids must follow the vocabulary ({first_id}, ...)")
    return added


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_fairseq(vocab: Vocabulary, directory: str | Path) -> None:
    """Write dict.txt and bpecodes (and added_tokens.json if there are added tokens)."""
    directory = Path(directory)
    counts = vocab.counts or [0] * (len(vocab.pieces) - 4)
    merge_counts = vocab.merge_counts or [0] * len(vocab.merges)
    atomic_write_text(
        directory / "dict.txt",
        "".join(f"{to_fairseq(p)} {c}\n" for p, c in zip(vocab.pieces[4:], counts, strict=True)),
    )
    atomic_write_text(
        directory / "bpecodes",
        "".join(f"{a} {b} {c}\n" for (a, b), c in zip(vocab.merges, merge_counts, strict=True)),
    )
    _save_added(vocab, directory)


def save_hf(vocab: Vocabulary, directory: str | Path) -> None:
    """Write vocab.json, merges.txt and tokenizer_config.json, loadable by
    `transformers.BioGptTokenizer.from_pretrained`."""
    directory = Path(directory)
    table = {piece: index for index, piece in enumerate(vocab.pieces)}
    atomic_write_text(directory / "vocab.json", json.dumps(table, ensure_ascii=False, indent=2))
    # transformers drops whatever follows the last newline, so every line ends in one.
    atomic_write_text(directory / "merges.txt", "".join(f"{a} {b}\n" for a, b in vocab.merges))
    decoder = {
        str(index): _added_entry(token, special=index < 4)
        for index, token in [*enumerate(SPECIAL_TOKENS), *_added_ids(vocab)]
    }
    config = {
        "tokenizer_class": "BioGptTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "sep_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": decoder,
    }
    atomic_write_text(directory / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
    _save_added(vocab, directory)


def _added_ids(vocab: Vocabulary) -> list[tuple[int, str]]:
    return [(len(vocab.pieces) + k, token) for k, token in enumerate(vocab.added)]


def _added_entry(token: str, special: bool) -> dict:
    # The flags transformers gives tokens added with `add_tokens` (and its special tokens).
    return {
        "content": token,
        "lstrip": False,
        "normalized": not special,
        "rstrip": False,
        "single_word": False,
        "special": special,
    }


def _save_added(vocab: Vocabulary, directory: Path) -> None:
    path = directory / "added_tokens.json"
    if vocab.added:
        table = {token: index for index, token in _added_ids(vocab)}
        atomic_write_text(path, json.dumps(table, ensure_ascii=False, indent=2) + "\n")
    elif path.exists():
        path.unlink()  # a stale file from an earlier save would add tokens on loading
