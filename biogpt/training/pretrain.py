"""Pretraining BioGPT from scratch on token shards, with the one training loop.

The paper's recipe (facts section 3, "Pretraining"): 1024-token samples cut from the stream
of PubMed documents separated by `</s>`, Adam (0.9, 0.98), peak lr 2e-4, inverse-sqrt
schedule after 20k warmup updates, 200k updates. This module adds only what pretraining
needs around `biogpt.training.loop.train`: a `BatchSource` over token shards (`ShardBatches`), a
config (`PretrainConfig`), and the process setup (torchrun, DDP or FSDP, torch.compile,
activation checkpointing).

    torchrun --nproc_per_node 8 -m biogpt pretrain --data shards/ --out runs/pt --preset biogpt

Shard directory (written and read by `biogpt.corpus.shards`): `manifest.json` with the token dtype and the
files of each split; each `.bin` file holds raw little-endian tokens, documents one after
another, each followed by `</s>` (2).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from biogpt.corpus.shards import TokenShards
from biogpt.errors import BioGPTError
from biogpt.training.batching import Batch
from biogpt.training.config import (
    DTYPES,
    RANGES,
    TrainConfig,
    TrainResult,
    check_ranges,
    setting,
)
from biogpt.training.loop import train
from biogpt.training.loss import TokenLoss
from biogpt.training.settings import (
    check_out_dir,
    compare,
    local_path,
    read_run,
    refuse_other_command,
)
from biogpt.training.state import world

if TYPE_CHECKING:
    from biogpt.tokenizer import Tokenizer

# --- Batches --------------------------------------------------------------------------------


class ShardBatches:
    """A `BatchSource` of contiguous token blocks (fairseq's break mode "none").

    Block i is tokens [i * (S - 1), i * (S - 1) + S) of the split's stream, S =
    `tokens_per_sample`: consecutive blocks share one token, so every token after the first
    is a prediction target exactly once, as in fairseq, whose block i reads its first input
    token from the end of block i - 1. Documents run across block boundaries; the `</s>`
    between them is the only separator, as in the paper. The stream's tail (less than a
    block) is dropped.

    An epoch shuffles the blocks with a generator seeded by (seed, epoch) and cuts the order
    into updates of `blocks_per_update` blocks (the tail of fewer is dropped, so every update
    and every rank does the same work). With `world_size` W, rank r takes the r-th of W
    contiguous slices of each update and cuts it into micro-batches of `blocks_per_batch`
    rows. The global batch of update u is therefore the same blocks whatever W and the
    micro-batch size are: 2 processes of micro-batch b see what 1 process of 2b sees.

    Why not `TokenShards.sample` (stride S, input shifted right, S targets per block): the
    loop's labels are aligned with the inputs, so S positions give S - 1 predictions, and
    S + 1 positions would exceed the model's 1024. Overlapping blocks give the same coverage.
    """

    def __init__(
        self,
        directory: str | Path,
        split: str = "train",
        tokens_per_sample: int = 1024,
        blocks_per_batch: int = 8,
        tokens_per_update: int = 0,
        seed: int = 1,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        max_blocks: int = 0,
    ) -> None:
        if tokens_per_sample < 2 or blocks_per_batch < 1:
            raise BioGPTError("tokens_per_sample must be >= 2 and blocks_per_batch >= 1")
        if not 0 <= rank < world_size:
            raise BioGPTError(f"rank {rank} is outside a world of {world_size}")
        self.shards = TokenShards(directory, split)
        self.split = split
        self.length = tokens_per_sample
        self.rows = blocks_per_batch
        self.seed, self.shuffle = seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.blocks = max(0, (len(self.shards) - 1) // (tokens_per_sample - 1))
        if max_blocks > 0:
            self.blocks = min(self.blocks, max_blocks)  # e.g. a bounded validation set
        # Whole micro-batches on every rank: round the update up to a multiple of W * rows.
        unit = world_size * blocks_per_batch
        wanted = max(1, math.ceil(tokens_per_update / tokens_per_sample))
        self.blocks_per_update = math.ceil(wanted / unit) * unit
        if self.blocks < self.blocks_per_update:
            raise BioGPTError(
                f"{directory} ({split}): {self.blocks} blocks of {tokens_per_sample} tokens, "
                f"fewer than one update ({self.blocks_per_update} blocks)"
            )

    def order(self, epoch: int) -> np.ndarray:
        """Block indices in the order epoch `epoch` visits them (deterministic)."""
        if not self.shuffle:
            return np.arange(self.blocks)
        return np.random.default_rng([self.seed, epoch]).permutation(self.blocks)

    def updates_in_epoch(self, epoch: int) -> int:
        return self.blocks // self.blocks_per_update

    def updates(self, epoch: int, start: int = 0) -> Iterator[list[Batch]]:
        order = self.order(epoch)
        share = self.blocks_per_update // self.world_size  # this rank's blocks per update
        for update in range(start, self.updates_in_epoch(epoch)):
            first = update * self.blocks_per_update + self.rank * share
            mine = order[first : first + share]
            yield [self._batch(mine[i : i + self.rows]) for i in range(0, share, self.rows)]

    def _batch(self, blocks: np.ndarray) -> Batch:
        step = self.length - 1
        rows = np.stack([self.shards.read(int(b) * step, self.length) for b in blocks])
        ids = torch.from_numpy(rows)  # (B, S) int64
        n = ids.numel()
        return Batch(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            labels=ids,  # unshifted: the loss shifts; no padding in a token stream
            tokens=n,
            target_tokens=n - ids.shape[0],  # each row's last position predicts nothing
        )


# --- Config ---------------------------------------------------------------------------------

DISTRIBUTED = ("ddp", "fsdp")


@dataclass
class PretrainConfig:
    """A pretraining run. Defaults: the paper's recipe; per-GPU sizes fit an 80 GB GPU.

    Load from a TOML or JSON file with the same keys (`PretrainConfig.load`).
    """

    data: str = ""  # token shard directory (manifest.json, train/ and valid/ splits)
    out: str = "runs/pretrain"  # run directory: log.jsonl, loss.png, checkpoints/
    preset: str = "biogpt"  # model shape (biogpt.config presets); ignored with init_from
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides, e.g. dropout
    init_from: str = ""  # a checkpoint to start from instead of random weights (fresh optimiser)
    tokens_per_sample: int = 1024  # block length, the paper's; at most the model's positions
    lr: float = 2e-4  # peak learning rate (the paper)
    warmup_updates: int = 20000  # linear warmup (the paper: 20k)
    # The optimiser and schedule below are fine-tuning's (`TrainConfig`), which are fairseq's
    # and the paper's for pretraining too.
    warmup_init_lr: float = TrainConfig.warmup_init_lr
    schedule: str = TrainConfig.schedule  # "inverse_sqrt" (the paper) | "cosine" (to min_lr)
    min_lr: float = TrainConfig.min_lr  # where "cosine" ends at max_updates
    betas: tuple[float, float] = TrainConfig.betas
    eps: float = TrainConfig.eps
    weight_decay: float = TrainConfig.weight_decay  # decoupled, on every parameter
    clip_norm: float = TrainConfig.clip_norm  # max gradient norm; 0 = none
    max_updates: int = 200000  # the paper: 200k updates
    # Our choice, not the paper's (it gives 8 V100s but not the batch): 128 blocks of 1024.
    tokens_per_update: int = 131072
    blocks_per_batch: int = 8  # micro-batch rows per rank; the update accumulates them
    dtype: str = TrainConfig.dtype  # "fp32" | "bf16" (autocast; weights and Adam stay fp32)
    compile: bool = False  # torch.compile each decoder layer (regional: quick to compile)
    activation_checkpointing: bool = False  # recompute each layer's activations in backward
    distributed: str = "ddp"  # "ddp" (replicas) | "fsdp" (sharded: models too big for one GPU)
    valid_every: int = 1000  # validation loss/perplexity every n updates; 0 = never
    valid_blocks: int = 512  # validation blocks used (0 = the whole valid split)
    save_every: int = 1000  # checkpoint every n updates (and at the end)
    keep_last: int = TrainConfig.keep_last  # checkpoints kept
    log_every: int = TrainConfig.log_every  # progress bar refresh and log flush interval
    seed: int = TrainConfig.seed  # init, data order and dropout (rank r: seed + r)
    device: str = "auto"  # "auto": cuda:LOCAL_RANK when CUDA is available, else cpu

    def __post_init__(self) -> None:
        beta1, beta2 = self.betas  # a list after JSON or TOML
        self.betas = (beta1, beta2)
        if self.schedule not in ("inverse_sqrt", "cosine"):
            raise BioGPTError(
                f"{setting('schedule', self.schedule)}: expected inverse_sqrt or cosine"
            )
        self._check_types()
        check_ranges(vars(self), PRETRAIN_RANGES)
        for name, allowed in (("distributed", DISTRIBUTED), ("dtype", DTYPES)):
            if getattr(self, name) not in allowed:
                raise BioGPTError(
                    f"{setting(name, getattr(self, name))}: expected {' or '.join(allowed)}"
                )

    def _check_types(self) -> None:
        """A one-line error for a value of the wrong kind (a config file's `lr = "fast"`)."""

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool)

        for option in fields(self):
            value = getattr(self, option.name)
            default = option.default
            if default is MISSING:  # the fields with a factory: `model`, a table
                default = option.default_factory()  # type: ignore[operator]
            if isinstance(default, bool):
                fits = isinstance(value, bool)
            elif isinstance(default, int):
                fits = number(value) and isinstance(value, int)
            elif isinstance(default, float):
                fits = number(value)
            elif isinstance(default, tuple):  # betas
                fits = len(value) == len(default) and all(map(number, value))
            else:
                fits = isinstance(value, type(default))
            if not fits:
                kind = {"int": "a whole number", "float": "a number", "str": "text",
                        "dict": "a table", "bool": "true or false", "tuple": "two numbers"}  # fmt: skip
                raise BioGPTError(
                    f"{setting(option.name, value)}: expected {kind[type(default).__name__]}"
                )

    @classmethod
    def read(cls, path: str | Path) -> dict[str, Any]:
        """The keys of a `.toml` or `.json` config file, checked to be PretrainConfig fields."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            why = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
            raise BioGPTError(f"--config {path}: cannot read it ({why})") from None
        if path.suffix == ".toml":
            try:
                import tomllib  # type: ignore[import-not-found]  # 3.11+; mypy checks 3.10
            except ImportError:  # Python 3.10: no TOML reader in the standard library
                raise BioGPTError(
                    f"--config {path}: TOML needs Python 3.11; use a .json file"
                ) from None
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as err:
                raise BioGPTError(f"--config {path}: not valid TOML ({err})") from None
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise BioGPTError(f"--config {path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise BioGPTError(
                f"--config {path}: expected keys and values, not a JSON {type(data).__name__}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BioGPTError(
                f"--config {path}: unknown keys {', '.join(unknown)} (the keys are the flags' "
                "long names with underscores)"
            )
        return data

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> PretrainConfig:
        """Read a `.toml` or `.json` file of PretrainConfig keys; `overrides` (not None) win."""
        data = cls.read(path)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except BioGPTError as err:
            raise BioGPTError(f"--config {path}: {err}") from None

    def save(self, path: str | Path) -> None:
        """Write this config as JSON, the keys `load` reads back."""
        saved = {**asdict(self), "betas": list(self.betas)}
        Path(path).write_text(json.dumps(saved, indent=2) + "\n", encoding="utf-8")

    def record(self) -> dict[str, Any]:
        """run.json's "pretrain" section: every field, local paths made absolute (so that a
        run resumed from another directory reads the same data)."""
        paths = {name: local_path(getattr(self, name)) for name in ("data", "init_from")}
        return {**asdict(self), "betas": list(self.betas), **paths}

    def train_config(self) -> TrainConfig:
        """The loop's settings for this run."""
        return TrainConfig(
            lr=self.lr,
            warmup_updates=self.warmup_updates,
            warmup_init_lr=self.warmup_init_lr,
            schedule=self.schedule,
            min_lr=self.min_lr,
            betas=self.betas,
            eps=self.eps,
            weight_decay=self.weight_decay,
            clip_norm=self.clip_norm,
            max_epochs=0,  # bounded by max_updates; a new epoch reshuffles the blocks
            max_updates=self.max_updates,
            tokens_per_update=self.tokens_per_update,
            max_tokens_per_batch=self.blocks_per_batch * self.tokens_per_sample,
            dtype=self.dtype,
            seed=self.seed,
            save_every_epoch=False,
            keep_last=self.keep_last,
            log_every=self.log_every,
            valid_every=self.valid_every,
            save_every_updates=self.save_every,
        )


# The numeric fields' ranges (`TrainConfig`'s, and pretraining's own).
PRETRAIN_RANGES = {
    **RANGES,
    "max_updates": (1, None, "a positive number of updates (it bounds pretraining)"),
    "tokens_per_sample": (2, None, "2 or more tokens"),
    "blocks_per_batch": (1, None, "1 or more blocks"),
    "valid_blocks": (0, None, "0 (the whole split) or more blocks"),
    "save_every": (0, None, "0 (at the end only) or more updates"),
}


# --- Process setup --------------------------------------------------------------------------


@contextmanager
def _process_group(device: torch.device) -> Iterator[None]:
    """Inside: a member of the process group torchrun describes (RANK, WORLD_SIZE and
    LOCAL_RANK in the environment), if it describes one and none is joined yet; left after."""
    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
        # Every rank done before any tears down: gloo aborts a process ("terminate called
        # without an active exception") whose peer closes the group first.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _device(config: PretrainConfig) -> torch.device:
    """The device `config.device` names; "auto" picks this rank's GPU, else the CPU."""
    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def _decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of our LM (`model.biogpt.layers`)."""
    decoder: Any = model.biogpt
    return list(decoder.layers)


def checkpoint_layers(model: nn.Module) -> None:
    """Recompute each decoder layer's activations during backward instead of storing them.

    Wraps every `DecoderLayer.forward` (an instance attribute, so weights and state-dict
    names are untouched). Non-reentrant checkpointing restores the RNG state, so dropout
    masks are the same in the recomputation. Decoding with a KV cache is never wrapped.
    """
    from torch.utils.checkpoint import checkpoint

    def wrapped(forward, x, mask, cache=None, layer=0):
        if cache is not None or not torch.is_grad_enabled():
            return forward(x, mask, cache, layer)
        return checkpoint(forward, x, mask, cache, layer, use_reentrant=False)

    for layer in _decoder_layers(model):
        layer.forward = functools.partial(wrapped, layer.forward)


def build_model(config: PretrainConfig, vocab_size: int = 0) -> nn.Module:
    """The model to pretrain: `init_from` weights, else a random `preset` (fairseq init).

    `vocab_size` is the token shards' vocabulary: a model with fewer token rows is refused
    (before a random one is built), since its embedding would fail on the first larger id.
    """
    from biogpt.api import BioGPT
    from biogpt.config import PRESETS, ModelConfig

    if config.init_from:
        model = BioGPT.from_pretrained(config.init_from)
        shape, named = model.config, f"--init-from {config.init_from}"
    else:
        shape = ModelConfig.from_name(config.preset, **config.model)
        named = f"--preset {config.preset}"
    if shape.vocab_size < vocab_size:
        fitting = [name for name, preset in PRESETS.items() if preset.vocab_size >= vocab_size]
        advice = f"--preset {fitting[0]}" if fitting else "another preset"
        raise BioGPTError(
            f"--data {config.data}: its tokens come from a vocabulary of {vocab_size} ids, "
            f"more than the {shape.vocab_size} token rows of {named}; pass {advice} or set "
            f"model = {{ vocab_size = {vocab_size} }} in --config"
        )
    if config.tokens_per_sample > shape.max_positions:
        raise BioGPTError(
            f"--tokens-per-sample {config.tokens_per_sample}: more than the "
            f"{shape.max_positions} positions of {named}"
        )
    if config.init_from:
        return model
    torch.manual_seed(config.seed)  # every rank builds the same weights
    return BioGPT(shape)


def check_shards(config: PretrainConfig) -> TokenShards:
    """The training split of `config.data`, or a one-line error naming --data."""
    if not config.data:
        raise BioGPTError("--data: required (a token shard directory; see `biogpt binarize`)")
    if not Path(config.data).is_dir():
        raise BioGPTError(
            f"--data {config.data}: no such directory (token shards; see `biogpt binarize`)"
        )
    try:
        return TokenShards(config.data, "train")
    except BioGPTError as err:
        raise BioGPTError(
            f"--data {config.data}: not token shards ({err}); see `biogpt binarize`"
        ) from None


def _shard_sources(
    config: PretrainConfig, rank: int, ranks: int
) -> tuple[ShardBatches, ShardBatches | None]:
    """This rank's training batches and, when the run validates, its validation batches."""
    batches = functools.partial(
        ShardBatches,
        config.data,
        tokens_per_sample=config.tokens_per_sample,
        blocks_per_batch=config.blocks_per_batch,
        seed=config.seed,
        rank=rank,
        world_size=ranks,
    )
    source = batches("train", tokens_per_update=config.tokens_per_update)
    if config.valid_every <= 0:
        return source, None
    # One micro-batch per rank per "update"; fixed order; at most valid_blocks.
    return source, batches("valid", shuffle=False, max_blocks=config.valid_blocks)


def _tokenizer(config: PretrainConfig) -> Tokenizer | None:
    """The tokenizer the shards were made with, saved into every checkpoint; None if unknown."""
    manifest = json.loads((Path(config.data) / "manifest.json").read_text(encoding="utf-8"))
    name = manifest.get("tokenizer")
    if not isinstance(name, str) or not name:
        return None
    from biogpt.tokenizer import Tokenizer

    try:
        return Tokenizer.from_pretrained(name)
    except (BioGPTError, OSError):
        return None  # a tokenizer named by a path that has moved: checkpoints go without


def _wrap(model: nn.Module, config: PretrainConfig, device: torch.device) -> nn.Module:
    """TokenLoss around the LM, then DDP or FSDP when distributed (see `biogpt.training.loop`)."""
    loss = TokenLoss(model)
    if world()[1] == 1:
        return loss
    if config.distributed == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in _decoder_layers(model):
            fully_shard(layer)  # one all-gather per layer, freed after use
        fully_shard(loss)  # embeddings (tied head) and final norm
        return loss
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(loss, device_ids=ids)


def pretrain(
    config: PretrainConfig, resume: bool = False, overwrite: bool = False, progress: bool = True
) -> TrainResult:
    """Pretrain a causal LM on the shards in `config.data`; write the run to `config.out`.

    Launched by torchrun, every process calls this: ranks join the process group (gloo on
    CPU, nccl on CUDA), read disjoint slices of each update, and synchronise gradients
    through DDP or FSDP; only rank 0 writes. `resume` continues `config.out` from its last
    checkpoint (each rank restores its own RNG and the data position), with the config it
    was started with (its run.json; only `max_updates` may grow, and the settings of
    `biogpt.training.settings.FREE` change). The run directory, the resumed settings and the
    shards (their vocabulary against the model's) are checked before the model is built.
    """
    out = Path(config.out)
    check_out_dir(out, resume, overwrite)
    recorded = read_run(out) if resume else None
    if recorded is not None:
        refuse_other_command(out, recorded, "pretrain")
        compare(out, recorded.get("pretrain") or {}, config.record())  # longer: said by train
    shards = check_shards(config)
    device = _device(config)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with _process_group(device):
        rank, ranks = world()
        model = build_model(config, shards.vocab_size).to(device)
        if config.activation_checkpointing:
            checkpoint_layers(model)
        if config.compile:
            for layer in _decoder_layers(model):
                layer.compile()  # in place: state-dict names stay those of the model
        source, valid = _shard_sources(config, rank, ranks)
        tokenizer = _tokenizer(config)
        wrapped = _wrap(model, config, device)
        if rank == 0:
            Path(config.out).mkdir(parents=True, exist_ok=True)
        result = train(
            wrapped,
            source,
            config.train_config(),
            config.out,
            valid_samples=valid,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
            tokenizer=tokenizer,
            record={"command": "pretrain", "pretrain": config.record()},
        )
        if rank == 0:
            config.save(Path(config.out) / "pretrain_config.json")
        return result
