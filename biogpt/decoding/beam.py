"""Beam search on a `DecodingBatch`, with transformers' semantics: a hypothesis scores its
summed log-probabilities divided by (new tokens) ** length_penalty; 2 * num_beams
candidates are kept a step, so that num_beams survive even if num_beams of them end; an
item stops as `early_stopping` says (True: once num_beams hypotheses are done; False: once
no running beam can beat the worst finished one at its current length; "never": only at
max length).

What the engine adds: the prompt runs once per item and its cache rows are copied to every
beam; an item that is decided leaves the batch; and when beams take each other's places,
only the slots from where their tokens part are copied (the fused step computes every row
as alone, so beams with a common history hold the same keys and values).

Shapes: b items still open, k beams each, L prompt + new tokens, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.logits import process_logits
from biogpt.decoding.output import GenerationOutput, NonFiniteLogits, StopCriterion, non_finite
from biogpt.decoding.steps import DecodingBatch
from biogpt.model import BioGPT

IMPOSSIBLE = -1.0e9  # transformers' score of an empty slot; kept so that ties resolve alike


@dataclass
class Beams:
    """Beam-search state of the batch items still being decided."""

    items: Tensor  # (b,) which input rows these are
    tokens: Tensor  # (b, k, L) running hypotheses
    scores: Tensor  # (b, k) their summed log-probabilities, best first
    done_tokens: Tensor  # (b, k, L) finished hypotheses
    done_scores: Tensor  # (b, k) their length-normalised scores (IMPOSSIBLE for an empty slot)
    done_full: Tensor  # (b, k) whether each slot holds a finished hypothesis
    done_length: Tensor  # (b, k) new tokens in each finished hypothesis
    open: Tensor  # (b,) False once no running beam can improve the finished ones

    @classmethod
    def start(cls, input_ids: Tensor, k: int, total: int, pad: int) -> Beams:
        """Every beam of an item starts as its prompt; only the first beam is live."""
        batch, prompt_len = input_ids.shape
        device = input_ids.device
        tokens = torch.full((batch, k, total), pad, dtype=torch.long, device=device)
        tokens[:, :, :prompt_len] = input_ids[:, None]
        scores = torch.zeros(batch, k, dtype=torch.float32, device=device)
        scores[:, 1:] = IMPOSSIBLE
        return cls(
            items=torch.arange(batch, device=device),
            tokens=tokens,
            scores=scores,
            done_tokens=tokens.clone(),
            done_scores=torch.full((batch, k), IMPOSSIBLE, dtype=torch.float32, device=device),
            done_full=torch.zeros(batch, k, dtype=torch.bool, device=device),
            done_length=torch.zeros(batch, k, dtype=torch.long, device=device),
            open=torch.ones(batch, dtype=torch.bool, device=device),
        )

    def select(self, keep: Tensor) -> Beams:
        return Beams(*(getattr(self, f.name)[keep] for f in fields(self)))


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[i, index[i, j]] for x (b, m, ...) and index (b, n): (b, n, ...)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


class BeamSearch:
    """One call's beam search: `run` decodes, one `_step` per new token."""

    def __init__(
        self,
        model: BioGPT,
        input_ids: Tensor,
        real: Tensor,
        config: GenerationConfig,
        stop: StopCriterion | None,
    ) -> None:
        self.config, self.stop, self.real = config, stop, real
        self.items, self.prompt_len = input_ids.shape
        self.k = config.num_beams
        self.total = self.prompt_len + config.max_new_tokens
        self.vocab = model.config.vocab_size
        self.device = input_ids.device
        self.state = Beams.start(input_ids, self.k, self.total, config.pad_token_id)
        self.final = self.state.select(torch.arange(self.items, device=self.device))
        self.cand = 2 * self.k  # candidates kept a step
        self.may_finish = torch.arange(self.cand, device=self.device) < self.k  # best k only
        self.batch = DecodingBatch(model, expected_rows=self.items * self.k)
        self.input_ids = input_ids

    def run(self) -> GenerationOutput:
        with self.batch:  # gives the caller's thread count back at the end
            # The prompt runs once per item, then its cache rows are copied to every beam.
            logits = self.batch.add(self.input_ids, self.real, budget=self.config.max_new_tokens)
            logits = logits.repeat_interleave(self.k, 0)
            rows = torch.arange(self.items, device=self.device).repeat_interleave(self.k)
            self.batch.reorder(rows)
            for step in range(self.config.max_new_tokens):
                next_logits = self._step(step, logits)
                if next_logits is None:
                    break
                logits = next_logits
        return self._output()

    def _step(self, step: int, logits: Tensor) -> Tensor | None:
        """Choose each item's next beams from `logits` (b * k, V); decided items leave.
        The next step's logits, or None when every item is decided."""
        state, k, cur = self.state, self.k, self.prompt_len + step
        if (bad := non_finite(logits)) is not None:
            raise NonFiniteLogits(bad[1], f"step {step + 1}", int(state.items[bad[0] // k]))
        b = state.items.shape[0]
        last = step + 1 == self.config.max_new_tokens
        beam_tokens = state.tokens[:, :, :cur].reshape(b * k, cur)  # the cache's rows, in order
        beam_real = torch.cat(
            [
                self.real[state.items].repeat_interleave(k, 0),
                beam_tokens.new_ones(b * k, step, dtype=torch.bool),
            ],
            dim=1,
        )
        logp = process_logits(logits.log_softmax(dim=-1), beam_tokens, beam_real, step, self.config)
        total_logp = (logp.view(b, k, self.vocab) + state.scores[:, :, None]).view(b, -1)

        cand_scores, cand_index = torch.topk(total_logp, self.cand, dim=1)  # (b, 2k), best first
        parent = cand_index // self.vocab
        cand_seqs = _gather_rows(state.tokens, parent)  # (b, 2k, L), a copy
        cand_seqs[:, :, cur] = cand_index % self.vocab
        ends = cand_seqs[:, :, cur] == self.config.eos_token_id
        if self.stop is not None:
            flat = cand_seqs[:, :, : cur + 1].reshape(b * self.cand, cur + 1)
            ends |= self.stop(flat).view(b, self.cand)
        if last:
            ends[:] = True

        # Running beams for the next step: the best k candidates that did not end.
        live_scores = cand_scores + ends.float() * IMPOSSIBLE
        live = torch.topk(live_scores, k, dim=1).indices  # (b, k)
        next_parent = parent.gather(1, live)
        self._finish(step, ends, cand_scores, cand_seqs)
        state.tokens = _gather_rows(cand_seqs, live)
        state.scores = live_scores.gather(1, live)

        decided = self._decided(step)
        rows = torch.arange(b, device=self.device)[:, None] * k + next_parent  # cache rows
        if bool(decided.any()):
            gone = state.items[decided]
            for name in ("done_tokens", "done_scores", "done_length"):
                getattr(self.final, name)[gone] = getattr(state, name)[decided]
            keep = (~decided).nonzero()[:, 0]
            if keep.numel() == 0:
                return None
            self.state, rows = state.select(keep), rows[keep]
        rows = rows.reshape(-1)
        self._reorder_cache(rows, beam_tokens, step)
        return self.batch.step(self.state.tokens[:, :, cur].reshape(-1))

    def _finish(self, step: int, ends: Tensor, cand_scores: Tensor, cand_seqs: Tensor) -> None:
        """Ended candidates among the best k join the finished set if they beat its members.
        (Items whose set is closed have already left the batch.)"""
        state, k = self.state, self.k
        just_done = ends & self.may_finish[None, :]
        normalised = (
            cand_scores / float(step + 1) ** self.config.length_penalty
            + (~just_done).float() * IMPOSSIBLE
        )
        merged = torch.cat([state.done_scores, normalised], dim=1)
        best = torch.topk(merged, k, dim=1).indices
        state.done_tokens = _gather_rows(torch.cat([state.done_tokens, cand_seqs], dim=1), best)
        state.done_scores = merged.gather(1, best)
        state.done_full = torch.cat([state.done_full, just_done], dim=1).gather(1, best)
        lengths = torch.full_like(just_done, step + 1, dtype=torch.long)
        state.done_length = torch.cat([state.done_length, lengths], dim=1).gather(1, best)

    def _decided(self, step: int) -> Tensor:
        """Which items are decided (b,): none of their running beams can still beat the
        worst finished one (transformers' heuristic: the best running score, normalised at
        the current length unless "never" says at max length)."""
        state, config = self.state, self.config
        lp = config.length_penalty
        best_length = step + 1
        if config.early_stopping == "never" and lp > 0:
            best_length = config.max_new_tokens
        best_possible = state.scores[:, 0] / float(best_length) ** lp
        full = state.done_full.all(dim=1)
        worst_done = torch.where(full, state.done_scores.min(dim=1).values, IMPOSSIBLE)
        state.open &= best_possible > worst_done
        decided = ~state.open
        if config.early_stopping is True:
            decided |= full
        if step + 1 == config.max_new_tokens:
            decided[:] = True
        return decided

    def _reorder_cache(self, rows: Tensor, beam_tokens: Tensor, step: int) -> None:
        """Each beam takes the cache row of its parent `rows` (b * k,). Where the step
        computes rows as alone, a row that takes another's place copies only the slots from
        where their tokens part; the prompt is the same in every beam of an item."""
        same = None
        if self.batch.rows_independent and rows.numel() == beam_tokens.shape[0] and step > 0:
            generated = beam_tokens[:, self.prompt_len :]
            differ = generated[rows] != generated
            parted = torch.where(differ.any(dim=1), differ.int().argmax(dim=1), step)
            same = self.prompt_len + parted
        self.batch.reorder(rows, start=self.prompt_len, same=same)

    def _output(self) -> GenerationOutput:
        """The best num_return_sequences finished hypotheses of each item, as wide as the
        longest of them (as in transformers)."""
        n_ret = self.config.num_return_sequences
        final = self.final
        out_tokens = final.done_tokens[:, :n_ret].reshape(self.items * n_ret, self.total)
        width = self.prompt_len + int(final.done_length[:, :n_ret].max())
        scores = final.done_scores[:, :n_ret].reshape(-1)
        return GenerationOutput(out_tokens[:, :width], scores, self.prompt_len)


def beam_search(
    model: BioGPT,
    input_ids: Tensor,
    real: Tensor,
    config: GenerationConfig,
    stop: StopCriterion | None,
) -> GenerationOutput:
    """Beam search over the prompts `input_ids` (batch, T) whose real tokens `real` marks."""
    return BeamSearch(model, input_ids, real, config, stop).run()
