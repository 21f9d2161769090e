"""The built-in demonstration model `mini`: ships inside the package, loads offline, is trained."""

from __future__ import annotations

import json

import pytest
import torch
from shared_data import DATA, needs_data

from biogpt import BioGPT, Tokenizer, cpu
from biogpt.checkpoint.pipeline import BUNDLED_MODELS
from biogpt.cli import main
from biogpt.decoding.scoring import score_text
from biogpt.decoding.steps import prefill, row_stepper

pytestmark = pytest.mark.skipif("mini" not in BUNDLED_MODELS, reason="no bundled model `mini`")


def test_mini_is_small_fp16_and_loads_by_name() -> None:
    weights = BUNDLED_MODELS["mini"] / "model.safetensors"
    assert weights.stat().st_size <= 30 * 2**20
    config = json.loads((BUNDLED_MODELS["mini"] / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "float16"
    model = BioGPT.from_pretrained("mini")
    assert model.dtype == torch.float32  # cast on load, as every checkpoint
    assert model.config.vocab_size == len(Tokenizer.from_pretrained("biogpt"))


@needs_data
def test_mini_has_learned_pubmed_text() -> None:
    """A held-out test abstract (kept out of pretraining) scores far better than chance:
    a random model's perplexity is about the vocabulary size, 42,384."""
    model = BioGPT.from_pretrained("mini").eval()
    tokenizer = Tokenizer.from_pretrained("biogpt")
    with open(DATA / "pretrain" / "abstracts.jsonl") as f:
        doc = next(d for d in map(json.loads, f) if d["split"] == "test")
    score = score_text(model, tokenizer, doc["title"] + " " + doc["abstract"])
    assert score.perplexity < 1000


def test_generate_with_mini_on_the_command_line(capsys) -> None:
    assert main(["generate", "--model", "mini", "--max-new-tokens", "12", "COVID-19 is"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("COVID-19 is") and len(out.split()) > 4


def test_int8_mini_generates_what_the_full_precision_one_does(capsys) -> None:
    prompt = ["--max-new-tokens", "12", "--json", "COVID-19 is"]
    assert main(["generate", "--model", "mini", *prompt]) == 0
    full = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["generate", "--model", "mini", "--dtype", "int8", *prompt]) == 0
    int8 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert int8["text"] == full["text"]  # a demonstration model, greedy: the same words


@needs_data
def test_int8_and_bf16_mini_agree_with_fp32_on_held_out_abstracts() -> None:
    """On a trained model and real text (not random weights): the lower-precision modes
    pick fp32's next token almost everywhere and keep its perplexity."""
    tokenizer = Tokenizer.from_pretrained("biogpt")
    with open(DATA / "pretrain" / "abstracts.jsonl") as f:
        docs = [d for d in map(json.loads, f) if d["split"] == "test"][:10]
    models = {name: BioGPT.from_pretrained("mini", dtype=name) for name in ("fp32", "bf16", "int8")}
    for model in models.values():
        cpu.prepare(model)  # as decoding runs them
    agree, nll, positions = dict.fromkeys(models, 0), dict.fromkeys(models, 0.0), 0
    with torch.inference_mode():
        for doc in docs:
            ids = torch.tensor([tokenizer.encode(doc["title"] + " " + doc["abstract"])[:400]])
            reference = models["fp32"](ids).logits[0].float()
            positions += ids.shape[1] - 1
            for name, model in models.items():
                logits = model(ids).logits[0, :-1].float()
                agree[name] += int((logits.argmax(-1) == reference[:-1].argmax(-1)).sum())
                nll[name] -= float(logits.log_softmax(-1).gather(1, ids[0, 1:, None]).sum())
    assert agree["bf16"] / positions >= 0.99  # the decoding goal (fp32 logits from bf16)
    assert agree["int8"] / positions > 0.98
    for name in ("bf16", "int8"):
        assert nll[name] / positions == pytest.approx(nll["fp32"] / positions, rel=0.005), name

    # Decoding's own path: one token a step through the cache (the compiled step, where it
    # is built), not one forward pass over the text.
    def stepwise(model: BioGPT, ids: torch.Tensor) -> torch.Tensor:
        cache = model.new_cache(1, ids.shape[1])
        step = row_stepper(model)
        first = prefill(model, ids[:, :1], torch.ones(1, 1, dtype=torch.bool), cache)
        rest = [step(int(ids[0, t]), cache) for t in range(1, ids.shape[1] - 1)]
        return torch.cat([first, *rest])

    same = steps = 0
    with torch.inference_mode():
        for doc in docs[:3]:
            ids = torch.tensor([tokenizer.encode(doc["title"] + " " + doc["abstract"])[:400]])
            want = stepwise(models["fp32"], ids).argmax(-1)
            same += int((stepwise(models["bf16"], ids).float().argmax(-1) == want).sum())
            steps += want.numel()
    assert same / steps >= 0.99
