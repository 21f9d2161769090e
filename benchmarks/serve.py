"""Serving: `biogpt serve` with concurrent clients, against the same requests sent one at a
time and against transformers' `generate` behind the same HTTP stack, in one run.

Three contenders answer the same completion requests over HTTP on 127.0.0.1, each a process
of its own, all on the same weights (the preset's shape, random weights from a fixed seed,
fp32, written once as a Hugging Face directory with its tokenizer):

- `biogpt serve`: the package's server (continuous batching), started as
  `python -m biogpt serve --model NAME=DIR`; `--clients` clients at once, each sending its
  `--requests-per-client` streaming requests one after another;
- `biogpt serve, one at a time`: the same server, the same total number of requests sent
  by one client (the sequential baseline);
- `transformers`: `BioGptForCausalLM.generate` (built by `oracle.hf_twin` from the same
  directory) behind FastAPI and uvicorn, one sync `/v1/completions` route that FastAPI runs
  in its thread pool, so concurrent requests each run their own `generate`; tokenized with
  transformers' `BioGptTokenizer`. It does not stream: its time to first token is the time
  of the whole response.

Every request is greedy (`temperature` 0) and makes exactly `--tokens` new tokens (the
server's `min_tokens` extra field, transformers' `min_new_tokens`): random weights would
otherwise stop at random lengths. Prompts are biomedical sentences of different lengths,
request i taking prompt i mod their count.

Measured by the client: aggregate new tokens per second (every request's new tokens over
the wall time from the first request sent to the last answer) and time to first token (from
sending a request to the first streamed token; p50 and p99 by nearest rank, so with few
requests p99 is the slowest). The streaming requests ask for `logprobs: 0` so that every
token arrives as a chunk of its own: without it the server holds each word's text until
the next word starts, and the first chunk would come a token or more after the first token.

    python benchmarks/serve.py [--clients 1,4,8,16] [--tokens 32] [--requests-per-client 2]
        [--preset biogpt] [--busy]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import torch
from machine import cpu_model, one_core_busy
from pydantic import BaseModel

from biogpt import BioGPT
from biogpt.config import ModelConfig
from biogpt.tokenizer import Tokenizer

PROMPTS = [
    "COVID-19 is",
    "Metformin is a first-line drug for type 2 diabetes that",
    "The tumour suppressor p53",
    "In this randomized controlled trial of 412 adults with hypertension, we compared the "
    "effect of",
    "Expression of the gene was",
    "Mutations in BRCA1 and BRCA2 increase the lifetime risk of breast and ovarian cancer, and",
    "Aspirin",
    "Patients with chronic kidney disease treated with",
]
# For presets with a smaller vocabulary than the released one (`tiny`): common words, whose
# ids are below 512.
SMALL_VOCAB_PROMPTS = ["the of and", "in the", "of the cells in", "and", "the patients and the"]
MODEL_NAME = "bench"
STARTUP_SECONDS = 600  # loading the 347M model on a loaded machine can take minutes


# --------------------------------------------------------------------------------------------
# The weights both servers load
# --------------------------------------------------------------------------------------------


def write_checkpoint(preset: str, directory: Path, seed: int = 0) -> list[str]:
    """Write the preset's shape with random weights (seeded) and the released tokenizer
    into `directory` (Hugging Face layout, as `biogpt convert` writes it); return the
    prompts whose token ids the model's vocabulary holds."""
    config = ModelConfig.from_name(preset)
    torch.manual_seed(seed)
    model = BioGPT(config).eval()
    model.save_pretrained(directory)
    tokenizer = Tokenizer.from_pretrained("biogpt")
    tokenizer.save_pretrained(directory, format="both")
    fits = all(max(tokenizer.encode(p)) < config.vocab_size for p in PROMPTS)
    return PROMPTS if fits else SMALL_VOCAB_PROMPTS


# --------------------------------------------------------------------------------------------
# The transformers server (run as `serve.py --transformers-server DIR --port P`)
# --------------------------------------------------------------------------------------------


class Completion(BaseModel):
    """The transformers server's request body: the fields the benchmark sends."""

    model: str
    prompt: str
    max_tokens: int = 16
    min_tokens: int = 0
    temperature: float = 0.0


def serve_transformers(directory: str, port: int) -> None:
    """transformers' `generate` behind FastAPI and uvicorn: `/health` and a non-streaming
    `/v1/completions` (greedy; `min_tokens` as `min_new_tokens`)."""
    import transformers
    import uvicorn
    from fastapi import FastAPI
    from oracle import hf_twin

    hf = hf_twin(BioGPT.from_pretrained(directory))  # the same directory's weights
    tokenizer = transformers.BioGptTokenizer.from_pretrained(directory)
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/completions")
    def completions(body: Completion) -> dict:
        # a sync route: FastAPI runs it in its thread pool, one `generate` per request
        encoded = tokenizer(body.prompt, return_tensors="pt")
        with torch.inference_mode():
            out = hf.generate(
                **encoded,
                max_new_tokens=body.max_tokens,
                min_new_tokens=body.min_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        new = out[0, encoded["input_ids"].shape[1] :]
        text = tokenizer.decode(new, skip_special_tokens=True)
        prompt_tokens = int(encoded["input_ids"].shape[1])
        return {
            "object": "text_completion",
            "model": body.model,
            "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(new),
                "total_tokens": prompt_tokens + len(new),
            },
        }

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# --------------------------------------------------------------------------------------------
# Servers as subprocesses
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str
    log: Path

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory (VmHWM), in MB."""
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")


@contextlib.contextmanager
def started(name: str, command: list[str], log: Path) -> Iterator[Server]:
    """Start a server process and wait until its `/health` says 200."""
    port = free_port()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [*command, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, process, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited ({process.returncode}):\n{log.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{name} not healthy after {STARTUP_SECONDS} s:\n{log.read_text()}"
                )
            time.sleep(0.5)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """What one contender's clients measured."""

    seconds: float = 0.0
    tokens: int = 0
    first_token: list[float] = field(default_factory=list)  # seconds, one per request
    texts: dict[int, str] = field(default_factory=dict)  # request index -> completion
    others: float = 0.0  # cores that other jobs on the machine kept busy, on average

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of them at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


async def streamed(client: httpx.AsyncClient, url: str, body: dict, run: Run, index: int) -> None:
    """One streaming request to `biogpt serve`: time to its first token chunk, its text,
    and its token count (from the usage chunk at the end)."""
    began = time.perf_counter()
    first, text, tokens = None, [], None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"status {response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if "error" in chunk:
                raise SystemExit(f"error in the stream: {chunk['error']}")
            if chunk["choices"]:
                if first is None:
                    first = time.perf_counter() - began
                text.append(chunk["choices"][0]["text"])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    assert first is not None and tokens is not None, "a stream without tokens or usage"
    run.first_token.append(first)
    run.tokens += tokens
    run.texts[index] = "".join(text)


async def whole(client: httpx.AsyncClient, url: str, body: dict, run: Run, index: int) -> None:
    """One non-streaming request: its time to first token is the whole response's time."""
    began = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json=body)
    if response.status_code != 200:
        raise SystemExit(f"status {response.status_code}: {response.text}")
    run.first_token.append(time.perf_counter() - began)
    answer = response.json()
    run.tokens += answer["usage"]["completion_tokens"]
    run.texts[index] = answer["choices"][0]["text"]


def request_body(prompt: str, tokens: int, stream: bool) -> dict:
    body = {
        "model": MODEL_NAME,
        "prompt": prompt,
        "max_tokens": tokens,
        "min_tokens": tokens,  # every request the same length
        "temperature": 0,
    }
    if stream:
        body.update(stream=True, stream_options={"include_usage": True}, logprobs=0)
    return body


async def drive(
    url: str, clients: int, per_client: int, prompts: list[str], tokens: int, stream: bool
) -> Run:
    """`clients` clients at once, each sending `per_client` requests one after another;
    request i (client c's k-th is c * per_client + k) takes prompt i mod len(prompts)."""
    run = Run()
    send = streamed if stream else whole
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:

        async def one_client(c: int) -> None:
            for k in range(per_client):
                i = c * per_client + k
                body = request_body(prompts[i % len(prompts)], tokens, stream)
                await send(client, url, body, run, i)

        machine, ours = cpu_seconds()
        began = time.perf_counter()
        await asyncio.gather(*(one_client(c) for c in range(clients)))
        run.seconds = time.perf_counter() - began
        machine_after, ours_after = cpu_seconds()
        run.others = max(0.0, (machine_after - machine) - (ours_after - ours)) / run.seconds
    return run


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds spent so far by the whole machine, and by this process and every process
    under it (the servers, the spinner of --busy): the difference is what other jobs took.
    A load average cannot tell them apart: the transformers server alone runs a `generate`
    per request, each on torch's threads."""
    with open("/proc/stat") as f:  # cpu user nice system idle iowait irq softirq ...
        user, nice, system, _, _, irq, softirq = map(int, f.readline().split()[1:8])
    machine = (user + nice + system + irq + softirq) / TICK
    children: dict[int, list[int]] = {}
    spent: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError):
            # after the command's ")": state, ppid, ... utime and stime are the 12th and 13th
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            children.setdefault(int(fields[1]), []).append(pid)
            spent[pid] = (int(fields[11]) + int(fields[12])) / TICK
    ours, family = 0.0, [os.getpid()]
    while family:
        pid = family.pop()
        ours += spent.get(pid, 0.0)
        family += children.get(pid, [])
    return machine, ours


def load_text() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min)"


def report(clients: int, requests: int, tokens: int, runs: dict[str, Run]) -> None:
    print(f"\n{clients} client{'s' if clients > 1 else ''}: {requests} requests of {tokens} "
          f"new tokens; {load_text()}")  # fmt: skip
    print(
        "| contender | new tok/s | TTFT p50 (s) | TTFT p99 (s) | wall (s) | other jobs (cores) "
        "| check |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    reference = runs["biogpt serve"].texts
    for name, run in runs.items():
        same = sum(run.texts[i].strip() == reference[i].strip() for i in reference)
        note = f"same text as biogpt serve: {same}/{requests}"
        if name == "biogpt serve":
            note = f"{len(run.texts)} answers"
        print(
            f"| {name} | {run.tokens_per_second:.2f} | {percentile(run.first_token, 50):.3f} "
            f"| {percentile(run.first_token, 99):.3f} | {run.seconds:.1f} | {run.others:.2f} "
            f"| {note} |"
        )
    print("(transformers does not stream: its TTFT is the time of the whole response)")


def measure(
    servers: dict[str, Server], counts: list[int], per_client: int, prompts: list[str], tokens: int
) -> dict[int, dict[str, Run]]:
    ours, theirs = servers["biogpt"].url, servers["transformers"].url
    # warm-up, not counted: first touch of the weights, packing for the batch sizes to come
    asyncio.run(drive(ours, min(max(counts), 8), 1, prompts, 4, stream=True))
    asyncio.run(drive(ours, 1, 1, prompts, 4, stream=True))
    asyncio.run(drive(theirs, 1, 1, prompts, 4, stream=False))
    results: dict[int, dict[str, Run]] = {}
    for clients in counts:
        total = clients * per_client
        runs = {
            "biogpt serve": asyncio.run(drive(ours, clients, per_client, prompts, tokens, True)),
            "biogpt serve, one at a time": asyncio.run(
                drive(ours, 1, total, prompts, tokens, stream=True)
            ),
            "transformers generate (FastAPI)": asyncio.run(
                drive(theirs, clients, per_client, prompts, tokens, stream=False)
            ),
        }
        report(clients, total, tokens, runs)
        results[clients] = runs
    return results


def ratios(results: dict[int, dict[str, Run]]) -> None:
    print("\nbiogpt serve's throughput over the contenders' (goals at 8 clients: >= 3x one at "
          "a time, >= 5x transformers):")  # fmt: skip
    print("| clients | / one at a time | / transformers |")
    print("|---:|---:|---:|")
    for clients, runs in results.items():
        ours = runs["biogpt serve"].tokens_per_second
        sequential = runs["biogpt serve, one at a time"].tokens_per_second
        theirs = runs["transformers generate (FastAPI)"].tokens_per_second
        print(f"| {clients} | {ours / sequential:.2f}x | {ours / theirs:.2f}x |")
    if 8 in results:
        runs = results[8]
        ours = runs["biogpt serve"].tokens_per_second
        sequential = ours / runs["biogpt serve, one at a time"].tokens_per_second
        hf = ours / runs["transformers generate (FastAPI)"].tokens_per_second
        print(f"\nat 8 clients: {sequential:.2f}x one at a time (goal >= 3x: "
              f"{'met' if sequential >= 3 else 'NOT met'}), {hf:.2f}x transformers "
              f"(goal >= 5x: {'met' if hf >= 5 else 'NOT met'})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8,16", help="concurrent client counts")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    parser.add_argument(
        "--requests-per-client", type=int, default=2, help="requests each client sends in turn"
    )
    parser.add_argument("--preset", default="biogpt", help="model shape (default: biogpt, 347M)")
    parser.add_argument("--busy", action="store_true", help="keep one core busy throughout")
    parser.add_argument("--transformers-server", metavar="DIR", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.transformers_server:  # this script, started again as the transformers server
        serve_transformers(args.transformers_server, args.port)
        return

    counts = [int(c) for c in args.clients.split(",")]
    config = ModelConfig.from_name(args.preset)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads (each server process: torch's default; biogpt's "
          "decoding step chooses its count from step times)")  # fmt: skip
    print(f"model: {args.preset} ({config.num_parameters() / 1e6:.0f}M), random weights, fp32, "
          f"greedy; {args.tokens} new tokens a request, {args.requests_per_client} requests a "
          f"client{'; one core kept busy' if args.busy else ''}")  # fmt: skip
    print(f"start: {load_text()}")
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="biogpt-serve-bench-") as tmp:
        directory = Path(tmp) / "model"
        prompts = write_checkpoint(args.preset, directory)
        here = Path(__file__).resolve()
        commands = {
            "biogpt": [sys.executable, "-m", "biogpt", "serve", "--model",
                       f"{MODEL_NAME}={directory}", "--log-level", "warning"],
            "transformers": [sys.executable, str(here), "--transformers-server", str(directory)],
        }  # fmt: skip
        with contextlib.ExitStack() as stack:
            servers = {
                name: stack.enter_context(started(name, command, Path(tmp) / f"{name}.log"))
                for name, command in commands.items()
            }
            print(f"servers up after {time.monotonic() - began:.0f} s; {load_text()}")
            with one_core_busy() if args.busy else contextlib.nullcontext():
                results = measure(servers, counts, args.requests_per_client, prompts, args.tokens)
            peaks = ", ".join(f"{s.name} {s.peak_rss_mb():,.0f} MB" for s in servers.values())
    ratios(results)
    print(f"\npeak RSS of the servers: {peaks}")
    print(f"end: {load_text()}; {time.monotonic() - began:.0f} s in all")


if __name__ == "__main__":
    main()
