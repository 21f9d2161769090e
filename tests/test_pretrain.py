"""Pretraining: shard batches, config files, resume after a kill, DDP equals one process."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from biogpt.errors import BioGPTError
from biogpt.training.pretrain import PretrainConfig, ShardBatches, pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


def write_shards(root: Path, tokens: int = 3000, seed: int = 0, files: int = 2) -> np.ndarray:
    """A shard directory in the `biogpt.corpus.shards` format, made by hand; returns the train stream.

    Documents of random length, each followed by `</s>` (2), split over `files` .bin files;
    the valid split is one small file.
    """
    rng = np.random.default_rng(seed)
    stream: list[int] = []
    while len(stream) < tokens:
        stream += [*rng.integers(4, 512, rng.integers(5, 40)).tolist(), 2]
    train = np.asarray(stream[:tokens], dtype=np.uint16)
    valid = np.asarray([*rng.integers(4, 512, 400).tolist(), 2], dtype=np.uint16)
    entries = {"train": [], "valid": []}
    for split, parts in (("train", np.array_split(train, files)), ("valid", [valid])):
        (root / split).mkdir(parents=True)
        for i, part in enumerate(parts):
            name = f"{split}/{i:05d}.bin"
            part.astype("<u2").tofile(root / name)
            docs = int((part == 2).sum())
            entries[split].append({"file": name, "tokens": len(part), "documents": docs})
    manifest = {"format": 1, "dtype": "uint16", "vocab_size": 512, "eos": 2,
                "splits": entries, "tokenizer": None, "complete": True}  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return train.astype(np.int64)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def losses(out: Path) -> list[float]:
    return [r["loss"] for r in read_log(out / "log.jsonl") if "loss" in r]


def tiny(data: Path, out: Path, **overrides) -> PretrainConfig:
    settings = dict(data=str(data), out=str(out), preset="tiny", tokens_per_sample=16,
                    blocks_per_batch=2, tokens_per_update=64, lr=1e-3, warmup_updates=2,
                    max_updates=6, valid_every=0, save_every=0, log_every=1)  # fmt: skip
    settings.update(overrides)
    return PretrainConfig(**settings)


# --- ShardBatches ---------------------------------------------------------------------------


def test_shard_batches_blocks_cover_the_stream_deterministically(tmp_path):
    stream = write_shards(tmp_path, tokens=1000, files=3)
    source = ShardBatches(tmp_path, tokens_per_sample=8, blocks_per_batch=2,
                          tokens_per_update=32, seed=5)  # fmt: skip
    assert source.blocks == (1000 - 1) // 7 and source.blocks_per_update == 4
    n = source.updates_in_epoch(1)
    assert n == source.blocks // 4

    epoch1 = list(source.updates(1))
    assert len(epoch1) == n and all(len(u) == 2 for u in epoch1)
    rows = torch.cat([b.input_ids for u in epoch1 for b in u])  # (n * 4, 8)
    order = source.order(1)
    for row, block in zip(rows, order, strict=False):  # blocks overlap by one token
        assert row.tolist() == stream[block * 7 : block * 7 + 8].tolist()
    assert len(set(order[: n * 4].tolist())) == n * 4  # no block twice
    assert sorted(order.tolist()) == list(range(source.blocks))

    again = ShardBatches(tmp_path, tokens_per_sample=8, blocks_per_batch=2,
                         tokens_per_update=32, seed=5)  # fmt: skip
    assert np.array_equal(again.order(1), order)
    assert not np.array_equal(source.order(2), order)  # reshuffled per epoch
    batch = epoch1[0][0]
    assert (batch.tokens, batch.target_tokens) == (16, 14) and torch.equal(
        batch.labels, batch.input_ids
    )

    # Resume at any update: the tail of the epoch is the same batches.
    for start in (0, 3, n - 1):
        tail = [torch.cat([b.input_ids for b in u]) for u in source.updates(1, start)]
        assert all(torch.equal(a, torch.cat([b.input_ids for b in u]))
                   for a, u in zip(tail, epoch1[start:], strict=True))  # fmt: skip


def test_shard_batches_ranks_split_the_same_global_batch(tmp_path):
    write_shards(tmp_path, tokens=1000)
    one = ShardBatches(tmp_path, tokens_per_sample=8, blocks_per_batch=4, tokens_per_update=32)
    ranks = [ShardBatches(tmp_path, tokens_per_sample=8, blocks_per_batch=2, tokens_per_update=32,
                          rank=r, world_size=2) for r in range(2)]  # fmt: skip
    assert one.updates_in_epoch(1) == ranks[0].updates_in_epoch(1)
    for single, *parts in zip(one.updates(1), *(r.updates(1) for r in ranks), strict=True):
        together = torch.cat([b.input_ids for part in parts for b in part])
        assert torch.equal(torch.cat([b.input_ids for b in single]), together)
        a, b = (torch.cat([x.input_ids for x in part]) for part in parts)
        assert not torch.equal(a, b)  # disjoint slices
    with pytest.raises(BioGPTError, match="fewer than one update"):
        ShardBatches(tmp_path, tokens_per_sample=8, tokens_per_update=10**6)


# --- Config ---------------------------------------------------------------------------------


def test_config_defaults_and_files(tmp_path):
    default = PretrainConfig()
    assert (default.lr, default.warmup_updates, default.tokens_per_sample) == (2e-4, 20000, 1024)
    assert default.betas == (0.9, 0.98) and default.schedule == "inverse_sqrt"

    (tmp_path / "run.toml").write_text(
        'data = "shards"\npreset = "tiny"\nlr = 5e-4\nbetas = [0.9, 0.95]\n'
        'distributed = "fsdp"\n[model]\ndropout = 0.0\n'
    )
    config = PretrainConfig.load(tmp_path / "run.toml", lr=1e-3, dtype=None)
    assert (config.data, config.preset, config.lr, config.betas) == (
        "shards",
        "tiny",
        1e-3,
        (0.9, 0.95),
    )
    assert config.model == {"dropout": 0.0} and config.distributed == "fsdp"
    assert config.train_config().max_updates == 200000

    (tmp_path / "run.json").write_text(json.dumps({"data": "d", "max_updates": 7}))
    assert PretrainConfig.load(tmp_path / "run.json").max_updates == 7
    (tmp_path / "bad.json").write_text(json.dumps({"data": "d", "learning_rate": 1}))
    with pytest.raises(BioGPTError, match="unknown keys learning_rate"):
        PretrainConfig.load(tmp_path / "bad.json")
    with pytest.raises(BioGPTError, match="distributed"):
        PretrainConfig(distributed="zero3")


# --- Resume and validation ------------------------------------------------------------------


def test_resume_after_a_kill_gives_bitwise_the_same_losses(tmp_path, monkeypatch):
    write_shards(tmp_path / "data", tokens=1600)
    config = tiny(tmp_path / "data", tmp_path / "a", valid_every=3, valid_blocks=4)
    straight = pretrain(config, progress=False)
    assert len(straight.losses) == 6 and straight.losses[0] > 5.5  # about ln(512)
    records = read_log(tmp_path / "a/log.jsonl")
    valid = [r for r in records if "valid_loss" in r]
    assert [r["step"] for r in valid] == [3, 6]
    assert valid[0]["valid_ppl"] == pytest.approx(math.exp(valid[0]["valid_loss"]))
    assert {"step", "loss", "lr", "tokens_per_s"} <= set(records[0])

    # A run checkpointing every 2 updates is killed while fetching update 6 (5 logged).
    updates = ShardBatches.updates

    def dies(self, epoch, start=0):
        for i, batches in enumerate(updates(self, epoch, start)):
            if self.split == "train" and start + i == 5:
                raise KeyboardInterrupt
            yield batches

    killed = tiny(tmp_path / "data", tmp_path / "b", valid_every=3, valid_blocks=4, save_every=2)
    monkeypatch.setattr(ShardBatches, "updates", dies)
    with pytest.raises(KeyboardInterrupt):
        pretrain(killed, progress=False)
    monkeypatch.setattr(ShardBatches, "updates", updates)
    assert (tmp_path / "b/checkpoints/last").read_text().strip() == "update4"
    pretrain(killed, resume=True, progress=False)
    assert losses(tmp_path / "b") == straight.losses  # bitwise, dropout on
    assert read_log(tmp_path / "b/log.jsonl")[-1]["valid_loss"] == valid[-1]["valid_loss"]


# --- Distributed ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, config: PretrainConfig) -> None:
    # What torchrun sets for each process.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    pretrain(config, progress=False)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, mode):
    write_shards(tmp_path / "data", tokens=1600)
    no_dropout = {"dropout": 0.0, "attention_dropout": 0.0}
    # Adam hides a wrong gradient scale from the losses; the logged gradient norm does not
    # (clip_norm this large never clips, it only logs the norm).
    settings = dict(model=no_dropout, max_updates=4, clip_norm=1e9)
    one = tiny(tmp_path / "data", tmp_path / "one", blocks_per_batch=4, **settings)
    single = pretrain(one, progress=False)
    # 2 ranks x micro-batches of 1 x 2 accumulation steps = 4 blocks, as 1 x 4 x 1.
    two = tiny(tmp_path / "data", tmp_path / "two", blocks_per_batch=1, distributed=mode,
               save_every=2, valid_every=2, valid_blocks=4, **settings)  # fmt: skip
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), two), nprocs=2)
    torch.testing.assert_close(losses(tmp_path / "two"), single.losses, rtol=1e-5, atol=0)
    norms = [[r["grad_norm"] for r in read_log(tmp_path / run / "log.jsonl") if "loss" in r]
             for run in ("one", "two")]  # fmt: skip
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-5, atol=0)
    assert (tmp_path / "two/checkpoints/last").read_text().strip() == "update4"
    assert [r["step"] for r in read_log(tmp_path / "two/log.jsonl") if "valid_loss" in r] == [2, 4]


def test_cli_reads_the_config_file_and_flags_override_it(tmp_path, capsys):
    from biogpt.cli import main

    write_shards(tmp_path / "data", tokens=1600)
    (tmp_path / "run.toml").write_text(
        f'data = "{tmp_path / "data"}"\npreset = "tiny"\ntokens_per_sample = 16\n'
        "blocks_per_batch = 2\ntokens_per_update = 64\nvalid_every = 0\nlr = 1.0\n"
    )
    argv = ["pretrain", "--config", str(tmp_path / "run.toml"), "--out", str(tmp_path / "run"),
            "--max-updates", "2", "--lr", "1e-3", "--warmup-updates", "1"]  # fmt: skip
    assert main(argv) == 0
    assert "pretrained:" in capsys.readouterr().out
    records = read_log(tmp_path / "run/log.jsonl")
    assert [r["step"] for r in records] == [1, 2] and records[1]["lr"] == 1e-3
    assert main(argv) == 2  # the run exists: refuses without --resume or --overwrite


def test_activation_checkpointing_trains_the_same(tmp_path):
    """Recomputing each layer in backward changes memory, not the result: the same losses
    (dropout off here; `test_checkpointed_layers_replay_the_dropout_masks` has it on)."""
    write_shards(tmp_path / "data", tokens=1600)
    model = {"dropout": 0.0, "attention_dropout": 0.0}
    plain = pretrain(tiny(tmp_path / "data", tmp_path / "a", model=model), progress=False)
    recomputed = pretrain(
        tiny(tmp_path / "data", tmp_path / "b", model=model, activation_checkpointing=True),
        progress=False,
    )
    assert recomputed.losses == pytest.approx(plain.losses, rel=1e-6)
    assert plain.losses[-1] < plain.losses[0]


def test_checkpointed_layers_recompute_in_backward():
    from biogpt import BioGPT, ModelConfig
    from biogpt.training.pretrain import checkpoint_layers

    calls = []
    model = BioGPT(ModelConfig.from_name("tiny")).train()
    checkpoint_layers(model)
    for layer in model.biogpt.layers:
        layer.fc1.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(4, 512, (2, 12))
    model(ids, labels=ids).loss.backward()
    assert len(calls) == 2 * len(model.biogpt.layers)  # forward, then again in backward


def test_checkpointed_layers_replay_the_dropout_masks():
    """With dropout on, recomputation must draw the same masks: same loss, same gradients."""
    from biogpt import BioGPT, ModelConfig
    from biogpt.training.pretrain import checkpoint_layers

    def gradients(checkpointed: bool) -> tuple[float, list[torch.Tensor]]:
        torch.manual_seed(0)
        model = BioGPT(ModelConfig.from_name("tiny", dropout=0.3, attention_dropout=0.3))
        model.train()
        if checkpointed:
            checkpoint_layers(model)
        ids = torch.randint(4, 512, (2, 12), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)  # the dropout stream
        loss = model(ids, labels=ids).loss
        loss.backward()
        return float(loss.detach()), [p.grad for p in model.parameters()]

    plain_loss, plain = gradients(False)
    loss, recomputed = gradients(True)
    assert loss == plain_loss
    for a, b in zip(recomputed, plain, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.slow
def test_compiled_layers_train_the_same(tmp_path):
    """torch.compile (inductor, needs a C compiler; about 25 s here) gives the same losses."""
    write_shards(tmp_path / "data", tokens=1600)
    model = {"dropout": 0.0, "attention_dropout": 0.0}
    plain = pretrain(tiny(tmp_path / "data", tmp_path / "a", model=model), progress=False)
    compiled = pretrain(
        tiny(tmp_path / "data", tmp_path / "b", model=model, compile=True), progress=False
    )
    assert compiled.losses == pytest.approx(plain.losses, rel=1e-5)
