"""Decoding: greedy, sampling and beam search over an explicit, preallocated KV cache.

The semantics follow transformers' `generate()` (which matches fairseq for the settings the
BioGPT release used), so numbers stay comparable with published ones:
- logits are processed in this order: repetition penalty, n-gram blocking, minimum length,
  then, when sampling, temperature, top-k and top-p;
- beam search scores a hypothesis by its summed log-probabilities divided by
  (number of new tokens) ** length_penalty, keeps 2 * num_beams candidates a step, and stops
  as `early_stopping` says (True: once num_beams hypotheses are done; False: once no running
  beam can beat the worst finished one at its current length; "never": only at max length).

What differs from transformers is the engine: the cache is allocated once per call, rows
that finish (greedy, sampling) or batch items that are decided (beam search) leave the batch
so they stop costing work, and beam reordering copies only the generated part of the cache
(the prompt part is the same in every beam of an item).

Padding: prompts may be left- or right-padded; `attention_mask` says which tokens are real.
Each row decodes exactly as it would alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from biogpt.cache import KVCache
from biogpt.cpu import gemv
from biogpt.cpu.fused import FusedStep
from biogpt.decoding.config import GenerationConfig
from biogpt.decoding.logits import (
    block_repeated_ngrams,
    penalize_repetitions,
    top_k_filter,
    top_p_filter,
)
from biogpt.decoding.static_step import StaticStep
from biogpt.errors import BioGPTError
from biogpt.model import BioGPT

# A stop criterion sees the token rows (N, L) after a step and says which rows must end (N,).
StopCriterion = Callable[[Tensor], Tensor]
# A streamer receives the new token of row 0 after every step.
TokenCallback = Callable[[int], None]


@dataclass
class GenerationOutput:
    """`sequences` (N, L): prompts as given followed by the new tokens, `pad_token_id` after
    a row ends. N = batch * num_return_sequences, the returns of one prompt next to each other.
    `scores`: log-probability of each new token under the processed distribution (greedy and
    sampling, (N, new)) or the length-normalised score of each hypothesis (beam search, (N,))."""

    sequences: Tensor
    scores: Tensor
    prompt_length: int


# --- Logits processing (the rules themselves are in biogpt/decoding/logits.py) ------------------------


def process_logits(
    logits: Tensor, tokens: Tensor, real: Tensor, new_tokens: int, config: GenerationConfig
) -> Tensor:
    """Apply every rule of `config` to next-token scores (N, V); `new_tokens` made so far."""
    if config.repetition_penalty != 1.0:
        logits = penalize_repetitions(logits, tokens, real, config.repetition_penalty)
    if config.no_repeat_ngram_size:
        logits = block_repeated_ngrams(logits, tokens, real, config.no_repeat_ngram_size)
    if new_tokens < config.min_new_tokens:
        logits = logits.clone()
        logits[:, config.eos_token_id] = float("-inf")
    return logits


def sampling_filter(logits: Tensor, config: GenerationConfig) -> Tensor:
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k:
        logits = top_k_filter(logits, config.top_k)
    if config.top_p < 1.0:
        logits = top_p_filter(logits, config.top_p)
    return logits


# --- Model steps ----------------------------------------------------------------------------


def prefill(model: BioGPT, input_ids: Tensor, real: Tensor, cache: KVCache) -> Tensor:
    """Run the prompts through the model into `cache`; next-token logits (N, V) in fp32.

    The logits come from each row's last real token, wherever padding puts it, and only
    those rows of hidden states go through the output projection.
    """
    mask = None if bool(real.all()) else real
    hidden, _ = model.biogpt(input_ids, mask, None, cache)  # (N, T, H)
    index = torch.arange(input_ids.shape[1], device=input_ids.device)
    last = (index * real).argmax(dim=1)  # rightmost real token of each row
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return model.output_projection(hidden[rows, last]).float()


def decode_step(model: BioGPT, tokens: Tensor, cache: KVCache) -> Tensor:
    """Feed one new (real) token per row (N,); next-token logits (N, V) in fp32."""
    hidden, _ = model.biogpt(tokens[:, None], None, None, cache)  # (N, 1, H)
    return model.output_projection(hidden[:, 0]).float()


def row_stepper(model: BioGPT) -> Callable[[int, KVCache], Tensor]:
    """The step decoding takes for a single row: `step(token, cache)` feeds one token and
    gives next-token logits (1, V) in fp32. The whole step in one compiled call where the
    model allows it (`biogpt.cpu.fused`), `decode_step` otherwise."""
    fused = FusedStep.build(model)
    if fused is not None:
        return fused
    return lambda token, cache: decode_step(
        model, torch.tensor([token], device=model.device), cache
    )


# --- Greedy and sampling --------------------------------------------------------------------


def _greedy_or_sample(
    model: BioGPT,
    input_ids: Tensor,
    real: Tensor,
    config: GenerationConfig,
    stop: StopCriterion | None,
    on_token: TokenCallback | None,
) -> GenerationOutput:
    n, prompt_len = input_ids.shape
    total = prompt_len + config.max_new_tokens
    device = input_ids.device
    tokens = torch.full((n, total), config.pad_token_id, dtype=torch.long, device=device)
    tokens[:, :prompt_len] = input_ids
    is_real = torch.zeros(n, total, dtype=torch.bool, device=device)
    is_real[:, :prompt_len] = real
    logprobs = torch.zeros(n, config.max_new_tokens, dtype=torch.float32, device=device)
    generator = None
    if config.do_sample:
        generator = torch.Generator(device=device)
        generator.manual_seed(config.seed if config.seed is not None else torch.seed())

    cache = model.new_cache(n, total - 1)  # the last token is never fed back
    logits = prefill(model, input_ids, real, cache)
    # Up to 8 rows on the CPU: the whole step in one compiled call where the model allows
    # it (elsewhere, and on GPUs, the op-by-op step, which keeps the tokens on the device).
    # With compile_step, the fixed-shape step: finished rows then stay in the batch, unread.
    static = StaticStep(model, cache) if config.compile_step else None
    fused = FusedStep.build(model, rows=n) if static is None else None
    active = torch.arange(n, device=device)  # rows still decoding, in cache order
    steps = 0
    for step in range(config.max_new_tokens):
        cur = prompt_len + step
        rows = tokens[active, :cur]
        scores = process_logits(logits, rows, is_real[active, :cur], step, config)
        if config.do_sample:
            scores = sampling_filter(scores, config)
            chosen = torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]
        else:
            chosen = scores.argmax(dim=-1)
        logprobs[active, step] = scores.log_softmax(dim=-1).gather(1, chosen[:, None])[:, 0]
        tokens[active, cur] = chosen
        is_real[active, cur] = True
        steps = step + 1
        if on_token is not None and active[0] == 0:
            on_token(int(chosen[0]))
        done = chosen == config.eos_token_id
        if stop is not None:
            done |= stop(tokens[active, : cur + 1])
        if step + 1 == config.max_new_tokens:
            break
        if bool(done.any()):
            keep = (~done).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            active, chosen = active[keep], chosen[keep]
            if static is None:
                cache.reorder(keep)
        if fused is not None:
            logits = fused(chosen, cache)
        elif static is not None:
            feed = torch.full((n,), config.pad_token_id, dtype=torch.long, device=device)
            feed[active] = chosen
            logits = static(feed)[active]  # the cache's rows are the input's rows
        else:
            logits = decode_step(model, chosen, cache)
    return GenerationOutput(tokens[:, : prompt_len + steps], logprobs[:, :steps], prompt_len)


# --- Beam search ----------------------------------------------------------------------------


@dataclass
class _Beams:
    """Beam-search state of the batch items still being decided (b items, k beams each)."""

    items: Tensor  # (b,) which input rows these are
    tokens: Tensor  # (b, k, L) running hypotheses
    scores: Tensor  # (b, k) their summed log-probabilities, best first
    done_tokens: Tensor  # (b, k, L) finished hypotheses
    done_scores: Tensor  # (b, k) their length-normalised scores (-1e9 for an empty slot)
    done_full: Tensor  # (b, k) whether each slot holds a finished hypothesis
    done_length: Tensor  # (b, k) new tokens in each finished hypothesis
    open: Tensor  # (b,) False once no running beam can improve the finished ones

    def select(self, keep: Tensor) -> _Beams:
        return _Beams(*(getattr(self, f.name)[keep] for f in fields(self)))


def _gather_rows(x: Tensor, index: Tensor) -> Tensor:
    """x[i, index[i, j]] for x (b, m, ...) and index (b, n): (b, n, ...)."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


def _beam_search(
    model: BioGPT,
    input_ids: Tensor,
    real: Tensor,
    config: GenerationConfig,
    stop: StopCriterion | None,
) -> GenerationOutput:
    batch, prompt_len = input_ids.shape
    k, device = config.num_beams, input_ids.device
    total = prompt_len + config.max_new_tokens
    vocab = model.config.vocab_size
    neg = -1.0e9  # transformers' "impossible" score; kept so that ties resolve the same way
    lp = config.length_penalty

    # Every beam of an item starts as its prompt; only the first beam is live at first.
    tokens = torch.full((batch, k, total), config.pad_token_id, dtype=torch.long, device=device)
    tokens[:, :, :prompt_len] = input_ids[:, None]
    scores = torch.zeros(batch, k, dtype=torch.float32, device=device)
    scores[:, 1:] = neg
    state = _Beams(
        items=torch.arange(batch, device=device),
        tokens=tokens,
        scores=scores,
        done_tokens=tokens.clone(),
        done_scores=torch.full((batch, k), neg, dtype=torch.float32, device=device),
        done_full=torch.zeros(batch, k, dtype=torch.bool, device=device),
        done_length=torch.zeros(batch, k, dtype=torch.long, device=device),
        open=torch.ones(batch, dtype=torch.bool, device=device),
    )
    final = state.select(torch.arange(batch, device=device))  # filled as items are decided

    # The prompt is run once per item, then its cache rows are copied to every beam.
    cache = model.new_cache(batch, total - 1)
    logits = prefill(model, input_ids, real, cache).repeat_interleave(k, 0)
    cache.reorder(torch.arange(batch, device=device).repeat_interleave(k))
    # Up to 8 beams in all: every step in one compiled call where the model allows it.
    fused = FusedStep.build(model, rows=batch * k)
    cand = 2 * k  # candidates kept a step: enough that k survive even if k of them end
    may_finish = torch.arange(cand, device=device) < k  # only the best k may be finalised

    for step in range(config.max_new_tokens):
        cur = prompt_len + step
        b = state.items.shape[0]
        flat_tokens = state.tokens[:, :, :cur].reshape(b * k, cur)  # the cache's rows, in order
        flat_real = torch.cat(
            [
                real[state.items].repeat_interleave(k, 0),
                flat_tokens.new_ones(b * k, step, dtype=torch.bool),
            ],
            dim=1,
        )
        logp = process_logits(logits.log_softmax(dim=-1), flat_tokens, flat_real, step, config)
        total_logp = (logp.view(b, k, vocab) + state.scores[:, :, None]).view(b, k * vocab)

        cand_scores, cand_index = torch.topk(total_logp, cand, dim=1)  # (b, 2k), best first
        parent = cand_index // vocab
        cand_seqs = _gather_rows(state.tokens, parent)  # (b, 2k, L), a copy
        cand_seqs[:, :, cur] = cand_index % vocab
        ends = cand_seqs[:, :, cur] == config.eos_token_id
        if stop is not None:
            ends |= stop(cand_seqs[:, :, : cur + 1].reshape(b * cand, cur + 1)).view(b, cand)
        if step + 1 == config.max_new_tokens:
            ends[:] = True

        # Running beams for the next step: the best k candidates that did not end.
        live_scores = cand_scores + ends.float() * neg
        live = torch.topk(live_scores, k, dim=1).indices  # (b, k)
        next_parent = parent.gather(1, live)

        # Ended candidates among the best k join the finished set if they beat its members.
        # (Items whose set is closed have already left the batch.)
        just_done = ends & may_finish[None, :]
        normalised = cand_scores / float(step + 1) ** lp + (~just_done).float() * neg
        merged = torch.cat([state.done_scores, normalised], dim=1)
        best = torch.topk(merged, k, dim=1).indices
        state.done_tokens = _gather_rows(torch.cat([state.done_tokens, cand_seqs], dim=1), best)
        state.done_scores = merged.gather(1, best)
        state.done_full = torch.cat([state.done_full, just_done], dim=1).gather(1, best)
        lengths = torch.full_like(just_done, step + 1, dtype=torch.long)
        state.done_length = torch.cat([state.done_length, lengths], dim=1).gather(1, best)
        state.tokens = _gather_rows(cand_seqs, live)
        state.scores = live_scores.gather(1, live)

        # Can a running beam still beat the worst finished one? (transformers' heuristic:
        # the best running score, normalised at the current length unless "never" says max.)
        best_length = step + 1
        if config.early_stopping == "never" and lp > 0:
            best_length = config.max_new_tokens
        best_possible = state.scores[:, 0] / float(best_length) ** lp
        full = state.done_full.all(dim=1)
        worst_done = torch.where(full, state.done_scores.min(dim=1).values, neg)
        state.open &= best_possible > worst_done
        decided = ~state.open
        if config.early_stopping is True:
            decided |= full
        if step + 1 == config.max_new_tokens:
            decided[:] = True

        # Decided items leave the batch; their finished hypotheses are the answer.
        rows = torch.arange(b, device=device)[:, None] * k + next_parent  # cache rows to keep
        if bool(decided.any()):
            gone = state.items[decided]
            for f in ("done_tokens", "done_scores", "done_length"):
                getattr(final, f)[gone] = getattr(state, f)[decided]
            keep = (~decided).nonzero()[:, 0]
            if keep.numel() == 0:
                break
            state, rows = state.select(keep), rows[keep]
        rows = rows.reshape(-1)
        same = None
        if fused is not None and rows.numel() == flat_tokens.shape[0] and step > 0:
            # The fused step's rows do not depend on one another, so two beams with the same
            # tokens hold the same keys and values: a row that takes another's place needs
            # only the slots from where their tokens part.
            differ = flat_tokens[rows, prompt_len:] != flat_tokens[:, prompt_len:]
            parted = torch.where(differ.any(dim=1), differ.int().argmax(dim=1), step)
            same = prompt_len + parted
        cache.reorder(rows, start=prompt_len, same=same)
        feed = state.tokens[:, :, cur].reshape(-1)
        logits = decode_step(model, feed, cache) if fused is None else fused(feed, cache)

    # The output is as wide as the longest returned hypothesis, as in transformers.
    n_ret = config.num_return_sequences
    out_tokens = final.done_tokens[:, :n_ret].reshape(batch * n_ret, total)
    width = prompt_len + int(final.done_length[:, :n_ret].max())
    return GenerationOutput(
        out_tokens[:, :width], final.done_scores[:, :n_ret].reshape(-1), prompt_len
    )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Token rows of different lengths as left-padded ids (B, T) and attention mask (B, T)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


# --- Entry points -----------------------------------------------------------------------------


@torch.inference_mode()
def generate(
    model: BioGPT,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    config: GenerationConfig | None = None,
    stop: StopCriterion | None = None,
    on_token: TokenCallback | None = None,
    **options,
) -> GenerationOutput:
    """Continue each prompt row of `input_ids` (B, T); see `GenerationConfig` for options.

    `stop(rows)` may end rows early (stop strings); `on_token(id)` receives each new token of
    row 0 as it is chosen (streaming; greedy and sampling only).
    """
    config = GenerationConfig.from_options(config, **options)
    config.validate()
    if input_ids.dim() != 2:
        raise BioGPTError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    if input_ids.shape[1] == 0:
        raise BioGPTError("empty prompt: input_ids has no tokens (start prompts with </s> = 2)")
    if config.compile_step:
        model.unpack()  # torch.compile lowers plain layers; it cannot see into packed ones
    elif not model.training:
        # Linear layers on the CPU's fastest kernel for the number of rows each decoding
        # step feeds (a no-op elsewhere): the compiled gemv kernel for up to 8 rows (beam
        # search's five included), prepacked weights for more (see biogpt.cpu.packing).
        per_prompt = config.num_beams if config.num_beams > 1 else config.num_return_sequences
        rows = input_ids.shape[0] * per_prompt
        # Past the kernel's rows, one layout for every count, so that alternating batch
        # sizes do not repack: oneDNN's for 16 rows ran 10 to 64 as fast as each count's own.
        model.pack(rows=rows if rows <= gemv.MAX_ROWS else 16)
    input_ids = input_ids.to(model.device)
    real = (
        torch.ones_like(input_ids, dtype=torch.bool)
        if attention_mask is None
        else attention_mask.to(model.device).bool()
    )
    if real.shape != input_ids.shape:
        raise BioGPTError(
            f"attention_mask shape {tuple(real.shape)} differs from input_ids {tuple(input_ids.shape)}"
        )
    if not bool(real.any(dim=1).all()):
        raise BioGPTError("a prompt row has no real tokens (its attention_mask is all zeros)")
    longest = int(real.sum(dim=1).max())
    if longest + config.max_new_tokens > model.config.max_positions:
        raise BioGPTError(
            f"prompt of {longest} tokens + max_new_tokens {config.max_new_tokens} exceeds the "
            f"model's {model.config.max_positions} positions; shorten one of them"
        )
    if int(input_ids.max()) >= model.config.vocab_size or int(input_ids.min()) < 0:
        raise BioGPTError(
            f"input_ids hold ids outside the vocabulary (0..{model.config.vocab_size - 1})"
        )
    if on_token is not None and (config.num_beams > 1 or config.num_return_sequences > 1):
        raise BioGPTError("streaming needs num_beams=1 and num_return_sequences=1")

    if config.num_beams > 1:
        return _beam_search(model, input_ids, real, config, stop)
    if config.num_return_sequences > 1:
        input_ids = input_ids.repeat_interleave(config.num_return_sequences, 0)
        real = real.repeat_interleave(config.num_return_sequences, 0)
    return _greedy_or_sample(model, input_ids, real, config, stop, on_token)
