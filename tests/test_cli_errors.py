"""A command line that never lies: a fine-tuning run that `--seed` reproduces, a tokenizer
that does not fit the model refused, and weights holding NaN/inf refused when loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from biogpt import BioGPT, ModelConfig, Tokenizer
from biogpt.cli import main
from biogpt.errors import BioGPTError

# --- finetune --seed ------------------------------------------------------------------------


def finetune_losses(data_root: Path, out: Path, seed: int) -> list[float]:
    """`biogpt finetune` of `mini` for 2 updates; the losses of its log."""
    code = main(
        ["finetune", "--task", "bc5cdr", "--model", "mini", "--out", str(out),
         "--data", str(data_root), "--limit", "2", "--max-updates", "2", "--no-valid",
         "--average-last", "0", "--save-last-only", "--seed", str(seed)]
    )  # fmt: skip
    assert code == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2
    return losses


def test_finetune_from_a_base_model_is_reproducible_with_seed(
    bc5cdr_two_documents: Path, tmp_path: Path, capsys
) -> None:
    first = finetune_losses(bc5cdr_two_documents, tmp_path / "a", seed=3)
    second = finetune_losses(bc5cdr_two_documents, tmp_path / "b", seed=3)
    other = finetune_losses(bc5cdr_two_documents, tmp_path / "c", seed=4)
    capsys.readouterr()
    assert first == second  # the new prompt-token rows too are drawn from the seed
    assert first[0] != other[0]


# --- a tokenizer that does not fit the model ---------------------------------------------------


def test_a_tokenizer_larger_than_the_model_is_refused(capsys, error_line) -> None:
    code = main(
        [
            "generate",
            "--model",
            "mini",
            "--tokenizer",
            "biogpt-large",
            "--max-new-tokens",
            "2",
            "text",
        ]
    )
    line = error_line()
    assert code == 2
    large = len(Tokenizer.from_pretrained("biogpt-large"))
    assert f"{large}" in line and "42384" in line and "--tokenizer" in line


def test_a_tokenizer_with_other_special_ids_is_refused(tmp_path: Path, capsys, error_line) -> None:
    tokenizer = Tokenizer.from_pretrained("biogpt")
    config = ModelConfig.from_name(
        "tiny", vocab_size=len(tokenizer), hidden_size=16, num_heads=2, intermediate_size=32,
        max_positions=64, pad_token_id=0, bos_token_id=1,
    )  # fmt: skip
    BioGPT(config).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "vocab")
    code = main(
        ["score", "--model", str(tmp_path / "model"), "--tokenizer", str(tmp_path / "vocab"), "a"]
    )
    line = error_line()
    assert code == 2
    assert "pad" in line and "--tokenizer" in line


def test_fitting_tokenizers_are_accepted(tmp_path: Path, capsys) -> None:
    """The model's own vocabulary named explicitly; the base vocabulary of a model that
    carries extra prompt-token rows (a fine-tuned fairseq model's dict.txt)."""
    assert main(["score", "--model", "mini", "--tokenizer", "biogpt", "--json", "a b"]) == 0
    tokenizer = Tokenizer.from_pretrained("biogpt")
    config = ModelConfig.from_name(
        "tiny", vocab_size=len(tokenizer) + 9, hidden_size=16, num_heads=2,
        intermediate_size=32, max_positions=64,
    )  # fmt: skip
    BioGPT(config).save_pretrained(tmp_path / "model")
    assert (
        main(
            ["score", "--model", str(tmp_path / "model"), "--tokenizer", "biogpt", "--json", "a b"]
        )
        == 0
    )
    capsys.readouterr()


# --- non-finite weights -----------------------------------------------------------------------


@pytest.fixture
def nan_model(tmp_path: Path) -> Path:
    config = ModelConfig.from_name(
        "tiny", vocab_size=len(Tokenizer.from_pretrained("biogpt")), hidden_size=16,
        num_heads=2, intermediate_size=32, max_positions=64,
    )  # fmt: skip
    model = BioGPT(config)
    with torch.no_grad():
        model.biogpt.layers[0].fc1.weight[0, :2] = float("nan")
        model.biogpt.layers[0].fc1.weight[1, 0] = float("inf")
    model.save_pretrained(tmp_path / "nan")
    return tmp_path / "nan"


def test_loading_weights_that_hold_nan_is_refused(nan_model: Path) -> None:
    with pytest.raises(
        BioGPTError,
        match=r"model\.safetensors: biogpt\.layers\.0\.fc1\.weight holds 3 NaN/inf values",
    ):
        BioGPT.from_pretrained(nan_model)


def test_score_with_nan_weights_exits_2(nan_model: Path, capsys, error_line) -> None:
    code = main(["score", "--model", str(nan_model), "Aspirin inhibits platelets."])
    line = error_line()
    assert code == 2
    assert "biogpt.layers.0.fc1.weight" in line and "NaN/inf" in line
