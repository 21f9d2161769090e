"""Mining throughput: `biogpt mine` against a plain transformers pipeline, in one run.

Both sides read the same JSONL of shared abstracts (`$BIOGPT_DATA/pretrain/abstracts.jsonl`)
with the same fine-tuned-task model directory (BC5CDR's record and prompt tokens) and end
with every document's answer parsed by the task:

- ours: `biogpt.mine.pipeline.mine`, what `biogpt mine` calls, into a fresh SQLite store
  (ingest, sorting by length, continuous batching, the store's transactions all counted);
- transformers: `BioGptForCausalLM.from_pretrained` on the same directory, this package's
  tokenizer and `encode_prompt` (so that the ids are equal and the tokenizer's speed is
  not what is timed), batches of `--batch-size` documents in file order, left-padded,
  `generate` greedy, the answer cut at `</s>`, decoded and parsed with the task's `parse`.

Each contender's time runs from loading the model to the last parsed answer. Two models:

- the `--preset` shape (default `biogpt`, 347M) with random weights; its `</s>` row is
  zeroed, so the tied output layer gives `</s>` a logit of 0, which never wins against
  42k random logits: every answer is `--tokens` long on both sides (transformers also gets
  `min_new_tokens`), so both do the same work;
- `mini` with BC5CDR's nine prompt tokens added (as tests/test_mine.py builds a task model),
  its answers ending where it writes `</s>`, at most `--tokens`.

fp32 on both sides, the contenders taking turns (`--rounds`, best time kept): ours as
`biogpt mine` runs by default (drafting from the abstract, `--prompt-lookup 7`; the
accepted draft tokens are printed) and with no drafts, and our bf16 beside them. The
answers are compared document by document (raw text and parsed structure). `--prefill`
adds both fp32 runs cut to one new token, which parts the time into the prompts (with
loading) and the rest of the decoding. Each model's table ends with the floor that the
matrix products set: the products every fp32 run must do (the prompts', and the answers'
where their length is forced) at the best rate PyTorch's F.linear reaches here on the
model's shapes, and so the most any fp32 pipeline could beat transformers by. Last, the peak RSS of our
mine in fresh processes, on `mini`, for `--rss-documents` and for ten times as many, with
glibc's allocator as it comes and with a fixed mmap threshold (`--mmap-threshold`).

    python benchmarks/mine.py [--preset biogpt] [--documents 32] [--mini-documents 256]
        [--tokens 32] [--batch-size 8] [--threads 2] [--rounds 2] [--prefill]
        [--rss-documents 100] [--mmap-threshold 65536] [--max-load 2 --wait-minutes 20]

`--preset tiny --documents 16 --tokens 8 --mini-documents 16 --rss-documents 8` is a quick
trial.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine import cpu_model

from biogpt import BioGPT, tasks
from biogpt.checkpoint.pipeline import tokenizer_for
from biogpt.config import ModelConfig
from biogpt.mine.decode import Speculation
from biogpt.mine.pipeline import PROMPT_LOOKUP
from biogpt.tasks import Example, encode_prompt, task_for_model
from biogpt.tasks.evaluation import structure
from biogpt.tokenizer import Tokenizer

TASK = "bc5cdr"
DATA = Path(
    os.environ.get("BIOGPT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
ABSTRACTS = DATA / "pretrain" / "abstracts.jsonl"

Answers = dict[str, tuple[str, str]]  # pmid -> (raw answer, parsed structure as JSON)


# --------------------------------------------------------------------------------------------
# Documents and models
# --------------------------------------------------------------------------------------------


def write_corpus(path: Path, count: int) -> Path:
    """The first `count` shared abstracts as a JSONL of {"pmid", "title", "abstract"}."""
    if not ABSTRACTS.is_file():
        sys.exit(f"no abstracts at {ABSTRACTS} (set BIOGPT_DATA to the data root)")
    with open(ABSTRACTS, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for written, line in enumerate(f):
            if written == count:
                break
            row = json.loads(line)
            keep = {k: row[k] for k in ("pmid", "title", "abstract")}
            out.write(json.dumps(keep, ensure_ascii=False) + "\n")
    return path


def text_of(row: dict) -> str:
    """A JSONL record's text as `biogpt.mine.sources` builds it: title, abstract, one space."""
    return " ".join(f"{row.get('title') or ''} {row.get('abstract') or ''}".split())


def task_model(model: BioGPT, tokenizer: Tokenizer, path: Path) -> Path:
    """Save `model` as a model fine-tuned for `TASK`: weights, vocabulary, task record."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    tasks.write_task_record(path, tasks.get(TASK))
    return path


def shape_model(preset: str, path: Path) -> Path:
    """`preset`'s shape with random weights, the released vocabulary plus the task's prompt
    tokens, and a zero `</s>` row: its logit is 0 under the tied output layer, below the
    largest of the random logits at every step, so every answer runs to its budget."""
    task = tasks.get(TASK)
    tokenizer = Tokenizer.from_pretrained("biogpt")
    tokenizer.add_tokens(task.prompt())
    config = ModelConfig.from_name(preset, vocab_size=len(tokenizer), max_positions=1024)
    torch.manual_seed(0)
    model = BioGPT(config).eval()
    with torch.no_grad():
        model.biogpt.embed_tokens.weight[config.eos_token_id].zero_()
    return task_model(model, tokenizer, path)


def mini_task_model(path: Path) -> Path:
    """`mini` with the task's prompt tokens appended to its vocabulary, untrained."""
    tokenizer = Tokenizer.from_pretrained("biogpt")
    tokenizer.add_tokens(tasks.get(TASK).prompt())
    torch.manual_seed(0)
    model = BioGPT.from_pretrained("mini").eval()
    model.resize_vocab(len(tokenizer))
    return task_model(model, tokenizer, path)


# --------------------------------------------------------------------------------------------
# The contenders
# --------------------------------------------------------------------------------------------


DRAFTS: dict[str, Speculation] = {}  # the last run's drafting counts, by contender


def ours(
    model_dir: Path,
    corpus: Path,
    work: Path,
    dtype: str,
    batch_size: int,
    tokens: int,
    prompt_lookup: int = PROMPT_LOOKUP,
    name: str = "",
) -> Answers:
    """`biogpt mine` into a fresh store under `work`, drafting up to `prompt_lookup` tokens
    a row a pass (its default; 0: none); the answers read back from it. The drafting counts
    go to DRAFTS[name]."""
    from biogpt.mine.pipeline import mine
    from biogpt.mine.store import open_store

    store = Path(tempfile.mkdtemp(dir=work)) / "mined.sqlite"
    summary = mine([f"m={model_dir}"], [str(corpus)], store, batch_size=batch_size,
                   dtype=dtype, max_new_tokens=tokens, progress=None,
                   prompt_lookup=prompt_lookup)  # fmt: skip
    DRAFTS[name] = summary.models[0].speculation
    with open_store(store) as opened:
        return {
            r["pmid"]: (r["raw"], json.dumps(r["structure"], sort_keys=True))
            for r in opened.results()
        }


def transformers_pipeline(
    model_dir: Path, corpus: Path, batch_size: int, tokens: int, fixed_length: bool
) -> Answers:
    """The plain pipeline: load, tokenise, left-pad, `generate` greedily in batches, parse."""
    import transformers

    model = transformers.BioGptForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = tokenizer_for(model_dir, model.config.vocab_size)
    task = task_for_model(model_dir, None)
    eos, pad = tokenizer.eos_id, model.config.pad_token_id
    with open(corpus, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    answers: Answers = {}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        sources = [task.source_of_text(text_of(row)) for row in chunk]
        prompts = [encode_prompt(tokenizer, task, source) for source in sources]
        width = max(map(len, prompts))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])  # (B, width)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=mask,
                do_sample=False,
                num_beams=1,
                max_new_tokens=tokens,
                min_new_tokens=tokens if fixed_length else None,
                eos_token_id=eos,
                pad_token_id=pad,
            )
        for row, source, new in zip(chunk, sources, out[:, width:].tolist(), strict=True):
            answer = new[: new.index(eos)] if eos in new else new
            raw = tokenizer.decode(answer)
            example = Example(id=str(row["pmid"]), source=source, target="", gold=None)
            parsed = task.parse(raw, example)
            answers[str(row["pmid"])] = (raw, json.dumps(structure(parsed.value), sort_keys=True))
    return answers


def products_floor(
    model_dir: Path, corpus: Path, fed_answer_tokens: int
) -> tuple[int, float, float]:
    """(prompt tokens, TFLOP of the matrix products every fp32 run must do, the best fp32
    product rate measured here in GFLOP/s): the layers' products for every prompt token
    and every answer token fed back (`fed_answer_tokens` in all), and the output layer's
    for each prompt's last token and each answer token fed; the rate is PyTorch's F.linear
    on the model's layer shapes at the mean prompt length, best of 5."""
    import torch.nn.functional as F

    model = BioGPT.from_pretrained(model_dir)
    config = model.config
    tokenizer = tokenizer_for(model_dir, config.vocab_size)
    task = task_for_model(model_dir, None)
    with open(corpus, encoding="utf-8") as f:
        lengths = [
            len(encode_prompt(tokenizer, task, task.source_of_text(text_of(json.loads(line)))))
            for line in f
        ]
    h, ffn = config.hidden_size, config.intermediate_size
    layers = 2 * config.num_layers * (4 * h * h + 2 * h * ffn)  # q, k, v, out; fc1, fc2
    head = 2 * config.vocab_size * h
    flops = layers * (sum(lengths) + fed_answer_tokens) + head * (len(lengths) + fed_answer_tokens)
    m = round(sum(lengths) / len(lengths))
    best = 0.0
    for n, k in ((3 * h, h), (h, h), (ffn, h), (h, ffn)):
        x, w = torch.randn(m, k), torch.randn(n, k)
        F.linear(x, w)
        for _ in range(5):
            began = time.perf_counter()
            F.linear(x, w)
            best = max(best, 2 * m * n * k / (time.perf_counter() - began) / 1e9)
    return sum(lengths), flops / 1e12, best


def race(
    contenders: dict[str, Callable[[], Answers]], rounds: int, warmups: dict[str, Callable]
) -> tuple[dict[str, float], dict[str, Answers]]:
    """Each contender's best seconds over `rounds` rounds (every contender once a round,
    the order turned each round), after one warm-up call each; and its last answers."""
    for warm in warmups.values():
        warm()
    best = dict.fromkeys(contenders, float("inf"))
    answers: dict[str, Answers] = {}
    names = list(contenders)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            began = time.perf_counter()
            answers[name] = contenders[name]()
            best[name] = min(best[name], time.perf_counter() - began)
    return best, answers


def same(a: Answers, b: Answers) -> tuple[int, int]:
    """(documents whose raw answers are equal, documents whose parsed structures are equal)."""
    if a.keys() != b.keys():
        raise SystemExit(f"the contenders answered different documents: {len(a)} vs {len(b)}")
    return sum(a[k][0] == b[k][0] for k in a), sum(a[k][1] == b[k][1] for k in a)


# --------------------------------------------------------------------------------------------
# Peak memory, in fresh processes
# --------------------------------------------------------------------------------------------


def rss_worker(model_dir: str, corpus: str, store: str, batch_size: int, tokens: int) -> None:
    """Run in a fresh process: mine, then print the peak RSS (VmHWM: this process's own) and
    the seconds it took. With BENCH_AS_COMMAND=1 the allocator is set as `biogpt mine` sets
    it (`biogpt.cpu.memory.fix_mmap_threshold`) before mining."""
    from biogpt.cpu.memory import fix_mmap_threshold
    from biogpt.mine.pipeline import mine

    if os.environ.get("BENCH_AS_COMMAND") == "1" and not fix_mmap_threshold():
        raise SystemExit("fix_mmap_threshold did not apply (not glibc?)")
    start = time.perf_counter()
    summary = mine([f"m={model_dir}"], [corpus], store, batch_size=batch_size,
                   max_new_tokens=tokens, progress=None)  # fmt: skip
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        status = f.read()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(json.dumps({"peak_rss": peak, "mined": summary.models[0].mined, "seconds": seconds}))


def peak_rss(
    model_dir: Path, corpus: Path, work: Path, batch_size: int, tokens: int, env: dict[str, str]
) -> dict:
    """Peak RSS of mining `corpus` into a new store, in a fresh process with `env` added."""
    store = Path(tempfile.mkdtemp(dir=work)) / "mined.sqlite"
    argv = [sys.executable, __file__, "--rss-worker", str(model_dir), str(corpus), str(store),
            "--batch-size", str(batch_size), "--tokens", str(tokens)]  # fmt: skip
    out = subprocess.run(
        argv, capture_output=True, text=True, check=True, env={**os.environ, **env}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# Running and reporting
# --------------------------------------------------------------------------------------------


def wait_for_quiet(max_load: float | None, minutes: float) -> None:
    """Sleep until the 1-minute load average is below `max_load`, for at most `minutes`."""
    if max_load is None:
        return
    deadline = time.monotonic() + 60 * minutes
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        print(f"load average {os.getloadavg()[0]:.2f} >= {max_load}: waiting", flush=True)
        time.sleep(30)
    if os.getloadavg()[0] >= max_load:
        print(f"still {os.getloadavg()[0]:.2f} after {minutes:g} min: running anyway")


def measure(
    label: str,
    model_dir: Path,
    corpus: Path,
    work: Path,
    args: argparse.Namespace,
    fixed_length: bool,
) -> dict[str, float]:
    """Race the contenders on one model, print its table; documents/s per contender."""
    with open(corpus, encoding="utf-8") as f:
        count = sum(1 for _ in f)
    b, n = args.batch_size, args.tokens
    contenders = {
        "transformers fp32": lambda: transformers_pipeline(model_dir, corpus, b, n, fixed_length),
        "ours fp32": lambda: ours(model_dir, corpus, work, "fp32", b, n, name="ours fp32"),
        "ours fp32, no drafts": lambda: ours(model_dir, corpus, work, "fp32", b, n, 0),
        "ours bf16": lambda: ours(model_dir, corpus, work, "bf16", b, n, name="ours bf16"),
    }
    if args.prefill and n > 1:  # the same runs cut to one new token: the prompts' share
        contenders["transformers fp32 1 token"] = lambda: transformers_pipeline(
            model_dir, corpus, b, 1, fixed_length
        )
        contenders["ours fp32 1 token"] = lambda: ours(model_dir, corpus, work, "fp32", b, 1)
    # warm-ups: the first documents only, a few tokens (first-call costs, kernel set-up)
    first = write_corpus(work / "warm.jsonl", b)
    warmups = {
        "transformers fp32": lambda: transformers_pipeline(model_dir, first, b, 2, fixed_length),
        "ours fp32": lambda: ours(model_dir, first, work, "fp32", b, 2),
        "ours fp32, no drafts": lambda: ours(model_dir, first, work, "fp32", b, 2, 0),
        "ours bf16": lambda: ours(model_dir, first, work, "bf16", b, 2),
    }
    load_before = os.getloadavg()[0]
    began = time.perf_counter()
    best, answers = race(contenders, args.rounds, warmups)
    spent = time.perf_counter() - began
    print(
        f"\n{label}: {count} documents, batch {b}, at most {n} new tokens"
        + (" (forced: every answer that long)" if fixed_length else "")
        + f"; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
        f"({spent / 60:.1f} min, warm-ups included)"
    )
    print(f"{'contender':<26}{'seconds':>9}{'documents/s':>13}{'vs transformers':>17}"
          f"{'same raw':>11}{'same parsed':>13}")  # fmt: skip
    rates: dict[str, float] = {}
    for name, seconds in best.items():
        rates[name] = count / seconds
        cut = name.endswith("1 token")  # compared with the other side's one-token run
        other = answers["transformers fp32 1 token" if cut else "transformers fp32"]
        raw, parsed = same(answers[name], other)
        print(
            f"{name:<26}{seconds:>9.2f}{rates[name]:>13.2f}"
            f"{best['transformers fp32' + (' 1 token' if cut else '')] / seconds:>16.2f}x"
            f"{f'{raw}/{count}':>11}{f'{parsed}/{count}':>13}"
        )
    if "ours fp32 1 token" in best:
        hf_rest = best["transformers fp32"] - best["transformers fp32 1 token"]
        ours_rest = best["ours fp32"] - best["ours fp32 1 token"]
        print(
            f"loading, prompts and 1 token: {best['transformers fp32 1 token']:.1f} s "
            f"transformers, {best['ours fp32 1 token']:.1f} s ours; the other {n - 1} tokens: "
            f"{hf_rest:.1f} s transformers, {ours_rest:.1f} s ours ({hf_rest / ours_rest:.2f}x)"
        )
    for name in ("ours fp32", "ours bf16"):
        drafts = DRAFTS.get(name)
        if drafts is not None and drafts.passes:
            print(f"{name}: {drafts.accepted} of {drafts.drafted} draft tokens accepted in "
                  f"{drafts.passes} passes, {drafts.tokens_per_row_pass:.2f} tokens per row "
                  "a pass (those passes)")  # fmt: skip
        elif drafts is not None:
            print(f"{name}: no draft verified (one token a pass)")
    # answers forced to n tokens feed n - 1 of them back; otherwise only the prompts count
    fed = count * (n - 1) if fixed_length else 0
    tokens, tflop, rate = products_floor(model_dir, corpus, fed)
    floor = tflop * 1e3 / rate
    what = "prompts' and answers'" if fixed_length else "prompts'"
    print(f"the {what} products ({tokens} prompt tokens, {fed} answer tokens fed): "
          f"{tflop:.2f} TFLOP; at the best fp32 rate F.linear reaches here on these shapes "
          f"({rate:.0f} GFLOP/s) at least {floor:.2f} s, so no fp32 run can beat transformers "
          f"fp32 by more than {best['transformers fp32'] / floor:.2f}x")  # fmt: skip
    raw, parsed = same(answers["ours bf16"], answers["ours fp32"])
    print(f"(best of {args.rounds} rounds, model load to the last parsed answer; same: as "
          f"transformers fp32's, document by document; bf16 as ours fp32: raw {raw}/{count}, "
          f"parsed {parsed}/{count})")  # fmt: skip
    return rates


def memory(mini_dir: Path, work: Path, args: argparse.Namespace) -> None:
    """Peak RSS of ours for `--rss-documents` and ten times as many, with glibc's default
    allocator and with a fixed mmap threshold (freed large blocks go back to the system at
    once, so the heap does not keep the holes that tensors of many sizes leave)."""
    small = write_corpus(work / "rss-1x.jsonl", args.rss_documents)
    large = write_corpus(work / "rss-10x.jsonl", 10 * args.rss_documents)
    settings: dict[str, dict[str, str]] = {
        "glibc as it comes": {},
        "as `biogpt mine` sets it (fix_mmap_threshold)": {"BENCH_AS_COMMAND": "1"},
    }
    if args.mmap_threshold > 0:
        threshold = {"MALLOC_MMAP_THRESHOLD_": str(args.mmap_threshold)}
        settings[f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}"] = threshold
    print("\npeak RSS of ours (mini, fp32) in fresh processes (goal: 10x within 10% of 1x):")
    for label, env in settings.items():
        b, n = args.batch_size, args.tokens
        peaks = [peak_rss(mini_dir, corpus, work, b, n, env) for corpus in (small, large)]
        growth = peaks[1]["peak_rss"] / peaks[0]["peak_rss"] - 1
        print(
            f"  {label}: {peaks[0]['mined']} documents {peaks[0]['peak_rss'] / 1e6:.0f} MB "
            f"({peaks[0]['seconds']:.1f} s), {peaks[1]['mined']} documents "
            f"{peaks[1]['peak_rss'] / 1e6:.0f} MB ({peaks[1]['seconds']:.1f} s): {100 * growth:+.1f}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="biogpt", help="the random-weight model's shape")
    parser.add_argument("--documents", type=int, default=32, help="documents for the preset")
    parser.add_argument("--mini-documents", type=int, default=256, help="documents for mini")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per answer (cap)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds, best kept")
    parser.add_argument(
        "--rss-documents", type=int, default=100, help="peak RSS for this many and 10x (0: skip)"
    )
    parser.add_argument(
        "--prefill",
        action="store_true",
        help="also time the fp32 runs cut to one new token (the prompts' share)",
    )
    parser.add_argument(
        "--mmap-threshold",
        type=int,
        default=65536,
        help="peak RSS again with glibc's MALLOC_MMAP_THRESHOLD_ at this (0: skip)",
    )
    parser.add_argument("--max-load", type=float, help="wait for a 1-minute load below this")
    parser.add_argument("--wait-minutes", type=float, default=20.0)
    parser.add_argument("--rss-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.rss_worker:
        model_dir, corpus, store = args.rss_worker
        rss_worker(model_dir, corpus, store, args.batch_size, args.tokens)
        return

    import transformers

    wait_for_quiet(args.max_load, args.wait_minutes)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"transformers {transformers.__version__}; {args.threads} threads")  # fmt: skip
    print(f"load average (1, 5, 15 min) at the start: "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="mine-bench-") as tmp:
        work = Path(tmp)
        rates = {}
        if args.documents > 0:
            shape_dir = shape_model(args.preset, work / "shape")
            shape_corpus = write_corpus(work / "shape.jsonl", args.documents)
            size = ModelConfig.from_name(args.preset).num_parameters() / 1e6
            label = f"{args.preset} shape ({size:.1f}M parameters, random weights)"
            rates["shape"] = measure(label, shape_dir, shape_corpus, work, args, True)
        mini_dir = mini_task_model(work / "mini")
        if args.mini_documents > 0:
            mini_corpus = write_corpus(work / "mini.jsonl", args.mini_documents)
            rates["mini"] = measure("mini", mini_dir, mini_corpus, work, args, False)

        print("\nratios to transformers fp32 (goal: ours fp32 >= 4x):")
        for which, r in rates.items():
            hf = r["transformers fp32"]
            print(f"  {which}: ours fp32 {r['ours fp32'] / hf:.2f}x, "
                  f"ours bf16 {r['ours bf16'] / hf:.2f}x")  # fmt: skip

        if args.rss_documents > 0:
            memory(mini_dir, work, args)
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
