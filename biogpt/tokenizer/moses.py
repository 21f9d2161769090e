"""Moses word tokenization and detokenization for English, as BioGPT was trained with.

BioGPT's text went through the Moses `tokenizer.perl -l en -a` (English rules, aggressive
hyphen splitting, XML escaping) before BPE; Hugging Face reproduces it with the Python port
`sacremoses`. This module implements the same rule set from scratch, with only `re`.

Two ways to tokenize a text give the same tokens:

* `tokenize_exact(text)` runs the rules one after another over the whole text, exactly as the
  reference does. It is the definition, and it is slow: about twenty regular expressions
  each scan the full text.
* `MosesTokenizer.tokenize(text)` splits the text at white space first and looks every word
  up in a cache of `analyse_word` results. Real text repeats its words, so almost all of the
  regex work disappears. Why this gives the same answer is explained at `analyse_word`; the
  few situations where a word's tokens depend on its neighbour in a way a cache cannot hold
  are detected and sent to `tokenize_exact`.

The detokenizer (`detokenize`) turns tokens back into text the way the reference does.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from biogpt.tokenizer import charclasses


def _ranges(table: str) -> list[tuple[int, int]]:
    """Parse a `charclasses` table ("41-5A 61-7A AA ...") into inclusive code point ranges."""
    out = []
    for item in table.split():
        lo, _, hi = item.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


def _regex_class(table: str) -> str:
    """The body of a regex character class `[...]` holding exactly the table's characters."""
    return "".join(
        f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in _ranges(table)
    )


def _char_set(table: str) -> frozenset[str]:
    return frozenset(chr(c) for lo, hi in _ranges(table) for c in range(lo, hi + 1))


ALNUM = _regex_class(charclasses.ALNUM)
ALPHA = _regex_class(charclasses.ALPHA)
NUMBER = _regex_class(charclasses.NUMBER)
ALPHA_CHARS = _char_set(charclasses.ALPHA)
LOWER_CHARS = _char_set(charclasses.LOWER)
# One character of a CJK block (a regex: the blocks hold over 100,000 code points).
CJK_CHAR = re.compile(f"[{_regex_class(charclasses.CJK)}]")

# Abbreviations that a following full stop does not end a sentence after ("Dr. Smith" keeps
# "Dr." whole). This is the English list of the Moses distribution, without its comments.
_PREFIXES = """
    A B C D E F G H I J K L M N O P Q R S T U V W X Y Z
    Adj Adm Adv Asst Bart Bldg Brig Bros Capt Cmdr Col Comdr Con Corp Cpl DR Dr Drs Ens Gen
    Gov Hon Hr Hosp Insp Lt MM MR MRS MS Maj Messrs Mlle Mme Mr Mrs Ms Msgr Op Ord Pfc Ph Prof
    Pvt Rep Reps Res Rev Rt Sen Sens Sfc Sgt Sr St Supt Surg v vs i.e rev e.g Rs Nos Nr
    Jan Feb Mar Apr Jun Jul Aug Sep Oct Nov Dec
    """
NONBREAKING_PREFIXES = frozenset(_PREFIXES.split())
# Abbreviations that keep their full stop only before a number ("No. 5", "pp. 12").
NUMERIC_ONLY_PREFIXES = frozenset({"No", "Art", "pp"})
ASCII_DIGITS = frozenset("0123456789")


# --------------------------------------------------------------------------------------------
# The rules, in the order the reference applies them.
# --------------------------------------------------------------------------------------------

# Any run of white space (Python's `\s`: the same characters `str.split()` splits at) is one
# space, so later rules can treat " " as the only separator.
WHITESPACE = re.compile(r"\s+")
# Control characters left after that (the ones that are not white space) are deleted. This
# happens after the space collapsing, so "a \x01 b" keeps two spaces: see `analyse_word`.
CONTROL = re.compile(r"[\x00-\x1f]")
# The control characters that are not white space (\t \n \v \f \r and \x1c-\x1f are).
JUNK = re.compile(r"[\x00-\x08\x0e-\x1b]")
# Every character that is neither a letter/digit, white space, nor one of . ' ` , - stands
# alone: "(a)" -> " ( a ) ". The five exceptions get their own rules below.
PAD_SYMBOL = re.compile(rf"([^{ALNUM}\s.'`,\-])")
# Aggressive hyphen splitting: a hyphen between two letters/digits becomes the token "@-@"
# ("COVID-19" -> "COVID @-@ 19") so the detokenizer can glue it back.
HYPHEN = re.compile(rf"([{ALNUM}])-(?=[{ALNUM}])")
# Runs of two or more dots are hidden behind a letters-only marker ("..." -> "DOTDOTDOTMULTI")
# so that the full-stop rules below leave them alone; they come back at the end.
DOT_RUN = re.compile(r"\.{2,}")
DOT_MARKER = re.compile(r"(?:DOT)+MULTI")
# Commas split off unless they sit between two numbers ("5,300" stays whole): one rule for a
# comma after a non-number, one for a comma before a non-number, one for a final comma.
COMMA_AFTER_NON_NUMBER = re.compile(rf"([^{NUMBER}]),")
COMMA_BEFORE_NON_NUMBER = re.compile(rf",([^{NUMBER}])")
COMMA_AT_END = re.compile(rf"([{NUMBER}]),$")
# English apostrophes, five rules applied in turn: a quote between two non-letters stands
# alone; one after a non-letter, non-number and before a letter ("'tis") splits off; one
# after a letter and before a non-letter ("dogs' ") splits off; between two letters it
# starts the second part ("don't" -> "don 't"); after a number before "s" too ("1990's").
APOS_NONLETTER_BOTH = re.compile(rf"([^{ALPHA}])'([^{ALPHA}])")
APOS_BEFORE_LETTER = re.compile(rf"([^{ALPHA}{NUMBER}])'([{ALPHA}])")
APOS_AFTER_LETTER = re.compile(rf"([{ALPHA}])'([^{ALPHA}])")
APOS_INSIDE_WORD = re.compile(rf"([{ALPHA}])'([{ALPHA}])")
APOS_NUMBER_S = re.compile(rf"([{NUMBER}])'(s)")
# A word made only of letters and digits, which no rule changes.
PLAIN_WORD = re.compile(rf"[{ALNUM}]+")
# A text that ends in ".'" has both split off.
FINAL_DOT_QUOTE = re.compile(r"\.' ?$")
# XML escaping of the characters Moses reserves (factor separator "|", syntax brackets, ...).
# `str.translate` replaces every character once, so "&" in "&lt;" is never escaped again.
ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "|": "&#124;",
        "<": "&lt;",
        ">": "&gt;",
        "'": "&apos;",
        '"': "&quot;",
        "[": "&#91;",
        "]": "&#93;",
    }
)


def _hide_dot_runs(text: str) -> str:
    """Replace each run of k >= 2 dots by " " + "DOT" * k + "MULTI", plus " " unless the run
    ends the text (the reference's spacing, kept because the end of the text matters)."""

    def marker(m: re.Match) -> str:
        tail = " " if m.end() < len(text) else ""
        return " " + "DOT" * (m.end() - m.start()) + "MULTI" + tail

    return DOT_RUN.sub(marker, text)


def _restore_dot_runs(text: str) -> str:
    """Undo `_hide_dot_runs`. Like the reference it also turns a literal "DOTMULTI" of the
    input into dots (one dot per "DOT" after the first)."""
    return DOT_MARKER.sub(lambda m: "." * ((m.end() - m.start() - 5) // 3), text)


def _split_rules(text: str) -> str:
    """The character rules, from symbol padding to the apostrophes, on an already
    space-normalised text. Every rule is a full pass over the text, as in the reference."""
    text = PAD_SYMBOL.sub(r" \1 ", text)
    text = HYPHEN.sub(r"\1 @-@ ", text)
    text = _hide_dot_runs(text)
    text = COMMA_AFTER_NON_NUMBER.sub(r"\1 , ", text)
    text = COMMA_BEFORE_NON_NUMBER.sub(r" , \1", text)
    text = COMMA_AT_END.sub(r"\1 , ", text)
    text = APOS_NONLETTER_BOTH.sub(r"\1 ' \2", text)
    return _apostrophes_after_first(text)


def _apostrophes_after_first(text: str) -> str:
    text = APOS_BEFORE_LETTER.sub(r"\1 ' \2", text)
    text = APOS_AFTER_LETTER.sub(r"\1 ' \2", text)
    text = APOS_INSIDE_WORD.sub(r"\1 '\2", text)
    return APOS_NUMBER_S.sub(r"\1 '\2", text)


def _keeps_full_stop(prefix: str, next_token: str | None) -> bool:
    """Whether the token `prefix + "."` keeps its full stop (is an abbreviation).

    It does when the prefix is dotted and has a letter ("e.g", "U.S"), is a known
    abbreviation, is followed by a token starting in lower case (the sentence goes on), or
    is a number-only abbreviation followed by a token starting with a digit ("No. 5").
    """
    if ("." in prefix and any(c in ALPHA_CHARS for c in prefix)) or (
        prefix in NONBREAKING_PREFIXES
    ):
        return True
    if next_token is None:
        return False
    return next_token[0] in LOWER_CHARS or (
        prefix in NUMERIC_ONLY_PREFIXES and next_token[0] in ASCII_DIGITS
    )


def _full_stops(tokens: list[str], after: str | None) -> list[str]:
    """Split the final "." off every token that does not keep it (see `_keeps_full_stop`).
    `after` is the token that follows the last one (None at the end of the text)."""
    out = []
    for i, token in enumerate(tokens):
        following = tokens[i + 1] if i + 1 < len(tokens) else after
        if len(token) > 1 and token[-1] == "." and not _keeps_full_stop(token[:-1], following):
            out.append(token[:-1])
            out.append(".")
        else:
            out.append(token)
    return out


def _finish(tokens: list[str], at_end: bool) -> list[str]:
    """The last steps: split a ".'" that ends the text, bring the dot runs back, escape XML."""
    text = " ".join(tokens)
    if at_end:
        text = FINAL_DOT_QUOTE.sub(" . ' ", text)
    return _restore_dot_runs(text).translate(ESCAPES).split()


def tokenize_exact(text: str) -> list[str]:
    """Moses-tokenize `text` (English, aggressive hyphens, XML escaping) by running every
    rule over the whole text, as the reference implementation does."""
    text = WHITESPACE.sub(" ", text)
    text = CONTROL.sub("", text).strip()
    text = _split_rules(text)
    return _finish(_full_stops(text.split(), None), at_end=True)


# --------------------------------------------------------------------------------------------
# The cached path: one white-space separated word at a time.
# --------------------------------------------------------------------------------------------


class WordForm(NamedTuple):
    """The Moses tokens of one input word, with what its neighbours can change about them.

    `tokens` is the answer when the word's last token keeps a final full stop (or has none);
    `split` is the answer when that full stop must split off, or None when it never depends on
    the next word. `numeric_only` says the full stop stays before a digit ("No. 5").
    `head_quote` / `tail_quote` say that the first apostrophe rule used the space before /
    after the word (see `analyse_word`).
    """

    tokens: list[str]
    split: list[str] | None
    numeric_only: bool
    head_quote: bool
    tail_quote: bool


def analyse_word(word: str, first: bool, last: bool) -> WordForm:
    """Moses-tokenize one white-space separated `word` of a text, free of control characters.

    Why one word at a time gives the whole-text answer: run the rules on `" " + word + " "`
    (no space on a side where the text begins or ends). Every rule's match is either inside a
    word or uses the separating space as one character of context, and in the latter case
    the space is used, identically, by only the word on one side of it:

    * the symbol, hyphen, dot-run and last apostrophe rules never match a space;
    * a comma rule uses the space before a comma that starts a word, or after a comma that
      ends one, and no rule can use it from the other side at the same time;
    * the rules anchored to the text's start and end (a leading quote or comma has nothing
      before it; a final comma after a number; a final "'") only see the first / last word,
      which get their own `first` / `last` analysis;
    * the full-stop rule looks at the next word's first character, which no rule changes in
      a way that matters (a leading dot run becomes "DOT...", neither lower case nor digit),
      so the caller decides between `tokens` and `split` from the raw next word.

    The one exception is the quote between two non-letters ("1' '2"): a match ending the
    word can consume the space that a match starting the next word needs. When both happen
    (`tail_quote` of one word and `head_quote` of the next, separated by exactly one space)
    the caller must fall back to `tokenize_exact`.
    """
    if PLAIN_WORD.fullmatch(word) and "MULTI" not in word:
        # Letters and digits only: no rule touches the word (unless it spells a dot-run
        # marker), wherever it stands.
        return WordForm([word], None, False, False, False)
    text = ("" if first else " ") + word + ("" if last else " ")
    text = PAD_SYMBOL.sub(r" \1 ", text)
    # The rules below only act on their own character; skipping them when it is absent
    # changes nothing and saves most of the regex work on ordinary words.
    if "-" in text:
        text = HYPHEN.sub(r"\1 @-@ ", text)
    if ".." in text:
        text = _hide_dot_runs(text)
    if "," in text:
        text = COMMA_AFTER_NON_NUMBER.sub(r"\1 , ", text)
        text = COMMA_BEFORE_NON_NUMBER.sub(r" , \1", text)
        text = COMMA_AT_END.sub(r"\1 , ", text)
    head_quote = tail_quote = False
    if "'" in text:
        spans = [m.span() for m in APOS_NONLETTER_BOTH.finditer(text)]
        head_quote = not first and any(start == 0 for start, _ in spans)
        tail_quote = not last and any(end == len(text) for _, end in spans)
        text = APOS_NONLETTER_BOTH.sub(r"\1 ' \2", text)
        text = _apostrophes_after_first(text)
    tokens = text.split()

    # Full stops inside the word are decided here; the one on the last token needs the next
    # word, which only the caller knows (for the text's last word it is known: none).
    if last:
        return WordForm(
            _finish(_full_stops(tokens, None), at_end=True), None, False, head_quote, False
        )
    tail = tokens[-1]
    split = None
    numeric_only = False
    if len(tail) > 1 and tail[-1] == "." and not _keeps_full_stop(tail[:-1], None):
        # Before a lower-case word the stop stays; any lower-case letter stands in for it.
        body = _full_stops(tokens, "a")
        numeric_only = tail[:-1] in NUMERIC_ONLY_PREFIXES
        split = _finish(_full_stops(tokens, None), at_end=False)
    else:
        body = _full_stops(tokens, None)
    return WordForm(_finish(body, at_end=False), split, numeric_only, head_quote, tail_quote)


def keeps_full_stop_before(next_word: str, numeric_only: bool) -> bool:
    """Whether a word whose final full stop depends on its neighbour keeps it before
    `next_word` (lower-case start; or a digit after "No", "Art", "pp")."""
    c = next_word[0]
    return c in LOWER_CHARS or (numeric_only and c in ASCII_DIGITS)


def needs_exact(text: str) -> bool:
    """True for texts with control characters other than white space: deleting them can
    leave two spaces between words, which the quote rule can tell from one, so such texts
    take the exact path."""
    return JUNK.search(text) is not None


class MosesTokenizer:
    """Moses tokenization with a per-word cache (see the module docstring)."""

    def __init__(self) -> None:
        self._middle: dict[str, WordForm] = {}
        self._edge: dict[tuple[str, bool, bool], WordForm] = {}

    def word(self, word: str, first: bool, last: bool) -> WordForm:
        """The cached `analyse_word(word, first, last)`."""
        if not first and not last:
            form = self._middle.get(word)
            if form is None:
                form = self._middle[word] = analyse_word(word, False, False)
            return form
        key = (word, first, last)
        form = self._edge.get(key)
        if form is None:
            form = self._edge[key] = analyse_word(word, first, last)
        return form

    def tokenize(self, text: str) -> list[str]:
        """Moses-tokenize `text`; always equal to `tokenize_exact(text)`."""
        words = text.split()
        if not words:
            return []
        if needs_exact(text):
            return tokenize_exact(text)
        n = len(words)
        forms = [self.word(w, i == 0, i == n - 1) for i, w in enumerate(words)]
        out: list[str] = []
        for i, form in enumerate(forms):
            if form.head_quote and forms[i - 1].tail_quote:
                return tokenize_exact(text)
            if form.split is not None and not keeps_full_stop_before(
                words[i + 1], form.numeric_only
            ):
                out += form.split
            else:
                out += form.tokens
        return out


# --------------------------------------------------------------------------------------------
# Detokenization
# --------------------------------------------------------------------------------------------

# Unescaping, in the reference's order; the "&bar;"-style names come from older Moses.
UNESCAPES = [
    ("&bar;", "|"),
    ("&#124;", "|"),
    ("&lt;", "<"),
    ("&gt;", ">"),
    ("&bra;", "["),
    ("&ket;", "]"),
    ("&quot;", '"'),
    ("&apos;", "'"),
    ("&#91;", "["),
    ("&#93;", "]"),
    ("&amp;", "&"),
]
# Tokens that attach to the word after them: currency signs and opening brackets.
OPENING = re.compile(rf"^[{_regex_class(charclasses.CURRENCY)}(\[{{¿¡]+$")
# Tokens that attach to the word before them: closing punctuation.
CLOSING = re.compile(r"^[,.?!:;\\%}\])]+$")
# An English contraction ("'s", "'ll") attaches to the word before it.
CONTRACTION = re.compile(rf"^'[{_regex_class(charclasses.ALPHA_PLAIN)}]")
# Quotes alternate between opening (attach right) and closing (attach left).
QUOTE = re.compile(r"""^['"„“`]+$""")
LOW_DOUBLE_QUOTES = re.compile(r"^[„“”]+$")


def detokenize(tokens: list[str]) -> str:
    """Join Moses tokens back into English text, as the reference detokenizer does:
    glue "@-@" hyphens, unescape XML, then decide token by token whether a space goes
    before it. CJK characters join without spaces; punctuation leans left; currency signs
    and opening brackets lean right; quotes alternate between opening and closing."""
    text = " " + " ".join(tokens) + " "
    text = text.replace(" @-@ ", "-")
    for escaped, char in UNESCAPES:
        text = text.replace(escaped, char)
    words = text.split()
    quotes: dict[str, int] = {}
    out = ""
    space = " "  # what goes before the next token
    for i, word in enumerate(words):
        if CJK_CHAR.match(word):
            # A CJK word right after another joins it without a space.
            glued = i > 0 and CJK_CHAR.match(words[i - 1][-1]) is not None
            out += word if glued else space + word
            space = " "
        elif OPENING.search(word):
            out += space + word
            space = ""
        elif CLOSING.search(word) or (i > 0 and CONTRACTION.search(word)):
            out += word
            space = " "
        elif QUOTE.search(word):
            kind = '"' if LOW_DOUBLE_QUOTES.search(word) else word
            seen = quotes.get(kind, 0)
            if seen % 2 == 1:
                # A closing quote leans left.
                out += word
                space = " "
                quotes[kind] = seen + 1
            elif word == "'" and i > 0 and words[i - 1].endswith("s"):
                # The possessive of a plural ("the Joneses' house") leans left and does not
                # count as an opening quote.
                out += word
                space = " "
                quotes[kind] = seen
            else:
                out += space + word
                space = ""
                quotes[kind] = seen + 1
        else:
            out += space + word
            space = " "
    return re.sub(r" {2,}", " ", out).strip()
