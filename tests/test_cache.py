"""KVCache.reorder: beam search's reshuffle against a plain gather."""

import pytest
import torch

from biogpt.cache import KVCache
from biogpt.config import ModelConfig

CONFIG = ModelConfig(vocab_size=64, hidden_size=8, num_layers=2, num_heads=2,
                     intermediate_size=16, max_positions=32)  # fmt: skip


def filled_cache(rows: int, length: int) -> KVCache:
    cache = KVCache(CONFIG, rows, capacity=12)
    cache.keys.normal_(generator=torch.Generator().manual_seed(0))
    cache.values.normal_(generator=torch.Generator().manual_seed(1))
    cache.length = length
    return cache


def test_reorder_after_start_matches_a_gather_for_cycles_and_repeats():
    start, length = 3, 9
    for index in (
        [0, 1, 2, 3, 4],
        [1, 2, 0, 3, 4],
        [4, 4, 2, 0, 0],
        [3, 0, 1, 2, 1],
        [0, 0, 0, 0, 0],
    ):
        cache = filled_cache(5, length)
        keys, values = cache.keys.clone(), cache.values.clone()
        cache.reorder(torch.tensor(index), start=start)
        expected_keys, expected_values = keys.clone(), values.clone()
        expected_keys[:, :, :, start:length] = keys[:, index, :, start:length]
        expected_values[:, :, :, start:length] = values[:, index, :, start:length]
        assert torch.equal(cache.keys, expected_keys), index
        assert torch.equal(cache.values, expected_values), index


def test_reorder_copies_only_past_the_slots_rows_share():
    # Rows 3 and 1 hold what rows 0 and 2 hold up to slot 6 and 4: told so, reorder copies
    # only the slots after those, and the cache ends as a full gather leaves it.
    start, length = 3, 9
    cache = filled_cache(5, length)
    for kv in (cache.keys, cache.values):
        kv[:, 3, :, :6] = kv[:, 0, :, :6]
        kv[:, 1, :, :4] = kv[:, 2, :, :4]
    keys, values = cache.keys.clone(), cache.values.clone()
    index = [0, 2, 2, 0, 1]
    cache.reorder(torch.tensor(index), start=start, same=torch.tensor([0, 4, 0, 6, 3]))
    for got, was in ((cache.keys, keys), (cache.values, values)):
        want = was.clone()
        want[:, :, :, start:length] = was[:, index, :, start:length]
        assert torch.equal(got, want)
    # ... and it did trust them: a shared slot it was told about is not rewritten
    cache = filled_cache(5, length)
    before = cache.keys.clone()
    cache.reorder(torch.tensor([0, 1, 2, 0, 4]), start=start, same=torch.tensor([0, 0, 0, 7, 0]))
    assert torch.equal(cache.keys[:, 3, :, :7], before[:, 3, :, :7])
    assert torch.equal(cache.keys[:, 3, :, 7:length], before[:, 0, :, 7:length])


def test_reorder_dropping_rows_keeps_the_chosen_ones_and_their_bookkeeping():
    cache = filled_cache(4, 7)
    cache.seen = torch.tensor([5, 6, 7, 8])
    keys = cache.keys.clone()
    cache.reorder(torch.tensor([3, 1]))
    assert cache.batch_size == 2
    assert torch.equal(cache.keys[:, :, :, :7], keys[:, [3, 1], :, :7])
    assert torch.equal(cache.seen, torch.tensor([8, 6]))


def test_rollback_by_row_gives_back_each_rows_count_and_leaves_the_rest_unreal():
    # Three rows fed four real tokens after four slots of history (row 1 left-padded by
    # one). Rows give back 1, 3 and 2 of the four: the one slot every row gives back is free
    # again; row 1's two further slots and row 2's one stay written but unreal.
    cache = KVCache(CONFIG, 3, capacity=12)
    cache.advance(torch.tensor([[True] * 4, [False, True, True, True], [True] * 4]))
    cache.advance(torch.ones(3, 4, dtype=torch.bool))
    assert cache.seen.tolist() == [8, 7, 8] and cache.length == 8
    cache.rollback(torch.tensor([1, 3, 2]))
    assert cache.length == 7
    assert cache.seen.tolist() == [7, 4, 6]  # real tokens left: positions continue from them
    assert cache.mask[:, :8].int().tolist() == [
        [1, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0],
    ]
    assert cache.padded
    # the next token of each row takes the position after its real tokens (fairseq's,
    # the first real token's being 2)
    assert cache.positions(torch.ones(3, 1, dtype=torch.bool))[:, 0].tolist() == [9, 6, 8]
    cache.rollback(0)
    assert cache.length == 7
    with pytest.raises(ValueError, match="cannot take back"):
        cache.rollback(torch.tensor([1, 8, 1]))


def test_reserve_keeps_the_written_slots_and_their_mask():
    cache = filled_cache(2, 5)
    cache.mask[:, :5] = torch.tensor([[False, True, True, True, True], [True] * 5])
    keys, values = cache.keys[:, :, :, :5].clone(), cache.values[:, :, :, :5].clone()
    cache.reserve(10)  # no smaller: nothing changes
    assert cache.capacity == 12
    cache.reserve(20)
    assert cache.capacity == 20 and cache.length == 5
    assert torch.equal(cache.keys[:, :, :, :5], keys)
    assert torch.equal(cache.values[:, :, :, :5], values)
    assert cache.mask[:, :5].tolist() == [[False, True, True, True, True], [True] * 5]
    assert not cache.mask[:, 5:].any()


def test_compact_drops_the_unreal_slots_between_real_ones_keeping_their_order():
    cache = KVCache(CONFIG, 2, capacity=12)
    cache.keys.normal_(generator=torch.Generator().manual_seed(0))
    cache.values.normal_(generator=torch.Generator().manual_seed(1))
    cache.advance(torch.tensor([[True, True, False, True, False, True],
                                [False, True, True, True, True, True]]))  # fmt: skip
    keys, values = cache.keys.clone(), cache.values.clone()
    cache.compact()
    # row 0 keeps slots 0, 1, 3, 5 and row 1 slots 1-5: five slots, row 0 padded by one
    assert cache.length == 5 and cache.padded
    assert cache.mask[:, :6].int().tolist() == [[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]
    assert torch.equal(cache.keys[:, 0, :, 1:5], keys[:, 0, :, [0, 1, 3, 5]])
    assert torch.equal(cache.values[:, 0, :, 1:5], values[:, 0, :, [0, 1, 3, 5]])
    assert torch.equal(cache.keys[:, 1, :, 0:5], keys[:, 1, :, 1:6])
    assert cache.seen.tolist() == [4, 5]  # positions are counted from real tokens: unchanged
    cache.compact()  # nothing left to drop
    assert cache.length == 5
