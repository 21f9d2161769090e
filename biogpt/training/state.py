"""What a training run keeps on disk besides its log: checkpoints, RNG state, averaging.

A checkpoint is a Hugging Face model directory plus `trainer_state.pt` (optimiser, position in
the data, RNG of every rank) and `trainer_state.json` (a cheap summary). `biogpt.training.loop` writes
and reads them; nothing here knows about the loop itself.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from biogpt.errors import BioGPTError
from biogpt.io import atomic_write_text
from biogpt.model import DecoderModel

if TYPE_CHECKING:
    from biogpt.tokenizer import Tokenizer

STATE_FILE = "trainer_state.pt"  # optimiser, schedule, position, RNG: what resuming needs
SUMMARY_FILE = "trainer_state.json"  # step/epoch/position, human-readable and cheap to read


# --- RNG ----------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator a training step draws from (torch, CUDA, Python, numpy)."""
    # Plain Python types only, so the state file loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (name, np.asarray(keys).tolist(), pos, has_gauss, gauss),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


# --- Ranks (all no-ops in a single process) ---------------------------------------------


def world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over ranks (float64: token counts stay exact up to 2**53)."""
    if world()[1] == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def barrier() -> None:
    """Wait for every rank (distributed runs only)."""
    if world()[1] > 1:
        dist.barrier()


# --- Checkpoints --------------------------------------------------------------------------


def _model_holding(model: nn.Module, weights: Mapping[str, Tensor]) -> nn.Module:
    """A model of `model`'s class and config holding `weights`, without allocating twice:
    built on the meta device, then given the (already gathered, CPU) tensors. Used to save a
    sharded (FSDP) model."""
    with torch.device("meta"):
        holder = type(model)(model.config)
    holder.load_state_dict(dict(weights), strict=False, assign=True)
    tie_weights = getattr(holder, "tie_weights", None)
    if callable(tie_weights):
        tie_weights()
    return holder


def save_checkpoint(
    root: Path,
    name: str,
    model: nn.Module,
    state: dict[str, Any],
    tokenizer: Tokenizer | None,
    weights: Mapping[str, Tensor] | None = None,
    extra: Callable[[Path], object] | None = None,
) -> Path:
    """Write checkpoint `root/name` into a temporary folder, then rename it into place.

    A crash mid-write leaves only a hidden temporary folder, never a half checkpoint; the
    `last` pointer moves only once the folder is complete. `weights` (a full state dict)
    replaces `model`'s own tensors, for models whose parameters are sharded across ranks.
    `extra(folder)` writes any further files (fine-tuning's task.json) into the folder.
    """
    from biogpt.checkpoint import save_model

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root))
    try:
        holder = _model_holding(model, weights) if weights is not None else model
        if not isinstance(holder, DecoderModel):
            raise BioGPTError(f"cannot save a {type(holder).__name__} as a BioGPT checkpoint")
        save_model(holder, tmp, overwrite=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp, format="both")  # checkpoints are self-contained
        if extra is not None:
            extra(tmp)
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


def prune(root: Path, keep_last: int, average_last: int) -> None:
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


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(weights, trainer state) of checkpoint `path`, on the CPU; a file that cannot be read
    (missing, truncated by a full disk, corrupt) is a one-line error naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state_file, weights_file = path / STATE_FILE, path / "model.safetensors"
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or not {"step", "epoch", "optimizer"} <= set(state):
            raise ValueError("not a trainer state")
    except Exception as err:  # torch.load raises many kinds on a damaged file
        raise BioGPTError(f"{state_file}: cannot resume from it ({_reason(err)})") from None
    try:
        weights = load_file(str(weights_file))
    except (OSError, SafetensorError, ValueError) as err:
        raise BioGPTError(f"{weights_file}: cannot resume from it ({_reason(err)})") from None
    return weights, state


def _reason(err: BaseException) -> str:
    """The first sentence of an error's message, or its kind when it has none."""
    text = str(err).strip().splitlines()
    return text[0].split(". ")[0] if text else type(err).__name__


def resume_point(out_dir: Path) -> Path | None:
    """The checkpoint a resumed run in `out_dir` continues from (`checkpoints/last`), or
    None where there is none yet."""
    last = out_dir / "checkpoints" / "last"
    if not last.is_file():
        return None
    return last.parent / last.read_text(encoding="utf-8").strip()


def check_checkpoint(path: Path) -> None:
    """A one-line error naming the file unless checkpoint `path` holds a whole trainer state
    and whole weights. Cheap checks of each file's framing, done before a resumed run loads
    anything: the zip directory that `torch.save` writes last, and the extent of the data
    that the safetensors header describes (a file cut short by a full disk fails both)."""
    state_file, weights_file = path / STATE_FILE, path / "model.safetensors"
    try:
        with zipfile.ZipFile(state_file):
            pass
    except (OSError, zipfile.BadZipFile) as err:
        raise BioGPTError(f"{state_file}: cannot resume from it ({_reason(err)})") from None
    try:
        with open(weights_file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(length))
        data = max(
            (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"),
            default=0,
        )
        size, expected = weights_file.stat().st_size, 8 + length + data
        if size != expected:
            raise ValueError(f"{size} bytes where its header describes {expected}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise BioGPTError(f"{weights_file}: cannot resume from it ({_reason(err)})") from None


def load_weights(path: Path, model: nn.Module, weights: Mapping[str, Tensor]) -> None:
    """Copy checkpoint `weights` into `model`, refusing any that do not fit."""
    missing, unexpected = model.load_state_dict(dict(weights), strict=False)
    missing = [k for k in missing if k != "output_projection.weight"]  # tied: never stored
    if missing or unexpected:
        raise BioGPTError(
            f"{path}: weights do not fit the model (missing {missing[:2]}, unexpected "
            f"{unexpected[:2]})"
        )


def is_sharded(model: nn.Module) -> bool:
    """Whether parameters are sharded across ranks (FSDP): saving then gathers them."""
    return hasattr(model, "_fsdp_wrapped_module") or any(
        type(p).__name__ == "DTensor" for p in model.parameters()
    )


def gather_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, prefix: str = ""
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(full weights, full optimiser state) of a sharded model, on the CPU of every rank.

    A collective: every rank must call it. `prefix` (the wrapper's name for the LM, `lm.`)
    is stripped from the weight names so the checkpoint has the plain model's names.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=options)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=options)
    return {k.removeprefix(prefix): v for k, v in weights.items()}, dict(optimizer_state)


def restore(
    path: Path,
    model: nn.Module,
    lm: nn.Module,
    optimizer: torch.optim.Optimizer,
    rank: int = 0,
    prefix: str = "",
) -> dict[str, Any]:
    """Load checkpoint `path` into `model` (whose bare LM is `lm`) and `optimizer`, restore
    this rank's RNG, and return the trainer state."""
    weights, state = read_checkpoint(path)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, {prefix + k: v for k, v in weights.items()}, options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    else:
        load_weights(path, lm, weights)
        optimizer.load_state_dict(state["optimizer"])
    ranks = state.get("rng_ranks")  # one per rank, in a distributed run
    set_rng_state(ranks[rank] if ranks and rank < len(ranks) else state["rng"])
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
    paths = [Path(d) for d in dirs]
    total: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for directory in paths:
        weights = load_file(str(directory / "model.safetensors"))
        if total and weights.keys() != total.keys():
            raise BioGPTError(f"{directory}: weights differ in names from {paths[0]}")
        for key, value in weights.items():
            if key not in total:
                total[key], dtypes[key] = value.to(torch.float32).clone(), value.dtype
            else:
                total[key] += value.to(torch.float32)
    mean = {k: (v / len(paths)).to(dtypes[k]).contiguous() for k, v in total.items()}

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for item in paths[0].iterdir():  # config and tokenizer, not the trainer state
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


# --- The run directory --------------------------------------------------------------------

RUN_FILES = ("checkpoints", "averaged", "log.jsonl", "loss.png", "train_config.json", "run.json")


def prepare_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless asked to resume it or to start over."""
    existing = [name for name in RUN_FILES if (out_dir / name).exists()]
    if existing and not resume:
        if not overwrite:
            raise BioGPTError(
                f"--out {out_dir}: already holds a training run ({existing[0]}); pass --resume "
                "to continue it or --overwrite to start over"
            )
        for name in existing:
            path = out_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)


def truncate_log(log: Path, step: int) -> None:
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


def plot_run(out_dir: Path, notices: set[str]) -> None:
    """Redraw `out_dir/loss.png` from its log; say once per run why it cannot."""
    from biogpt.training.plot import plot_log

    try:
        plot_log(out_dir / "log.jsonl", out_dir / "loss.png")
    except BioGPTError as err:
        if str(err) not in notices:  # say it once per run, not once per epoch
            notices.add(str(err))
            print(f"biogpt: loss.png skipped: {err}", file=sys.stderr)
