"""The task endpoints: a fine-tuned model's task run on text sent over HTTP.

A model that `biogpt finetune` wrote records its task beside its weights (`task.json`,
`biogpt.tasks.recorded_task`); the server reads it when it starts, and each task model
answers on the endpoint of its task's kind:

- `POST /v1/tasks/extract`  `{"model", "text"}`: relations (bc5cdr, kd-dti, ddi, custom);
- `POST /v1/tasks/answer`   `{"model", "question", "context"}`: yes / no / maybe (pubmedqa,
  and pubmedqa-rf, which also takes `"long_answer"`); `context` is a string or a list of
  passages, joined by spaces as PubMedQA joins its contexts;
- `POST /v1/tasks/classify` `{"model", "text"}`: labels (hoc);
- `POST /v1/tasks/entities` `{"model", "text"}`: mentions with their types (ner).

Each also takes `max_tokens` (default: what `biogpt extract` allows the task,
`biogpt.tasks.evaluation.max_new_tokens_for`) and `stream`. The answer:

    {"id": "task-...", "object": "task.extract", "created": 1700000000, "model": "bc5cdr",
     "task": "bc5cdr", "answer": "the relation between famotidine and delirium exists.",
     "parsed": [{"head": "famotidine", "tail": "delirium"}], "unparseable": 0,
     "finish_reason": "stop", "usage": {"prompt_tokens": 22, ...}}

`answer` is the raw text the model wrote after the prompt, `parsed` the task's parse of it
as JSON (`biogpt.tasks.evaluation.structure`; entities as `{"text", "type"}`, labels as a
sorted list, an answer as its label or null), `unparseable` how many pieces could not be
read. With `"stream": true` the answer comes as server-sent events: `{"object":
"task.chunk", "text": ...}` as the text grows, then the whole answer above, then `data:
[DONE]`.

The request runs through the model's scheduler like a completion, decoded as `biogpt
extract` decodes it (`biogpt.tasks.evaluation.predict`): greedy from `</s> source
learned1..N`, the source formatted as the task formats a document
(`Task.source_of_text`) and cut at the task's `max_source_tokens`, ending at `</s>`. So the
answer is the one `extract` gives for the same text.

A model that records no task is a 400 that names it; so is a task model asked on another
kind's endpoint (the error names the right one).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request

from biogpt.decoding.config import GenerationConfig
from biogpt.serve import generation, protocol
from biogpt.serve.generation import Generation
from biogpt.serve.protocol import APIError
from biogpt.serve.scheduler import Finished, Token
from biogpt.tasks import Example, Task, encode_prompt
from biogpt.tasks.evaluation import max_new_tokens_for, structure
from biogpt.tasks.qa import PubMedQA
from biogpt.tokenizer import Tokenizer

if TYPE_CHECKING:  # app.py imports this module
    from biogpt.serve.app import ServedModel

# task name -> the endpoint kind that runs it. `custom` answers with its template's
# relations; run ad hoc it cannot know whether its data were plain answers, and then its
# `parsed` is the cleaned answer text (as `biogpt extract` gives it).
KINDS = {
    "bc5cdr": "extract",
    "kd-dti": "extract",
    "ddi": "extract",
    "custom": "extract",
    "pubmedqa": "answer",
    "pubmedqa-rf": "answer",
    "hoc": "classify",
    "ner": "entities",
}


def kind_of(task: Task) -> str:
    """The endpoint kind of `task` (a task registered by a user reads text, as `extract`)."""
    return KINDS.get(task.name, "extract")


def endpoint_of(kind: str) -> str:
    return f"/v1/tasks/{kind}"


def task_info(task: Task | None) -> dict[str, str] | None:
    """What `GET /v1/models` says of a model's task: its name, kind and endpoint."""
    if task is None:
        return None
    kind = kind_of(task)
    return {"name": task.name, "kind": kind, "endpoint": endpoint_of(kind)}


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class TaskRequest(BaseModel):
    """What every task endpoint takes."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = None
    stream: bool = False


class TextRequest(TaskRequest):
    """`POST /v1/tasks/extract`, `/classify`, `/entities`: one document."""

    text: str


class AnswerRequest(TaskRequest):
    """`POST /v1/tasks/answer`: a question and its context (one passage or several)."""

    question: str
    context: str | list[str]
    long_answer: str | None = None  # pubmedqa-rf's input adds the abstract's conclusion


def source_of(task: Task, body: TaskRequest) -> str:
    """The task's source text of a request (before the prompt tokens), as the task
    formats its documents."""
    if isinstance(body, AnswerRequest):
        contexts = [body.context] if isinstance(body.context, str) else body.context
        if not body.question.strip():
            raise protocol.bad_request("question must not be empty", "question")
        if not any(c.strip() for c in contexts):
            raise protocol.bad_request("context must not be empty", "context")
        source = PubMedQA.format_source(body.question, contexts)
        if task.name == "pubmedqa-rf":
            # the reasoning-free rows go on `... context: C answer: LONG` (biogpt.tasks.qa)
            if not body.long_answer:
                raise protocol.bad_request(
                    "pubmedqa-rf reads the abstract's conclusion too: give long_answer",
                    "long_answer",
                )
            return f"{source}answer: {body.long_answer}"
        if body.long_answer is not None:
            raise protocol.bad_request(
                f"long_answer is for pubmedqa-rf; this model runs {task.name}", "long_answer"
            )
        return source
    assert isinstance(body, TextRequest)
    if not body.text.strip():
        raise protocol.bad_request("text must not be empty", "text")
    return task.source_of_text(body.text)


def task_for(served: ServedModel, kind: str) -> Task:
    """The task `served` runs, checked against the endpoint `kind` it was asked on."""
    task = served.task
    if task is None:
        raise APIError(
            400,
            f"the model {served.name!r} records no task (it was not fine-tuned by biogpt "
            "finetune: no task.json beside its weights); use /v1/completions, or a task model",
            "model",
            "model_has_no_task",
        )
    if kind_of(task) != kind:
        raise APIError(
            400,
            f"the model {served.name!r} is fine-tuned for {task.name}: ask it on "
            f"POST {endpoint_of(kind_of(task))}, not {endpoint_of(kind)}",
            "model",
            "wrong_task_endpoint",
        )
    return task


def prepare(
    served: ServedModel, kind: str, body: TaskRequest, max_tokens_allowed: int
) -> tuple[Task, str, list[int], GenerationConfig]:
    """A request's task, source text, prompt ids and greedy decoding options, checked."""
    task = task_for(served, kind)
    source = source_of(task, body)
    ids = encode_prompt(served.tokenizer, task, source)  # prompt tokens: checked at load
    room = served.max_positions - len(ids)
    if body.max_tokens is None:
        max_tokens = min(
            max_new_tokens_for(task, served.model.config.max_positions, len(ids)),
            max_tokens_allowed,
        )
    else:
        max_tokens = body.max_tokens
        if not 1 <= max_tokens <= max_tokens_allowed:
            raise protocol.bad_request(
                f"max_tokens must be in 1..{max_tokens_allowed}, got {max_tokens}", "max_tokens"
            )
        if max_tokens > room:
            raise APIError(
                400,
                f"a prompt of {len(ids)} tokens and max_tokens {max_tokens} exceed the model's "
                f"{served.max_positions} positions",
                "max_tokens",
                "context_length_exceeded",
            )
    # greedy, stopping at `</s>`: what `predict` asks of `generate`
    config = GenerationConfig(
        max_new_tokens=max_tokens,
        eos_token_id=served.tokenizer.eos_id,
        pad_token_id=served.tokenizer.pad_id,
    )
    return task, source, ids, config


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------


def parsed_json(task: Task, answer: str, source: str) -> tuple[Any, int]:
    """The task's parse of `answer` as JSON, and how many pieces it could not read. The
    parser sees the source as `biogpt extract` shows it (`text_examples`): some prefer the
    readings of a relation whose names occur in it."""
    parsed = task.parse(answer, Example(id="", source=source, target="", gold=None))
    if kind_of(task) == "entities":
        return [{"text": text, "type": kind} for text, kind in parsed.value], parsed.unparseable
    return structure(parsed.value), parsed.unparseable


@dataclass
class TaskRun:
    """One task request under way: its task, source text and queued generation."""

    task: Task
    kind: str
    model: str
    source: str
    work: Generation

    def body(self, finished: Finished) -> dict[str, Any]:
        """The whole answer (see the module docstring)."""
        value, unparseable = parsed_json(self.task, finished.text, self.source)
        return {
            "id": protocol.new_id("task"),
            "object": f"task.{self.kind}",
            "created": protocol.now(),
            "model": self.model,
            "task": self.task.name,
            "answer": finished.text,
            "parsed": value,
            "unparseable": unparseable,
            "finish_reason": finished.reason,
            "usage": protocol.usage(len(self.work.prompts[0]), len(finished.tokens)),
        }

    async def collect(self, request: Request) -> dict[str, Any]:
        """Wait for the answer (cancelled if the client leaves); its body."""
        (choice,) = await generation.collect(self.work, request)
        assert choice.finished is not None
        return self.body(choice.finished)

    async def stream(self) -> AsyncIterator[str]:
        """The answer as server-sent events: text chunks, the whole answer, `[DONE]`. An
        error after the stream has begun is an event of OpenAI's error shape."""
        finished: Finished | None = None
        try:
            async for _, event in self.work.events_until_done(None):
                text = ""
                if isinstance(event, Token):
                    text = event.text
                elif isinstance(event, Finished):
                    finished, text = event, event.text_tail
                if text:
                    yield generation.sse(
                        {"object": "task.chunk", "model": self.model, "text": text}
                    )
            assert finished is not None
            yield generation.sse(self.body(finished))
        except APIError as err:
            yield generation.sse(err.body())
        yield generation.sse("[DONE]")


def tokenizer_knows_task(tokenizer: Tokenizer, task: Task) -> None:
    """Check, as a model loads, that its tokenizer has the task's prompt tokens (a
    `BioGPTError` naming the first missing one)."""
    encode_prompt(tokenizer, task, "")
