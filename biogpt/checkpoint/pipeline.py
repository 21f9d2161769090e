"""Checkpoints: read every layout BioGPT weights come in, write the Hugging Face one.

This is the one place that knows checkpoint names (fairseq's own are in
`biogpt.checkpoint.fairseq`). Three sources are understood:

- a Hugging Face directory: `config.json` plus `model.safetensors` (or sharded safetensors
  with `model.safetensors.index.json`, or `pytorch_model.bin`); the tied output projection
  may be present or absent, and `BioGptModel` files lack the `biogpt.` prefix;
- a fairseq checkpoint (`checkpoint.pt`, or its directory with `dict.txt` and `bpecodes`):
  weights under `model` named `decoder.*`, hyper-parameters under `cfg["model"]` or `args`;
- a Hub id such as `microsoft/biogpt` (needs the optional `huggingface_hub`).

Reading yields a `RawCheckpoint` (config + state dict in our names); `load_model` then
builds the model on the `meta` device, so no time is spent on random weights that would be
overwritten, and assigns the checked tensors. Every failure is a one-line `BioGPTError`
that names the file.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from biogpt.checkpoint.fairseq import TIED_HEAD, count_layers, read_fairseq
from biogpt.checkpoint.tensors import read_pickle, read_safetensors
from biogpt.config import ModelConfig
from biogpt.errors import BioGPTError
from biogpt.io import atomic_path, atomic_write_text
from biogpt.model import (
    BioGPT,
    BioGPTForSequenceClassification,
    BioGPTForTokenClassification,
    DecoderModel,
)
from biogpt.tokenizer import Tokenizer

# Names that load a model shipped with (or downloaded by) the package, consulted before the
# file system and the Hub. "mini" is the demonstration model shipped inside the package
# (configs/mini.toml; it uses the bundled released vocabulary, so it ships no tokenizer files).
_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
BUNDLED_MODELS: dict[str, Path] = {
    name: _MODELS_DIR / name for name in ("mini",) if (_MODELS_DIR / name / "config.json").is_file()
}

# Hugging Face class name <-> ours. The first entry is what a fairseq checkpoint holds.
ARCHITECTURES: dict[str, type[DecoderModel]] = {
    "BioGptForCausalLM": BioGPT,
    "BioGptForSequenceClassification": BioGPTForSequenceClassification,
    "BioGptForTokenClassification": BioGPTForTokenClassification,
}

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
# Weight files of a Hugging Face directory, in the order transformers prefers them.
HF_WEIGHT_FILES = (
    SAFETENSORS_FILE,
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
FAIRSEQ_FILE = "checkpoint.pt"
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "dict.txt",
    "bpecodes",
)
# Heads of the other classes: a checkpoint of one class may be loaded into another.
HEAD_KEYS = frozenset({TIED_HEAD, "score.weight", "classifier.weight", "classifier.bias"})
HUB_TIMEOUT_S = 5.0  # seconds to wait for the Hub before falling back to the local cache

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from a dtype or a name ("fp32", "bf16", "fp16", ...).

    None means float32; "auto" returns None, meaning: keep the dtype the file stores.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise BioGPTError(f"dtype {dtype} is not a floating-point type")
        return dtype
    name = str(dtype).lower().removeprefix("torch.")
    if name == "auto":
        return None
    if name not in _DTYPES:
        raise BioGPTError(f"unknown dtype {dtype!r}; choose one of {', '.join(_DTYPES)}, auto")
    return _DTYPES[name]


# --- Finding the checkpoint ---------------------------------------------------------------

# "name" or "owner/name", the shape of a Hub repository id.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_FILE_SUFFIXES = (".pt", ".bin", ".safetensors", ".json")


def resolve_source(path_or_id: str | Path) -> Path:
    """The local file or directory a checkpoint name refers to, downloading Hub ids."""
    name = str(path_or_id)
    if name in BUNDLED_MODELS:
        return BUNDLED_MODELS[name]
    path = Path(name).expanduser()
    if path.exists():
        return path
    looks_like_hub_id = _HUB_ID.match(name) and not name.endswith(_FILE_SUFFIXES)
    if isinstance(path_or_id, Path) or not looks_like_hub_id:
        raise BioGPTError(f"{path}: no such file or directory")
    return _download(name)


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def checkpoint_hash(path_or_name: str | Path) -> str:
    """SHA-256 over a model's weight files (name and bytes of each, sorted by name): the
    file itself, or the weight files of its directory; a bundled name (`mini`) is its
    directory. What a result records to name the exact weights that produced it."""
    path = (
        resolve_source(path_or_name) if str(path_or_name) in BUNDLED_MODELS else Path(path_or_name)
    )
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)
    )  # fmt: skip
    if not files:
        raise BioGPTError(f"{path}: no weights file (*.safetensors, *.bin, *.pt)")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode("utf-8") + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _download(repo_id: str) -> Path:
    """Fetch config, weights and tokenizer files of a Hub model into the local cache."""
    try:
        import huggingface_hub
    except ImportError:
        raise BioGPTError(
            f"{repo_id}: not a local path, and downloading from the Hugging Face Hub needs "
            "huggingface_hub: pip install 'biogpt[hub]'"
        ) from None
    from huggingface_hub import errors

    def fetch(patterns: list[str]) -> Path:
        try:
            return Path(
                huggingface_hub.snapshot_download(
                    repo_id, allow_patterns=patterns, etag_timeout=HUB_TIMEOUT_S
                )
            )
        except errors.GatedRepoError:
            raise BioGPTError(
                f"{repo_id}: the Hub model is gated; log in with `hf auth login` after "
                "accepting its terms"
            ) from None
        except errors.RepositoryNotFoundError:
            raise BioGPTError(
                f"{repo_id}: not a local path, and no such model on the Hugging Face Hub"
            ) from None
        except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError):
            raise BioGPTError(
                f"{repo_id}: not a local path, and the Hugging Face Hub cannot be reached "
                "(offline?) and has no cached copy; download it once online or pass a directory"
            ) from None
        except Exception as err:  # the HTTP stack raises many unrelated types
            first_line = (str(err).splitlines() or [""])[0]
            raise BioGPTError(
                f"{repo_id}: download from the Hugging Face Hub failed "
                f"({type(err).__name__}: {first_line})"
            ) from None

    local = fetch(
        ["config.json", "*.safetensors", "model.safetensors.index.json", *TOKENIZER_FILES]
    )
    if not any(local.glob("*.safetensors")):
        # Older repositories only have the pickled format; fetch it only when needed.
        local = fetch(["pytorch_model*.bin", "pytorch_model.bin.index.json"])
    return local


# --- Reading ------------------------------------------------------------------------------


@dataclass
class RawCheckpoint:
    """A checkpoint as read from disk: our config and a state dict in our (HF) names."""

    config: ModelConfig
    state: dict[str, Tensor]
    origin: Path  # the file that error messages name
    architecture: str = "BioGptForCausalLM"
    layout: str = "hf"  # or "fairseq"


def read_checkpoint(
    path: Path, trust_pickle: bool = False, dtype: torch.dtype | None = None
) -> RawCheckpoint:
    """Read a Hugging Face or fairseq directory, or a single weights file, from disk.
    `dtype`: cast the floating-point tensors of safetensors files to it as they are read
    (so that memory never holds a whole fp32 copy of a model loaded in bf16)."""
    if path.is_file():
        if path.suffix == ".pt":
            return _read_fairseq(path, trust_pickle)
        return _read_hf(path.parent, path, trust_pickle, dtype)
    for name in HF_WEIGHT_FILES:
        if (path / name).is_file():
            return _read_hf(path, path / name, trust_pickle, dtype)
    if (path / FAIRSEQ_FILE).is_file():
        return _read_fairseq(path / FAIRSEQ_FILE, trust_pickle)
    pickles = sorted(path.glob("*.pt"))
    if len(pickles) == 1:
        return _read_fairseq(pickles[0], trust_pickle)
    raise BioGPTError(
        f"{path}: no weights file (expected {SAFETENSORS_FILE}, pytorch_model.bin or {FAIRSEQ_FILE})"
    )


def _read_hf(
    directory: Path, weights: Path, trust_pickle: bool, dtype: torch.dtype | None = None
) -> RawCheckpoint:
    if not (directory / CONFIG_FILE).is_file():
        raise BioGPTError(
            f"{directory / CONFIG_FILE}: not found; the weights {weights.name} need it beside "
            "them for the model's shape"
        )
    config = ModelConfig.load(directory / CONFIG_FILE)
    if weights.name.endswith(".index.json"):
        state = _read_shards(weights, trust_pickle, dtype)
    elif weights.suffix == ".safetensors":
        state = read_safetensors(weights, dtype)
    else:
        state = read_pickle(weights, trust_pickle)
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise BioGPTError(f"{weights}: not a state dict of tensors")
    # `BioGptModel` saves the decoder alone, without the `biogpt.` prefix.
    if not any(k.startswith("biogpt.") for k in state):
        state = {(k if k in HEAD_KEYS else f"biogpt.{k}"): v for k, v in state.items()}
    architectures = config.extra.get("architectures") or ["BioGptForCausalLM"]
    return RawCheckpoint(config, state, weights, architectures[0])


def _read_shards(index: Path, trust_pickle: bool, dtype: torch.dtype | None) -> dict[str, Tensor]:
    """Merge the shards named by a `*.index.json` weight map."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        raise BioGPTError(f"{index}: not a valid shard index (no weight_map)") from None
    state: dict[str, Tensor] = {}
    for name in files:
        shard = index.parent / name
        if not shard.is_file():
            raise BioGPTError(f"{shard}: shard named in {index.name} is missing")
        if shard.suffix == ".safetensors":
            state.update(read_safetensors(shard, dtype))
        else:
            state.update(read_pickle(shard, trust_pickle))
    return state


def _read_fairseq(path: Path, trust_pickle: bool) -> RawCheckpoint:
    config, state = read_fairseq(path, trust_pickle)
    return RawCheckpoint(config, state, path, layout="fairseq")


# --- Building the model -------------------------------------------------------------------


def load_model(
    cls: type[DecoderModel],
    path_or_id: str | Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    trust_pickle: bool = False,
    num_labels: int | None = None,
) -> DecoderModel:
    """Load a checkpoint into a model of class `cls`, in eval mode.

    `path_or_id`: a Hugging Face or fairseq directory, a weights file, a bundled model name
    or a Hub id. `dtype`: a torch dtype or "fp32"/"bf16"/"fp16"; the default is float32
    whatever the file stores ("auto" keeps the file's). `trust_pickle`: allow
    full unpickling of `.pt`/`.bin` files, which can run code. `num_labels` sets the size of a freshly
    initialised classification head. A classification head missing from the checkpoint is
    initialised at random, with a warning.
    """
    if isinstance(dtype, str) and dtype.lower() == "int8":
        raise BioGPTError(
            "int8 is a CPU inference layout, not a checkpoint dtype: load with "
            "BioGPT.from_pretrained(..., dtype='int8'), or quantise a loaded model with "
            "biogpt.cpu.quantize_int8(model)"
        )
    read_as = resolve_dtype(dtype)  # a bad name fails before any reading
    checkpoint = read_checkpoint(resolve_source(path_or_id), trust_pickle, read_as)
    config = checkpoint.config
    if num_labels is not None and num_labels != config.num_labels:
        extra = {k: v for k, v in config.extra.items() if k not in ("id2label", "label2id")}
        config = replace(config, num_labels=num_labels, extra=extra)
    model = build_model(cls, config, checkpoint.state, checkpoint.origin, dtype, device)
    return model


def build_model(
    cls: type[DecoderModel],
    config: ModelConfig,
    state: dict[str, Tensor],
    origin: Path,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> DecoderModel:
    """A `cls` model with the weights of `state`, after checking they fit `config`."""
    target = resolve_dtype(dtype)
    device = torch.device(device) if device is not None else torch.device("cpu")
    # Build without memory or random initialisation; every tensor is replaced below.
    with torch.device("meta"):
        model = cls(config)
    tied = config.tie_word_embeddings and isinstance(model, BioGPT)
    state = _check_state(model, state, origin, tied)
    _check_finite(state, origin)

    def cast(t: Tensor) -> Tensor:
        wanted = target if (target is not None and t.is_floating_point()) else t.dtype
        return t.to(device=device, dtype=wanted)

    state = {k: cast(v) for k, v in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    if isinstance(model, BioGPT):
        model.tie_weights()  # assign=True replaced the embedding the head pointed to
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise BioGPTError(f"{origin}: no value for {', '.join(left[:3])}")
    return model.eval()


def _check_finite(state: dict[str, Tensor], origin: Path) -> None:
    """Refuse floating-point weights holding NaN or inf (they decode to nothing and score
    as `nan`): one pass over the tensors, the first bad one named."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int(tensor.numel() - torch.isfinite(tensor).sum())
            raise BioGPTError(f"{origin}: {key} holds {bad} NaN/inf values")


def _check_state(
    model: DecoderModel, state: dict[str, Tensor], origin: Path, tied: bool
) -> dict[str, Tensor]:
    """The state dict `model` should load: checked against the config, heads reconciled."""
    config = model.config
    layers = count_layers(state)
    if layers and layers != config.num_layers:
        raise BioGPTError(
            f"{origin}: config has num_layers={config.num_layers} but the weights have {layers} layers"
        )
    expected = {k: t.shape for k, t in model.state_dict().items()}
    if tied:
        expected.pop(TIED_HEAD)
    state = {k: v for k, v in state.items() if k in expected or k not in HEAD_KEYS}

    missing = [k for k in expected if k not in state]
    fresh = [k for k in missing if k in HEAD_KEYS and k != TIED_HEAD]
    missing = [k for k in missing if k not in fresh]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise BioGPTError(
            f"{origin}: {len(missing)} weights missing, e.g. {', '.join(missing[:3])}"
        )
    if unexpected:
        raise BioGPTError(
            f"{origin}: {len(unexpected)} unexpected weights, e.g. {', '.join(unexpected[:3])}"
        )
    for key, shape in expected.items():
        if key in state and state[key].shape != shape:
            raise BioGPTError(
                f"{origin}: {key} has shape {list(state[key].shape)} but the config expects "
                f"{list(shape)}"
            )
    if fresh:
        warnings.warn(
            f"{origin}: {', '.join(fresh)} not in the checkpoint; initialised at random, "
            "train before use",
            stacklevel=5,  # the caller of from_pretrained
        )
        for key in fresh:
            weight = torch.empty(expected[key])
            if key.endswith(".bias"):
                weight.zero_()
            else:
                weight.normal_(0.0, config.initializer_range)
            state[key] = weight
    return state


# --- Saving and converting ----------------------------------------------------------------


def architecture_name(model: DecoderModel) -> str:
    """The Hugging Face class name a model of ours corresponds to."""
    for name, cls in ARCHITECTURES.items():
        if isinstance(model, cls):
            return name
    raise BioGPTError(f"no Hugging Face architecture for {type(model).__name__}")


def check_destination(
    directory: str | Path, overwrite: bool = False, overwrite_option: str = "overwrite=True"
) -> Path:
    """A one-line error unless a checkpoint can be saved into `directory`: it is not a
    file, holds no checkpoint (unless `overwrite`, spelt `overwrite_option` in the message),
    and can be created or written. Cheap, so that a conversion can check before it reads a
    large source."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BioGPTError(f"{directory}: exists and is not a directory")
    existing = [n for n in (CONFIG_FILE, *HF_WEIGHT_FILES) if (directory / n).exists()]
    if existing and not overwrite:
        raise BioGPTError(
            f"{directory}: already holds {existing[0]}; pass {overwrite_option} to replace it"
        )
    # The nearest folder that exists is where writing starts: try it (a permission, a
    # read-only file system or /proc refuse only an actual attempt, also for root).
    base = directory.absolute()
    while not base.exists():
        base = base.parent
    if not base.is_dir():
        raise BioGPTError(f"{directory}: cannot be created, {base} is not a directory")
    try:
        tempfile.TemporaryDirectory(prefix=".biogpt-probe-", dir=base).cleanup()
    except OSError as err:
        raise BioGPTError(f"{directory}: cannot write in {base} ({err.strerror})") from None
    return directory


def save_model(model: DecoderModel, directory: str | Path, overwrite: bool = False) -> Path:
    """Write `config.json` and `model.safetensors` (Hugging Face layout) into `directory`.

    The tied output projection is left out, as transformers does. Each file is written
    atomically, weights first, so a directory with a config.json is always complete.
    Refuses a directory that already holds a checkpoint unless `overwrite`.
    """
    from safetensors.torch import save_file

    directory = check_destination(directory, overwrite, "overwrite=True (CLI --overwrite)")
    directory.mkdir(parents=True, exist_ok=True)

    state = model.state_dict()
    if isinstance(model, BioGPT) and model.config.tie_word_embeddings:
        state.pop(TIED_HEAD, None)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    with atomic_path(directory / SAFETENSORS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})

    data = model.config.to_hf_dict()
    data["architectures"] = [architecture_name(model)]
    data["dtype"] = str(model.dtype).removeprefix("torch.")
    if "torch_dtype" in data:  # the key transformers 4.x wrote; keep it truthful
        data["torch_dtype"] = data["dtype"]
    atomic_write_text(directory / CONFIG_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n")
    return directory


def convert(
    src: str | Path,
    dst: str | Path,
    overwrite: bool = False,
    trust_pickle: bool = False,
    dtype: torch.dtype | str | None = None,
    tokenizer: bool = True,
) -> Path:
    """Convert any supported checkpoint to a Hugging Face directory, vocabulary included
    unless `tokenizer` is False.

    The model class follows the source (`architectures` in config.json; fairseq is a
    causal LM). `dtype` as in `load_model` (default float32, "auto" keeps the file's).
    """
    source = resolve_source(src)
    checkpoint = read_checkpoint(source, trust_pickle)
    cls = ARCHITECTURES.get(checkpoint.architecture, BioGPT)
    model = build_model(cls, checkpoint.config, checkpoint.state, checkpoint.origin, dtype)
    dst = save_model(model, dst, overwrite=overwrite)
    # Only fairseq checkpoints have rows beyond the dictionary that the tokenizer must name.
    vocab_size = checkpoint.config.vocab_size if checkpoint.layout == "fairseq" else None
    if tokenizer:
        copy_tokenizer(source if source.is_dir() else source.parent, dst, vocab_size)
    return dst


def tokenizer_for(model_path: str | Path, vocab_size: int | None = None) -> Tokenizer:
    """The tokenizer of a checkpoint: the vocabulary files beside it (in its directory, or
    beside a weights file), else the bundled released vocabulary.

    With `vocab_size` beyond the vocabulary, the extra rows are named `learned1`,
    `learned2`, ...: the prompt tokens that BioGPT's fine-tuning appends after the
    pretrained vocabulary (fairseq checkpoints carry them without naming them), so that the
    tokenizer knows every row of the model.
    """
    path = Path(model_path)
    if not path.exists():  # a bundled name or Hub id: where it was fetched to
        path = resolve_source(model_path)
    folder = path if path.is_dir() else path.parent
    if any((folder / n).is_file() for n in TOKENIZER_FILES):
        tokenizer = Tokenizer.from_pretrained(folder)
    else:
        tokenizer = Tokenizer.from_pretrained("biogpt")
    if vocab_size is not None and vocab_size > len(tokenizer):
        extra = vocab_size - len(tokenizer)
        tokenizer.add_tokens([f"learned{i}" for i in range(1, extra + 1)])
    return tokenizer


def copy_tokenizer(src_dir: Path, dst_dir: Path, vocab_size: int | None = None) -> None:
    """Carry the vocabulary across (both the fairseq and the HF files are written), the
    prompt-token rows of a fine-tuned fairseq model named as `tokenizer_for` names them."""
    if any((src_dir / n).is_file() for n in TOKENIZER_FILES):
        tokenizer_for(src_dir, vocab_size).save_pretrained(dst_dir, format="both")
