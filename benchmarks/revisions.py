"""Speed and outputs of two revisions, in one run: a git revision against the working tree.

Two versions of one package cannot be imported in one Python process, so every measurement
is a fresh subprocess of the same Python, with PYTHONPATH on one tree: the base revision
(extracted with `git archive` into a temporary directory, its C extension built in place)
or this working tree. Rounds alternate which revision goes first, and within a round the two
runs of a workload follow each other, so the machine's drift hits both alike. With --group,
one process per revision and round runs every workload, building the model once (for the
347M model on a slow machine, where a build costs as much as a run).

Workloads, on random weights (`torch.manual_seed(0)`, the preset's shape), eval mode:
greedy fp32, bf16 and int8 (batch 1), beam search with 5 beams, and a left-padded batch of 4
prompts (greedy); every run makes exactly --tokens new tokens (min_new_tokens =
max_new_tokens), is timed after one warm-up call, and its token ids are hashed. `train` times
one training step (forward + summed token loss + backward + AdamW, as benchmarks/train_step.py
takes it) on --train-preset and records the loss of every step. The table gives each
revision's median over the rounds and its min-max spread; "same" means every hash (or
loss) is equal across revisions and rounds, and the script exits non-zero when one is not.

    python benchmarks/revisions.py [--base HEAD] [--preset biogpt] [--tokens 64]
                                   [--rounds 5] [--threads 2] [--busy] [--group]
                                   [--workloads greedy-fp32,greedy-bf16,...,train]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_model, one_core_busy

REPO = Path(__file__).resolve().parents[1]
DECODING = ("greedy-fp32", "greedy-bf16", "greedy-int8", "beam5", "batch4")
WORKLOADS = (*DECODING, "train")
MARK = "REVISIONS-RESULT "

# The child runs against either layout: after the reorganisation (biogpt.cpu, biogpt.training)
# or before it (flat modules: biogpt.gemv, biogpt.train, biogpt.loss, biogpt.data). The layout
# is chosen by whether biogpt.cpu exists, not by catching ImportError around the imports: a
# broken module in the new tree must fail loudly, not fall back to the old paths' shims.
CHILD = r'''
import copy, hashlib, importlib.util, json, os, sys, time
import torch

spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
# An editable install of biogpt adds a finder that serves any biogpt.* module the tree on
# PYTHONPATH lacks from the installed checkout: drop it, so every module comes from one tree.
sys.meta_path = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
import biogpt
from biogpt import BioGPT
from biogpt.config import ModelConfig

NEW = importlib.util.find_spec("biogpt.cpu") is not None
if NEW:
    from biogpt.cpu import gemv, quantize_int8
else:
    from biogpt import gemv

    def quantize_int8(model):
        model.quantize_int8()

PROMPT = [2, 4805, 9, 656, 21]  # "COVID-19 is", as benchmarks/generate.py


def fingerprint(model):
    """A cheap digest of the weights: a strided sample of every tensor (a full sum in float64
    would cost seconds on the 347M model)."""
    h = hashlib.sha256()
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().reshape(-1)[::101].float().numpy().tobytes())
    return h.hexdigest()[:16]


def digest(ids):
    return hashlib.sha256(ids.to(torch.int64).contiguous().numpy().tobytes()).hexdigest()


def prompts(config, workload):
    """(input_ids, attention_mask): one prompt, or four of different lengths left-padded."""
    first = [t % config.vocab_size for t in PROMPT]
    if workload != "batch4":
        return torch.tensor([first]), None
    g = torch.Generator().manual_seed(1)
    rows = [first]
    for n in (11, 3, 8):
        rows.append([2] + torch.randint(4, config.vocab_size, (n - 1,), generator=g).tolist())
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), config.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


KIND = {"greedy-bf16": "bf16", "greedy-int8": "int8"}  # the rest decode in fp32


def decoding_models(workloads):
    """The models the decoding workloads need, by kind: fp32 built from the seed, bf16 and
    int8 made from it before any decoding prepares it (a prepared model cannot be cast), as
    copies where fp32 itself is needed too."""
    kinds = {KIND.get(w, "fp32") for w in workloads}
    if not kinds:
        return {}, None
    torch.manual_seed(0)
    fp32 = BioGPT(ModelConfig.from_name(spec["preset"])).eval()
    weights = fingerprint(fp32)
    models = {}
    for kind in ("bf16", "int8"):
        if kind in kinds:
            model = fp32 if kinds == {kind} else copy.deepcopy(fp32)
            if kind == "bf16":
                model.to(torch.bfloat16)
            else:
                quantize_int8(model)
            models[kind] = model
    if "fp32" in kinds:
        models["fp32"] = fp32
    return models, weights


def decode(workload, model, weights):
    n = spec["tokens"]
    ids, mask = prompts(model.config, workload)
    beams = 5 if workload == "beam5" else 1

    def run(tokens):
        return model.generate(
            ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, num_beams=beams
        )

    warm_tokens = min(spec["warmup_tokens"], n)
    warm = run(warm_tokens)  # packs the weights for these rows, allocates, starts the threads
    began = time.perf_counter()
    out = run(n)
    seconds = time.perf_counter() - began
    new = out[:, ids.shape[1]:]
    if new.shape[1] != n:
        raise SystemExit(f"{workload}: made {new.shape[1]} new tokens, asked for {n}")
    return {
        "seconds": seconds,
        "new_tokens": n * ids.shape[0],  # a beam-search token is one step of all beams
        "hash": digest(out),
        # Checked where the warm-up made as many tokens (a shorter beam search may differ).
        "repeatable": warm_tokens < n or bool(torch.equal(warm, out)),
        "weights": weights,
    }


def train():
    if NEW:
        from biogpt.model import BioGPT as LM
        from biogpt.training.batching import collate
        from biogpt.training.loop import accumulate_gradients
        from biogpt.training.loss import TokenLoss
    else:
        from biogpt.data import collate
        from biogpt.loss import TokenLoss
        from biogpt.model import BioGPT as LM
        from biogpt.train import accumulate_gradients

    config = ModelConfig.from_name(spec["train_preset"])
    torch.manual_seed(0)
    lm = LM(config).train()  # dropout on, as in training
    weights = fingerprint(lm)
    ours = TokenLoss(lm)
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(4, config.vocab_size, (spec["batch"], spec["length"]), generator=g)
    rows[:, 0] = 2
    batch = collate([(r.tolist(), None) for r in rows], False)
    opt = torch.optim.AdamW(
        ours.parameters(), lr=1e-5, betas=(0.9, 0.98), eps=1e-8, weight_decay=0.01, foreach=True
    )
    losses, times = [], []
    for step in range(1 + spec["steps"]):  # the first is the warm-up, its loss still recorded
        began = time.perf_counter()
        loss, _ = accumulate_gradients(ours, [batch], "fp32")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step:
            times.append(time.perf_counter() - began)
        losses.append(loss)
    return {
        "seconds": min(times),  # the best step, as benchmarks/train_step.py keeps
        "new_tokens": batch.tokens,
        # The steps after the warm-up: the first step of a fresh process is not always
        # reproducible (its loss, 8 fp32 ulps of the sum, 1 process in 4-8, both layouts).
        "hash": hashlib.sha256(repr(losses[1:]).encode()).hexdigest(),
        "losses": losses,
        "repeatable": True,
        "weights": weights,
    }


def check_modules():
    tree = spec["tree"].rstrip("/") + "/"
    strays = sorted(
        name
        for name, module in sys.modules.items()
        if name.split(".")[0] == "biogpt"
        and getattr(module, "__file__", None)
        and not module.__file__.startswith(tree)
    )
    if strays:
        raise SystemExit(f"modules from outside {tree}: {strays}")


models, weights = decoding_models([w for w in spec["workloads"] if w != "train"])
for workload in spec["workloads"]:
    if workload == "train":
        result = train()
    else:
        result = decode(workload, models[KIND.get(workload, "fp32")], weights)
    check_modules()
    result.update(
        workload=workload,
        file=biogpt.__file__,
        layout="new" if NEW else "old",
        kernel=bool(gemv.available()),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        load=os.getloadavg()[0],
    )
    result["tok_s"] = result["new_tokens"] / result["seconds"]
    print("REVISIONS-RESULT " + json.dumps(result), flush=True)
'''


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True
    ).stdout.strip()


def extract(rev: str, into: Path) -> None:
    """The tree of `rev` in `into` (no git metadata, nothing changed in this checkout), with
    its C extension built in place."""
    archive = subprocess.run(["git", "archive", rev], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "-q"],
        cwd=into,
        capture_output=True,
        text=True,
    )
    if build.returncode:
        raise SystemExit(f"building the C extension of {rev} failed:\n{build.stderr[-3000:]}")


def stale_extension(tree: Path) -> str | None:
    """A line when the tree's built C extension is older than its source (or missing)."""
    for main in tree.glob("biogpt/**/_cpu.c"):
        built = list(main.parent.glob("_cpu.*.so"))
        if not built:
            return f"{main.parent} has no built _cpu extension (run setup.py build_ext)"
        for source in [main, *main.parent.glob("*.h")]:  # _cpu.c and the headers it includes
            if max(b.stat().st_mtime for b in built) < source.stat().st_mtime:
                return (
                    f"{built[0]} is older than {source}: rebuild it (setup.py build_ext --inplace)"
                )
    return None


def run_child(script: Path, tree: Path, spec: dict, workdir: Path, timeout: float) -> list[dict]:
    """Run spec["workloads"] in one fresh process on `tree`: one result per workload."""
    spec = {**spec, "tree": str(tree.resolve())}
    env = dict(os.environ, PYTHONPATH=str(tree), PYTHONWARNINGS="ignore")
    # cwd is the scratch directory, so neither tree is found through the current directory.
    out = subprocess.run(
        [sys.executable, str(script), json.dumps(spec)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [x for x in out.stdout.splitlines() if x.startswith(MARK)]
    if out.returncode or len(lines) != len(spec["workloads"]):
        raise SystemExit(
            f"{','.join(spec['workloads'])} on {tree} failed (exit {out.returncode}):\n"
            f"{(out.stdout + out.stderr)[-4000:]}"
        )
    results = [json.loads(line[len(MARK) :]) for line in lines]
    expected = (tree / "biogpt" / "__init__.py").resolve()
    for result in results:
        if Path(result["file"]).resolve() != expected:
            raise SystemExit(f"the child imported {result['file']}, not {expected}")
    return results


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--preset", default="biogpt", help="decoding workloads' model shape")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per decoding run")
    parser.add_argument(
        "--warmup-tokens",
        type=int,
        default=8,
        help="new tokens of the untimed first call (it packs the weights and allocates)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated, from {','.join(WORKLOADS)}",
    )
    parser.add_argument("--train-preset", default="biogpt-mini")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-length", type=int, default=256)
    parser.add_argument("--train-steps", type=int, default=5, help="timed steps per child")
    parser.add_argument(
        "--busy", action="store_true", help="keep one core busy with a spinning process"
    )
    parser.add_argument(
        "--group",
        action="store_true",
        help="one process per revision and round runs every workload (one model build "
        "instead of one per workload: for slow machines; the two revisions' runs of a "
        "workload are then a process apart, not back to back)",
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child")
    parser.add_argument("--json", type=Path, help="write every child's result here")
    parser.add_argument("--report", type=Path, help="print the table of a --json file, run nothing")
    args = parser.parse_args()
    # A plain SIGTERM (timeout, kill) unwinds too: the spinner and the temporary tree go.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.report:
        saved = json.loads(args.report.read_text())
        print("\n".join(saved["header"]) + "\n")
        sys.exit(0 if report(saved["results"]) else 1)
    workloads = [w for w in args.workloads.split(",") if w]
    unknown = set(workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")

    base_rev = git("rev-parse", "--short", args.base)
    head_rev = git("rev-parse", "--short", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    current_name = f"working tree (HEAD {head_rev}{', modified' if dirty else ''})"
    common = {
        "preset": args.preset,
        "tokens": args.tokens,
        "warmup_tokens": args.warmup_tokens,
        "threads": args.threads,
        "train_preset": args.train_preset,
        "batch": args.train_batch,
        "length": args.train_length,
        "steps": args.train_steps,
    }

    with tempfile.TemporaryDirectory(prefix="biogpt-revisions-") as scratch:
        scratch_dir = Path(scratch)
        base_tree = scratch_dir / "base"
        base_tree.mkdir()
        print(f"extracting {base_rev} and building its C extension ...", flush=True)
        extract(base_rev, base_tree)
        for tree in (base_tree, REPO):
            warning = stale_extension(tree)
            if warning:
                print(f"WARNING: {warning}", flush=True)
        script = scratch_dir / "child.py"
        script.write_text(CHILD)
        trees = {"base": base_tree, "current": REPO}

        load = one_core_busy() if args.busy else contextlib.nullcontext()
        results: dict[str, dict[str, list[dict]]] = {
            w: {"base": [], "current": []} for w in workloads
        }
        began = time.time()
        load_before = os.getloadavg()
        with load:
            units = [workloads] if args.group else [[w] for w in workloads]
            for r in range(args.rounds):
                order = ("base", "current") if r % 2 == 0 else ("current", "base")
                for unit in units:
                    for side in order:
                        spec = {**common, "workloads": unit}
                        batch = run_child(script, trees[side], spec, scratch_dir, args.timeout)
                        for res in batch:
                            w = res["workload"]
                            if r == 0 and w == workloads[0]:  # once per revision
                                print(
                                    f"{side}: biogpt from {res['file']} ({res['layout']} "
                                    f"layout, C kernel {'built' if res['kernel'] else 'MISSING'}"
                                    f", torch {res['torch']}, {res['threads']} threads)",
                                    flush=True,
                                )
                            results[w][side].append(res)
                            print(
                                f"  round {r + 1} {w:12s} {side:8s} {res['tok_s']:9.2f} tok/s "
                                f"({res['seconds']:.2f} s)",
                                flush=True,
                            )
        load_after = os.getloadavg()
        elapsed = time.time() - began

    header = []
    header.append(f"date        {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    header.append(f"command     {' '.join(['python', 'benchmarks/revisions.py', *sys.argv[1:]])}")
    header.append(f"cpu         {cpu_model()}, {os.cpu_count()} cores")
    header.append(f"threads     {args.threads}")
    if set(workloads) & set(DECODING):
        header.append(
            f"decoding    preset {args.preset}, {args.tokens} new tokens per run, "
            f"timed after one warm-up call of {min(args.warmup_tokens, args.tokens)} tokens"
        )
    if "train" in workloads:
        header.append(
            f"train       preset {args.train_preset}, batch {args.train_batch} x "
            f"{args.train_length}, best of {args.train_steps} steps after one warm-up"
        )
    header.append(f"base        {args.base} = {base_rev}")
    header.append(f"current     {current_name}")
    header.append(
        f"rounds      {args.rounds}, alternating which revision goes first; "
        + (
            "one process per revision and round for all workloads"
            if args.group
            else "one process per workload, the two revisions back to back"
        )
    )
    header.append(f"busy        {'yes: one process spinning on one core' if args.busy else 'no'}")
    loads = [x["load"] for w in workloads for side in results[w].values() for x in side]
    header.append(
        f"load        1-min load average {load_before[0]:.1f} before, {load_after[0]:.1f} "
        f"after, {min(loads):.1f}-{max(loads):.1f} at the end of the runs; "
        f"{elapsed / 60:.1f} min in all"
    )
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=1))
    print("\n".join(header) + "\n")
    if not report(results):
        sys.exit(1)


def report(results: dict[str, dict[str, list[dict]]]) -> bool:
    """Print the table (Markdown) of a run's results; False when some tokens differ."""
    print(
        "| workload | base tok/s | current tok/s | ratio | best ratio "
        "| base min-max | current min-max | same |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    all_same = True
    notes = []
    for w, sides in results.items():
        b = [x["tok_s"] for x in sides["base"]]
        c = [x["tok_s"] for x in sides["current"]]
        runs = sides["base"] + sides["current"]
        same = len({x["hash"] for x in runs}) == 1 and all(x["repeatable"] for x in runs)
        all_same &= same
        if len({x["weights"] for x in runs}) != 1:
            notes.append(f"{w}: the random weights differ between revisions (init changed)")
        if not all(x["repeatable"] for x in runs):
            notes.append(f"{w}: a warm-up call and its timed call made different tokens")
        if w == "train":
            for side in ("base", "current"):
                losses = sides[side][0]["losses"]
                notes.append(f"train losses, {side}: " + ", ".join(f"{v:.6f}" for v in losses))
            first = sorted({x["losses"][0] for x in runs})
            if len(first) > 1:
                notes.append(
                    "train: the warm-up step's loss varied between processes ("
                    + ", ".join(f"{v!r}" for v in first)
                    + "); the comparison covers the steps after it"
                )
        if not same:
            for side in ("base", "current"):
                hashes = [x["hash"][:12] for x in sides[side]]
                notes.append(f"{w}, {side}: hashes by round {', '.join(hashes)}")
        mb, mc = statistics.median(b), statistics.median(c)
        print(
            f"| {w} | {mb:.2f} | {mc:.2f} | {mc / mb:.3f} | {max(c) / max(b):.3f} "
            f"| {spread(b)} | {spread(c)} | {'yes' if same else 'NO'} |"
        )
    print(
        "\n(tok/s: new tokens per second, median over the rounds; batch4 counts the new "
        "tokens of all 4 rows, beam5 one per step of all beams, train the batch's tokens; "
        "ratio: current/base of the medians; best ratio: of the fastest runs; same: every "
        "token-id hash, or for train every loss after the warm-up step, is equal across "
        "revisions and rounds)"
    )
    for note in notes:
        print(note)
    if not all_same:
        print("\nTOKENS DIFFER between revisions (or between runs)")
    return all_same


if __name__ == "__main__":
    main()
