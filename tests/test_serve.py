"""`biogpt serve`: the scheduler gives every request the tokens `complete` gives it alone, and
the HTTP server speaks OpenAI's API to real clients (httpx and the `openai` package) over
loopback: completions, chat, streaming, `n`, stop strings, seeds, logprobs, every error
status in OpenAI's shape, health, metrics, and a client that leaves frees its row."""

from __future__ import annotations

import contextlib
import json
import queue
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("fastapi", reason="biogpt serve needs the `serve` extra (fastapi)")
pytest.importorskip("uvicorn", reason="biogpt serve needs the `serve` extra (uvicorn)")
httpx = pytest.importorskip("httpx", reason="the server tests call it with httpx")
openai = pytest.importorskip("openai", reason="the server tests call it with the openai client")

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from biogpt import BioGPT  # noqa: E402
from biogpt.decoding.completion import complete  # noqa: E402
from biogpt.decoding.config import GenerationConfig  # noqa: E402
from biogpt.serve.app import create_app  # noqa: E402
from biogpt.serve.scheduler import Done, Finished, Job, Scheduler, Token  # noqa: E402
from biogpt.serve.settings import ServeSettings  # noqa: E402
from biogpt.serve.streaming import RowText  # noqa: E402
from biogpt.tokenizer import Tokenizer  # noqa: E402

KEY = "test-key"
PROMPTS = [
    "COVID-19 is",
    "The tumour suppressor p53",
    "Metformin is a drug that",
    "Aspirin",
    "In this study, we",
    "The patients were treated with",
    "Expression of the gene was",
    "We conclude that",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_pretrained("biogpt")


@pytest.fixture(scope="module")
def reference() -> BioGPT:
    """A `mini` of its own for the oracle `complete`, apart from the one the server runs."""
    return BioGPT.from_pretrained("mini").eval()


# --------------------------------------------------------------------------------------------
# The scheduler, called directly
# --------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    finished: list[Finished]
    tokens: list[Token]
    done: Done


def collect(events: queue.Queue) -> Outcome:
    finished, tokens = [], []
    while True:
        event = events.get(timeout=60)
        if isinstance(event, Done):
            return Outcome(sorted(finished, key=lambda f: f.choice), tokens, event)
        (finished if isinstance(event, Finished) else tokens).append(event)


# Common words: their ids are below 512, so the `tiny` models' vocabulary holds them.
WORD_PROMPTS = ["the of and", "in the", "of the cells in", "and", "the patients and the"]


def test_jobs_that_join_together_share_a_pass_and_get_the_tokens_they_get_alone(
    lively_model, tokenizer, monkeypatch
) -> None:
    """Jobs waiting together join together: the one-choice prompts that pack share one pass
    over the weights (`add_each`), a prompt too long to pack and a job of two choices join
    on their own between them, in order; each gets the tokens of `complete` alone."""
    from biogpt.decoding.steps import DecodingBatch

    model = lively_model(2, max_positions=128)
    if not DecodingBatch(model).packs(1):
        pytest.skip("the gemv kernel is not built here: nothing packs")
    long_prompt = " ".join(["the patients and the cells"] * 14)  # past the 64 rows a call takes
    prompts = [*WORD_PROMPTS[:3], long_prompt, WORD_PROMPTS[3], WORD_PROMPTS[4]]
    choices = [1, 1, 1, 1, 2, 1]
    packed_calls: list[int] = []
    add_each = DecodingBatch.add_each

    def spy(self, prompts, budgets):
        packed_calls.append(len(prompts))
        return add_each(self, prompts, budgets)

    monkeypatch.setattr(DecodingBatch, "add_each", spy)
    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    sinks = [queue.Queue() for _ in prompts]
    for i, (prompt, n) in enumerate(zip(prompts, choices, strict=True)):
        config = GenerationConfig(max_new_tokens=6 + i, num_return_sequences=n)
        scheduler.submit(Job(tokenizer.encode(prompt), config, sinks[i].put))
    scheduler.start()  # every job waits already: they join at the first step
    try:
        outcomes = [collect(sink) for sink in sinks]
    finally:
        scheduler.close()
    assert len(tokenizer.encode(long_prompt)) > 64
    assert packed_calls == [3, 1]  # the three short prompts, then the last one
    for i, (prompt, outcome) in enumerate(zip(prompts, outcomes, strict=True)):
        (alone,) = complete(model, tokenizer, prompt, max_new_tokens=6 + i)
        assert outcome.done.error is None
        assert all(f.tokens == alone.new_tokens for f in outcome.finished), prompt


def test_jobs_whose_join_fails_end_with_500_and_the_scheduler_goes_on(
    lively_model, tokenizer, monkeypatch
) -> None:
    """An error while waiting jobs join (here: the packed pass) ends every job taken from
    the queue with a 500, none left hanging; the next job is served as usual."""
    from biogpt.decoding.steps import DecodingBatch

    model = lively_model(3)
    add_each = DecodingBatch.add_each

    def broken(self, prompts, budgets):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(DecodingBatch, "add_each", broken)
    monkeypatch.setattr(DecodingBatch, "add", lambda self, *args, **kwargs: broken(self, [], []))
    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    sinks = [queue.Queue() for _ in range(3)]
    for sink, prompt in zip(sinks, WORD_PROMPTS, strict=False):
        job = Job(tokenizer.encode(prompt), GenerationConfig(max_new_tokens=4), sink.put)
        scheduler.submit(job)
    scheduler.start()
    try:
        for sink in sinks:
            outcome = collect(sink)
            assert outcome.done.status == 500 and "out of memory" in (outcome.done.error or "")
        monkeypatch.setattr(DecodingBatch, "add_each", add_each)
        monkeypatch.undo()
        sink = queue.Queue()
        scheduler.submit(Job(tokenizer.encode("the"), GenerationConfig(max_new_tokens=3), sink.put))
        outcome = collect(sink)
    finally:
        scheduler.close()
    (alone,) = complete(model, tokenizer, "the", max_new_tokens=3)
    assert outcome.done.error is None and outcome.finished[0].tokens == alone.new_tokens


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_joining_at_different_steps_get_the_tokens_they_get_alone(
    lively_model, tokenizer, seed
) -> None:
    """Jobs join while others run (each when the first has made a given number of tokens,
    so the steps they join at are fixed) and leave at different lengths; each gets the
    tokens of `complete` on its prompt alone."""
    model = lively_model(seed)
    assert all(max(tokenizer.encode(p)) < model.config.vocab_size for p in WORD_PROMPTS)
    lengths = [30, 9, 21, 14, 25]
    join_after = {3: 1, 5: 2, 6: 3, 12: 4}  # first job's token count -> the job that joins
    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    sinks = [queue.Queue() for _ in WORD_PROMPTS]
    jobs = [
        Job(tokenizer.encode(p), GenerationConfig(max_new_tokens=n), sinks[i].put)
        for i, (p, n) in enumerate(zip(WORD_PROMPTS, lengths, strict=True))
    ]
    made = 0

    def first_sink(event) -> None:
        nonlocal made
        sinks[0].put(event)
        if isinstance(event, Token):
            made += 1
            if made in join_after:
                scheduler.submit(jobs[join_after[made]])

    jobs[0].on_event = first_sink
    scheduler.start()
    try:
        scheduler.submit(jobs[0])
        outcomes = [collect(sink) for sink in sinks]
    finally:
        scheduler.close()
    for prompt, length, outcome in zip(WORD_PROMPTS, lengths, outcomes, strict=True):
        (alone,) = complete(model, tokenizer, prompt, max_new_tokens=length)
        assert outcome.done.error is None
        assert outcome.finished[0].tokens == alone.new_tokens, prompt
        assert outcome.finished[0].text == alone.completion
        streamed = "".join(t.text for t in outcome.tokens) + outcome.finished[0].text_tail
        assert streamed == alone.completion


def test_seeded_sampling_with_stop_strings_repeats_complete(lively_model, tokenizer) -> None:
    model = lively_model(3)
    options = dict(max_new_tokens=20, do_sample=True, temperature=0.9, top_k=50, seed=7)
    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    scheduler.start()
    try:
        sink: queue.Queue = queue.Queue()
        config = GenerationConfig(num_return_sequences=3, **options)
        scheduler.submit(Job(tokenizer.encode("the of"), config, sink.put, stop=("the",)))
        outcome = collect(sink)
    finally:
        scheduler.close()
    alone = complete(model, tokenizer, "the of", stop=["the"], num_return_sequences=3, **options)
    assert [f.tokens for f in outcome.finished] == [c.new_tokens for c in alone]
    assert [f.text for f in outcome.finished] == [c.completion for c in alone]
    assert all("the" not in f.text for f in outcome.finished)


def test_beam_search_runs_as_a_job_of_its_own(lively_model, tokenizer) -> None:
    model = lively_model(4)
    options = dict(max_new_tokens=12, num_beams=4, num_return_sequences=2)
    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    scheduler.start()
    try:
        sink: queue.Queue = queue.Queue()
        scheduler.submit(Job(tokenizer.encode("in the"), GenerationConfig(**options), sink.put))
        outcome = collect(sink)
    finally:
        scheduler.close()
    alone = complete(model, tokenizer, "in the", **options)
    assert [f.tokens for f in outcome.finished] == [c.new_tokens for c in alone]


def test_a_cancelled_job_leaves_the_batch_and_the_others_go_on(lively_model, tokenizer) -> None:
    model = lively_model(5)
    scheduler = Scheduler(model, tokenizer, max_batch_size=8)
    scheduler.start()
    try:
        long_sink: queue.Queue = queue.Queue()
        short_sink: queue.Queue = queue.Queue()
        long_job = Job(tokenizer.encode("the"), GenerationConfig(max_new_tokens=60), long_sink.put)
        scheduler.submit(long_job)
        assert isinstance(long_sink.get(timeout=30), Token)
        assert scheduler.running == 1
        long_job.cancel()
        config = GenerationConfig(max_new_tokens=5)
        scheduler.submit(Job(tokenizer.encode("and"), config, short_sink.put))
        outcome = collect(short_sink)
        assert outcome.done.error is None
        assert wait_for(lambda: scheduler.running == 0)
    finally:
        scheduler.close()


def test_a_job_past_its_deadline_ends_with_504(lively_model, tokenizer) -> None:
    scheduler = Scheduler(lively_model(6), tokenizer)
    scheduler.start()
    try:
        sink: queue.Queue = queue.Queue()
        config = GenerationConfig(max_new_tokens=50)
        scheduler.submit(Job(tokenizer.encode("the"), config, sink.put, deadline=time.monotonic()))
        assert collect(sink).done.status == 504
        assert wait_for(lambda: scheduler.running == 0)
    finally:
        scheduler.close()


def test_row_text_never_sends_what_a_stop_string_cuts(tokenizer) -> None:
    """Streamed chunks only grow the text, and add up to the cut completion."""
    ids = tokenizer.encode("The cells were washed twice. Then the cells were counted.")[1:]
    for stop in ((), ("Then",), ("washed", "count"), (" twice",)):
        row = RowText(tokenizer, stop)
        sent = "".join(row.push(i) for i in ids) + row.finish()
        full = tokenizer.decode(ids)
        cuts = [full.find(s) for s in stop if s in full]
        assert sent == (full[: min(cuts)].rstrip() if cuts else full)


# --------------------------------------------------------------------------------------------
# The HTTP server, over loopback
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition, seconds: float = 30.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.02)
    return False


@dataclass
class Served:
    url: str
    app: FastAPI
    server: uvicorn.Server

    def scheduler(self, name: str = "mini") -> Scheduler:
        return self.app.state.server.models[name].scheduler


@contextlib.contextmanager
def serve(loaders, settings: ServeSettings, ready: bool = True, tasks=None) -> Iterator[Served]:
    """uvicorn in a thread on a free loopback port, until the generator closes; `tasks`
    as `create_app` takes them."""
    app = create_app(loaders, settings, tasks)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: server.started)
    if ready:
        assert wait_for(lambda: httpx.get(url + "/health").status_code == 200)
    try:
        yield Served(url, app, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def load_mini() -> tuple[BioGPT, Tokenizer]:
    return BioGPT.from_pretrained("mini").eval(), Tokenizer.from_pretrained("biogpt")


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    """`mini` behind a key, on a free loopback port."""
    with serve(
        {"mini": load_mini}, ServeSettings(api_keys=(KEY,), max_body_bytes=64_000)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def post(server: Served, path: str, body: object, key: str | None = KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if isinstance(body, bytes):
        return httpx.post(server.url + path, content=body, headers=headers, **kwargs)
    return httpx.post(server.url + path, json=body, headers=headers, **kwargs)


def token_ids(tokenizer: Tokenizer, logprobs) -> list[int]:
    """The ids of a completion's `logprobs.tokens` (BPE pieces, one id each)."""
    return [tokenizer.token_to_id(piece) for piece in logprobs.tokens]


def test_health_models_and_tokenize(server: Served, tokenizer) -> None:
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    listed = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert [m["id"] for m in listed.json()["data"]] == ["mini"]
    ids = post(server, "/tokenize", {"prompt": "COVID-19 is"}).json()
    assert ids["tokens"] == tokenizer.encode("COVID-19 is") == [2, 4805, 9, 656, 21]
    text = post(server, "/detokenize", {"tokens": ids["tokens"]}).json()
    assert text == {"prompt": "COVID-19 is"}


def test_concurrent_greedy_requests_get_the_tokens_they_get_alone(
    server: Served, client, reference, tokenizer
) -> None:
    """8 clients at once, of different lengths, some streaming: each greedy completion is
    token for token what `complete` (what `biogpt generate` runs) gives its prompt alone."""
    lengths = [40, 12, 33, 7, 25, 18, 50, 3]
    results: dict[int, tuple[str, list[int]]] = {}

    def ask(i: int) -> None:
        time.sleep(0.03 * i)  # arrive while the others run
        options = dict(model="mini", prompt=PROMPTS[i], max_tokens=lengths[i], temperature=0)
        if i % 2:
            chunks = list(client.completions.create(stream=True, logprobs=0, **options))
            text = "".join(c.choices[0].text for c in chunks)
            pieces = [
                p for c in chunks if c.choices[0].logprobs for p in c.choices[0].logprobs.tokens
            ]
            results[i] = (text, [tokenizer.token_to_id(p) for p in pieces])
        else:
            answer = client.completions.create(logprobs=0, **options)
            results[i] = (answer.choices[0].text, token_ids(tokenizer, answer.choices[0].logprobs))

    scheduler = server.scheduler()
    most = 0

    def watch() -> None:
        nonlocal most
        while any(t.is_alive() for t in threads):
            most = max(most, scheduler.running)
            time.sleep(0.002)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for thread in threads:
        thread.start()
    watch()
    for thread in threads:
        thread.join(timeout=120)
    assert most >= 4  # the requests did share the batch
    for i, prompt in enumerate(PROMPTS):
        (alone,) = complete(reference, tokenizer, prompt, max_new_tokens=lengths[i])
        assert results[i] == (alone.completion, alone.new_tokens), prompt


def test_seeded_sampling_repeats_and_n_choices(client, reference, tokenizer) -> None:
    options = dict(model="mini", prompt="Metformin is", max_tokens=15, temperature=0.8, top_p=0.9)
    first = client.completions.create(seed=11, n=3, **options)
    again = client.completions.create(seed=11, n=3, **options)
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.text for c in sorted(again.choices, key=lambda c: c.index)]
    alone = complete(
        reference, tokenizer, "Metformin is", max_new_tokens=15, do_sample=True,
        temperature=0.8, top_p=0.9, seed=11, num_return_sequences=3,
    )  # fmt: skip
    assert texts == [c.completion for c in alone]


def test_echo_and_a_list_of_prompts(client, reference, tokenizer) -> None:
    prompts = ["Aspirin", "COVID-19 is"]
    answer = client.completions.create(
        model="mini", prompt=prompts, max_tokens=6, temperature=0, echo=True
    )
    assert [c.index for c in answer.choices] == [0, 1]
    for choice in answer.choices:
        prompt = prompts[choice.index]
        (alone,) = complete(reference, tokenizer, prompt, max_new_tokens=6)
        assert choice.text == prompt + alone.completion


def test_stop_strings_end_choices(client, reference, tokenizer) -> None:
    (plain,) = complete(reference, tokenizer, "COVID-19 is", max_new_tokens=20)
    stop = plain.completion.split()[2]  # a word the greedy text reaches
    answer = client.completions.create(
        model="mini", prompt="COVID-19 is", max_tokens=20, temperature=0, stop=[stop]
    )
    (cut,) = complete(reference, tokenizer, "COVID-19 is", max_new_tokens=20, stop=[stop])
    assert answer.choices[0].text == cut.completion
    assert stop not in answer.choices[0].text
    assert answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(
        model="mini", prompt="COVID-19 is", max_tokens=20, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == cut.completion


def test_logprobs_are_the_models_log_softmax_of_the_chosen_tokens(
    client, reference, tokenizer
) -> None:
    answer = client.completions.create(
        model="mini", prompt="Aspirin", max_tokens=8, temperature=0.7, seed=2, logprobs=3
    )
    logprobs = answer.choices[0].logprobs
    new = token_ids(tokenizer, logprobs)
    prompt = tokenizer.encode("Aspirin")
    with torch.no_grad():
        logits = reference(torch.tensor([prompt + new])).logits[0].float()
    expected = logits.log_softmax(dim=-1)[len(prompt) - 1 : -1].gather(
        1, torch.tensor(new)[:, None]
    )
    assert logprobs.token_logprobs == pytest.approx(expected[:, 0].tolist(), abs=1e-4)
    assert all(len(top) == 3 for top in logprobs.top_logprobs)


def test_chat_flattens_messages_and_streams(client, reference, tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Biomedical abstracts."},
        {"role": "user", "content": "Aspirin inhibits"},
    ]
    (alone,) = complete(
        reference, tokenizer, "Biomedical abstracts.\nAspirin inhibits", max_new_tokens=12
    )
    answer = client.chat.completions.create(
        model="mini", messages=messages, max_tokens=12, temperature=0
    )
    assert answer.choices[0].message.content == alone.completion
    assert answer.choices[0].message.role == "assistant"
    assert answer.usage.prompt_tokens == alone.prompt_tokens
    chunks = list(
        client.chat.completions.create(
            model="mini", messages=messages, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == alone.completion
    )
    assert chunks[-1].usage.completion_tokens == len(alone.new_tokens)


def test_streams_are_server_sent_events_ending_with_done(server: Served) -> None:
    body = {"model": "mini", "prompt": "Aspirin", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert json.loads(events[0][len("data: ") :])["object"] == "text_completion"


def assert_openai_error(response, status: int, param: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "mini", "prompt": "a", "temperature": -1}, "temperature"),
        ({"model": "mini", "prompt": "a", "top_p": 0}, None),
        ({"model": "mini", "prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"model": "mini", "prompt": "a", "max_tokens": 1024}, "max_tokens"),  # past positions
        ({"model": "mini", "prompt": "a", "n": 9}, None),  # more rows than the batch
        ({"model": "mini", "prompt": "a", "n": 2, "temperature": 0}, "n"),  # greedy copies
        ({"model": "mini", "prompt": "a", "logprobs": 99}, "logprobs"),
        ({"model": "mini", "prompt": "a", "stop": [""]}, "stop"),
        ({"model": "mini", "prompt": "a", "presence_penalty": 1}, "presence_penalty"),
        ({"model": "mini", "prompt": "a", "colour": "red"}, "colour"),
        ({"model": "mini", "prompt": 5}, "prompt"),
        ({"model": "mini"}, "prompt"),
        ({"model": "mini", "prompt": []}, "prompt"),
        ({"model": "mini", "prompt": "a", "num_beams": 2, "stream": True}, None),
    ],
)
def test_bad_options_are_400(server: Served, body, param) -> None:
    assert_openai_error(post(server, "/v1/completions", body), 400, param)


def test_errors_in_openai_shape(server: Served, client) -> None:
    context = post(server, "/v1/completions", {"model": "mini", "prompt": "a", "max_tokens": 1024})
    assert context.json()["error"]["code"] == "context_length_exceeded"
    assert_openai_error(
        post(server, "/v1/completions", {"model": "mini", "prompt": "a"}, key=None), 401
    )
    assert_openai_error(
        post(server, "/v1/completions", {"model": "mini", "prompt": "a"}, key="no"), 401
    )
    assert_openai_error(
        post(server, "/v1/completions", {"model": "maxi", "prompt": "a"}), 404, "model"
    )
    assert_openai_error(post(server, "/v1/nothing", {}), 404)
    assert_openai_error(post(server, "/v1/completions", b"{" * 70_000), 413)
    assert_openai_error(post(server, "/v1/completions", b"{not json"), 400)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="maxi", prompt="a")
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="mini", prompt="a", temperature=-1)


def test_the_server_survives_200_malformed_requests(server: Served) -> None:
    """Every malformed request is a 4xx in OpenAI's shape, never a 500, and the server stays
    healthy."""
    bodies: list[object] = [
        b"", b"null", b"[]", b"42", b'"text"', b"{\"model\": 1}", b"\xff\xfe",
        {"model": "mini", "prompt": "a", "max_tokens": "many"},
        {"model": "mini", "prompt": ["a", 1]},
        {"model": "mini", "prompt": "a", "stop": 3},
        {"model": "mini", "prompt": "a", "seed": 1.5},
        {"model": "mini", "prompt": "a", "n": -1},
        {"model": "mini", "prompt": "a", "max_tokens": -5},
        {"model": "mini", "prompt": "a", "top_k": "x"},
        {"model": "mini", "messages": []},
        {"model": "mini", "messages": [{"content": "no role"}]},
        {"model": "mini", "tokens": [-1]},
        {"model": "mini", "tokens": [10**9]},
    ]  # fmt: skip
    paths = ("/v1/completions", "/v1/chat/completions", "/tokenize", "/detokenize")
    sent = 0
    with httpx.Client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        while sent < 200:
            for path in paths:
                for body in bodies:
                    if isinstance(body, bytes):
                        response = http.post(server.url + path, content=body)
                    else:
                        response = http.post(server.url + path, json=body)
                    sent += 1
                    assert 400 <= response.status_code < 500, (path, body, response.text)
                    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get(server.url + "/health").status_code == 200


def test_metrics_in_prometheus_text_format(server: Served, client) -> None:
    client.completions.create(model="mini", prompt="Aspirin", max_tokens=4, temperature=0)
    assert_openai_error(httpx.get(server.url + "/metrics"), 401)

    def refused_413() -> float:
        text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        prefix = 'biogpt_requests_total{model="",status="413"} '
        return sum(float(x[len(prefix) :]) for x in text.splitlines() if x.startswith(prefix))

    before = refused_413()
    assert_openai_error(post(server, "/v1/completions", b"{" * 70_000), 413)
    assert refused_413() == before + 1  # refused before the app, counted all the same
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for line in (
        'biogpt_requests_running{model="mini"} 0',
        'biogpt_requests_waiting{model="mini"} 0',
        "# TYPE biogpt_time_to_first_token_seconds histogram",
        "# TYPE biogpt_time_per_output_token_seconds histogram",
    ):
        assert line in text.splitlines()
    assert 'biogpt_time_to_first_token_seconds_bucket{model="mini",le="+Inf"}' in text
    generated = [
        line for line in text.splitlines() if line.startswith("biogpt_generation_tokens_total")
    ]
    assert float(generated[0].split()[-1]) >= 4


def generated_so_far(server: Served) -> float:
    text = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    (line,) = [x for x in text.splitlines() if x.startswith("biogpt_generation_tokens_total")]
    return float(line.split()[-1])


LONG = 900  # tokens a request asks for: far more than it makes before its client leaves


def test_a_client_that_leaves_mid_stream_frees_its_row(server: Served) -> None:
    scheduler = server.scheduler()
    before = generated_so_far(server)
    body = {
        "model": "mini",
        "prompt": "Aspirin",
        "max_tokens": LONG,
        "temperature": 0,
        "stream": True,
    }
    with (
        httpx.Client() as http,
        http.stream(
            "POST",
            server.url + "/v1/completions",
            json=body,
            headers={"Authorization": f"Bearer {KEY}"},
        ) as response,
    ):
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert scheduler.running == 1
    # the connection is closed: the row leaves at once, long before its last token
    assert wait_for(lambda: scheduler.running == 0, seconds=10)
    assert generated_so_far(server) - before < LONG / 2


def test_a_client_that_gives_up_waiting_frees_its_row(server: Served) -> None:
    scheduler = server.scheduler()
    before = generated_so_far(server)
    body = {"model": "mini", "prompt": "Aspirin", "max_tokens": LONG, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/completions", body, timeout=0.3)
    assert wait_for(lambda: scheduler.running == 0, seconds=10)
    assert generated_so_far(server) - before < LONG / 2


def test_health_says_loading_then_the_full_queue_is_429(tokenizer) -> None:
    """While the models load: /health and the API answer 503. With no room in the queue
    (max_queue 0), a request is refused with 429."""
    gate = threading.Event()

    def slow_load() -> tuple[BioGPT, Tokenizer]:
        gate.wait(30)
        return load_mini()

    with serve({"slow": slow_load}, ServeSettings(max_queue=0), ready=False) as running:
        assert httpx.get(running.url + "/health").status_code == 503
        body = {"model": "slow", "prompt": "a", "max_tokens": 2}
        assert_openai_error(httpx.post(running.url + "/v1/completions", json=body), 503)
        gate.set()
        assert wait_for(lambda: httpx.get(running.url + "/health").status_code == 200)
        assert_openai_error(httpx.post(running.url + "/v1/completions", json=body), 429)


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------


def test_serve_flags(tmp_path) -> None:
    import argparse

    from biogpt.cli import serve as serve_cli
    from biogpt.errors import BioGPTError

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers()

    def add(name, func, help, examples):
        command = commands.add_parser(name, help=help, epilog=examples)
        command.set_defaults(func=func)
        return command

    serve_cli.register(add)
    keys = tmp_path / "keys.txt"
    keys.write_text("# ops\nalpha\n\nbeta\n")
    args = parser.parse_args(
        [
            "serve",
            "--model",
            "mini",
            "--model",
            "ft=runs/x/",
            "--api-key",
            "k",
            "--api-key-file",
            str(keys),
        ]
    )
    assert serve_cli.model_specs(args.model) == {"mini": "mini", "ft": "runs/x/"}
    assert serve_cli.api_keys(args) == ("k", "alpha", "beta")
    assert (args.host, args.port, args.max_batch_size) == (
        "127.0.0.1",
        8000,
        ServeSettings().max_batch_size,
    )
    assert serve_cli.model_specs(["runs/bc5cdr/averaged/"]) == {"averaged": "runs/bc5cdr/averaged/"}
    with pytest.raises(BioGPTError):
        serve_cli.model_specs(["a=x", "a=y"])


def test_cors_is_off_unless_origins_are_named(server: Served) -> None:
    """No page of another origin may call the API unless `allow_origins` names it."""
    origin = "https://lab.example.org"
    asked = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    plain = httpx.get(server.url + "/health", headers={"Origin": origin})
    assert "access-control-allow-origin" not in plain.headers
    assert (
        "access-control-allow-origin"
        not in httpx.options(server.url + "/v1/completions", headers=asked).headers
    )
    settings = ServeSettings(allow_origins=(origin,))
    with serve({"mini": load_mini}, settings, ready=False) as named:
        preflight = httpx.options(named.url + "/v1/completions", headers=asked)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == origin
        other = {**asked, "Origin": "https://elsewhere.example.com"}
        refused = httpx.options(named.url + "/v1/completions", headers=other)
        assert refused.headers.get("access-control-allow-origin") != other["Origin"]
