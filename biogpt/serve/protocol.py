"""The OpenAI-compatible wire format: request bodies (Pydantic models), what they mean as
decoding options, response and stream-chunk bodies, and errors in OpenAI's shape.

Requests follow OpenAI's fields and defaults (`max_tokens` 16 for completions,
`temperature` 1, `top_p` 1, `n` 1); `temperature: 0` means greedy decoding, as in vLLM.
Unknown fields are refused (400, naming the field), as OpenAI refuses them. BioGPT's own
decoding options are extra fields (the `openai` client sends them with `extra_body`):
`top_k`, `num_beams`, `length_penalty`, `early_stopping`, `repetition_penalty`,
`no_repeat_ngram_size`, `min_tokens`.

Chat messages are flattened into one prompt: the text of every message, in order, joined
by a new line; roles are dropped. BioGPT was pretrained on PubMed titles and abstracts,
not on dialogue, so role labels would only be text it never saw; a conversation is read as
one passage that the model continues.

Tokens in `logprobs` are the vocabulary's BPE pieces (`cell</w>`: `</w>` ends a word), since
a Moses-detokenized word may join several pieces.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from biogpt.decoding.config import GenerationConfig
from biogpt.errors import BioGPTError
from biogpt.tokenizer import Tokenizer

MAX_STOP_STRINGS = 16
MAX_STOP_LENGTH = 256  # characters of one stop string
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64  # prompts in one completions request

# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
    504: "timeout_error",
}


class APIError(Exception):
    """An error answered in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return {"error": error}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)


# --------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class Options(BaseModel):
    """The fields both generation endpoints take."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = None
    temperature: float | None = None  # OpenAI's default is 1 (sampling); 0 is greedy
    top_p: float | None = None
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # BioGPT's decoding options (biogpt.decoding.GenerationConfig)
    top_k: int | None = None
    num_beams: int = 1
    length_penalty: float | None = None
    early_stopping: bool | Literal["never"] | None = None
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int | None = None
    min_tokens: int | None = None


class CompletionRequest(Options):
    """`POST /v1/completions`."""

    prompt: str | list[str]
    logprobs: int | None = None  # the chosen token's log-probability and this many others
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_call_id, ...: not used
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(Options):
    """`POST /v1/chat/completions`."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    prompt: str


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    tokens: list[int]


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The one prompt a conversation is read as (see the module docstring)."""
    return "\n".join(text for text in (m.text() for m in messages) if text)


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    strings = [stop] if isinstance(stop, str) else list(stop or [])
    if len(strings) > MAX_STOP_STRINGS:
        raise bad_request(f"at most {MAX_STOP_STRINGS} stop strings", "stop")
    if any(not s or len(s) > MAX_STOP_LENGTH for s in strings):
        raise bad_request(f"stop strings must have 1 to {MAX_STOP_LENGTH} characters", "stop")
    return tuple(strings)


def generation_config(
    request: Options, max_tokens: int, tokenizer: Tokenizer, top_logprobs: int
) -> GenerationConfig:
    """The decoding options a request asks for, checked; `max_tokens` is already settled."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise bad_request(f"{name} is not supported; use repetition_penalty", name)
    if request.logit_bias:
        raise bad_request("logit_bias is not supported", "logit_bias")
    if request.n < 1:
        raise bad_request("n must be >= 1", "n")
    if request.num_beams < 1:
        raise bad_request("num_beams must be >= 1", "num_beams")
    if request.num_beams > 1 and (request.stream or top_logprobs or _asks_logprobs(request)):
        raise bad_request("beam search (num_beams > 1) streams no tokens and gives no logprobs")
    temperature = 1.0 if request.temperature is None else request.temperature
    if request.num_beams > 1 and request.temperature is None:
        temperature = 0.0  # beam search is deterministic unless asked otherwise
    if temperature < 0:
        raise bad_request("temperature must be >= 0", "temperature")
    sample = temperature > 0
    if request.n > request.num_beams and not sample:
        raise bad_request(
            "n > 1 needs sampling (temperature > 0) or as many beams (num_beams): greedy "
            "choices would all be the same",
            "n",
        )
    options: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "num_return_sequences": request.n,
        "num_beams": request.num_beams,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    }
    if sample:
        options.update(do_sample=True, temperature=temperature, seed=request.seed)
        if request.top_p is not None:
            options["top_p"] = request.top_p
        if request.top_k is not None:
            options["top_k"] = max(request.top_k, 0)  # vLLM spells "off" -1
    extra = {
        "length_penalty": request.length_penalty,
        "early_stopping": request.early_stopping,
        "repetition_penalty": request.repetition_penalty,
        "no_repeat_ngram_size": request.no_repeat_ngram_size,
        "min_new_tokens": request.min_tokens,
    }
    options.update({k: v for k, v in extra.items() if v is not None})
    config = GenerationConfig.from_options(None, **options)
    try:
        config.validate()
    except BioGPTError as err:
        raise bad_request(str(err)) from None
    return config


def _asks_logprobs(request: Options) -> bool:
    logprobs = getattr(request, "logprobs", None)
    return logprobs is not None and logprobs is not False


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(
    tokenizer: Tokenizer, tokens: list[int], logprobs: list[float], top: list[Any] | None
) -> dict[str, Any]:
    """The completions endpoint's `logprobs` object for these tokens."""
    pieces = [tokenizer.id_to_token(t) for t in tokens]
    tops = None
    if top is not None:
        tops = [{tokenizer.id_to_token(i): lp for i, lp in alternatives} for alternatives in top]
    return {"tokens": pieces, "token_logprobs": logprobs, "top_logprobs": tops, "text_offset": None}


def chat_logprobs(
    tokenizer: Tokenizer, tokens: list[int], logprobs: list[float], top: list[Any] | None
) -> dict[str, Any]:
    """The chat endpoint's `logprobs` object for these tokens."""

    def entry(token: int, logprob: float) -> dict[str, Any]:
        piece = tokenizer.id_to_token(token)
        return {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}

    content = []
    for k, (token, logprob) in enumerate(zip(tokens, logprobs, strict=True)):
        item = entry(token, logprob)
        item["top_logprobs"] = [entry(i, lp) for i, lp in top[k]] if top is not None else []
        content.append(item)
    return {"content": content, "refusal": None}
