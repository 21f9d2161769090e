"""The text of one generated row as it grows, with stop strings held back.

`biogpt.decoding.completion.TextStream` already turns token ids into text chunks that never
change afterwards. A server streaming a row that has stop strings must also never send text
that the stop string will cut away, so `RowText` holds back the last `len(longest stop) - 1`
characters and any white space at the end (the final cut strips trailing white space, as
`complete` does). The text a client assembles from the chunks is then always a prefix of,
and in the end equal to, the `completion` that `complete` returns for the same tokens.

Why holding back that much is enough: a stop string that starts before the held-back tail
would end inside the text already seen, so it would have been found there.
"""

from __future__ import annotations

from collections.abc import Sequence

from biogpt.decoding.completion import TextStream
from biogpt.tokenizer import Tokenizer


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` up to the first stop string, trailing white space stripped, and whether one
    was found; what `complete` does to a completion's text."""
    cuts = [text.find(s) for s in stop if s in text]
    return (text[: min(cuts)].rstrip(), True) if cuts else (text, False)


class RowText:
    """Token ids in, text chunks out; `finish` gives the rest once the row has ended."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.stream = TextStream(tokenizer)
        self.stop = tuple(stop)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.sent = ""  # what the chunks so far add up to

    def push(self, token: int) -> str:
        """Add one token; the text that may be sent now ("" if none)."""
        self.stream.push(token)
        text, stopped = cut_at_stop(self.stream.emitted, self.stop)
        if not stopped:
            text = text[: len(text) - self.hold].rstrip() if self.stop else text
        return self._release(text)

    def finish(self) -> str:
        """The rest of the text after the last token: the final text is then `self.sent`."""
        self.stream.finish()
        text, _ = cut_at_stop(self.stream.emitted, self.stop)
        return self._release(text)

    def _release(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent) :], text
        return new
