"""The training loop: one loop for every task (and, later, pretraining).

A task changes only the samples, their loss masks and the metric hook; the loop is always
the same: plan the epoch's updates (`biogpt.data`), accumulate the gradient of each update's
micro-batches, take an optimiser step on the scheduled learning rate, log, and checkpoint at
epoch ends so that a killed job resumes to the bit.

Defaults follow BioGPT's fine-tuning (facts section 3, fairseq): Adam betas (0.9, 0.98),
eps 1e-8, weight decay 0.01 on every parameter, no clipping, inverse-sqrt schedule with a
linear warmup from 1e-7, about 32k tokens per update, fp32.

Layout of `out_dir`:
    train_config.json     the TrainConfig of the latest call
    log.jsonl             one line per optimiser step, plus validation lines
    loss.png              loss curve (needs matplotlib, the `plot` extra)
    checkpoints/epoch{N}/ config.json, model.safetensors, tokenizer files, trainer_state.pt/.json
    checkpoints/update{U}/  the same, when a run stops mid-epoch (max_updates)
    checkpoints/last      the name of the newest checkpoint
    averaged/             mean of the last `average_last` epoch checkpoints
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from biogpt.data import Batch, BatchSource, Sample, SampleBatches
from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.model import IGNORE_INDEX

if TYPE_CHECKING:
    from biogpt.tokenizer import Tokenizer

SCHEDULES = ("inverse_sqrt", "cosine", "constant")
STATE_FILE = "trainer_state.pt"  # optimiser, schedule, position, RNG: what resuming needs
SUMMARY_FILE = "trainer_state.json"  # step/epoch/position, human-readable and cheap to read


@dataclass
class TrainConfig:
    """Everything that shapes a training run. Defaults are BioGPT's fine-tuning recipe."""

    lr: float = 1e-5  # peak learning rate (the paper: 1e-5 for most tasks, 1e-4 for DDI)
    warmup_updates: int = 100  # linear warmup length in optimiser updates
    warmup_init_lr: float = 1e-7  # where the warmup starts (fairseq's warmup_init_lr)
    schedule: str = "inverse_sqrt"  # "inverse_sqrt" | "cosine" | "constant", after warmup
    min_lr: float = 0.0  # where "cosine" ends at the last update
    betas: tuple[float, float] = (0.9, 0.98)  # fairseq's Adam betas for BioGPT
    eps: float = 1e-8
    weight_decay: float = 0.01  # decoupled, on every parameter, as fairseq's Adam does
    clip_norm: float = 0.0  # max global gradient norm; 0 = no clipping (BioGPT fine-tuning)
    max_epochs: int = 1  # stop after this many epochs; 0 = no bound (then max_updates must be set)
    max_updates: int = 0  # stop after this many optimiser updates in all; 0 = no bound
    tokens_per_update: int = 32768  # accumulate micro-batches until about this many real tokens
    max_tokens_per_batch: int = 4096  # micro-batch size: rows x padded length <= this
    dtype: str = "fp32"  # "fp32" | "bf16" (autocast; weights and optimiser stay fp32)
    seed: int = 1  # data order, dropout and any other randomness
    loss: str = "full"  # "full": whole sequence (the paper); "target": loss-mask positions only
    save_every_epoch: bool = True  # write a checkpoint at the end of every epoch
    keep_last: int = 2  # checkpoints kept (0 = all); the last `average_last` epochs are kept too
    average_last: int = 0  # average the last k epoch checkpoints into averaged/ (RE uses 5)
    log_every: int = 10  # refresh the progress bar and flush log.jsonl every n updates

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # a list after a JSON round trip
        if self.schedule not in SCHEDULES:
            raise BioGPTError(f"schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.dtype not in ("fp32", "bf16"):
            raise BioGPTError(f"dtype {self.dtype!r}: expected 'fp32' or 'bf16'")
        if self.loss not in ("full", "target"):
            raise BioGPTError(f"loss {self.loss!r}: expected 'full' or 'target'")
        if self.max_epochs <= 0 and self.max_updates <= 0:
            raise BioGPTError("set max_epochs or max_updates (or both) to bound training")
        if self.max_tokens_per_batch <= 0:
            raise BioGPTError("max_tokens_per_batch must be positive")


@dataclass
class TrainResult:
    """What `train` did."""

    steps: int  # optimiser updates done in all, a resumed run's earlier ones included
    epochs: int  # epochs completed
    losses: list[float] = field(default_factory=list)  # training loss of each update of this call
    valid_loss: float | None = None  # after the last epoch, when valid_samples were given
    last_checkpoint: Path | None = None
    averaged: Path | None = None  # the averaged checkpoint, when average_last > 0
    log: Path | None = None


# --- Schedule and loss --------------------------------------------------------------------


def learning_rate(update: int, config: TrainConfig, total_updates: int = 0) -> float:
    """The learning rate of the next update, after `update` updates are done.

    fairseq's inverse_sqrt: linear from warmup_init_lr to lr over warmup_updates, then
    lr * sqrt(warmup / update). "cosine" decays from lr to min_lr at `total_updates`;
    "constant" stays at lr. A warmup of 0 starts at lr.
    """
    peak, warmup = config.lr, config.warmup_updates
    if update < warmup:
        return config.warmup_init_lr + (peak - config.warmup_init_lr) * update / warmup
    if config.schedule == "constant":
        return peak
    if config.schedule == "inverse_sqrt":
        return peak * math.sqrt(max(warmup, 1) / max(update, 1))
    if total_updates <= warmup:
        return peak
    progress = min(1.0, (update - warmup) / (total_updates - warmup))
    return config.min_lr + (peak - config.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def token_loss_sum(logits: Tensor, labels: Tensor) -> Tensor:
    """Summed next-token cross-entropy: logits (B, T, V) at t predict labels (B, T) at t+1.

    Shifting the labels left (the last column predicts nothing) instead of slicing the
    logits keeps the (B*T, V) view free of a copy. Half-precision logits are upcast: the
    log-softmax over a 42k vocabulary needs fp32.
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
    if logits.dtype != torch.float32:
        logits = logits.float()
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"
    )


def _batch_loss(model: nn.Module, input_ids: Tensor, labels: Tensor) -> Tensor:
    """Summed loss of one micro-batch (under whatever autocast the caller set).

    For our causal LM the vocabulary projection, most of a step's work at a 42k vocabulary,
    runs only on the positions that are trained: padding, each row's last position and,
    with loss="target", the source are skipped. Same loss, fewer FLOPs. Other models go
    through their `.logits`.
    """
    decoder = getattr(model, "biogpt", None)
    head = getattr(model, "output_projection", None)
    if decoder is None or head is None:
        return token_loss_sum(model(input_ids).logits, labels)
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # (B, T)
    trained = targets != IGNORE_INDEX
    hidden, _ = decoder(input_ids)  # (B, T, H)
    logits = head(hidden[trained])  # (N, V), N trained positions
    if logits.dtype != torch.float32:
        logits = logits.float()
    return F.cross_entropy(logits, targets[trained], reduction="sum")


def accumulate_gradients(
    model: nn.Module, batches: Sequence[Batch], dtype: str = "fp32"
) -> tuple[float, int]:
    """Backpropagate one update's micro-batches; returns (mean loss per token, tokens).

    Each micro-batch's summed loss is divided by the trained tokens of the whole update, so
    the accumulated gradient is that of one big batch averaged per token, however the update
    was split. Batches are right-padded, so no attention mask is passed: under the causal
    mask real tokens never see padding, and attention takes the fast mask-free path.
    """
    device = next(model.parameters()).device
    total = max(1, sum(b.target_tokens for b in batches))
    loss_sum = torch.zeros((), device=device)
    for batch in batches:
        with _autocast(device, dtype):
            loss = _batch_loss(model, batch.input_ids.to(device), batch.labels.to(device))
        (loss / total).backward()
        loss_sum += loss.detach()
    return float(loss_sum) / total, total  # one host sync per update


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def evaluate_loss(model: nn.Module, source: BatchSource, dtype: str = "fp32") -> float:
    """Mean loss per trained token over every batch of `source` (epoch 1), in eval mode."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, tokens = 0.0, 0
    for update in source.updates(1):
        for batch in update:
            with _autocast(device, dtype):
                loss = _batch_loss(model, batch.input_ids.to(device), batch.labels.to(device))
            loss_sum += float(loss)
            tokens += batch.target_tokens
    model.train(was_training)
    return loss_sum / max(1, tokens)


# --- Checkpoints --------------------------------------------------------------------------


def _rng_state() -> dict[str, Any]:
    # Plain Python types only, so the state file loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _save_checkpoint(
    root: Path, name: str, model: nn.Module, state: dict[str, Any], tokenizer: Tokenizer | None
) -> Path:
    """Write checkpoint `root/name` into a temporary folder, then rename it into place.

    A crash mid-write leaves only a hidden temporary folder, never a half checkpoint; the
    `last` pointer moves only once the folder is complete.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        model.save_pretrained(tmp, overwrite=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp, format="both")  # checkpoints are self-contained
        torch.save(state, tmp / STATE_FILE)
        summary = {k: state[k] for k in ("step", "epoch", "position", "epoch_done")}
        (tmp / SUMMARY_FILE).write_text(json.dumps(summary) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        final = root / name
        if final.exists():
            shutil.rmtree(final)  # the same point of an earlier, abandoned attempt
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    atomic_write_text(root / "last", name + "\n")
    return final


def list_checkpoints(root: str | Path) -> list[tuple[int, bool, Path]]:
    """(step, is_epoch_end, path) of every complete checkpoint under `root`, oldest first."""
    found = []
    for summary in Path(root).glob(f"*/{SUMMARY_FILE}"):
        data = json.loads(summary.read_text(encoding="utf-8"))
        found.append((int(data["step"]), bool(data["epoch_done"]), summary.parent))
    return sorted(found, key=lambda item: (item[0], item[1]))


def _prune(root: Path, keep_last: int, average_last: int) -> None:
    """Delete old checkpoints: keep the newest `keep_last` and the newest `average_last`
    epoch-end ones (averaging needs them at the end)."""
    if keep_last <= 0:
        return
    checkpoints = list_checkpoints(root)
    keep = {path for _, _, path in checkpoints[-keep_last:]}
    epochs = [path for _, epoch_done, path in checkpoints if epoch_done]
    keep.update(epochs[-average_last:] if average_last > 0 else [])
    for _, _, path in checkpoints:
        if path not in keep:
            shutil.rmtree(path)


def _load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load the weights of checkpoint `path` into `model`; return its trainer state."""
    from safetensors.torch import load_file

    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, RuntimeError) as err:
        raise BioGPTError(f"{path}: cannot read checkpoint ({err})") from None
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if k != "output_projection.weight"]  # tied: never stored
    if missing or unexpected:
        raise BioGPTError(
            f"{path}: weights do not fit the model (missing {missing[:2]}, unexpected "
            f"{unexpected[:2]})"
        )
    return state


def average_checkpoints(dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Parameter-wise mean of checkpoints `dirs` (Hugging Face layout), written to `out_dir`.

    Sums in fp32 whatever the stored dtype, then casts back. config.json and tokenizer files
    come from the first checkpoint. fairseq's average_checkpoints.py does the same for the
    BioGPT RE results (last 5 epochs).
    """
    from safetensors.torch import load_file, save_file

    if not dirs:
        raise BioGPTError("no checkpoints to average")
    dirs = [Path(d) for d in dirs]
    total: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for directory in dirs:
        weights = load_file(str(directory / "model.safetensors"))
        if total and weights.keys() != total.keys():
            raise BioGPTError(f"{directory}: weights differ in names from {dirs[0]}")
        for key, value in weights.items():
            if key not in total:
                total[key], dtypes[key] = value.to(torch.float32).clone(), value.dtype
            else:
                total[key] += value.to(torch.float32)
    mean = {k: (v / len(dirs)).to(dtypes[k]).contiguous() for k, v in total.items()}

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for item in dirs[0].iterdir():  # config and tokenizer, not the trainer state
            if item.is_file() and item.name not in ("model.safetensors", STATE_FILE, SUMMARY_FILE):
                shutil.copyfile(item, tmp / item.name)
        save_file(mean, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out_dir


# --- The loop -----------------------------------------------------------------------------

_RUN_FILES = ("checkpoints", "averaged", "log.jsonl", "loss.png", "train_config.json")


def _prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless asked to resume it or to start over."""
    existing = [name for name in _RUN_FILES if (out_dir / name).exists()]
    if existing and not resume:
        if not overwrite:
            raise BioGPTError(
                f"{out_dir}: already holds a training run ({existing[0]}); pass resume=True to "
                "continue it or overwrite=True to start over"
            )
        for name in existing:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def _truncate_log(log: Path, step: int) -> None:
    """Drop log lines written after checkpoint `step`: the resumed run writes them again."""
    if not log.exists():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line + "\n")
        except json.JSONDecodeError:
            continue  # a line torn by the crash
    atomic_write_text(log, "".join(kept))


# Redraw loss.png after an epoch only if this long has passed since the last drawing: short
# epochs would otherwise spend more time plotting than training.
PLOT_INTERVAL_S = 60.0


def _plot(out_dir: Path, notices: set[str]) -> None:
    from biogpt.plot import plot_log

    try:
        plot_log(out_dir / "log.jsonl", out_dir / "loss.png")
    except BioGPTError as err:
        if str(err) not in notices:  # say it once per run, not once per epoch
            notices.add(str(err))
            print(f"biogpt: loss.png skipped: {err}", file=sys.stderr)


def train(
    model: nn.Module,
    train_samples: Sequence[Sample] | BatchSource,
    config: TrainConfig,
    out_dir: str | Path,
    valid_samples: Sequence[Sample] | BatchSource | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer: Tokenizer | None = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
) -> TrainResult:
    """Train `model` (a causal LM returning `.logits`) on `train_samples`; write to `out_dir`.

    Samples are `(input_ids, loss_mask | None)`; a `BatchSource` may be passed instead.
    `valid_samples` give `valid_loss`/`valid_ppl` at every epoch end, and `evaluate(model)`
    any task metrics (the model is in eval mode; the returned numbers are logged).
    `resume=True` continues from `out_dir/checkpoints/last` (or starts afresh if there is
    none) with the same losses an uninterrupted run would have; `overwrite=True` deletes an
    earlier run there instead. `tokenizer` is saved into every checkpoint.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, resume, overwrite)
    ckpt_root, log_path = out_dir / "checkpoints", out_dir / "log.jsonl"
    atomic_write_text(out_dir / "train_config.json", json.dumps(asdict(config), indent=2) + "\n")

    model_config = getattr(model, "config", None)
    pad_id = getattr(model_config, "pad_token_id", 1)
    max_positions = getattr(model_config, "max_positions", None)

    def as_source(samples: Sequence[Sample] | BatchSource) -> BatchSource:
        if hasattr(samples, "updates"):
            return samples  # type: ignore[return-value]
        return SampleBatches(
            samples,  # type: ignore[arg-type]
            config.max_tokens_per_batch,
            config.tokens_per_update,
            config.seed,
            target_only=config.loss == "target",
            pad_id=pad_id,
            max_positions=max_positions,
        )

    source = as_source(train_samples)
    valid = as_source(valid_samples) if valid_samples is not None else None

    # torch's AdamW is fairseq's Adam with weight decay: both decay decoupled from the
    # gradient (p -= lr * wd * p) and bias-correct the moments. fairseq decays every
    # parameter, biases and LayerNorms included, so nothing is excluded here either.
    # foreach=True: multi-tensor updates, also on CPU where torch's default is a loop.
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=config.warmup_init_lr,
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
        foreach=True,
    )

    step, epoch, position = 0, 1, 0  # updates done; epoch in progress; its updates done
    last = ckpt_root / "last"
    if resume and last.exists():
        path = ckpt_root / last.read_text(encoding="utf-8").strip()
        state = _load_checkpoint(path, model)
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, position = state["step"], state["epoch"], state["position"]
        if state["epoch_done"]:
            epoch, position = epoch + 1, 0
        _set_rng_state(state["rng"])
        _truncate_log(log_path, step)
    else:
        _seed_everything(config.seed)
        if log_path.exists():
            log_path.unlink()  # resume=True but no checkpoint yet: start from scratch

    epochs = config.max_epochs
    if config.max_updates > 0:
        total_updates = config.max_updates
    else:
        total_updates = sum(source.updates_in_epoch(e) for e in range(1, epochs + 1))

    result = TrainResult(steps=step, epochs=epoch - 1, log=log_path)
    notices: set[str] = set()
    bar = tqdm(total=total_updates, initial=step, disable=not progress, unit="update")

    def write(record: dict[str, Any]) -> None:
        log.write(json.dumps(record) + "\n")

    def checkpoint(epoch_done: bool) -> None:
        state = {
            "step": step,
            "epoch": epoch,
            "position": position,
            "epoch_done": epoch_done,
            "optimizer": optimizer.state_dict(),
            "scheduler": {"schedule": config.schedule, "update": step},
            "rng": _rng_state(),
            "config": asdict(config),
        }
        name = f"epoch{epoch}" if epoch_done else f"update{step}"
        result.last_checkpoint = _save_checkpoint(ckpt_root, name, model, state, tokenizer)
        _prune(ckpt_root, config.keep_last, config.average_last)

    def out_of_updates() -> bool:
        return config.max_updates > 0 and step >= config.max_updates

    model.train()
    last_plot = time.monotonic()
    with open(log_path, "a", encoding="utf-8") as log, bar:
        while (epochs <= 0 or epoch <= epochs) and not out_of_updates():
            for batches in source.updates(epoch, position):
                lr = learning_rate(step, config, total_updates)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                began = time.perf_counter()
                loss, target_tokens = accumulate_gradients(model, batches, config.dtype)
                record: dict[str, Any] = {}
                if config.clip_norm > 0:
                    norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
                    record["grad_norm"] = float(norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step, position = step + 1, position + 1
                tokens = sum(b.tokens for b in batches)
                speed = tokens / (time.perf_counter() - began)
                write(
                    {"step": step, "epoch": epoch, "loss": loss, "lr": lr, "tokens": tokens,
                     "target_tokens": target_tokens, "tokens_per_s": speed, **record}
                )  # fmt: skip
                result.losses.append(loss)
                bar.update(1)
                if step % config.log_every == 0:
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{speed:.0f}")
                    log.flush()
                if out_of_updates():
                    break
            if position < source.updates_in_epoch(epoch):
                checkpoint(epoch_done=False)  # stopped mid-epoch: keep the exact position
                break
            metrics: dict[str, Any] = {}
            if valid is not None:
                result.valid_loss = evaluate_loss(model, valid, config.dtype)
                metrics["valid_loss"] = result.valid_loss
                metrics["valid_ppl"] = math.exp(min(result.valid_loss, 700.0))
            if evaluate is not None:
                model.eval()
                metrics.update(evaluate(model))
                model.train()
            if metrics:
                write({"step": step, "epoch": epoch, **metrics})
                bar.write(
                    f"epoch {epoch}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                )
            log.flush()
            if config.save_every_epoch or epoch == epochs or out_of_updates():
                checkpoint(epoch_done=True)
            result.epochs = epoch
            if time.monotonic() - last_plot > PLOT_INTERVAL_S:
                _plot(out_dir, notices)
                last_plot = time.monotonic()
            epoch, position = epoch + 1, 0

    result.steps = step
    if config.average_last > 0:
        epochs_saved = [p for _, done, p in list_checkpoints(ckpt_root) if done]
        chosen = epochs_saved[-config.average_last :]
        if len(chosen) < config.average_last:
            print(
                f"biogpt: averaging {len(chosen)} epoch checkpoints, fewer than asked",
                file=sys.stderr,
            )
        if chosen:
            result.averaged = average_checkpoints(chosen, out_dir / "averaged")
    _plot(out_dir, notices)
    return result
