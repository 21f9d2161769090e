"""Checkpoint loading and saving: every layout in, the Hugging Face layout out, every error.

transformers builds the Hugging Face checkpoints and checks what we write; fairseq
checkpoints are built by hand in the layout fairseq pickles. Nothing touches the network.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from biogpt import BioGPT, BioGPTForSequenceClassification, BioGPTForTokenClassification
from biogpt.checkpoint import pipeline as checkpoint
from biogpt.checkpoint.pipeline import convert, load_model, save_model
from biogpt.checkpoint.tensors import read_safetensors
from biogpt.config import ModelConfig
from biogpt.cpu.packing import is_quantized
from biogpt.errors import BioGPTError

transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[2, 17, 45, 300, 9, 81, 5], [2, 99, 7, 12, 400, 3, 60]])


def tiny(**overrides) -> ModelConfig:
    return ModelConfig.from_name("tiny", **overrides)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial weights everywhere (fresh init leaves biases 0 and LayerNorms 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.1
            p.copy_(1 + noise if "layer_norm.weight" in name else noise)
    return model.eval()


def hf_model(cls_name: str = "BioGptForCausalLM", seed: int = 0, **overrides):
    config = transformers.BioGptConfig(**tiny(**overrides).to_hf_dict())
    return randomise(getattr(transformers, cls_name)(config), seed)


@torch.no_grad()
def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    return model(ids).logits.float()


def assert_same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert (a - b).abs().max().item() <= atol


def error_of(call, *args, **kwargs) -> str:
    """The message of the BioGPTError `call` raises; it must be a single line."""
    with pytest.raises(BioGPTError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def hf_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A transformers-written directory: config.json + model.safetensors (no tied head)."""
    model = hf_model()
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model


@pytest.mark.parametrize("dtype", ["fp32", "int8"])
def test_a_loaded_model_holds_no_part_of_its_weights_file(tmp_path: Path, dtype: str) -> None:
    # The weights are read into memory of the model's own, not mapped from the file (a
    # mapping keeps every page read resident while any tensor of the file lives: an int8
    # model held its fp32 weights too). Overwriting the file shows whether the model reads it.
    randomise(BioGPT(tiny())).save_pretrained(tmp_path / "m")
    model = BioGPT.from_pretrained(tmp_path / "m", dtype=dtype)
    before = logits(model)
    weights = tmp_path / "m" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.seek(1024)  # past the header
        f.write(bytes(size - 1024))
    assert torch.equal(logits(model), before)


SAFETENSORS_CASES = {
    "f32": torch.randn(3, 5),
    "bf16": torch.randn(7).bfloat16(),
    "f16": torch.randn(2, 2, 2).half(),
    "f64": torch.randn(4).double(),
    "i64": torch.arange(-3, 3),
    "i32": torch.tensor([1, -2], dtype=torch.int32),
    "i16": torch.tensor([7], dtype=torch.int16),
    "i8": torch.tensor([-128, 127], dtype=torch.int8),
    "u8": torch.tensor([0, 255], dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "empty": torch.zeros(0, 4),
    "scalar": torch.tensor(2.5),
}


def test_safetensors_reader_matches_the_library(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file(SAFETENSORS_CASES, str(path), metadata={"format": "pt"})
    ours, theirs = read_safetensors(path), load_file(str(path))
    assert ours.keys() == theirs.keys() == SAFETENSORS_CASES.keys()
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype and tensor.shape == theirs[name].shape, name
        assert torch.equal(tensor, theirs[name]), name


def test_safetensors_reader_refuses_damaged_headers(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_file({"w": torch.randn(4, 4)}, str(path))
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])

    def damaged(**entry) -> str:
        bad = {"w": {**header["w"], **entry}}
        text = json.dumps(bad).encode().ljust(size)
        path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
        return error_of(read_safetensors, path)

    assert "F8" in damaged(dtype="F8_E4M3")
    assert "do not fit" in damaged(data_offsets=[0, 60])  # 60 bytes for 16 floats
    assert "do not fit" in damaged(data_offsets=[64, 128])  # past the end of the file
    path.write_bytes((10**12).to_bytes(8, "little") + data[8:])
    assert "header of" in error_of(read_safetensors, path)


# --- Hugging Face layouts -----------------------------------------------------------------


def test_loads_transformers_safetensors_directory(hf_dir):
    directory, hf = hf_dir
    assert "output_projection.weight" not in load_file(directory / "model.safetensors")
    ours = BioGPT.from_pretrained(directory)
    assert not ours.training  # eval mode, as transformers returns models
    assert ours.output_projection.weight is ours.biogpt.embed_tokens.weight
    assert_same(logits(ours), logits(hf))


def test_loads_pytorch_bin_with_tied_head_present(tmp_path):
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    assert "output_projection.weight" in state
    torch.save(state, tmp_path / "pytorch_model.bin")
    ours = BioGPT.from_pretrained(tmp_path)
    assert ours.output_projection.weight is ours.biogpt.embed_tokens.weight
    assert_same(logits(ours), logits(hf))


def test_loads_safetensors_with_tied_head_present(tmp_path):
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    save_file({k: v.clone().contiguous() for k, v in hf.state_dict().items()},
              tmp_path / "model.safetensors")  # fmt: skip
    assert_same(logits(BioGPT.from_pretrained(tmp_path)), logits(hf))


def test_loads_untied_head(tmp_path):
    hf = hf_model(tie_word_embeddings=False)
    hf.save_pretrained(tmp_path)
    assert "output_projection.weight" in load_file(tmp_path / "model.safetensors")
    ours = BioGPT.from_pretrained(tmp_path)
    assert ours.output_projection.weight is not ours.biogpt.embed_tokens.weight
    assert_same(logits(ours), logits(hf))


def test_loads_base_model_without_biogpt_prefix(tmp_path):
    hf = hf_model()
    hf.biogpt.save_pretrained(tmp_path)  # BioGptModel: keys `layers.0...`, no head
    assert not any(k.startswith("biogpt.") for k in load_file(tmp_path / "model.safetensors"))
    assert_same(logits(BioGPT.from_pretrained(tmp_path)), logits(hf))


def test_loads_sharded_safetensors(tmp_path):
    hf = hf_model()
    hf.config.save_pretrained(tmp_path)
    state = {
        k: v.contiguous() for k, v in hf.state_dict().items() if k != "output_projection.weight"
    }
    keys = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, tmp_path / name)
        weight_map.update(dict.fromkeys(names, name))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same(logits(BioGPT.from_pretrained(tmp_path)), logits(hf))


def test_round_trip_transformers_ours_transformers(hf_dir, tmp_path):
    directory, hf = hf_dir
    ours = BioGPT.from_pretrained(directory)
    ours.save_pretrained(tmp_path / "ours")
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert "output_projection.weight" not in saved  # tied head omitted, as transformers does
    assert set(saved) == set(load_file(directory / "model.safetensors"))
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == ["BioGptForCausalLM"]
    assert config["transformers_version"]  # unknown keys survive the round trip
    back = transformers.BioGptForCausalLM.from_pretrained(tmp_path / "ours").eval()
    assert_same(logits(back), logits(hf))


@pytest.mark.parametrize(
    ("ours_cls", "hf_name"),
    [
        (BioGPTForSequenceClassification, "BioGptForSequenceClassification"),
        (BioGPTForTokenClassification, "BioGptForTokenClassification"),
    ],
)
def test_classification_heads_round_trip(tmp_path, ours_cls, hf_name):
    hf = hf_model(hf_name, num_labels=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = ours_cls.from_pretrained(tmp_path / "hf")
    assert ours.config.num_labels == 3
    assert_same(logits(ours), logits(hf))
    ours.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["architectures"] == [hf_name]
    back = getattr(transformers, hf_name).from_pretrained(tmp_path / "ours").eval()
    assert_same(logits(back), logits(hf))


def test_convert_keeps_the_head_class(tmp_path):
    hf = hf_model("BioGptForTokenClassification", num_labels=5)
    hf.save_pretrained(tmp_path / "hf")
    dst = convert(tmp_path / "hf", tmp_path / "out")
    assert json.loads((dst / "config.json").read_text())["architectures"] == [
        "BioGptForTokenClassification"
    ]
    back = transformers.BioGptForTokenClassification.from_pretrained(dst).eval()
    assert_same(logits(back), logits(hf))


def test_classifier_from_causal_lm_warns_and_initialises_head(hf_dir):
    directory, hf = hf_dir
    with pytest.warns(UserWarning, match=r"score\.weight.*initialised at random"):
        ours = load_model(BioGPTForSequenceClassification, directory, num_labels=4)
    assert ours.score.weight.shape == (4, 64) and not ours.score.weight.is_meta
    assert torch.equal(ours.biogpt.embed_tokens.weight, hf.biogpt.embed_tokens.weight)
    with pytest.warns(UserWarning, match=r"classifier\.weight, classifier\.bias"):
        tagger = BioGPTForTokenClassification.from_pretrained(directory)
    assert torch.all(tagger.classifier.bias == 0)
    # The other way round: a classifier checkpoint gives a causal LM, its head ignored.
    causal = BioGPT.from_pretrained(_saved(tagger, directory.parent / "tagger"))
    assert_same(logits(causal), logits(hf))


def _saved(model, directory: Path) -> Path:
    model.save_pretrained(directory)
    return directory


def test_dtype_and_device_arguments(hf_dir, tmp_path):
    directory, hf = hf_dir
    assert BioGPT.from_pretrained(directory).dtype == torch.float32
    for name, dtype in [
        ("bf16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ]:
        model = BioGPT.from_pretrained(directory, dtype=name, device="cpu")
        assert {p.dtype for p in model.parameters()} == {dtype}
        assert model.device == torch.device("cpu")
    assert_same(logits(BioGPT.from_pretrained(directory, dtype="bf16")), logits(hf), atol=0.1)
    # Default float32 even for a half-precision file; "auto" keeps the file's dtype.
    BioGPT.from_pretrained(directory, dtype="fp16").save_pretrained(tmp_path / "half")
    assert BioGPT.from_pretrained(tmp_path / "half").dtype == torch.float32
    assert BioGPT.from_pretrained(tmp_path / "half", dtype="auto").dtype == torch.float16
    # "int8": int8 linear layers, fp32 elsewhere; an integer torch dtype is no dtype.
    int8 = BioGPT.from_pretrained(directory, dtype="int8")
    assert int8.dtype == torch.float32 and is_quantized(int8)
    assert_same(logits(int8), logits(hf), atol=0.1)
    assert "floating-point" in error_of(BioGPT.from_pretrained, directory, dtype=torch.int8)
    assert "int4" in error_of(BioGPT.from_pretrained, directory, dtype="int4")


def test_bundled_model_names_are_consulted_first(hf_dir, monkeypatch):
    directory, hf = hf_dir
    monkeypatch.setitem(checkpoint.BUNDLED_MODELS, "biogpt-test", directory)
    assert_same(logits(BioGPT.from_pretrained("biogpt-test")), logits(hf))


# --- fairseq layouts ----------------------------------------------------------------------


@pytest.mark.parametrize("style", ["cfg-namespace", "cfg-dict", "args"])
def test_loads_fairseq_checkpoint(fairseq_checkpoint, tmp_path, style):
    source = randomise(BioGPT(tiny()))
    path = fairseq_checkpoint(tmp_path / "checkpoint.pt", source, style)
    ours = BioGPT.from_pretrained(path)  # argparse.Namespace is allowlisted: no trust needed
    assert ours.config.num_layers == 2 and ours.config.num_heads == 4
    assert_same(logits(ours), logits(source))


def test_fairseq_checkpoint_with_prompt_rows_beyond_the_dictionary(fairseq_checkpoint, tmp_path):
    # A fine-tuned checkpoint: 9 learned prompt tokens appended after a 512-entry vocabulary.
    source = randomise(BioGPT(tiny(vocab_size=512 + 9)))
    (tmp_path / "dict.txt").write_text("".join(f"tok{i} 1\n" for i in range(512 - 4)))
    (tmp_path / "bpecodes").write_text("t o 5\n")
    fairseq_checkpoint(tmp_path / "checkpoint.pt", source)
    ours = BioGPT.from_pretrained(tmp_path)  # the directory form
    assert ours.config.vocab_size == 521
    prompt = torch.tensor([[2, 17, 515, 520]])
    assert_same(logits(ours, prompt), logits(source, prompt))


def test_convert_fairseq_directory_to_transformers(fairseq_checkpoint, tmp_path):
    source = randomise(BioGPT(tiny()))
    src = tmp_path / "fairseq"
    src.mkdir()
    (src / "dict.txt").write_text("".join(f"tok{i} 1\n" for i in range(508)))
    (src / "bpecodes").write_text("t o 5\n")
    fairseq_checkpoint(src / "checkpoint.pt", source)
    dst = convert(src, tmp_path / "hf")
    names = {p.name for p in dst.iterdir()}
    assert {"config.json", "model.safetensors"} <= names
    assert {"dict.txt", "bpecodes"} <= names or {"vocab.json", "merges.txt"} <= names
    hf = transformers.BioGptForCausalLM.from_pretrained(dst).eval()
    assert_same(logits(hf), logits(source))
    assert "already holds" in error_of(convert, src, dst)
    convert(src, dst, overwrite=True, dtype="bf16")
    assert BioGPT.from_pretrained(dst, dtype="auto").dtype == torch.bfloat16


def test_convert_fine_tuned_fairseq_checkpoint_with_released_vocabulary(
    fairseq_checkpoint, tmp_path
):
    # The released dict.txt + bpecodes and a model with 9 prompt rows after them: the
    # converted directory must work with transformers' model and tokenizer as they are.
    pytest.importorskip("sacremoses")
    tokenizer_module = pytest.importorskip("biogpt.tokenizer")
    vocab_dir = Path(tokenizer_module.__file__).parent / "vocab" / "biogpt"
    src = tmp_path / "fairseq"
    src.mkdir()
    for name in ("dict.txt", "bpecodes"):
        shutil.copyfile(vocab_dir / name, src / name)
    source = randomise(BioGPT(tiny(vocab_size=42384 + 9)))
    fairseq_checkpoint(src / "checkpoint.pt", source)
    dst = convert(src, tmp_path / "hf")

    tokenizer = transformers.BioGptTokenizer.from_pretrained(dst)
    assert tokenizer("COVID-19 is").input_ids == [2, 4805, 9, 656, 21]
    # The prompt rows are named learned1..learned9, as BioGPT's fine-tuning names them.
    assert tokenizer("learned1 learned9").input_ids == [2, 42384, 42392]
    ids = torch.tensor([tokenizer("COVID-19 is learned3").input_ids])
    hf = transformers.BioGptForCausalLM.from_pretrained(dst).eval()
    assert_same(logits(hf, ids), logits(source, ids))


def test_untrusted_pickle_is_refused_then_loads_when_trusted(
    fairseq_checkpoint, tmp_path, monkeypatch
):
    # A class from a module that exists while saving and is gone when loading, like
    # fairseq's meters in a checkpoint opened where fairseq is not installed.
    module = types.ModuleType("fake_fairseq_meters")

    class AverageMeter:
        pass

    AverageMeter.__module__, AverageMeter.__qualname__ = module.__name__, "AverageMeter"
    module.AverageMeter = AverageMeter
    monkeypatch.setitem(sys.modules, module.__name__, module)
    source = randomise(BioGPT(tiny()))
    path = fairseq_checkpoint(
        tmp_path / "checkpoint.pt", source, extra_state={"metrics": AverageMeter()}
    )
    monkeypatch.delitem(sys.modules, module.__name__)

    message = error_of(BioGPT.from_pretrained, path)
    assert str(path) in message and "trust_pickle=True" in message and "--trust-pickle" in message
    assert "fake_fairseq_meters.AverageMeter" in message
    ours = BioGPT.from_pretrained(path, trust_pickle=True)  # the class is stubbed, not needed
    assert_same(logits(ours), logits(source))


# --- Errors -------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    assert str(missing) in error_of(BioGPT.from_pretrained, missing)
    assert "nowhere.pt" in error_of(BioGPT.from_pretrained, str(missing) + ".pt")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny().to_hf_dict()))
    message = error_of(BioGPT.from_pretrained, tmp_path)
    assert str(tmp_path) in message and "no weights file" in message


def test_missing_or_invalid_config(hf_dir):
    directory, _ = hf_dir
    config = directory / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])
    assert str(config) in error_of(BioGPT.from_pretrained, directory)
    config.write_text(json.dumps({"model_type": "gpt2"}))
    assert "model_type" in error_of(BioGPT.from_pretrained, directory)
    config.unlink()
    assert str(config) in error_of(BioGPT.from_pretrained, directory)


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "checkpoint.pt"])
@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_weights_file(fairseq_checkpoint, tmp_path, name, damage):
    model = randomise(BioGPT(tiny()))
    if name == "checkpoint.pt":
        path = fairseq_checkpoint(tmp_path / name, model)
    else:
        model.save_pretrained(tmp_path)
        if name == "pytorch_model.bin":
            (tmp_path / "model.safetensors").unlink()
            torch.save(model.state_dict(), tmp_path / name)
        path = tmp_path / name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint" * 9)
    message = error_of(BioGPT.from_pretrained, tmp_path)
    assert str(path) in message and ("corrupt" in message or "truncated" in message)


def _hf_dir_with(tmp_path: Path, state_edit=None, **config_overrides) -> Path:
    """A directory of our tiny model, its state dict edited and its config overridden."""
    model = randomise(BioGPT(tiny()))
    model.save_pretrained(tmp_path)
    if state_edit:
        state = load_file(tmp_path / "model.safetensors")
        state_edit(state)
        save_file(state, tmp_path / "model.safetensors")
    if config_overrides:
        tiny(**config_overrides).save(tmp_path / "config.json")
    return tmp_path / "model.safetensors"


def test_wrong_shape_names_the_parameter(tmp_path):
    weights = _hf_dir_with(tmp_path, intermediate_size=96)
    message = error_of(BioGPT.from_pretrained, tmp_path)
    assert str(weights) in message
    assert (
        "biogpt.layers.0.fc1.weight" in message and "[128, 64]" in message and "[96, 64]" in message
    )


def test_missing_and_unexpected_keys(tmp_path):
    def drop(state):
        del state["biogpt.layers.1.fc2.bias"]

    weights = _hf_dir_with(tmp_path / "a", drop)
    message = error_of(BioGPT.from_pretrained, tmp_path / "a")
    assert str(weights) in message and "missing" in message and "layers.1.fc2.bias" in message

    def add(state):
        state["biogpt.adapter.weight"] = torch.zeros(3)

    weights = _hf_dir_with(tmp_path / "b", add)
    message = error_of(BioGPT.from_pretrained, tmp_path / "b")
    assert (
        str(weights) in message and "unexpected" in message and "biogpt.adapter.weight" in message
    )


def test_config_that_does_not_match_the_weights(fairseq_checkpoint, tmp_path):
    weights = _hf_dir_with(tmp_path, num_layers=3)
    message = error_of(BioGPT.from_pretrained, tmp_path)
    assert str(weights) in message and "num_layers=3" in message and "2 layers" in message
    # The same check holds for fairseq hyper-parameters.
    path = fairseq_checkpoint(tmp_path / "fs.pt", randomise(BioGPT(tiny(num_layers=1))))
    data = torch.load(path, weights_only=False)
    data["cfg"]["model"].decoder_layers = 3
    torch.save(data, path)
    assert "num_layers=3" in error_of(BioGPT.from_pretrained, path)


def test_overwrite_refused(tmp_path):
    model = BioGPT(tiny())
    model.save_pretrained(tmp_path)
    message = error_of(model.save_pretrained, tmp_path)
    assert str(tmp_path) in message and "overwrite=True" in message
    save_model(model, tmp_path, overwrite=True)


# --- The Hub (never reached: the download function is replaced) ---------------------------


def test_hub_id_downloads_through_huggingface_hub(hf_dir, monkeypatch):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    directory, hf = hf_dir
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(directory)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert_same(logits(BioGPT.from_pretrained("microsoft/biogpt")), logits(hf))
    assert calls[0][0] == "microsoft/biogpt"
    assert calls[0][1]["etag_timeout"] <= 10  # a short timeout: offline users are not kept waiting


@pytest.mark.parametrize("error", ["LocalEntryNotFoundError", "OfflineModeIsEnabled", "other"])
def test_hub_unreachable(monkeypatch, error):
    huggingface_hub = pytest.importorskip("huggingface_hub")
    exception = (
        getattr(huggingface_hub.errors, error)("no connection\nmore detail")
        if error != "other"
        else RuntimeError("proxy exploded\ntraceback-ish detail")
    )

    def offline(repo_id, **kwargs):
        raise exception

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    message = error_of(BioGPT.from_pretrained, "microsoft/biogpt")
    assert "microsoft/biogpt" in message and "Hub" in message


def test_hub_needs_huggingface_hub_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    message = error_of(BioGPT.from_pretrained, "microsoft/biogpt")
    assert "microsoft/biogpt" in message and "biogpt[hub]" in message
