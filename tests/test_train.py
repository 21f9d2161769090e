"""The training loop: schedule, batching, loss normalisation, checkpoints, resume, logs."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file

from biogpt import BioGPT, ModelConfig, cpu
from biogpt.errors import BioGPTError
from biogpt.labels import IGNORE_INDEX
from biogpt.training.batching import collate, group_updates, plan_batches
from biogpt.training.loop import (
    TrainConfig,
    accumulate_gradients,
    average_checkpoints,
    learning_rate,
    list_checkpoints,
    train,
)
from biogpt.training.loss import batch_loss, token_loss_sum
from biogpt.training.plot import plot_log

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed: int = 0, **overrides) -> BioGPT:
    torch.manual_seed(seed)
    return BioGPT(ModelConfig.from_name("tiny", **overrides))


def make_samples(n: int, seed: int = 0, low: int = 4, high: int = 20) -> list:
    g = torch.Generator().manual_seed(seed)
    samples = []
    for _ in range(n):
        length = int(torch.randint(low, high, (1,), generator=g))
        samples.append(([2, *torch.randint(4, 512, (length,), generator=g).tolist()], None))
    return samples


def quick(**overrides) -> TrainConfig:
    """Small batches, a few updates per epoch, checkpoints on, no plotting surprises."""
    settings = dict(lr=1e-3, warmup_updates=3, max_epochs=2, tokens_per_update=40,
                    max_tokens_per_batch=48, log_every=1)  # fmt: skip
    settings.update(overrides)
    return TrainConfig(**settings)


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- Schedule -----------------------------------------------------------------------------


def test_inverse_sqrt_schedule_by_hand():
    c = TrainConfig(lr=1e-3, warmup_updates=4, warmup_init_lr=1e-7)
    assert learning_rate(0, c) == pytest.approx(1e-7)
    assert learning_rate(2, c) == pytest.approx(1e-7 + (1e-3 - 1e-7) * 2 / 4)
    assert learning_rate(4, c) == pytest.approx(1e-3)
    assert learning_rate(16, c) == pytest.approx(5e-4)  # 1e-3 * sqrt(4 / 16)
    assert learning_rate(100, c) == pytest.approx(2e-4)  # 1e-3 * sqrt(4 / 100)
    no_warmup = TrainConfig(lr=1e-3, warmup_updates=0)
    assert learning_rate(0, no_warmup) == pytest.approx(1e-3)
    assert learning_rate(4, no_warmup) == pytest.approx(5e-4)


def test_cosine_and_constant_schedules_by_hand():
    c = TrainConfig(lr=1e-3, warmup_updates=2, schedule="cosine", min_lr=1e-4)
    assert learning_rate(1, c, total_updates=12) == pytest.approx(1e-7 + (1e-3 - 1e-7) / 2)
    assert learning_rate(2, c, total_updates=12) == pytest.approx(1e-3)
    assert learning_rate(7, c, total_updates=12) == pytest.approx(5.5e-4)  # halfway
    assert learning_rate(12, c, total_updates=12) == pytest.approx(1e-4)
    assert learning_rate(50, c, total_updates=12) == pytest.approx(1e-4)
    k = TrainConfig(lr=1e-3, warmup_updates=2, schedule="constant")
    assert [learning_rate(u, k) for u in (2, 10, 1000)] == [1e-3] * 3


# --- Data ---------------------------------------------------------------------------------


def test_labels_full_and_target_only():
    samples = [([2, 10, 11, 12], [0, 0, 1, 1]), ([2, 20], None)]
    full = collate(samples, target_only=False)
    assert full.input_ids.tolist() == [[2, 10, 11, 12], [2, 20, 1, 1]]
    assert full.labels.tolist() == [[2, 10, 11, 12], [2, 20, -100, -100]]
    assert (full.tokens, full.target_tokens) == (6, 4)
    target = collate(samples, target_only=True)
    assert target.labels.tolist() == [[-100, -100, 11, 12], [2, 20, -100, -100]]
    assert target.target_tokens == 3
    with pytest.raises(BioGPTError, match="loss mask"):
        collate([([2, 3, 4], [1])], target_only=True)


def test_batch_plan_is_deterministic_complete_and_bounded():
    lengths = [
        int(n) for n in torch.randint(2, 30, (50,), generator=torch.Generator().manual_seed(1))
    ]
    plan = plan_batches(lengths, max_tokens=64, seed=3, epoch=1)
    assert plan == plan_batches(lengths, max_tokens=64, seed=3, epoch=1)
    assert plan != plan_batches(lengths, max_tokens=64, seed=3, epoch=2)
    assert sorted(i for b in plan for i in b) == list(range(50))
    assert all(max(lengths[i] for i in b) * len(b) <= 64 for b in plan)
    with pytest.raises(BioGPTError, match="more than max_tokens"):
        plan_batches([10, 100], max_tokens=64, seed=0, epoch=1)
    assert group_updates([10, 30, 5, 50, 7], 40) == [range(0, 2), range(2, 4), range(4, 5)]
    assert group_updates([10, 30], 0) == [range(0, 1), range(1, 2)]


# --- Loss ---------------------------------------------------------------------------------


def test_accumulated_micro_batches_equal_one_big_batch():
    model = make_model(dropout=0.0, attention_dropout=0.0).train()
    samples = make_samples(7, seed=5)

    def grads(groups):
        model.zero_grad()
        loss, tokens = accumulate_gradients(model, [collate(g, False) for g in groups])
        return loss, tokens, [p.grad.clone() for p in model.parameters()]

    big = grads([samples])
    split = grads([samples[:2], samples[2:3], samples[3:]])
    assert big[1] == split[1] == sum(len(ids) - 1 for ids, _ in samples)
    assert split[0] == pytest.approx(big[0], rel=1e-6)
    for a, b in zip(big[2], split[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_target_loss_covers_only_masked_positions():
    model = make_model(dropout=0.0, attention_dropout=0.0).eval()
    ids, mask = [2, 40, 41, 42, 43, 44], [0, 0, 0, 1, 1, 1]
    loss, tokens = accumulate_gradients(model, [collate([(ids, mask)], True)])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    expected = torch.nn.functional.cross_entropy(logits[2:5], torch.tensor(ids[3:]))
    assert tokens == 3
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert IGNORE_INDEX == -100


def test_loss_on_trained_positions_only_equals_full_logits_loss():
    # The loop projects only trained positions; padding and masks must not change the loss.
    model = make_model(dropout=0.0, attention_dropout=0.0).eval()
    batch = collate([([2, 7, 8, 9, 10], [0, 0, 1, 1, 1]), ([2, 30, 31], None)], True)
    with torch.no_grad():
        ours = batch_loss(model, batch.input_ids, batch.labels)
        full = token_loss_sum(model(batch.input_ids, batch.attention_mask).logits, batch.labels)
    torch.testing.assert_close(ours, full)


def test_tiny_model_overfits_a_handful_of_samples(tmp_path):
    samples = make_samples(4, seed=2, low=6, high=10) * 80  # one epoch = many updates
    config = quick(lr=5e-3, warmup_updates=5, max_epochs=1, tokens_per_update=0,
                   max_tokens_per_batch=40, schedule="constant")  # fmt: skip
    model = make_model(dropout=0.0, attention_dropout=0.0)
    result = train(model, samples, config, tmp_path, progress=False)
    assert result.losses[0] > 5.5  # about ln(512) at the start
    assert sorted(result.losses[-8:])[4] < 1.0  # the median of the last updates: memorised


# --- Checkpoints and resume ---------------------------------------------------------------


def test_resume_gives_bitwise_the_same_losses(tmp_path):
    samples = make_samples(12, seed=3)
    straight = train(make_model(), samples, quick(), tmp_path / "a", progress=False)
    n = len(straight.losses)
    assert n >= 6 and straight.epochs == 2

    # Killed after epoch 1, resumed for epoch 2 (a fresh model object, as after a restart).
    train(make_model(), samples, quick(max_epochs=1), tmp_path / "b", progress=False)
    resumed = train(make_model(seed=9), samples, quick(), tmp_path / "b", resume=True,
                    progress=False)  # fmt: skip
    # Stopped mid-epoch 1 by max_updates, resumed to the end.
    train(make_model(), samples, quick(max_updates=2), tmp_path / "c", progress=False)
    assert (tmp_path / "c/checkpoints/last").read_text().strip() == "update2"
    train(make_model(seed=9), samples, quick(), tmp_path / "c", resume=True, progress=False)

    for run in ("b", "c"):
        losses = [r["loss"] for r in read_log(tmp_path / run / "log.jsonl") if "loss" in r]
        assert losses == straight.losses  # bitwise: JSON round-trips floats exactly
    assert resumed.steps == straight.steps == n
    a = load_file(str(tmp_path / "a/checkpoints/epoch2/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/epoch2/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_layout_pruning_averaging_and_log(tmp_path):
    samples = make_samples(8, seed=4)
    config = quick(max_epochs=3, keep_last=1, average_last=2)
    result = train(make_model(), samples, config, tmp_path, valid_samples=samples[:3],
                   progress=False)  # fmt: skip
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["epoch2", "epoch3", "last"]
    assert (root / "last").read_text().strip() == "epoch3" == result.last_checkpoint.name
    for name in ("config.json", "model.safetensors", "trainer_state.pt", "trainer_state.json"):
        assert (root / "epoch3" / name).is_file()
    state = torch.load(root / "epoch3/trainer_state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "step", "epoch", "position", "rng", "config"} <= set(state)
    (first, done2, _), (last, done3, _) = list_checkpoints(root)
    assert first < last == state["step"] == result.steps and done2 and done3

    # averaged/ is the mean of the last two epochs and loads as a model.
    e2, e3 = (load_file(str(root / f"epoch{i}/model.safetensors")) for i in (2, 3))
    avg = load_file(str(result.averaged / "model.safetensors"))
    key = "biogpt.layers.0.fc1.weight"
    torch.testing.assert_close(avg[key], (e2[key] + e3[key]) / 2)
    BioGPT.from_pretrained(result.averaged)

    records = read_log(tmp_path / "log.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, result.steps + 1))
    assert {"step", "epoch", "loss", "lr", "tokens", "tokens_per_s"} <= set(steps[0])
    valid = [r for r in records if "valid_loss" in r]
    assert [r["epoch"] for r in valid] == [1, 2, 3]
    assert valid[-1]["valid_ppl"] == pytest.approx(math.exp(valid[-1]["valid_loss"]))


def test_evaluate_runs_in_eval_mode_at_every_epoch_end_and_is_logged(tmp_path):
    seen = []

    def evaluate(lm):
        seen.append(lm.training)
        return {"score": 0.5 * len(seen)}

    train(make_model(), make_samples(6), quick(), tmp_path, evaluate=evaluate, progress=False)
    scores = [r for r in read_log(tmp_path / "log.jsonl") if "score" in r]
    assert seen == [False, False]
    assert [(r["epoch"], r["score"]) for r in scores] == [(1, 0.5), (2, 1.0)]


def test_a_model_prepared_for_cpu_inference_trains_as_a_plain_one(tmp_path):
    samples = make_samples(6)
    plain = train(make_model(), samples, quick(), tmp_path / "plain", progress=False)
    prepared = make_model().eval()
    assert cpu.prepare(prepared)
    again = train(prepared, samples, quick(), tmp_path / "prepared", progress=False)
    assert again.losses == plain.losses and not cpu.is_prepared(prepared)

    def prepares(lm):
        cpu.prepare(lm)  # the optimiser would keep updating the replaced parameters
        return {}

    with pytest.raises(BioGPTError, match="release"):
        train(make_model(), samples, quick(), tmp_path / "hook", evaluate=prepares, progress=False)


def test_refuses_to_overwrite_a_run(tmp_path):
    samples = make_samples(4)
    config = quick(max_epochs=1)
    train(make_model(), samples, config, tmp_path, progress=False)
    with pytest.raises(BioGPTError, match="already holds a training run"):
        train(make_model(), samples, config, tmp_path, progress=False)
    result = train(make_model(), samples, config, tmp_path, overwrite=True, progress=False)
    assert len(read_log(tmp_path / "log.jsonl")) == result.steps


def test_average_checkpoints_on_hand_made_weights(tmp_path):
    for i, (a, b) in enumerate([(1.0, 2.0), (3.0, 4.0), (5.0, 9.0)]):
        directory = tmp_path / f"c{i}"
        directory.mkdir()
        save_file({"w": torch.full((2, 2), a), "h": torch.tensor([b], dtype=torch.bfloat16)},
                  str(directory / "model.safetensors"))  # fmt: skip
        (directory / "config.json").write_text("{}")
    out = average_checkpoints([tmp_path / f"c{i}" for i in range(3)], tmp_path / "avg")
    mean = load_file(str(out / "model.safetensors"))
    assert torch.equal(mean["w"], torch.full((2, 2), 3.0))
    assert mean["h"].dtype == torch.bfloat16 and float(mean["h"]) == 5.0
    assert (out / "config.json").is_file()


def test_plot_log(tmp_path, monkeypatch):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 3.0}\n{"step": 2, "loss": 2.5}\n'
                   '{"step": 2, "valid_loss": 2.7}\n{"step": 3, "lo')  # fmt: skip
    pytest.importorskip("matplotlib")
    assert plot_log(log, tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(BioGPTError, match="matplotlib is not installed"):
        plot_log(log, tmp_path / "other.png")


def test_bf16_autocast_training_learns_and_tracks_fp32(tmp_path):
    """bf16 autocast runs the fused head in bf16 with an fp32 softmax: the first loss is
    the fp32 one to bf16 precision, and training still memorises a handful of samples."""
    samples = make_samples(4, seed=2, low=6, high=10) * 40
    config = quick(lr=5e-3, warmup_updates=5, max_epochs=1, tokens_per_update=0,
                   max_tokens_per_batch=40, schedule="constant", dtype="bf16")  # fmt: skip
    runs = {}
    for dtype in ("fp32", "bf16"):
        model = make_model(dropout=0.0, attention_dropout=0.0)
        runs[dtype] = train(model, samples, replace(config, dtype=dtype), tmp_path / dtype,
                            progress=False)  # fmt: skip
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert bf16.losses[0] == pytest.approx(fp32.losses[0], rel=0.01)
    assert all(math.isfinite(x) for x in bf16.losses)
    assert sorted(bf16.losses[-8:])[4] < 0.5 * bf16.losses[0]
