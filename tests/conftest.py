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
from biogpt.tasks import Example, get, write_predictions


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


# --------------------------------------------------------------------------------------------
# `biogpt report`'s inputs, one of each kind (tests/test_report.py, tests/test_report_page.py)
# --------------------------------------------------------------------------------------------


def _few_predictions(task_name: str, path: Path, split: str = "test") -> list[Example]:
    """Predictions of the split's first 6 examples: the gold targets of the first four, the
    target of a later example for the fifth and a sentence of no format for the sixth.
    Returns the split's examples."""
    examples = get(task_name).load(split, DATA)
    answers = {ex.id: ex.target for ex in examples[:4]}
    answers[examples[4].id] = examples[12].target
    answers[examples[5].id] = "nothing the parser can read"
    write_predictions(path, answers)
    return examples


def _log_lines(path: Path) -> Path:
    """A training log.jsonl at `path`: four updates and one validation line."""
    log = [{"step": s, "epoch": 1, "loss": 5.0 - s} for s in range(1, 5)] + [
        {"step": 4, "epoch": 1, "valid_loss": 1.5}
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in log))
    return path


def _reproduce_run(root: Path) -> Path:
    """A reproduce run directory as `biogpt reproduce` lays it out: ddi finished (5 test
    examples, with a fine-tuning log), hoc unfinished (no result.json)."""
    run = root / "run"
    (run / "ddi" / "train").mkdir(parents=True)
    (run / "hoc" / "train").mkdir(parents=True)
    header = {
        "command": "reproduce", "model": "mini", "checkpoint_hash": "base-hash",
        "tasks": ["ddi", "hoc"], "quick": True, "settings": {}, "data": str(DATA),
        "package": {"version": "9.9", "commit": "abc", "dirty": False},
        "hardware": {"cpu": "test cpu", "gpu": None},
    }  # fmt: skip
    (run / "reproduce.json").write_text(json.dumps(header))
    _few_predictions("ddi", run / "ddi" / "test.predictions.jsonl")
    result = {
        "task": "ddi", "split": "test", "model": str(run / "ddi" / "train" / "averaged"),
        "checkpoint_hash": "tuned-hash", "template_version": 1,
        "decoding": {"strategy": "greedy", "max_new_tokens": 8}, "metrics": {},
        "predictions": "test.predictions.jsonl", "limit": 5, "train_seconds": 12.5,
        "predict_seconds": 3.0, "tokens_per_s": 40.0, "data": str(DATA), "quick": True,
        "recipe_changes": {"max_epochs": {"paper": 100, "used": 1}},
    }  # fmt: skip
    (run / "ddi" / "result.json").write_text(json.dumps(result))
    _log_lines(run / "ddi" / "train" / "log.jsonl")
    return run


EVALUATED_MODEL = "runs/qa/averaged"  # the model an evaluate report names, relative


def _evaluate_report(root: Path) -> Path:
    """An evaluate report of pubmedqa's first 6 test questions, its predictions and model
    beside it and named relative to the folder evaluate ran in. The model folder holds a
    weights file (its bytes no model's) and its training run a log.jsonl."""
    folder = root / "evaluated"
    folder.mkdir()
    _few_predictions("pubmedqa", folder / "preds.jsonl")
    model = folder / EVALUATED_MODEL
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights of the evaluated model")
    _log_lines(model.parent / "log.jsonl")
    report = {"task": "pubmedqa", "split": "test", "model": EVALUATED_MODEL, "limit": 6,
              "predictions": "preds.jsonl", "accuracy": 0.5, "seconds": 7.5}  # fmt: skip
    # (the accuracy stated is not the file's: the report says so and shows the file's)
    (folder / "report.json").write_text(json.dumps(report))
    return folder / "report.json"


@pytest.fixture(scope="session")
def few_predictions() -> Callable[..., list[Example]]:
    """`few_predictions(task, path, split="test")`: see `_few_predictions`."""
    if not DATA.is_dir():
        pytest.skip(NO_DATA)
    return _few_predictions


@pytest.fixture(scope="session")
def reproduce_run(few_predictions) -> Callable[[Path], Path]:
    """`reproduce_run(root)`: a reproduce run under `root`; see `_reproduce_run`."""
    return _reproduce_run


@pytest.fixture(scope="session")
def evaluate_report(few_predictions) -> Callable[[Path], Path]:
    """`evaluate_report(root)`: an evaluate report under `root`; see `_evaluate_report`."""
    return _evaluate_report
