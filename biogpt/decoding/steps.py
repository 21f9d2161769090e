"""One step API for every decoding strategy: a batch of rows over one KV cache, whose rows
join (a prompt is run into the cache) and leave (they are dropped from it) between steps.

`DecodingBatch` is the one place that decides how a model decodes, once, when the batch is
made:
- the packing policy: on the CPU an eval-mode model is prepared by the engine
  (`biogpt.cpu.prepare`) for the rows the batch expects: the gemv kernel's layers for up to
  8, oneDNN's layout for 16 otherwise (it ran 10 to 64 rows as fast as each count's own, so
  a batch that grows or shrinks never repacks); with `compile_step` the model's plain
  layers instead, since torch.compile cannot see into the engine's;
- the step: the compiled C step of the whole model (`biogpt.cpu.fused`) for a batch made
  for 1 to 8 rows where the model allows it (a step that finds more rows, after rows
  joined, runs op by op), the fixed-shape step (`static_step`) with `compile_step`, and
  otherwise the model's own forward, op by op (`decode_step`), which is also what a GPU
  takes;
- the thread count: on the CPU each step runs on the count measured fastest for the load
  the machine has at the moment (`biogpt.cpu.threads`), which also serves the work between
  steps (logits processing); the batch sets PyTorch's count for its steps and gives the
  caller's count back when it is closed (`with DecodingBatch(...) as batch:`, or `close()`).

Besides one token a step, `extend` feeds several tokens per row in one pass over the
weights and `rollback` takes the last ones back: speculative decoding's verification
(`biogpt.decoding.speculative`). Its logits are the one-token steps' bit for bit on the
fused step and on the op-by-op step over the kernel's layers (`extends_exactly`).

A row's tokens do not depend on the other rows of the batch: each row keeps its own
positions (fairseq's, counted from its real tokens) and attends to its own slots only, and
the fused step computes every row as it would alone, bit for bit. (The op-by-op step's
matmuls may round a row differently with other rows beside it; a batch that grows past 8
rows takes it for those steps.)

Shapes: N rows in the batch, T prompt (or, for `extend`, fed) tokens, V vocabulary.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from types import TracebackType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt import cpu
from biogpt.cache import KVCache
from biogpt.cpu.fused import FusedStep
from biogpt.cpu.gemv import MAX_ROWS
from biogpt.cpu.layers import GemvLinear, InferenceAttention, InferenceLinear, Int8Linear
from biogpt.cpu.threads import FixedThreads, ThreadChooser, chooser_for
from biogpt.decoding.packed import packable, prefill_each, products
from biogpt.decoding.static_step import StaticStep
from biogpt.errors import BioGPTError
from biogpt.labels import last_real_index
from biogpt.model import BioGPT, DecoderLayer, attend

PACK_ROWS_PAST_KERNEL = 16  # rows oneDNN's layout is packed for when a batch has more than 8


def prefill(model: BioGPT, input_ids: Tensor, real: Tensor, cache: KVCache) -> Tensor:
    """Run the prompts (N, T) through the model into `cache`; next-token logits (N, V) in
    fp32. `real` (N, T) marks real tokens: the logits come from each row's last real token,
    wherever padding puts it, and only those rows of hidden states meet the output head."""
    mask = None if bool(real.all()) else real
    hidden, _ = model.biogpt(input_ids, mask, None, cache)  # (N, T, H)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return model.output_projection(hidden[rows, last_real_index(real)]).float()


def decode_step(model: BioGPT, tokens: Tensor, cache: KVCache) -> Tensor:
    """Feed one new (real) token per row (N,), op by op; next-token logits (N, V) in fp32."""
    hidden, _ = model.biogpt(tokens[:, None], None, None, cache)  # (N, 1, H)
    return model.output_projection(hidden[:, 0]).float()


def decode_tokens(model: BioGPT, tokens: Tensor, cache: KVCache) -> Tensor:
    """Feed T new (real) tokens per row (N, T): next-token logits (N, T, V) in fp32, each
    token's those `decode_step` gives when the tokens are fed one at a time, bit for bit,
    on a model whose linear layers compute each row as alone (`rows_alone`).

    The products, which read the weights, take every token of every row in one pass (up to
    the rows one kernel call takes); everything between them is done token by token with the
    shapes a one-token step has: layer norms, GELU and the attention of each token over
    the slots before it and itself, with the mask the one-token step would use. PyTorch's
    kernels for those may round differently for a (N, T, ...) input than for T (N, 1, ...)
    ones (a vectorised loop's scalar tail, SDPA's blocking), which this avoids; the sums
    and products of single elements round alike either way and are done on the block.
    """
    decoder, config = model.biogpt, model.config
    n, t = tokens.shape
    past = cache.length
    if past + t > cache.capacity:
        raise BioGPTError(f"KV cache holds {cache.capacity} positions; {past + t} are needed")
    real = torch.ones(n, t, dtype=torch.bool, device=tokens.device)
    positions = cache.positions(real)  # (N, T): fairseq's, continuing each row's count
    x = decoder.embed_tokens(tokens) * config.embed_scale + decoder.embed_positions(positions)
    for i, layer in enumerate(decoder.layers):
        assert isinstance(layer, DecoderLayer)
        x = x + _attention_tokens(layer, _each_token(layer.self_attn_layer_norm, x), cache, i)
        hidden = _each_token(F.gelu, _products(layer.fc1, _each_token(layer.final_layer_norm, x)))
        x = x + _products(layer.fc2, hidden)
    cache.advance(real)
    return _products(model.output_projection, _each_token(decoder.layer_norm, x)).float()


def _each_token(function: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """`function` applied to each token of x (N, T, ...) as a contiguous (N, 1, ...) input,
    as a one-token step applies it: (N, T, ...)."""
    return torch.cat([function(x[:, j : j + 1].contiguous()) for j in range(x.shape[1])], dim=1)


def _products(layer: nn.Module, x: Tensor) -> Tensor:
    """A linear layer on x (N, T, in) as 2-D rows: the engine's kernel layers take them in
    as few passes over the weights as their calls allow, each row computed as alone (an
    int8 layer takes 2-D rows as decoding steps, not as a prompt's tokens)."""
    n, t, width = x.shape
    return products(layer, x.reshape(n * t, width)).view(n, t, -1)


def _attention_tokens(layer: DecoderLayer, x: Tensor, cache: KVCache, index: int) -> Tensor:
    """Self-attention of layer `index` (an `InferenceAttention`) for the new tokens x
    (N, T, H): their keys and values go into the cache, then each token attends to the
    slots before it and itself as a one-token step would (biogpt.model.Decoder's mask for
    one query: None on an unpadded cache). (N, T, H)."""
    attention = layer.self_attn
    assert isinstance(attention, InferenceAttention)
    n, t, h = x.shape
    qkv = _products(attention.qkv_proj, x)  # (N, T, 3H)
    heads, head_dim = attention.num_heads, attention.head_dim
    past = cache.length
    k, v = (
        y.reshape(n, t, heads, head_dim).transpose(1, 2) for y in qkv.split(h, dim=-1)[1:]
    )  # (N, nh, T, hd)
    keys, values = cache.write(index, k, v)  # (N, nh, past + T, hd)
    outputs = []
    for j in range(t):
        own = qkv[:, j : j + 1].contiguous()  # (N, 1, 3H), laid out as a one-token step's
        q = own.split(h, dim=-1)[0].view(n, 1, heads, head_dim).transpose(1, 2)
        slots = past + j + 1
        mask = None
        if cache.padded:  # the slots written with real tokens, then this one: (N, 1, 1, S)
            visible = cache.mask[:, :slots].clone()
            visible[:, past:] = True
            mask = visible[:, None, None, :]
        y = attend(q, keys[:, :, :slots], values[:, :, :slots], mask, 0.0)  # (N, nh, 1, hd)
        outputs.append(y.transpose(1, 2).reshape(n, 1, h))
    return _products(attention.out_proj, torch.cat(outputs, dim=1))


def rows_alone(model: BioGPT) -> bool:
    """Whether every linear layer of `model` computes each row of x as it would alone, in
    one pass over its weights for the rows one call takes: the gemv kernel's layers
    (`GemvLinear`, and `Int8Linear` where the kernel runs), with fused q/k/v. Those are
    what `decode_tokens` needs to match one-token steps."""
    for module in model.modules():
        if isinstance(module, DecoderLayer) and not isinstance(
            module.self_attn, InferenceAttention
        ):
            return False
        if isinstance(module, nn.Linear):
            return False
        if isinstance(module, InferenceLinear) and not (
            isinstance(module, GemvLinear)
            or (isinstance(module, Int8Linear) and module.matrix is not None)
        ):
            return False
    return True


def row_stepper(model: BioGPT) -> Callable[[int, KVCache], Tensor]:
    """The step a single row takes: `step(token, cache)` feeds one token and gives the
    next-token logits (1, V) in fp32, in one compiled call where the model allows it."""
    fused = FusedStep.build(model)
    if fused is not None:
        return fused
    return lambda token, cache: decode_step(
        model, torch.tensor([token], device=model.device), cache
    )


def prepare_model(model: BioGPT, rows: int, compile_step: bool = False) -> None:
    """The packing policy: get `model` ready to decode `rows` rows a step (see the module
    docstring). A model in training mode is left as it is."""
    if compile_step:
        cpu.release(model)  # torch.compile lowers plain layers; it cannot see into the engine's
    elif not model.training:
        cpu.prepare(model, rows if rows <= MAX_ROWS else PACK_ROWS_PAST_KERNEL)


class DecodingBatch:
    """Rows decoding together over one KV cache. Rows are numbered as they join (0, 1, ...);
    `rows` lists the live ones in cache order, which is the order of every `step`'s tokens
    and logits.

        with DecodingBatch(model, expected_rows=2) as batch:
            logits = batch.add(ids, real, budget=32)   # (2, V): two prompts join
            logits = batch.step(tokens)                # (2, V): one token per live row
            batch.keep(torch.tensor([1]))              # row 0 leaves
            logits = batch.add(more_ids, more_real, budget=16)   # rows join a running batch
            logits = batch.extend(drafts)              # (2, k, V): k tokens per live row
            batch.rollback(2)                          # the last two go back
    """

    def __init__(
        self,
        model: BioGPT,
        expected_rows: int = 1,
        compile_step: bool = False,
        fused_step: bool = True,
    ) -> None:
        self.model = model
        self.compile_step = compile_step
        prepare_model(model, expected_rows, compile_step)
        # Decided once: a batch made for more than 8 rows takes the op-by-op step throughout,
        # so that its rows' tokens do not depend on when the others leave. `fused_step=False`
        # takes it where the fused step could run, as `extend` can match it (see `extend`).
        use_fused = fused_step and not compile_step
        self.fused = FusedStep.build(model, rows=expected_rows) if use_fused else None
        self.rows_alone = rows_alone(model)  # the layers `extend` matches one-token steps on
        self.cache: KVCache | None = None
        self.rows = torch.zeros(0, dtype=torch.long)  # ids of the live rows, in cache order
        self.budget = torch.zeros(0, dtype=torch.long)  # tokens each live row may still take
        self.joined = 0  # rows that have joined so far
        self.static: StaticStep | None = None
        self.static_rows: Tensor | None = None  # live rows among the static step's rows
        # The caller's thread count, given back by `close` (or when the batch is dropped).
        self.threads: ThreadChooser | FixedThreads | None = None
        if model.device.type == "cpu" and not compile_step:
            self.threads = chooser_for(model, torch.get_num_threads())
            self._restore = weakref.finalize(self, torch.set_num_threads, torch.get_num_threads())

    def __enter__(self) -> DecodingBatch:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Give the caller's PyTorch thread count back (the steps set their own)."""
        if self.threads is not None:
            self._restore()

    def _use_threads(self, probe: bool = True) -> int:
        """Set PyTorch's thread count to the one the next step should take; returns it.
        Work that is not a step (a prompt, a draft) takes the count the steps settled on,
        never a probe's: its time is not recorded, so a probe would only slow it."""
        assert self.threads is not None
        count = self.threads.pick() if probe else self.threads.settled()
        if count != torch.get_num_threads():
            torch.set_num_threads(count)
        return count

    def __len__(self) -> int:
        return int(self.rows.numel())

    @property
    def probing(self) -> bool:
        """Whether the thread count is being measured: the next `step`s (one token a row)
        run on other counts in turn. Only steps are timed for it, so a caller that mostly
        `extend`s takes a step now and then to keep the count fit for the machine's load."""
        return isinstance(self.threads, ThreadChooser) and bool(self.threads.probing)

    @property
    def rows_independent(self) -> bool:
        """Whether the next step computes each row exactly as alone (the fused C step):
        then rows with the same tokens hold the same keys and values."""
        return self.fused is not None and 1 <= len(self) <= MAX_ROWS

    def add(self, input_ids: Tensor, real: Tensor, budget: int) -> Tensor:
        """Prompts (n, T) join the batch, `real` (n, T) marking their real tokens; each may
        then take `budget` tokens (the last of which is never fed back). Returns their
        next-token logits (n, V) in fp32; their ids are the next n numbers."""
        n, width = input_ids.shape
        if n == 1 and bool(real.all()) and self.packs(width):
            return self.add_each([input_ids[0]], [budget])  # as it runs packed with others
        if self.static is not None:
            raise BioGPTError("a compile_step batch takes all its rows before its first step")
        first = self.cache is None or len(self) == 0
        own = self.model.new_cache(n, width + budget - 1 if first else width)
        if self.threads is not None:
            self._use_threads(probe=False)
        logits = prefill(self.model, input_ids, real, own)
        return self._joined(own, logits, torch.full((n,), budget, dtype=torch.long), first)

    def packs(self, length: int) -> bool:
        """Whether a prompt of `length` tokens joins through `add_each`, in one pass over
        the weights with others, each as alone (`biogpt.decoding.packed`)."""
        return not self.compile_step and packable(self.model, length)

    def add_each(self, prompts: list[Tensor], budgets: list[int]) -> Tensor:
        """Unpadded prompts (T_i,), each one that `packs`, join the batch in one pass over
        the weights, each computed as it is alone; prompt i may then take `budgets[i]`
        tokens. Their next-token logits (n, V) in fp32; their ids are the next n numbers."""
        if not all(self.packs(int(p.numel())) for p in prompts):
            raise BioGPTError("add_each takes prompts that pack (DecodingBatch.packs)")
        first = self.cache is None or len(self) == 0
        longest = max(int(p.numel()) for p in prompts)
        if self.threads is not None:
            self._use_threads(probe=False)
        capacity = longest + max(budgets) - 1 if first else longest
        logits, own = prefill_each(self.model, prompts, capacity)
        return self._joined(own, logits, torch.tensor(budgets, dtype=torch.long), first)

    def _joined(self, own: KVCache, logits: Tensor, new_budget: Tensor, first: bool) -> Tensor:
        """Make the rows of `own`, just filled with prompts, part of the batch."""
        n = own.batch_size
        if first:
            self.cache, self.budget = own, new_budget
        else:
            assert self.cache is not None
            self.cache.trim()
            self.budget = torch.cat([self.budget, new_budget])
            length = max(self.cache.length, own.length)
            self.cache.join(own, length + int(self.budget.max()) - 1)
        ids = torch.arange(self.joined, self.joined + n)
        self.rows = torch.cat([self.rows, ids]) if not first else ids
        self.joined += n
        if self.compile_step:  # made now, for every row of the call: its shapes stay fixed
            assert self.cache is not None
            self.static = StaticStep(self.model, self.cache)
            self.static_rows = torch.arange(n, device=self.cache.keys.device)
        return logits

    def keep(self, index: Tensor) -> None:
        """Keep only the live rows at positions `index` (in cache order), in that order."""
        index = index.to(self.rows.device)
        self.rows, self.budget = self.rows[index], self.budget[index]
        if self.static is not None and self.static_rows is not None:
            self.static_rows = self.static_rows[index.to(self.static_rows.device)]
        elif self.cache is not None:
            self.cache.reorder(index.to(self.cache.keys.device))

    def reorder(self, index: Tensor, start: int = 0, same: Tensor | None = None) -> None:
        """Rows take the cache rows `index` (beam search: each beam continues a parent);
        `start` and `same` as in `KVCache.reorder`."""
        assert self.cache is not None
        self.rows, self.budget = self.rows[index.cpu()], self.budget[index.cpu()]
        device = self.cache.keys.device
        same = None if same is None else same.to(device)
        self.cache.reorder(index.to(device), start=start, same=same)

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per live row (N,), in cache order: next-token logits (N, V), fp32."""
        if self.cache is None or len(self) == 0:
            raise BioGPTError("the batch has no rows to step")
        self.budget -= 1
        if self.compile_step:
            return self._static_step(tokens)
        self._room(1)
        if self.threads is None:
            return self._step(tokens)
        count = self._use_threads()
        began = time.perf_counter()
        logits = self._step(tokens)
        self.threads.record(count, time.perf_counter() - began)
        return logits

    @property
    def extends_exactly(self) -> bool:
        """Whether `extend` gives every token the logits `step` would, bit for bit: on the
        fused C step, which takes the tokens as rows of its own (each at its slot, computed
        as a one-token step computes it), and on the op-by-op step over layers that compute
        each row as alone (`rows_alone`); not on the compiled step."""
        if self.threads is None or self.compile_step:
            return False
        return self.fused is not None or self.rows_alone

    def extend(self, tokens: Tensor) -> Tensor:
        """Feed T tokens per live row (N, T), in cache order, in as few passes over the
        weights as the step allows: next-token logits after each of them (N, T, V), fp32.
        Where `extends_exactly`, each token's logits are those that feeding the tokens one
        `step` at a time gives: the fused step takes up to 64 rows x tokens a pass (8 for
        bf16 and int8 weights), the
        op-by-op step every token (`decode_tokens`); elsewhere they are the same function
        of the tokens, rounded as another forward rounds it. Speculative decoding verifies
        a draft this way, then takes back the tokens it rejects with `rollback`."""
        if self.cache is None or len(self) == 0:
            raise BioGPTError("the batch has no rows to extend")
        if self.compile_step:
            raise BioGPTError("a compile_step batch feeds one token a step")
        if self.threads is not None:
            self._use_threads(probe=False)
        self._room(tokens.shape[1])
        if self.rows_independent:
            assert self.fused is not None
            per_pass = max(1, self.fused.max_rows // len(self))  # each row's tokens a pass takes
            parts = [self.fused.extend(t, self.cache) for t in tokens.split(per_pass, dim=1)]
            logits = torch.cat(parts, dim=1)
        elif self.rows_alone:
            logits = decode_tokens(self.model, tokens, self.cache)
        else:
            hidden, _ = self.model.biogpt(tokens, None, None, self.cache)  # (N, T, H)
            logits = self.model.output_projection(hidden).float()
        self.budget -= tokens.shape[1]
        return logits

    def rollback(self, count: int | Tensor) -> None:
        """Take back the last `count` tokens fed to every live row (a speculative draft's
        rejected ones), or `count[i]` of live row i, `count` (N,) in cache order: each
        row's count of real tokens (its next position) and budget go back with them
        (`KVCache.rollback`: the slots all rows give back are overwritten by the next call,
        a row's further ones stay as unreal slots)."""
        assert self.cache is not None
        counts = torch.as_tensor(count, dtype=torch.long)
        if bool((counts > 0).any()):
            self.cache.rollback(counts)
            self.budget += counts

    def _room(self, tokens: int) -> None:
        """Room in the cache for `tokens` more slots. The cache is made for the rows'
        budgets, but a row that gave back more of a draft than another (`rollback` with
        counts) leaves unreal slots behind: when they fill it, they are dropped
        (`KVCache.compact`), and only if that is not enough does it grow, by half again at
        least, so that it rarely does."""
        assert self.cache is not None
        if self.cache.length + tokens > self.cache.capacity:
            self.cache.compact()
        need = self.cache.length + tokens
        if need > self.cache.capacity:
            rest = max(0, int(self.budget.max()))
            self.cache.reserve(max(need + rest, self.cache.capacity * 3 // 2))

    def _step(self, tokens: Tensor) -> Tensor:
        assert self.cache is not None
        if self.rows_independent:
            assert self.fused is not None
            return self.fused(tokens, self.cache)
        return decode_step(self.model, tokens, self.cache)

    def _static_step(self, tokens: Tensor) -> Tensor:
        """The fixed-shape step: rows that left stay in its batch, fed padding, unread."""
        assert self.cache is not None
        assert self.static is not None and self.static_rows is not None
        feed = torch.full(
            (self.cache.batch_size,),
            self.model.config.pad_token_id,
            dtype=torch.long,
            device=tokens.device,
        )
        feed[self.static_rows] = tokens
        return self.static(feed)[self.static_rows]
