"""KVCache.reorder: beam search's reshuffle against a plain gather."""

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


def test_reorder_dropping_rows_keeps_the_chosen_ones_and_their_bookkeeping():
    cache = filled_cache(4, 7)
    cache.seen = torch.tensor([5, 6, 7, 8])
    keys = cache.keys.clone()
    cache.reorder(torch.tensor([3, 1]))
    assert cache.batch_size == 2
    assert torch.equal(cache.keys[:, :, :, :7], keys[:, [3, 1], :, :7])
    assert torch.equal(cache.seen, torch.tensor([8, 6]))
