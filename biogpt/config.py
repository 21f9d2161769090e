"""Model configuration: one typed dataclass, named presets, and the Hugging Face `config.json`.

The dataclass is the single source of truth for a model's shape. `config.json` is only a save
format: `from_hf_dict` / `to_hf_dict` translate it, and keys this project does not use are
kept verbatim in `extra` so that reading then writing a file gives the same JSON back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from biogpt.errors import BioGPTError

# Our field name -> the Hugging Face BioGptConfig key that stores it.
_HF_KEYS: dict[str, str] = {
    "vocab_size": "vocab_size",
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size",
    "max_positions": "max_position_embeddings",
    "activation": "hidden_act",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "activation_dropout": "activation_dropout",
    "layerdrop": "layerdrop",
    "scale_embedding": "scale_embedding",
    "pad_token_id": "pad_token_id",
    "bos_token_id": "bos_token_id",
    "eos_token_id": "eos_token_id",
    "tie_word_embeddings": "tie_word_embeddings",
    "initializer_range": "initializer_range",
}


@dataclass
class ModelConfig:
    """Shape and regularisation of a BioGPT decoder.

    Defaults are those of the released 347M BioGPT (`ModelConfig.from_name("biogpt")`).
    """

    vocab_size: int = 42384  # 4 specials + 42,380 dict.txt lines (the last 7 are padding words)
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    max_positions: int = 1024  # the position table has max_positions + 2 rows (fairseq offset)
    activation: str = "gelu"  # exact erf GELU, as both releases compute
    dropout: float = 0.1  # embeddings and residual branches
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layerdrop: float = 0.0  # kept for config round trips; the released models never use it
    # Both releases compute with 1e-5; the Hugging Face config file says 1e-12 but its modelling
    # code never passes it on, so the value in a config.json is kept in `extra`, not used.
    layer_norm_eps: float = 1e-5
    scale_embedding: bool = True  # token embeddings are multiplied by sqrt(hidden_size)
    pad_token_id: int = 1  # also fairseq's padding_idx: padding takes position row 1
    bos_token_id: int = 0  # `<s>`: named in the config but never used as a prefix
    eos_token_id: int = 2  # `</s>`: starts every input and separates documents
    tie_word_embeddings: bool = True
    initializer_range: float = 0.02
    num_labels: int = 2  # used only by the classification heads
    # Unused config.json keys (architectures, torch_dtype, id2label, ...), kept for round trips.
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise BioGPTError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_positions"):
            if getattr(self, name) <= 0:
                raise BioGPTError(f"config {name} must be positive, got {getattr(self, name)}")
        if self.activation != "gelu":
            raise BioGPTError(
                f"activation {self.activation!r} is not supported (BioGPT uses 'gelu')"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def embed_scale(self) -> float:
        return self.hidden_size**0.5 if self.scale_embedding else 1.0

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> ModelConfig:
        """A preset by name (see `PRESETS`), with any field overridden."""
        if name not in PRESETS:
            raise BioGPTError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)

    def num_parameters(self) -> int:
        """Parameters of the causal LM, the tied head counted once."""
        h, f = self.hidden_size, self.intermediate_size
        per_layer = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h
        embeddings = self.vocab_size * h + (self.max_positions + 2) * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return embeddings + self.num_layers * per_layer + 2 * h + head

    # --- Hugging Face config.json ---------------------------------------------------------

    @classmethod
    def from_hf_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Read a Hugging Face BioGPT `config.json` dictionary."""
        model_type = data.get("model_type", "biogpt")
        if model_type != "biogpt":
            raise BioGPTError(f"config.json has model_type {model_type!r}, expected 'biogpt'")
        kwargs: dict[str, Any] = {}
        extra = dict(data)
        for ours, theirs in _HF_KEYS.items():
            if theirs in extra:
                kwargs[ours] = extra.pop(theirs)
        if "num_labels" in extra:
            kwargs["num_labels"] = extra.pop("num_labels")
        elif isinstance(extra.get("id2label"), dict):
            kwargs["num_labels"] = len(extra["id2label"])
        return cls(**kwargs, extra=extra)

    def to_hf_dict(self) -> dict[str, Any]:
        """The Hugging Face `config.json` dictionary of this config."""
        data: dict[str, Any] = {
            "model_type": "biogpt",
            "architectures": ["BioGptForCausalLM"],
            "layer_norm_eps": 1e-12,  # what the released config.json says; see layer_norm_eps above
        }
        data.update({theirs: getattr(self, ours) for ours, theirs in _HF_KEYS.items()})
        if self.num_labels != 2 and "id2label" not in self.extra:
            data["num_labels"] = self.num_labels
        data.update(self.extra)
        return data

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a `config.json` file (Hugging Face layout)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BioGPTError(f"{path}: config file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BioGPTError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise BioGPTError(f"{path}: expected a JSON object, found {type(data).__name__}")
        try:
            return cls.from_hf_dict(data)
        except TypeError as err:  # a value of the wrong type reaching the dataclass
            raise BioGPTError(f"{path}: {err}") from None
        except BioGPTError as err:
            raise BioGPTError(f"{path}: {err}") from None

    def save(self, path: str | Path) -> None:
        """Write `config.json` (Hugging Face layout)."""
        from biogpt.io import atomic_write_text

        atomic_write_text(
            Path(path), json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # The released models.
    "biogpt": ModelConfig(),
    "biogpt-large": ModelConfig(
        vocab_size=57717,
        hidden_size=1600,
        num_layers=48,
        num_heads=25,
        intermediate_size=6400,
        max_positions=2048,
    ),
    # Small shapes for experiments and the built-in demonstration model; they keep the
    # released vocabulary so the bundled tokenizer fits them.
    "biogpt-small": ModelConfig(hidden_size=512, num_layers=8, num_heads=8, intermediate_size=2048),
    "biogpt-mini": ModelConfig(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=1024),
    # For unit tests: tiny everywhere, including the vocabulary.
    "tiny": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_positions=64,
    ),
}
