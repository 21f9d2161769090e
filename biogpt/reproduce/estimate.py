"""How long and how much memory a reproduce run needs here, said before it starts.

Time is work over measured speed. The work is counted exactly: each task's training
examples are encoded as fine-tuning encodes them and batched as the loop batches them
(`SampleBatches`), so the updates and tokens follow the recipe with the run's caps; the
test prompts and their gold answers (each answer as many greedy steps as its tokens plus the
closing `</s>`, capped at the answer length) give the decoding work. The speed is measured
by a short probe on the actual model: three forward+backward passes of a micro-batch of a
few sequences of the typical training length (the first warms up, the faster other counts),
and a few greedy steps of a batch of typical prompts (after one call that warms up). Memory
comes from the parameter count: weights, gradients and Adam's two moments (16 bytes a
parameter in fp32) plus the activations of one micro-batch, or, decoding, the weights plus
the key/value cache; each stage's peak is kept, for a decoding device that is not the
training one, and a training peak past the machine's memory is warned of.

These are estimates: padding, checkpoints, answers longer or shorter than the gold, and
other work on the machine are not counted.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from biogpt.decoding.search import generate
from biogpt.model import BioGPT
from biogpt.reproduce.settings import Settings
from biogpt.tasks import Task, encode_prompt, get
from biogpt.tasks.evaluation import max_new_tokens_for
from biogpt.tokenizer import Tokenizer
from biogpt.training.batching import SampleBatches
from biogpt.training.finetune import encode_within
from biogpt.training.loss import DEFAULT_CHUNK_ROWS, TokenLoss

PROBE_STEPS = 3  # forward+backward passes; the first warms up, the fastest other counts
PROBE_MAX_ROWS = 4  # sequences in the probed micro-batch, at most (training packs several)
DECODE_STEPS = 4  # greedy steps timed beyond the first
PROBE_MAX_LENGTH = 512  # a longer typical sample is probed at this length (a few seconds)
# Activations kept for the backward, per token and layer, in hidden-size units: the two
# LayerNorm inputs, q, k, v, the attention output and its projection, the residual, fc1's
# input, and its 4h output before and after GELU (about 16h); the attention scores and
# probabilities add 2 x heads x length.
ACTIVATION_WIDTHS = 16
BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class Work:
    """What one task asks of the machine, counted from its data."""

    task: str
    train_examples: int
    updates: int  # optimiser updates in all
    train_tokens: int  # tokens through forward+backward in all (every epoch)
    sample_lengths: list[int]  # tokens of each training sample
    test_examples: int
    prompt_tokens: int  # tokens of every test prompt
    decode_steps: int  # greedy steps of every batch: its longest answer (+ `</s>`)
    prompt_lengths: list[int]


@dataclass(frozen=True)
class Probe:
    """This machine's speeds, measured on the model."""

    train_device: str
    predict_device: str
    sequence_length: int  # tokens of each probed training sequence
    train_tokens_per_s: float  # forward+backward
    prompt_length: int  # tokens of each probed prompt
    prefill_tokens_per_s: float  # prompt tokens read per second (the first greedy step)
    decode_step_s: float  # seconds per greedy step of a batch of `batch_size` rows


def count_work(
    task: Task, tokenizer: Tokenizer, settings: Settings, model: BioGPT, data: str | None
) -> Work:
    """The training and decoding work of `task` under `settings`. `tokenizer` must hold the
    task's prompt tokens."""
    config = settings.train_config(task)
    examples = task.load("train", data)[: settings.train_limit]
    # as fine-tuning encodes them, leaving out those longer than the positions (it says so)
    positions = model.config.max_positions
    samples = encode_within(tokenizer, task, examples, positions, "training", quiet=True)
    batches = SampleBatches(
        samples,
        config.max_tokens_per_batch,
        config.tokens_per_update,
        config.seed,
        max_positions=model.config.max_positions,
    )
    per_epoch = batches.updates_in_epoch(1)
    epochs_bound = config.max_epochs * per_epoch if config.max_epochs > 0 else math.inf
    updates_bound = config.max_updates if config.max_updates > 0 else math.inf
    updates = int(min(epochs_bound, updates_bound))
    lengths = [len(ids) for ids, _ in samples]
    train_tokens = round(sum(lengths) * updates / per_epoch)

    test = task.load("test", data)[: settings.test_limit]
    prompts = [len(encode_prompt(tokenizer, task, example.source)) for example in test]
    cap = settings.max_new_tokens or max_new_tokens_for(task, model.config.max_positions, 0)
    answers = [min(cap, len(tokenizer.encode(example.target))) for example in test]  # + </s>
    steps = sum(
        max(answers[i : i + settings.batch_size])
        for i in range(0, len(answers), settings.batch_size)
    )
    return Work(
        task=task.name,
        train_examples=len(examples),
        updates=updates,
        train_tokens=train_tokens,
        sample_lengths=lengths,
        test_examples=len(test),
        prompt_tokens=sum(prompts),
        decode_steps=steps,
        prompt_lengths=prompts,
    )


def probe(model: BioGPT, work: Sequence[Work], settings: Settings) -> Probe:
    """Time a few training and decoding steps of `model` (on the CPU, where fine-tuning
    runs; decoding on `settings.device`) at the typical lengths of `work`. The model's
    gradients are cleared afterwards; it is left in eval mode on `settings.device`."""
    max_positions = model.config.max_positions
    length = min(
        PROBE_MAX_LENGTH,
        max_positions,
        int(statistics.median([n for w in work for n in w.sample_lengths])),
    )
    # A micro-batch as training builds them (several sequences up to its token budget): one
    # sequence alone runs the matrix products at a fraction of their speed.
    budget = min(settings.train_config(get(w.task)).max_tokens_per_batch for w in work)
    sequences = max(1, min(PROBE_MAX_ROWS, budget // max(2, length)))
    generator = torch.Generator().manual_seed(0)
    shape = (sequences, max(2, length))
    ids = torch.randint(4, model.config.vocab_size, shape, generator=generator)
    loss = TokenLoss(model.train())
    seconds = []
    for _ in range(PROBE_STEPS):
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.dtype == "bf16"):
            value = loss(ids, ids)
        value.backward()
        seconds.append(time.perf_counter() - began)
    model.zero_grad(set_to_none=True)
    model.eval().to(settings.device)
    if settings.dtype == "bf16":
        model.to(torch.bfloat16)

    prompt = min(
        int(statistics.median([n for w in work for n in w.prompt_lengths])),
        max_positions - 1 - DECODE_STEPS,
    )
    rows = ids[:1, :prompt].repeat(settings.batch_size, 1)
    _greedy_seconds(model, rows, 1)  # warms up: the first call allocates what the others reuse
    first = _greedy_seconds(model, rows, 1)
    more = _greedy_seconds(model, rows, 1 + DECODE_STEPS)
    return Probe(
        train_device="cpu",
        predict_device=settings.device,
        sequence_length=ids.shape[1],
        train_tokens_per_s=ids.numel() / min(seconds[1:]),
        prompt_length=rows.shape[1],
        prefill_tokens_per_s=rows.numel() / first,
        decode_step_s=max(0.0, more - first) / DECODE_STEPS,
    )


def _greedy_seconds(model: BioGPT, rows: torch.Tensor, steps: int) -> float:
    """Seconds to generate `steps` tokens for each of `rows` (B, T), none ending early."""
    began = time.perf_counter()
    with torch.no_grad():
        generate(model, rows, max_new_tokens=steps, min_new_tokens=steps)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)  # the GPU's queue is the work, not its launch
    return time.perf_counter() - began


# --------------------------------------------------------------------------------------------
# Time and memory
# --------------------------------------------------------------------------------------------


def train_bytes(model: BioGPT, settings: Settings, task: Task, length: int) -> int:
    """Peak training memory: fp32 weights, gradients and Adam's moments (16 bytes a
    parameter; bf16 is autocast, the state stays fp32), one micro-batch's activations
    (`ACTIVATION_WIDTHS`), and the fused output layer's fp32 work buffer (`HeadLoss`: a
    chunk of rows x vocabulary)."""
    c = model.config
    tokens = settings.train_config(task).max_tokens_per_batch
    per_token = c.num_layers * (ACTIVATION_WIDTHS * c.hidden_size + 2 * c.num_heads * length)
    head = min(tokens, DEFAULT_CHUNK_ROWS) * c.vocab_size * 4
    return 16 * model.num_parameters() + tokens * per_token * BYTES[settings.dtype] + head


def predict_bytes(model: BioGPT, settings: Settings, prompt: int, answer: int) -> int:
    """Peak decoding memory: the weights in the run's dtype, the key/value cache of a batch
    (2 x layers x rows x positions x hidden) and a step's logits."""
    c = model.config
    width = BYTES[settings.dtype]
    rows = settings.batch_size
    cache = 2 * c.num_layers * rows * (prompt + answer) * c.hidden_size * width
    return model.num_parameters() * width + cache + rows * c.vocab_size * 4


def estimate(
    model: BioGPT, tasks: Sequence[Task], work: Sequence[Work], speed: Probe, settings: Settings
) -> dict[str, Any]:
    """reproduce.json's "estimate": per task the work, its seconds and peak bytes; the
    totals; the probe's measurements."""
    rows: dict[str, Any] = {}
    for task, w in zip(tasks, work, strict=True):
        longest_prompt = max(w.prompt_lengths, default=0)
        cap = settings.max_new_tokens or max_new_tokens_for(task, model.config.max_positions, 0)
        rows[w.task] = {
            "train_examples": w.train_examples,
            "updates": w.updates,
            "train_tokens": w.train_tokens,
            "test_examples": w.test_examples,
            "prompt_tokens": w.prompt_tokens,
            "decode_steps": w.decode_steps,
            "train_seconds": w.train_tokens / speed.train_tokens_per_s,
            "predict_seconds": w.prompt_tokens / speed.prefill_tokens_per_s
            + w.decode_steps * speed.decode_step_s,
            "train_peak_bytes": train_bytes(model, settings, task, max(w.sample_lengths)),
            "predict_peak_bytes": predict_bytes(model, settings, longest_prompt, cap),
        }
        rows[w.task]["peak_bytes"] = max(
            rows[w.task]["train_peak_bytes"], rows[w.task]["predict_peak_bytes"]
        )
    return {
        "tasks": rows,
        "total_seconds": sum(r["train_seconds"] + r["predict_seconds"] for r in rows.values()),
        "peak_bytes": max((r["peak_bytes"] for r in rows.values()), default=0),
        "parameters": model.num_parameters(),
        "probe": asdict(speed),
    }


def duration(seconds: float) -> str:
    """`4.2 s`, `12 min`, `3.5 h`, `2.1 d`."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}" if unit != "min" else f"{seconds / size:.0f} min"
    return f"{seconds:.1f} s"


def size(count: float) -> str:
    """`812 MB`, `5.4 GB`."""
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.0f} MB"


def table(record: dict[str, Any]) -> str:
    """The estimate as the table `biogpt reproduce` prints, its device first."""
    probe_ = record["probe"]
    lines = [
        f"estimate: training on {probe_['train_device']} at "
        f"{probe_['train_tokens_per_s']:,.0f} tokens/s, decoding on {probe_['predict_device']} "
        f"at {probe_['decode_step_s'] * 1000:.1f} ms a step",
        f"{'task':<12} {'train ex':>8} {'updates':>8} {'tokens':>13} {'train':>9} "
        f"{'test ex':>7} {'predict':>9} {'peak memory':>11}",
    ]
    for name, r in record["tasks"].items():
        lines.append(
            f"{name:<12} {r['train_examples']:>8,} {r['updates']:>8,} {r['train_tokens']:>13,} "
            f"{duration(r['train_seconds']):>9} {r['test_examples']:>7,} "
            f"{duration(r['predict_seconds']):>9} {size(r['peak_bytes']):>11}"
        )
    tokens = sum(r["train_tokens"] for r in record["tasks"].values())
    lines.append(
        f"total: {tokens:,} training tokens, {duration(record['total_seconds'])}, "
        f"peak memory {size(record['peak_bytes'])} ({record['parameters']:,} parameters)"
    )
    if probe_["predict_device"] != probe_["train_device"]:  # two memories, each its own peak
        for stage in ("train", "predict"):
            peak = max(r.get(f"{stage}_peak_bytes", 0) for r in record["tasks"].values())
            lines.append(f"  {stage} peak on {probe_[stage + '_device']}: {size(peak)}")
    memory = machine_memory()
    training_peak = max(r.get("train_peak_bytes", 0) for r in record["tasks"].values())
    if memory and training_peak > memory:
        lines.append(
            f"warning: fine-tuning may need {size(training_peak)}, more than this machine's "
            f"{size(memory)} of memory"
        )
    return "\n".join(lines)


def machine_memory() -> int | None:
    """Bytes of physical memory, where the system says (fine-tuning runs in it)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
