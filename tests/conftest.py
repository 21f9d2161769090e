"""Helpers the tests share, as fixtures: small random models and hand-built checkpoints.

Every test runs on the CPU in seconds with tiny configs; no test needs the network.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from shared_data import DATA, NO_DATA

from biogpt import BioGPT
from biogpt.config import ModelConfig


def _lively_model(seed: int, eos_boost: float = 1.0, **overrides) -> BioGPT:
    """A random tiny model whose greedy output is not one token repeated. With the default
    init the scaled token embedding dominates the residual stream and the tied head predicts
    the input token again; small embeddings and wide layer weights make the logits depend on
    the context. `eos_boost` scales the `</s>` embedding (tied to its output row) so that
    hypotheses end early and often."""
    config = ModelConfig.from_name("tiny", dropout=0.0, attention_dropout=0.0, **overrides)
    torch.manual_seed(seed)
    model = BioGPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.02 if "embed_tokens" in name else 0.5)
        model.biogpt.embed_tokens.weight[2] *= eos_boost
    return model


@pytest.fixture
def lively_model() -> Callable[..., BioGPT]:
    """`lively_model(seed, eos_boost=1.0, **config overrides)`: see `_lively_model`."""
    return _lively_model


FAIRSEQ_HPARAMS = dict(
    decoder_layers=2, decoder_embed_dim=64, decoder_attention_heads=4, decoder_ffn_embed_dim=128,
    max_target_positions=64, tokens_per_sample=64, dropout=0.1, attention_dropout=0.1,
    activation_dropout=0.0, share_decoder_input_output_embed=True, no_scale_embedding=False,
    activation_fn="gelu", decoder_normalize_before=True, decoder_learned_pos=True,
    arch="transformer_lm_biogpt",
)  # fmt: skip


def _fairseq_checkpoint(path: Path, model: BioGPT, style: str = "cfg-namespace", **extra) -> Path:
    """Write `model` as fairseq does: `decoder.*` weights under `model`, hyper-parameters
    under `cfg["model"]` (Namespace or dict) or `args`, plus the usual bookkeeping."""
    weights = {}
    for key, value in model.state_dict().items():
        name = (
            key.replace("biogpt.", "decoder.", 1) if key.startswith("biogpt.") else f"decoder.{key}"
        )
        weights[name] = value.clone()
    weights["decoder.version"] = torch.tensor([3.0])
    c = model.config
    hparams = dict(
        FAIRSEQ_HPARAMS,
        decoder_layers=c.num_layers,
        decoder_embed_dim=c.hidden_size,
        decoder_attention_heads=c.num_heads,
        decoder_ffn_embed_dim=c.intermediate_size,
        max_target_positions=c.max_positions,
        tokens_per_sample=c.max_positions,
    )
    data = {"model": weights, "extra_state": {"epoch": 3}, "optimizer_history": [], **extra}
    if style == "cfg-namespace":
        data["cfg"] = {
            "model": argparse.Namespace(**hparams),
            "task": {"_name": "language_modeling"},
        }
    elif style == "cfg-dict":
        data["cfg"] = {"model": hparams}
    else:
        data["args"] = argparse.Namespace(**hparams)
    torch.save(data, path)
    return path


@pytest.fixture
def fairseq_checkpoint() -> Callable[..., Path]:
    """`fairseq_checkpoint(path, model, style="cfg-namespace", **extra)`: see
    `_fairseq_checkpoint`."""
    return _fairseq_checkpoint


@pytest.fixture
def error_line(capsys: pytest.CaptureFixture[str]) -> Callable[[], str]:
    """`error_line()`: the one line a refused command printed on stderr (and nothing on
    stdout), read from capsys."""

    def read() -> str:
        out, err = capsys.readouterr()
        assert out == ""
        lines = err.splitlines()
        assert len(lines) == 1, err
        return lines[0]

    return read


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """PyTorch on one thread for a module: the same sums in the same order whatever else
    runs on the machine (logs that compare bit for bit), and tiny matrices run faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bc5cdr_two_documents(tmp_path_factory) -> Path:
    """A data root holding the first two BC5CDR training documents (253 and 103 tokens)."""
    if not DATA.is_dir():
        pytest.skip(NO_DATA)
    root = tmp_path_factory.mktemp("bc5cdr-two")
    (root / "bc5cdr").mkdir()
    documents = json.loads((DATA / "bc5cdr" / "train.json").read_text())
    (root / "bc5cdr" / "train.json").write_text(json.dumps(dict(list(documents.items())[:2])))
    shutil.copyfile(
        DATA / "bc5cdr" / "train.entities.json", root / "bc5cdr" / "train.entities.json"
    )
    return root


@pytest.fixture(scope="module")
def saved_random_model(tmp_path_factory) -> Callable[..., Path]:
    """`saved_random_model(**config)`: a random `tiny`-preset model with the released
    vocabulary and `config`'s overrides (seed 0), saved with its tokenizer; its folder."""
    from biogpt import Tokenizer

    def save(**config) -> Path:
        tokenizer = Tokenizer.from_pretrained("biogpt")
        settings = dict(vocab_size=len(tokenizer), max_positions=1024) | config
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp("random-model")
        BioGPT(ModelConfig.from_name("tiny", **settings)).save_pretrained(folder, overwrite=True)
        tokenizer.save_pretrained(folder, format="both")
        return folder

    return save
