"""The HTTP server: an OpenAI-compatible API over the schedulers, on FastAPI and uvicorn.

    app = create_app({"mini": load("mini"), "bc5cdr": load(path)}, ServeSettings(),
                     tasks={"bc5cdr": recorded_task(path)})
    run(app, host="127.0.0.1", port=8000)

Routes:
- `GET /health`: 503 `{"status": "loading"}` until every model is loaded, then 200; never
  behind the key (load balancers and orchestrators probe it);
- `GET /v1/models`; `POST /v1/completions`; `POST /v1/chat/completions` (see `protocol`);
- `POST /tokenize` (`{"prompt"}` -> ids and pieces), `POST /detokenize` (`{"tokens"}` -> text);
- `POST /v1/tasks/extract`, `/answer`, `/classify`, `/entities`: a fine-tuned model's task
  (see `task_api`); `GET /v1/models` names each model's task and its endpoint;
- `GET /metrics`: Prometheus' text format (see `metrics`);
- `GET /`: the web page (see `page`), outside the key like `/health`.

Every error is OpenAI's JSON shape (`protocol.APIError`): 400 bad options or a prompt that
does not fit the model's positions with `max_tokens`, 401 a missing or wrong key, 404 an
unknown model or route, 413 a body over `max_body_bytes`, 429 the queue is full, 503 still
loading, 504 past `timeout`. Request validation errors are 400 (FastAPI's default is 422).

Security: keys are compared in constant time (`hmac.compare_digest`, against every key);
no request value names a file; bodies are bounded before they are parsed; no CORS headers
are sent, so browsers on other origins cannot read the answers.

Models load in a thread once the server has started, so that `/health` can answer while
they load.
"""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from biogpt.errors import BioGPTError
from biogpt.model import BioGPT
from biogpt.serve import generation, page, protocol, task_api
from biogpt.serve.metrics import Metrics
from biogpt.serve.protocol import APIError
from biogpt.serve.scheduler import Scheduler, Timing
from biogpt.serve.settings import ServeSettings
from biogpt.tasks import Task
from biogpt.tokenizer import Tokenizer

# What builds one served model and its tokenizer (called once, in the loading thread).
ModelLoader = Callable[[], tuple[BioGPT, Tokenizer]]


@dataclass
class ServedModel:
    name: str
    model: BioGPT
    tokenizer: Tokenizer
    scheduler: Scheduler
    created: int
    task: Task | None = None  # what it was fine-tuned for (its task.json), if anything

    @property
    def max_positions(self) -> int:
        return self.model.config.max_positions


def scheduler_count(scheduler: Scheduler, which: str) -> Callable[[], float]:
    """A gauge's reading: the scheduler's `running` or `waiting` count."""
    return lambda: getattr(scheduler, which)


class Server:
    """What the routes share: the models (loaded in a thread), settings and metrics."""

    def __init__(
        self,
        loaders: dict[str, ModelLoader],
        settings: ServeSettings,
        tasks: Mapping[str, Task | None] | None = None,
    ) -> None:
        self.loaders = loaders
        self.settings = settings
        self.tasks = dict(tasks or {})
        self.models: dict[str, ServedModel] = {}
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.load_error: str | None = None

    def load(self) -> None:
        """Load every model and start its scheduler; `ready` is set when all are serving."""
        try:
            for name, loader in self.loaders.items():
                model, tokenizer = loader()
                task = self.tasks.get(name)
                if task is not None:
                    try:
                        task_api.tokenizer_knows_task(tokenizer, task)
                    except BioGPTError as err:
                        raise BioGPTError(f"model {name!r}: {err}") from None
                scheduler = Scheduler(
                    model,
                    tokenizer,
                    max_batch_size=self.settings.max_batch_size,
                    max_queue=self.settings.max_queue,
                    timing=self._timing(name),
                )
                scheduler.start()
                self.models[name] = ServedModel(
                    name, model, tokenizer, scheduler, protocol.now(), task
                )
                self.metrics.gauge(
                    "biogpt_requests_running", name, scheduler_count(scheduler, "running")
                )
                self.metrics.gauge(
                    "biogpt_requests_waiting", name, scheduler_count(scheduler, "waiting")
                )
            self.ready.set()
        except Exception as err:  # shown by /health; the server stays up to say so
            self.load_error = f"{type(err).__name__}: {err}"

    def _timing(self, name: str) -> Timing:
        metrics = self.metrics

        return Timing(
            first_token=lambda s: metrics.observe("biogpt_time_to_first_token_seconds", name, s),
            next_token=lambda s: metrics.observe("biogpt_time_per_output_token_seconds", name, s),
            prompt_tokens=lambda n: metrics.add("biogpt_prompt_tokens_total", name, n),
            new_tokens=lambda n: metrics.add("biogpt_generation_tokens_total", name, n),
        )

    def close(self) -> None:
        for served in self.models.values():
            served.scheduler.close()

    def model(self, name: str | None) -> ServedModel:
        """The model a request names (None: the only one, or the first); 503 while loading."""
        if not self.ready.is_set():
            raise APIError(503, self.load_error or "the models are loading; retry shortly")
        if name is None:
            return next(iter(self.models.values()))
        if name not in self.models:
            known = ", ".join(self.models)
            raise APIError(
                404,
                f"the model {name!r} does not exist; served: {known}",
                "model",
                "model_not_found",
            )
        return self.models[name]


# --------------------------------------------------------------------------------------------
# Body size limit, errors and keys
# --------------------------------------------------------------------------------------------


class BodyLimit:
    """ASGI middleware: read a request's body up to `limit` bytes before the app sees it;
    413 past it (by its Content-Length, or by counting a chunked body), calling `refused()`
    (the server counts it with the other refused requests)."""

    def __init__(self, app: ASGIApp, limit: int, refused: Callable[[], None]) -> None:
        self.app = app
        self.limit = limit
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.limit:
            await self._refuse(send)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending it all
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._refuse(send)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later: the disconnect message

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        self.refused()
        error = APIError(
            413, f"the request body exceeds {self.limit} bytes", code="request_too_large"
        )
        payload = json.dumps(error.body()).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def validation_error(error: RequestValidationError) -> APIError:
    """FastAPI's validation errors as one 400: the first problem, naming its field."""
    first = error.errors()[0] if error.errors() else {}
    where = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return protocol.bad_request("the request body is not valid JSON")
    # the top-level field: Pydantic's location goes on into union members ("prompt.str")
    param = where[0] if where else None
    message = first.get("msg", "invalid request")
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {param!r}"
    return protocol.bad_request(f"{param}: {message}" if param else message, param)


def key_check(keys: tuple[str, ...]) -> Callable[[Request], None]:
    """A dependency that refuses a request without one of `keys` as its Bearer token."""
    wanted = [key.encode() for key in keys]

    def check(request: Request) -> None:
        if not wanted:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = token.strip().encode()
        # every key is compared, each in constant time: the answer's timing tells nothing
        matches = [hmac.compare_digest(given, key) for key in wanted]
        if scheme.lower() != "bearer" or not any(matches):
            raise APIError(
                401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key"
            )

    return check


# --------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------


def create_app(
    loaders: dict[str, ModelLoader],
    settings: ServeSettings | None = None,
    tasks: Mapping[str, Task | None] | None = None,
) -> FastAPI:
    """The server's ASGI app, serving the models that `loaders` build (in a thread, once
    the app starts; `app.state.server` holds them). `tasks` names the task each fine-tuned
    model runs on the task endpoints (`biogpt.tasks.recorded_task` of its directory)."""
    if not loaders:
        raise ValueError("serve at least one model")
    unknown = set(tasks or {}) - set(loaders)
    if unknown:
        raise ValueError(f"tasks for models not served: {', '.join(sorted(unknown))}")
    settings = settings or ServeSettings()
    server = Server(loaders, settings, tasks)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=server.load, name="biogpt-load", daemon=True).start()
        yield
        server.close()

    app = FastAPI(title="BioGPT", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = server
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        refused=lambda: server.metrics.add("biogpt_requests_total", "", status="413"),
    )
    if settings.allow_origins:  # CORS is off unless origins are named
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.allow_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    keyed = [Depends(key_check(settings.api_keys))]

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, error: APIError) -> JSONResponse:
        # refused requests are counted under model "" (some never named a model)
        server.metrics.add("biogpt_requests_total", "", status=str(error.status))
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return await on_api_error(request, validation_error(error))

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, error: HTTPException) -> JSONResponse:
        return await on_api_error(request, APIError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def on_bug(request: Request, error: Exception) -> JSONResponse:
        return await on_api_error(request, APIError(500, f"internal error: {type(error).__name__}"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.ready.is_set():
            return JSONResponse({"status": "ok"})
        status = "error" if server.load_error else "loading"
        return JSONResponse({"status": status, "error": server.load_error}, status_code=503)

    @app.get("/v1/models", dependencies=keyed)
    async def models() -> dict[str, Any]:
        server.model(None)  # 503 while loading
        data = [
            {
                "id": served.name,
                "object": "model",
                "created": served.created,
                "owned_by": "biogpt",
                "max_model_len": served.max_positions,
                "task": task_api.task_info(served.task),
            }
            for served in server.models.values()
        ]
        return {"object": "list", "data": data}

    @app.get("/metrics", dependencies=keyed)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    @app.post("/tokenize", dependencies=keyed)
    async def tokenize(body: protocol.TokenizeRequest) -> dict[str, Any]:
        served = server.model(body.model)
        ids = served.tokenizer.encode(body.prompt)
        pieces = [served.tokenizer.id_to_token(i) for i in ids]
        return {
            "tokens": ids,
            "pieces": pieces,
            "count": len(ids),
            "max_model_len": served.max_positions,
        }

    @app.post("/detokenize", dependencies=keyed)
    async def detokenize(body: protocol.DetokenizeRequest) -> dict[str, Any]:
        served = server.model(body.model)
        size = len(served.tokenizer)
        if any(not 0 <= t < size for t in body.tokens):
            raise protocol.bad_request(f"token ids must be in 0..{size - 1}", "tokens")
        return {"prompt": served.tokenizer.decode(body.tokens)}

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(body: protocol.CompletionRequest, request: Request) -> Any:
        served = server.model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not 1 <= len(prompts) <= protocol.MAX_PROMPTS:
            raise protocol.bad_request(f"give 1 to {protocol.MAX_PROMPTS} prompts", "prompt")
        if body.suffix:
            raise protocol.bad_request("suffix is not supported", "suffix")
        if body.best_of not in (None, body.n):
            raise protocol.bad_request("best_of must equal n", "best_of")
        top = body.logprobs or 0
        if not 0 <= top <= protocol.MAX_TOP_LOGPROBS:
            raise protocol.bad_request(
                f"logprobs must be in 0..{protocol.MAX_TOP_LOGPROBS}", "logprobs"
            )
        max_tokens = 16 if body.max_tokens is None else body.max_tokens  # OpenAI's default
        work = start(served, body, prompts, max_tokens, body.logprobs is not None, top)
        echo = prompts if body.echo else None
        return await answer(work, served, body, request, chat=False, echo=echo)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat(body: protocol.ChatRequest, request: Request) -> Any:
        served = server.model(body.model)
        prompt = protocol.chat_prompt(body.messages)
        top = body.top_logprobs or 0
        if not 0 <= top <= protocol.MAX_TOP_LOGPROBS:
            raise protocol.bad_request(
                f"top_logprobs must be in 0..{protocol.MAX_TOP_LOGPROBS}", "top_logprobs"
            )
        if top and not body.logprobs:
            raise protocol.bad_request("top_logprobs needs logprobs: true", "top_logprobs")
        max_tokens = body.max_completion_tokens or body.max_tokens
        work = start(served, body, [prompt], max_tokens, body.logprobs, top)
        return await answer(work, served, body, request, chat=True, echo=None)

    @app.post("/v1/tasks/extract", dependencies=keyed)
    async def extract(body: task_api.TextRequest, request: Request) -> Any:
        return await run_task("extract", body, request)

    @app.post("/v1/tasks/answer", dependencies=keyed)
    async def answer_question(body: task_api.AnswerRequest, request: Request) -> Any:
        return await run_task("answer", body, request)

    @app.post("/v1/tasks/classify", dependencies=keyed)
    async def classify(body: task_api.TextRequest, request: Request) -> Any:
        return await run_task("classify", body, request)

    @app.post("/v1/tasks/entities", dependencies=keyed)
    async def entities(body: task_api.TextRequest, request: Request) -> Any:
        return await run_task("entities", body, request)

    async def run_task(kind: str, body: task_api.TaskRequest, request: Request) -> Any:
        """A task request through the model's scheduler, like a greedy completion."""
        served = server.model(body.model)
        task, source, ids, config = task_api.prepare(served, kind, body, settings.max_tokens)
        work = generation.Generation(
            served.scheduler, served.tokenizer, [ids], config, (), False, 0, settings.timeout
        )
        work.submit()
        run = task_api.TaskRun(task, kind, served.name, source, work)
        if body.stream:
            server.metrics.add("biogpt_requests_total", served.name, status="200")
            return StreamingResponse(run.stream(), media_type="text/event-stream")
        result = await run.collect(request)
        server.metrics.add("biogpt_requests_total", served.name, status="200")
        return result

    page.add_page(app)

    def start(
        served: ServedModel,
        body: protocol.Options,
        prompts: list[str],
        max_tokens: int | None,
        logprobs: bool,
        top: int,
    ) -> generation.Generation:
        """Check a request against the model and the limits; its jobs, queued."""
        ids = [served.tokenizer.encode(p) for p in prompts]
        room = served.max_positions - max(len(i) for i in ids)
        if max_tokens is None:  # chat without a limit: as many as fit, up to the server's
            max_tokens = max(1, min(settings.max_tokens, room))
        if not 1 <= max_tokens <= settings.max_tokens:
            raise protocol.bad_request(
                f"max_tokens must be in 1..{settings.max_tokens}, got {max_tokens}", "max_tokens"
            )
        if max_tokens > room:
            longest = served.max_positions - room
            raise APIError(
                400,
                f"a prompt of {longest} tokens and max_tokens {max_tokens} exceed the model's "
                f"{served.max_positions} positions; shorten one of them",
                "max_tokens",
                "context_length_exceeded",
            )
        config = protocol.generation_config(body, max_tokens, served.tokenizer, top)
        stop = protocol.stop_strings(body.stop)
        work = generation.Generation(
            served.scheduler, served.tokenizer, ids, config, stop, logprobs, top, settings.timeout
        )
        work.submit()
        return work

    async def answer(
        work: generation.Generation,
        served: ServedModel,
        body: protocol.Options,
        request: Request,
        chat: bool,
        echo: list[str] | None,
    ) -> Any:
        if body.stream:
            server.metrics.add("biogpt_requests_total", served.name, status="200")
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            events = generation.stream(work, served.name, chat, include_usage, echo)
            return StreamingResponse(events, media_type="text/event-stream")
        choices = await generation.collect(work, request)
        server.metrics.add("biogpt_requests_total", served.name, status="200")
        if chat:
            return generation.chat_body(work, choices, served.name)
        return generation.completion_body(work, choices, served.name, echo)

    return app


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve `app` with uvicorn until interrupted (Ctrl-C, SIGTERM)."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)
