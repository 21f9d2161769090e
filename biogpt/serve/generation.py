"""The generation endpoints' work: a request's prompts become scheduler jobs, and the jobs'
events become one OpenAI response or a stream of server-sent events.

The scheduler calls a job's `on_event` from its own thread; each call is handed to the
request's event loop (`call_soon_threadsafe`) and lands in one asyncio queue per request,
tagged with the prompt it belongs to. Choice `i * n + j` is choice j of prompt i, as OpenAI
numbers the choices of a list of prompts.

A client that goes away cancels its jobs: a stream notices when it is cancelled (Starlette
cancels the response when the connection closes), a plain request polls the connection
while it waits. Either way the job's rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from biogpt.decoding.config import GenerationConfig
from biogpt.errors import BioGPTError
from biogpt.serve import protocol
from biogpt.serve.protocol import APIError
from biogpt.serve.scheduler import Done, Event, Finished, Job, QueueFull, Scheduler, Token
from biogpt.tokenizer import Tokenizer

DISCONNECT_POLL_SECONDS = 0.25  # how often a plain request checks that its client is there


@dataclass
class Choice:
    """What one choice has produced so far."""

    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    finished: Finished | None = None


@dataclass
class Generation:
    """One request's jobs (one per prompt) on one model's scheduler."""

    scheduler: Scheduler
    tokenizer: Tokenizer
    prompts: list[list[int]]
    config: GenerationConfig
    stop: tuple[str, ...]
    logprobs: bool
    top_logprobs: int
    timeout: float | None
    jobs: list[Job] = field(default_factory=list)
    events: asyncio.Queue[tuple[int, Event]] = field(default_factory=asyncio.Queue)

    @property
    def n(self) -> int:
        return self.config.num_return_sequences

    def submit(self) -> None:
        """Queue one job per prompt; on a refusal, the ones already queued are withdrawn."""
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        for i, ids in enumerate(self.prompts):
            job = Job(
                ids,
                self.config,
                self._sink(loop, i),
                stop=self.stop,
                logprobs=self.logprobs,
                top_logprobs=self.top_logprobs,
                deadline=deadline,
            )
            try:
                self.scheduler.submit(job)
            except QueueFull as err:
                self.cancel()
                raise APIError(429, str(err), code="queue_full") from None
            except BioGPTError as err:
                self.cancel()
                raise protocol.bad_request(str(err)) from None
            self.jobs.append(job)

    def _sink(self, loop: asyncio.AbstractEventLoop, prompt: int) -> Callable[[Event], None]:
        def put(event: Event) -> None:
            with contextlib.suppress(RuntimeError):  # a closed loop: the server is stopping
                loop.call_soon_threadsafe(self.events.put_nowait, (prompt, event))

        return put

    def cancel(self) -> None:
        for job in self.jobs:
            job.cancel()

    async def events_until_done(self, request: Request | None) -> AsyncIterator[tuple[int, Event]]:
        """Every event of every job, until all are done; an `APIError` for a failed job.
        With `request`, the client is checked while waiting: gone, the jobs are cancelled."""
        left = len(self.jobs)
        checked = time.monotonic()
        try:
            while left:
                if request is not None and time.monotonic() - checked > DISCONNECT_POLL_SECONDS:
                    if await request.is_disconnected():
                        return
                    checked = time.monotonic()
                try:
                    prompt, event = await asyncio.wait_for(
                        self.events.get(), DISCONNECT_POLL_SECONDS
                    )
                except asyncio.TimeoutError:
                    continue
                if isinstance(event, Done):
                    if event.error is not None:
                        raise APIError(event.status, event.error)
                    left -= 1
                yield prompt, event
        finally:
            if left:
                self.cancel()


def record(choices: list[Choice], n: int, prompt: int, event: Event) -> int | None:
    """Add a Token or Finished event to its choice; the choice's index, None for a Done."""
    if isinstance(event, Done):
        return None
    index = prompt * n + event.choice
    choice = choices[index]
    if isinstance(event, Token):
        choice.tokens.append(event.token)
        if event.logprob is not None:
            choice.logprobs.append(event.logprob)
        if event.top is not None:
            choice.top.append(event.top)
    else:
        choice.finished = event
    return index


# --------------------------------------------------------------------------------------------
# Whole responses
# --------------------------------------------------------------------------------------------


async def collect(generation: Generation, request: Request) -> list[Choice]:
    """Wait for every choice of the request to finish."""
    choices = [Choice() for _ in range(len(generation.prompts) * generation.n)]
    async for prompt, event in generation.events_until_done(request):
        record(choices, generation.n, prompt, event)
    if any(c.finished is None for c in choices):
        raise APIError(499, "the client closed the connection")
    return choices


def logprobs_of(generation: Generation, choice: Choice, chat: bool) -> dict[str, Any] | None:
    if not generation.logprobs:
        return None
    top = choice.top if generation.top_logprobs else None
    build = protocol.chat_logprobs if chat else protocol.completion_logprobs
    return build(generation.tokenizer, choice.tokens, choice.logprobs, top)


def completion_body(
    generation: Generation, choices: list[Choice], model: str, echo: list[str] | None
) -> dict[str, Any]:
    """The `text_completion` object of finished choices."""
    out = []
    for index, choice in enumerate(choices):
        assert choice.finished is not None
        text = choice.finished.text
        if echo is not None:
            text = echo[index // generation.n] + text
        out.append(
            {
                "index": index,
                "text": text,
                "logprobs": logprobs_of(generation, choice, chat=False),
                "finish_reason": choice.finished.reason,
            }
        )
    return {
        "id": protocol.new_id("cmpl"),
        "object": "text_completion",
        "created": protocol.now(),
        "model": model,
        "choices": out,
        "usage": usage_of(generation, choices),
    }


def chat_body(generation: Generation, choices: list[Choice], model: str) -> dict[str, Any]:
    """The `chat.completion` object of finished choices."""
    out = []
    for index, choice in enumerate(choices):
        assert choice.finished is not None
        out.append(
            {
                "index": index,
                "message": {"role": "assistant", "content": choice.finished.text},
                "logprobs": logprobs_of(generation, choice, chat=True),
                "finish_reason": choice.finished.reason,
            }
        )
    return {
        "id": protocol.new_id("chatcmpl"),
        "object": "chat.completion",
        "created": protocol.now(),
        "model": model,
        "choices": out,
        "usage": usage_of(generation, choices),
    }


def usage_of(generation: Generation, choices: list[Choice]) -> dict[str, int]:
    prompt = sum(len(ids) for ids in generation.prompts)
    made = sum(len(c.finished.tokens) for c in choices if c.finished is not None)
    return protocol.usage(prompt, made)


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event: `data: {json}` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


async def stream(
    generation: Generation,
    model: str,
    chat: bool,
    include_usage: bool,
    echo: list[str] | None = None,
) -> AsyncIterator[str]:
    """The request's chunks as server-sent events, ending with `data: [DONE]`. An error
    after the stream has begun is sent as an event of OpenAI's error shape."""
    n = generation.n
    choices = [Choice() for _ in range(len(generation.prompts) * n)]
    head = {
        "id": protocol.new_id("chatcmpl" if chat else "cmpl"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": protocol.now(),
        "model": model,
    }

    def chunk(
        index: int, text: str | None, reason: str | None, tokens: int = 0, role: bool = False
    ) -> str:
        """A chunk of choice `index`: its new text, its last `tokens` tokens' logprobs, and
        its finish reason once it ends; `role` opens a chat choice."""
        choice = choices[index]
        logprobs = None
        if generation.logprobs and tokens:
            part = Choice(choice.tokens[-tokens:], choice.logprobs[-tokens:], choice.top[-tokens:])
            logprobs = logprobs_of(generation, part, chat)
        body: dict[str, Any] = {"index": index}
        if chat:
            body["delta"] = {"role": "assistant", "content": ""} if role else {}
            if text is not None:
                body["delta"]["content"] = text
        else:
            body["text"] = text or ""
        body.update(logprobs=logprobs, finish_reason=reason)
        return sse({**head, "choices": [body]})

    try:
        for first in range(len(choices)):
            if chat:
                yield chunk(first, None, None, role=True)
            elif echo is not None:
                yield chunk(first, echo[first // n], None)
        async for prompt, event in generation.events_until_done(None):
            index = record(choices, n, prompt, event)
            if index is None:
                continue
            if isinstance(event, Token) and (event.text or generation.logprobs):
                yield chunk(index, event.text, None, tokens=1)
            elif isinstance(event, Finished):
                yield chunk(index, event.text_tail or None, event.reason)
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage_of(generation, choices)})
    except APIError as err:
        yield sse(err.body())
    yield sse("[DONE]")
