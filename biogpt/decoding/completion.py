"""Text in, text out: prompts are tokenised, generated from, and the new tokens decoded.

`complete` is the batch call; `stream` yields the text of one completion as it is produced,
detokenised incrementally so that no chunk ever has to be taken back.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.output import NonFiniteLogits
from biogpt.decoding.search import generate, left_pad
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT
from biogpt.tokenizer import Tokenizer


@dataclass
class Completion:
    """One generated continuation of one prompt."""

    prompt: str
    completion: str  # the new text only
    text: str  # prompt and completion decoded together (spacing as the detokenizer joins them)
    prompt_tokens: int
    new_tokens: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length"
    score: float | None = None  # beam search: the hypothesis' length-normalised log-probability
    seconds: float = 0.0  # wall time of the generate call that produced it

    def to_dict(self) -> dict[str, object]:
        return {
            "prompt": self.prompt,
            "completion": self.completion,
            "text": self.text,
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": len(self.new_tokens),
            "finish_reason": self.finish_reason,
            "score": self.score,
            "seconds": round(self.seconds, 4),
        }


def encode_prompts(
    tokenizer: Tokenizer, prompts: Sequence[str], max_length: int, truncate: bool, first: int = 0
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-padded ids (B, T) and mask (B, T) of `prompts`, each at most `max_length` tokens.

    A longer prompt is an error unless `truncate`, which keeps its leading `</s>` and its
    last `max_length - 1` tokens (the end of a prompt matters most for what comes next).
    Errors count the prompts from `first` (the batch's place in the caller's list).
    """
    rows: list[list[int]] = []
    for i, prompt in enumerate(prompts, first):
        ids = tokenizer.encode(prompt)
        if len(ids) > max_length:
            if not truncate:
                raise BioGPTError(
                    f"prompt {i} has {len(ids)} tokens but at most {max_length} fit with "
                    f"max_new_tokens; shorten it, lower max_new_tokens, or allow truncation"
                )
            ids = ids[:1] + ids[len(ids) - max_length + 1 :]
        rows.append(ids)
    input_ids, mask = left_pad(rows, tokenizer.pad_id)
    return input_ids, mask, rows


@dataclass
class StopStrings:
    """A stop criterion: a row ends once its new text contains one of `strings`.

    Only the last tokens of a row are decoded each step: enough to hold the longest stop
    string with room for the detokenizer's joins.
    """

    tokenizer: Tokenizer
    strings: Sequence[str]
    prompt_length: int
    window: int = field(init=False)

    def __post_init__(self) -> None:
        if any(not s for s in self.strings):
            raise BioGPTError("stop strings must not be empty")
        self.window = max(len(s) for s in self.strings) + 8

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        new = rows[:, self.prompt_length :].tolist()
        hits = [
            any(s in self.tokenizer.decode(r[-self.window :]) for s in self.strings) for r in new
        ]
        return torch.tensor(hits, dtype=torch.bool, device=rows.device)


def _cut_at_stop(text: str, strings: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in strings if s in text]
    return (text[: min(cuts)].rstrip(), True) if cuts else (text, False)


def complete(
    model: BioGPT,
    tokenizer: Tokenizer,
    prompts: str | Sequence[str],
    stop: Sequence[str] = (),
    truncate: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    **options,
) -> list[Completion]:
    """Generate from each prompt; returns `num_return_sequences` completions per prompt,
    those of one prompt next to each other. Options as in `GenerationConfig`. Errors name
    a prompt by its index in `prompts` (`NonFiniteLogits.index` too)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        return []
    config = GenerationConfig.from_options(
        None, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, **options
    )
    config.validate()
    limit = model.config.max_positions - config.max_new_tokens
    if limit < 1:
        raise BioGPTError(
            f"max_new_tokens {config.max_new_tokens} leaves no room for a prompt in the "
            f"model's {model.config.max_positions} positions"
        )
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generating", unit="batch")
    results: list[Completion] = []
    for start in batches:
        chunk = prompts[start : start + batch_size]
        input_ids, mask, rows = encode_prompts(tokenizer, chunk, limit, truncate, start)
        criterion = StopStrings(tokenizer, stop, input_ids.shape[1]) if stop else None
        began = time.perf_counter()
        try:
            out = generate(model, input_ids, mask, config, stop=criterion)
        except NonFiniteLogits as err:  # counted within the batch: count within `prompts`
            raise err.renumbered(start + err.index) from None
        seconds = time.perf_counter() - began
        n_ret = config.num_return_sequences
        for j, seq in enumerate(out.sequences.tolist()):
            i = j // n_ret
            new = seq[out.prompt_length :]
            finish = "length"
            if tokenizer.eos_id in new:
                new = new[: new.index(tokenizer.eos_id)]
                finish = "eos"
            while new and new[-1] == tokenizer.pad_id:  # padding after a stop-string ending
                new.pop()
            text, stopped = _cut_at_stop(tokenizer.decode(new), stop)
            full = tokenizer.decode(rows[i] + new)
            if stopped:
                finish = "stop"
                full, _ = _cut_at_stop(full, stop)
            score = float(out.scores[j]) if config.num_beams > 1 else None
            results.append(
                Completion(chunk[i], text, full, len(rows[i]), new, finish, score, seconds)
            )
    return results


class TextStream:
    """Turns token ids arriving one by one into text chunks that never change afterwards.

    The text of everything so far is decoded at each token, and the last word is held back:
    the next token may still continue it (a BPE piece without its word end, a `@-@` that
    joins two words, punctuation the detokenizer attaches to it).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token: int) -> str:
        """Add one token; the text that has become final ("" if none)."""
        if token in (self.tokenizer.eos_id, self.tokenizer.pad_id):
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        stable = text[: max(text.rfind(" "), 0)]
        if len(stable) > len(self.emitted) and stable.startswith(self.emitted):
            new, self.emitted = stable[len(self.emitted) :], stable
            return new
        return ""

    def finish(self) -> str:
        """The rest of the text once the last token is in."""
        text = self.tokenizer.decode(self.ids)
        if not text.startswith(self.emitted):  # a join reached back past a held word
            raise BioGPTError("internal error: streamed text diverged from the decoded text")
        rest, self.emitted = text[len(self.emitted) :], text
        return rest


def stream(
    model: BioGPT, tokenizer: Tokenizer, prompt: str, truncate: bool = False, **options
) -> Iterator[str]:
    """Yield the completion of `prompt` in chunks as it is generated (greedy or sampling).

    Generation runs in a worker thread; the chunks joined equal `complete(...)[0].completion`
    for the same options (without stop strings).
    """
    config = GenerationConfig.from_options(
        None, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id, **options
    )
    config.validate()
    input_ids, mask, _ = encode_prompts(
        tokenizer, [prompt], model.config.max_positions - config.max_new_tokens, truncate
    )
    chunks: queue.Queue[str | BaseException | None] = queue.Queue()
    text = TextStream(tokenizer)

    def on_token(token: int) -> None:
        piece = text.push(token)
        if piece:
            chunks.put(piece)

    def work() -> None:
        try:
            generate(model, input_ids, mask, config, on_token=on_token)
            chunks.put(text.finish())
            chunks.put(None)
        except BaseException as err:  # handed to the consumer, raised there
            chunks.put(err)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    while (item := chunks.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        if item:
            yield item
    worker.join()
