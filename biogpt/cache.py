"""The KV cache decoding drives, and fairseq's padding-aware position ids.

Shapes: B batch, T new tokens, L layers, nh heads, hd head dim.
"""

from __future__ import annotations

import torch
from torch import Tensor

from biogpt.config import ModelConfig


class KVCache:
    """Keys and values of every layer, allocated once for `capacity` positions.

    Decoding writes into the preallocated buffers instead of concatenating, so a call costs
    one allocation however many tokens it produces. The cache also remembers which slots
    hold real tokens (`mask`) and how many real tokens each row has seen (`seen`), which is
    what fairseq's padding-aware positions continue from.
    """

    def __init__(
        self,
        config: ModelConfig,
        batch_size: int,
        capacity: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        shape = (config.num_layers, batch_size, config.num_heads, capacity, config.head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)  # (L, B, nh, capacity, hd)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.mask = torch.zeros(batch_size, capacity, dtype=torch.bool, device=device)
        self.seen = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.length = 0  # slots written so far, the same for every row
        self.padded = False  # whether any written slot is padding (then masks are needed)

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def write(self, layer: int, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new tokens' `keys` and `values` (B, nh, T, hd) of `layer` after the slots
        written so far; the layer's keys and values of every written slot (B, nh, S, hd)."""
        start, end = self.length, self.length + keys.shape[2]
        self.keys[layer, :, :, start:end] = keys
        self.values[layer, :, :, start:end] = values
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reorder(self, index: Tensor, start: int = 0, same: Tensor | None = None) -> None:
        """Keep rows `index` (B',) in that order: beam search's reshuffle, or dropping rows.

        With `start` > 0 and the same number of rows, slots before `start` are left as they
        are: beam search passes the prompt length, since every beam of an item holds the same
        prompt, so only the generated part has to move. Then only the rows that take another
        row's place are copied (about two of five beams a step in beam search), and with
        `same` (B',), row j only from slot `same[j]` on: the caller vouches that its slots
        before that already hold what row `index[j]` holds (beams with a common history,
        decoded by a step whose rows do not depend on one another).
        """
        n = self.length
        if start > 0 and index.numel() == self.batch_size:
            moved = (index != torch.arange(index.numel(), device=index.device)).nonzero()[:, 0]
            if moved.numel() == 0:
                return
            if same is None:
                source = index[moved]  # the right-hand sides are gathered before any write
                self.keys[:, moved, :, start:n] = self.keys[:, source, :, start:n]
                self.values[:, moved, :, start:n] = self.values[:, source, :, start:n]
                return
            rows = moved.tolist()
            firsts = [max(start, int(same[j])) for j in rows]
            for cache in (self.keys, self.values):
                # every source is read before any row is written
                taken = [
                    cache[:, int(index[j]), :, a:n].clone()
                    for j, a in zip(rows, firsts, strict=True)
                ]
                for j, a, part in zip(rows, firsts, taken, strict=True):
                    cache[:, j, :, a:n] = part
            return
        shape = (self.keys.shape[0], index.numel(), *self.keys.shape[2:])
        keys = self.keys.new_zeros(shape)
        values = self.values.new_zeros(shape)
        keys[:, :, :, :n] = self.keys[:, index, :, :n]  # only the written slots are copied
        values[:, :, :, :n] = self.values[:, index, :, :n]
        self.keys, self.values = keys, values
        self.mask = self.mask.index_select(0, index)
        self.seen = self.seen.index_select(0, index)

    def join(self, other: KVCache, capacity: int) -> None:
        """Append the rows of `other` after this cache's rows, in buffers of `capacity` slots.

        Rows whose histories differ in length are aligned on their last slot: the shorter
        side gets unwritten, masked slots on the left, as a left-padded prompt has. Each
        row's positions come from its own count of real tokens (`seen`), so a row decodes
        as it would alone.
        """
        length = max(self.length, other.length)
        if capacity < length:
            raise ValueError(f"{capacity} slots cannot hold {length} written ones")
        rows = self.batch_size + other.batch_size
        layers, _, heads, _, head_dim = self.keys.shape
        shape = (layers, rows, heads, capacity, head_dim)
        keys = self.keys.new_zeros(shape)
        values = self.values.new_zeros(shape)
        mask = self.mask.new_zeros(rows, capacity)
        first = 0
        for part in (self, other):
            span = slice(first, first + part.batch_size)
            shift = length - part.length  # new slot of the part's slot 0
            keys[:, span, :, shift:length] = part.keys[:, :, :, : part.length]
            values[:, span, :, shift:length] = part.values[:, :, :, : part.length]
            mask[span, shift:length] = part.mask[:, : part.length]
            first += part.batch_size
        self.keys, self.values, self.mask = keys, values, mask
        self.seen = torch.cat([self.seen, other.seen])
        self.length = length
        self.padded = not bool(mask[:, :length].all())

    def trim(self) -> None:
        """Drop the leading slots that no row holds a real token in (after rows left)."""
        if self.batch_size == 0 or self.length == 0:
            return
        used = self.mask[:, : self.length].any(dim=0)
        first = int(used.int().argmax()) if bool(used.any()) else self.length
        if first == 0:
            return
        n = self.length - first
        for buffer in (self.keys, self.values):
            buffer[:, :, :, :n] = buffer[:, :, :, first : self.length].clone()
        self.mask[:, :n] = self.mask[:, first : self.length].clone()
        self.mask[:, n:] = False
        self.length = n
        self.padded = not bool(self.mask[:, :n].all())

    def positions(self, mask: Tensor) -> Tensor:
        """Position-table rows (B, T) of new tokens with padding `mask` (B, T).

        fairseq numbers real tokens 2, 3, ... (padding_idx + 1 onwards) and gives padding
        row 1; with a cache the count continues from the real tokens already seen.
        """
        counts = self.seen[:, None] + torch.cumsum(mask, dim=1)
        return counts * mask + 1

    def advance(self, mask: Tensor) -> None:
        """Record that T new tokens with padding `mask` (B, T) were written."""
        t = mask.shape[1]
        self.mask[:, self.length : self.length + t] = mask
        self.seen += mask.sum(dim=1)
        self.length += t

    def rollback(self, count: int | Tensor) -> None:
        """Forget the last `count` slots written, real tokens in every row (a rejected
        speculative draft), or the last `count[b]` of row b, `count` (B,): positions continue
        from the real tokens that remain. The slots every row gives back are free again, for
        the next write to overwrite; a row that gives back more than the fewest keeps the
        rest as unreal slots (masked, as padding is) until the rows leave or the cache is
        rebuilt."""
        counts = torch.as_tensor(count, dtype=torch.long).to(self.seen.device)
        counts = counts.expand(self.batch_size)
        if bool((counts < 0).any()) or bool((counts > self.length).any()):
            raise ValueError(f"cannot take back {count} of {self.length} written slots")
        common = int(counts.min()) if self.batch_size else 0
        start = self.length - common  # the slots from here go back in every row
        self.seen -= self.mask[:, start : self.length].sum(dim=1)
        self.mask[:, start : self.length] = False
        self.length = start
        extra = counts - common  # (B,): slots before `start` a row gives back as well
        if bool(extra.any()):
            width = int(extra.max())
            slots = torch.arange(start - width, start, device=counts.device)
            dropped = slots[None, :] >= (start - extra)[:, None]  # (B, width)
            region = self.mask[:, start - width : start]  # a view: cleared in place
            self.seen -= (region & dropped).sum(dim=1)
            region &= ~dropped
            self.padded = True

    def compact(self) -> None:
        """Drop the unreal slots between real ones (a draft's given-back tokens): each row's
        real slots move together, in their order, aligned on the last slot (a row with fewer
        real tokens gets unwritten slots on the left, as a join gives it)."""
        if self.batch_size == 0:
            return
        real = self.mask[:, : self.length]
        counts = real.sum(dim=1)
        length = int(counts.max())
        if length == self.length:
            return
        for b in range(self.batch_size):
            slots = real[b].nonzero()[:, 0]  # (count,): read before any write below
            start = length - slots.numel()
            self.keys[:, b, :, start:length] = self.keys[:, b, :, slots]
            self.values[:, b, :, start:length] = self.values[:, b, :, slots]
        self.mask[:] = False
        for b, count in enumerate(counts.tolist()):
            self.mask[b, length - count : length] = True
        self.length = length
        self.padded = not bool(self.mask[:, :length].all())

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` slots (the written ones copied over), if there is less."""
        if capacity <= self.capacity:
            return
        n = self.length
        layers, rows, heads, _, head_dim = self.keys.shape
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros(layers, rows, heads, capacity, head_dim)
            new[:, :, :, :n] = old[:, :, :, :n]
            setattr(self, name, new)
        mask = self.mask.new_zeros(rows, capacity)
        mask[:, :n] = self.mask[:, :n]
        self.mask = mask

    def advance_real_token(self) -> None:
        """Record that one real token per row was written (`advance` with an all-True
        (B, 1) mask, in fewer operations: decoding calls it every step)."""
        self.mask[:, self.length] = True
        self.seen += 1
        self.length += 1


def padding_positions(mask: Tensor, padding_idx: int) -> Tensor:
    """fairseq's position ids (B, T) for an uncached batch: cumsum(mask) * mask + padding_idx."""
    mask = mask.long()
    return torch.cumsum(mask, dim=1) * mask + padding_idx
