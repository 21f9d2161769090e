"""Per-token log-likelihood and perplexity of a text under a model."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from biogpt.decoding.output import NonFiniteLogits, non_finite
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT
from biogpt.tokenizer import Tokenizer


@dataclass
class TextScore:
    """Scores of every token after the leading `</s>`: log p(token | everything before it)."""

    ids: list[int]
    pieces: list[str]
    logprobs: list[float]

    @property
    def total(self) -> float:
        return sum(self.logprobs)

    @property
    def perplexity(self) -> float:
        """exp of the mean negative log-likelihood per token."""
        return math.exp(-self.total / len(self.logprobs)) if self.logprobs else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "tokens": [
                {"id": i, "piece": p, "logprob": lp}
                for i, p, lp in zip(self.ids, self.pieces, self.logprobs, strict=True)
            ],
            "num_tokens": len(self.logprobs),
            "total_logprob": self.total,
            "perplexity": self.perplexity,
        }


@torch.inference_mode()
def token_logprobs(model: BioGPT, ids: list[int], stride: int | None = None) -> list[float]:
    """log p(ids[t] | ids[:t]) for t = 1..len(ids)-1.

    A sequence longer than the model's positions is scored in overlapping windows: each
    window after the first re-reads `max_positions - stride` tokens of context and scores
    only the `stride` new ones (default: half the positions), so every token keeps a long
    left context. Logits that hold NaN or inf raise `NonFiniteLogits` naming the token
    (ids[1] is token 1).
    """
    window = model.config.max_positions
    stride = stride or max(1, window // 2)
    if not 0 < stride < window:
        raise BioGPTError(f"stride must be in 1..{window - 1}, got {stride}")
    scores: list[float] = []
    start = 0  # first token of the window
    scored = 1  # ids[:scored] already have scores (the first token has none)
    while scored < len(ids):
        end = min(len(ids), start + window)
        chunk = torch.tensor([ids[start:end]], device=model.device)
        logits = model(chunk).logits[0].float()  # (T, V)
        # Row t predicts ids[start + t + 1]; the rows still to score start at ids[scored].
        if (bad := non_finite(logits[scored - start - 1 : -1])) is not None:
            raise NonFiniteLogits(bad[1], f"token {scored + bad[0]}", 0, "text")
        logp = torch.log_softmax(logits[:-1], dim=-1)
        targets = chunk[0, 1:]
        per_token = logp.gather(1, targets[:, None])[:, 0].tolist()
        scores.extend(per_token[scored - start - 1 :])
        scored = end
        start = min(end - 1, end - (window - stride))  # keep at least one token of context
    return scores


def score_text(model: BioGPT, tokenizer: Tokenizer, text: str) -> TextScore:
    """Score `text` (tokenised with the leading `</s>` the model was trained with)."""
    ids = tokenizer.encode(text)
    if len(ids) < 2:
        raise BioGPTError("nothing to score: the text has no tokens")
    if max(ids) >= model.config.vocab_size:
        raise BioGPTError(
            f"the tokenizer produced id {max(ids)} but the model has {model.config.vocab_size} rows"
        )
    logprobs = token_logprobs(model, ids)
    pieces = [tokenizer.id_to_token(i) for i in ids[1:]]
    return TextScore(ids=ids[1:], pieces=pieces, logprobs=logprobs)
